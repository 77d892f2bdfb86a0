"""One MySQL connection, sans-IO, in either role: bytes in, events out; payloads in, bytes out.

The h11 pattern (https://h11.readthedocs.io/en/latest/api.html): the driver feeds received
bytes with :meth:`Connection.receive_data` and asks :meth:`Connection.next_event` for events
until it gets :data:`NEED_DATA` (more bytes needed) or :data:`PAUSED` (it is our turn to
send); it hands each payload to :meth:`Connection.send` and writes the bytes that come back.
Both directions go through the same tables (:mod:`.state`); the role only says which side is
ours. Nothing here does I/O, so every transition is tested without a socket.

What a :class:`Connection` tracks, packet by packet:

- framing: the 16 MiB split and join, the payload cap, sequence ids (a command starts at 0, the
  reply continues from it; out of order is refused with 1156);
- the state: who sends next, and what they may send (an unexpected packet from the peer is a
  :class:`~.errors.MySQLRemoteError`, from us a :class:`~.errors.MySQLLocalError`);
- capabilities: the server's (greeting), the client's (response), and the negotiated ones that
  shape later packets (DEPRECATE_EOF, SESSION_TRACK, MariaDB's metadata extensions...);
- the server status flags of the last OK/EOF (``in_transaction``: the gateway's "is the session
  pinned" answer comes from here, never from parsing SQL), and for each OK/EOF/ERR whether it
  ends the command's reply or another result follows (``SERVER_MORE_RESULTS_EXISTS``);
- the authentication plugin and scramble in use (after AuthSwitchRequest too);
- prepared statements' parameter and column counts, learned from PREPARE_OK (a COM_STMT_EXECUTE
  cannot be decoded without the count; MariaDB's id 0xFFFFFFFF means the last prepared).

A client may pipeline: send commands while earlier replies are still coming (MariaDB's
connectors pipeline COM_STMT_PREPARE and COM_STMT_EXECUTE). The client role queues the replies
it expects; the server role simply leaves a pipelined command in its buffer until its reply is
sent (:data:`PAUSED`), so one reply is produced at a time.

Not supported: the compressed protocol (``CLIENT_COMPRESS`` is never negotiated: refused with
1047-style local/remote errors if both sides ask) and TLS itself (the driver wraps the socket
after :class:`~.events.TlsRequest` and calls :meth:`Connection.tls_established`).
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass
from typing import Final, final

from .constants import Capability, Command, ServerStatus
from .errors import ErrorInfo, MySQLLocalError, MySQLRemoteError, error_info, malformed_packet
from .events import (
    AuthData,
    AuthMoreDataEvent,
    AuthSwitch,
    ClientHandshake,
    ColumnCountEvent,
    ColumnDefinitionEvent,
    CommandEvent,
    ConnectionClosed,
    Eof,
    Err,
    Event,
    Greeting,
    LocalInfileData,
    LocalInfileEnd,
    LocalInfileRequestEvent,
    Ok,
    PrepareOkEvent,
    Progress,
    Row,
    Statistics,
    TlsRequest,
)
from .handshake import (
    HandshakeResponse,
    decode_auth_switch_request,
    decode_handshake_response,
    decode_initial_handshake,
    decode_ssl_request,
)
from .packets import (
    DEFAULT_MAX_PAYLOAD,
    MAX_CHUNK,
    NEED_DATA,
    NeedData,
    Packet,
    PacketDecoder,
    encode_packet,
)
from .results import ErrPacket, decode_column_count, decode_eof, decode_err, decode_ok, encode_err
from .state import (
    COUNTED,
    RESULT_ENDINGS,
    SENDER,
    TRANSITIONS,
    PacketKind,
    Role,
    State,
    classify,
    keeps_auth_turn,
    reply_state,
)
from .statements import LAST_STATEMENT_ID, decode_prepare_ok, peek_statement_id

__all__ = ["NEED_DATA", "PAUSED", "Connection", "NeedData", "Paused", "StatementInfo"]


class Paused(enum.Enum):
    """The type of :data:`PAUSED`."""

    PAUSED = "PAUSED"


#: Returned by :meth:`Connection.next_event` while it is our turn to send: buffered bytes (a
#: pipelined command) wait until our reply is complete.
PAUSED: Final = Paused.PAUSED


@dataclass(frozen=True, slots=True)
class StatementInfo:
    """What the session knows of a prepared statement: from its PREPARE_OK."""

    statement_id: int
    num_params: int
    num_columns: int


@dataclass(slots=True)
class _Pending:
    """A pipelined command whose reply has not started (client role)."""

    command: int
    reply_seq: int


@final
class Connection:
    """One end of a MySQL connection.

    Attributes:
        role: which end we are.
        state: where the conversation is (:class:`~.state.State`).
        server_capabilities: from the greeting (``None`` before it).
        client_capabilities: from the handshake response (``None`` before it).
        status: server status flags of the greeting or the last OK/EOF.
        auth_plugin: the authentication plugin in use.
        scramble: the nonce in use (the greeting's, or the last AuthSwitchRequest's).
        server_version: from the greeting.
        connection_id: from the greeting.
        username: from the handshake response or the last COM_CHANGE_USER (client role: as
            sent; server role: as received).
        statements: prepared statements by id.
        command: the command whose reply is in progress (``None`` in IDLE and before login).
    """

    __slots__ = (
        "_capabilities",
        "_changing_user",
        "_client_capabilities",
        "_columns_left",
        "_decoder",
        "_definition_index",
        "_error",
        "_max_chunk",
        "_peer_closed",
        "_peer_role",
        "_pending",
        "_prepare_columns",
        "_send_seq",
        "_server_capabilities",
        "_tls_done",
        "auth_plugin",
        "command",
        "connection_id",
        "role",
        "scramble",
        "server_version",
        "state",
        "statements",
        "status",
        "username",
    )

    def __init__(
        self,
        role: Role,
        *,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        max_chunk: int = MAX_CHUNK,
        max_buffer: int | None = None,
    ) -> None:
        """Create a connection at its start (the server's greeting comes first).

        Args:
            role: :attr:`~.state.Role.CLIENT` towards a server (the gateway's backends),
                :attr:`~.state.Role.SERVER` towards a client (the gateway's frontend).
            max_payload: largest payload accepted from the peer (``max_allowed_packet``).
            max_chunk: payload bytes per packet (0xFFFFFF; smaller only in tests).
            max_buffer: the receive buffer's cap (see :class:`~.packets.PacketDecoder`).
        """
        self.role = role
        #: The other end's role (whose turn :meth:`next_event` reads).
        self._peer_role = Role.SERVER if role is Role.CLIENT else Role.CLIENT
        self.state = State.GREETING
        self._decoder = PacketDecoder(
            max_payload, max_chunk=max_chunk, max_buffer=max_buffer, expected_seq=0
        )
        self._max_chunk = max_chunk
        self._send_seq = 0
        self._pending: deque[_Pending] = deque()
        self._columns_left = 0
        self._prepare_columns = 0
        self._definition_index = 0
        self._changing_user = False
        self._tls_done = False
        self._peer_closed = False
        self._error: MySQLRemoteError | None = None
        self._server_capabilities: Capability | None = None
        self._client_capabilities: Capability | None = None
        #: Their intersection, computed when either changes (read for every packet).
        self._capabilities = Capability(0)
        self.status = ServerStatus(0)
        self.auth_plugin: str | None = None
        self.scramble = b""
        self.server_version = ""
        self.connection_id = 0
        self.username = ""
        self.statements: dict[int, StatementInfo] = {}
        self.command: Command | int | None = None

    # -- what the session knows ---------------------------------------------------------

    @property
    def server_capabilities(self) -> Capability | None:
        return self._server_capabilities

    @server_capabilities.setter
    def server_capabilities(self, value: Capability | None) -> None:
        self._server_capabilities = value
        self._capabilities = self._intersection()

    @property
    def client_capabilities(self) -> Capability | None:
        return self._client_capabilities

    @client_capabilities.setter
    def client_capabilities(self, value: Capability | None) -> None:
        self._client_capabilities = value
        self._capabilities = self._intersection()

    @property
    def capabilities(self) -> Capability:
        """The capabilities in force: the intersection once both sides have spoken."""
        return self._capabilities

    def _intersection(self) -> Capability:
        server = self._server_capabilities
        client = self._client_capabilities
        if server is None:
            return client if client is not None else Capability(0)
        if client is None:
            return server
        return server & client

    @property
    def in_transaction(self) -> bool:
        """``SERVER_STATUS_IN_TRANS`` of the last status seen."""
        return bool(self.status & ServerStatus.IN_TRANS)

    @property
    def our_turn(self) -> bool:
        """Whether we send next."""
        return SENDER[self.state] is self.role

    @property
    def pending_replies(self) -> int:
        """Replies expected besides the one in progress (pipelined commands; client role)."""
        return len(self._pending)

    @property
    def buffered(self) -> int:
        """Received bytes not yet returned as events."""
        return self._decoder.buffered

    # -- receiving ----------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the peer; ``b""`` means the peer closed the connection.

        Raises:
            MySQLRemoteError: the receive buffer's cap (1153), or an earlier error.
        """
        if self._error is not None:
            raise self._error
        if not data:
            self._peer_closed = True
            return
        try:
            self._decoder.feed(data)
        except MySQLRemoteError as exc:
            self._error = exc
            raise

    def next_event(self) -> Event | NeedData | Paused:
        """The next event from the peer, :data:`NEED_DATA`, or :data:`PAUSED`.

        Raises:
            MySQLRemoteError: a framing error (1153, 1156) or a packet that cannot come in the
                current state; the connection is unusable afterwards (``close`` is set).
        """
        if self._error is not None:
            raise self._error
        if SENDER[self.state] is not self._peer_role:
            if self._peer_closed and not self.buffered:
                return ConnectionClosed()
            return PAUSED
        try:
            packet = self._decoder.next_packet()
            if packet is NEED_DATA:
                if self._peer_closed:
                    if self.buffered:
                        raise MySQLRemoteError(
                            error_info(1158, "Got an error reading communication packets")
                        )
                    self.state = State.CLOSED
                    return ConnectionClosed()
                return NEED_DATA
            event = self._process(packet, ours=False)
        except MySQLRemoteError as exc:
            self._error = MySQLRemoteError(exc.error, close=True)
            raise self._error from None
        self._send_seq = (packet.last_seq + 1) & 0xFF
        if self.state is State.IDLE:
            self._start_idle()
        return event

    # -- sending ------------------------------------------------------------------------

    def send(self, payload: bytes) -> bytes:
        """Frame ``payload`` (a whole payload: split here if it is 16 MiB or more) and return
        the bytes to write.

        Raises:
            MySQLLocalError: the packet cannot be sent in the current state (nothing changes).
        """
        return self.send_event(payload)[1]

    def send_event(self, payload: bytes) -> tuple[Event, bytes]:
        """Like :meth:`send`, also returning the event the peer will see (whether an OK ends
        the reply, for instance)."""
        if self._error is not None and self._error.close:
            raise MySQLLocalError(self._error.error)
        pipelined = (
            self.role is Role.CLIENT and self.state in _PIPELINE_STATES and self.command is not None
        )
        if SENDER[self.state] is not self.role and not pipelined:
            raise MySQLLocalError(
                error_info(1105, f"cannot send in state {self.state.value}: not our turn")
            )
        if pipelined:
            if not payload:
                raise MySQLLocalError(error_info(1105, "cannot send an empty command"))
            wire, last = encode_packet(payload, 0, max_chunk=self._max_chunk)
            reply = reply_state(payload[0])
            sent: Event = CommandEvent(Packet(0, payload, last), _command(payload[0]))
            self._track_command(payload, sent=True)
            if reply is not None:
                self._pending.append(_Pending(payload[0], (last + 1) & 0xFF))
            elif payload[0] == Command.QUIT:
                self._pending.append(_Pending(payload[0], 0))
            return sent, wire
        seq = 0 if self.state is State.IDLE else self._send_seq
        wire, last = encode_packet(payload, seq, max_chunk=self._max_chunk)
        packet = Packet(seq, payload, last)
        try:
            event = self._process(packet, ours=True)
        except MySQLRemoteError as exc:
            raise MySQLLocalError(exc.error, close=False) from None
        self._decoder.expected_seq = (last + 1) & 0xFF
        self._send_seq = (last + 1) & 0xFF
        if self.state is State.IDLE:
            self._start_idle()
        return event, wire

    def send_fatal_error(self, error: ErrorInfo) -> bytes:
        """An ERR packet in any state, after which the connection is closed: the server role's
        answer to a protocol violation (1153, 1156, 1835...) or a refused TLS request.

        Raises:
            MySQLLocalError: in the client role (a client never sends ERR).
        """
        if self.role is not Role.SERVER:
            raise MySQLLocalError(error_info(1105, "only a server sends ERR packets"))
        if self.state is State.GREETING:
            seq = 0
        elif self.state is State.IDLE and self._decoder.expected_seq is not None:
            seq = self._decoder.expected_seq
        else:
            seq = self._send_seq
        payload = encode_err(ErrPacket.from_info(error), self._err_capabilities())
        self.state = State.CLOSED
        return encode_packet(payload, seq, max_chunk=self._max_chunk)[0]

    def reply_relayed(self, status: int | None, *, reset: bool = False) -> None:
        """The reply to the command in progress was sent as the node's raw bytes (a proxy
        relaying it whole, :mod:`.relay`), not through :meth:`send`: the connection is idle
        again, with the status flags of the reply's last OK/EOF (``None``: unchanged, an ERR).
        ``reset``: the reply was a COM_RESET_CONNECTION's OK (the prepared statements are
        gone).

        Raises:
            MySQLLocalError: no reply of ours is in progress.
        """
        if self.command is None or SENDER[self.state] is not self.role:
            raise MySQLLocalError(error_info(1105, f"no reply to relay in state {self.state}"))
        if status is not None and status != self.status:
            self.status = ServerStatus(status)
        if reset:
            self.statements.clear()
        self.state = State.IDLE
        self._start_idle()

    def tls_established(self) -> None:
        """The TLS handshake that followed the SSLRequest is done: the client's
        HandshakeResponse comes next (over TLS).

        Raises:
            MySQLLocalError: not in the TLS state.
        """
        if self.state is not State.TLS:
            raise MySQLLocalError(error_info(1105, "no TLS handshake is in progress"))
        self.state = State.HANDSHAKE_RESPONSE
        self._tls_done = True

    # -- the machine --------------------------------------------------------------------

    def _err_capabilities(self) -> int:
        if self.client_capabilities is None:
            return Capability.PROTOCOL_41
        return int(self.capabilities)

    def _start_idle(self) -> None:
        """A reply is complete: reset the sequence, and start the next pipelined reply."""
        self.command = None
        self._send_seq = 0
        self._decoder.expected_seq = 0
        while self._pending:
            pending = self._pending.popleft()
            if pending.command == Command.QUIT:
                self.state = State.CLOSED
                return
            state = reply_state(pending.command)
            if state is None:
                continue
            self.command = _command(pending.command)
            self._decoder.expected_seq = pending.reply_seq
            self._enter_reply(state)
            return

    def _enter_reply(self, state: State) -> None:
        if state is State.AUTH_RESULT:
            self._changing_user = True
        self.state = state

    def _fail(self, ours: bool, error: ErrorInfo | None = None) -> MySQLRemoteError:
        # Raised as remote; send() turns it into a local error.
        return MySQLRemoteError(error or malformed_packet(), close=not ours)

    def _process(self, packet: Packet, *, ours: bool) -> Event:
        state = self.state
        payload = packet.payload
        if state is State.IDLE and payload:
            # What the tables say of IDLE, without their lookups: a command (every command
            # a gateway relays comes through here).
            return self._command(packet, ours)
        capabilities = int(self.capabilities)
        kind = classify(state, payload, capabilities)
        if kind is None:
            raise self._fail(ours)
        table = TRANSITIONS[state]
        if kind not in table:
            raise self._fail(ours)
        target = table[kind]
        event: Event
        if kind is PacketKind.ROW:
            return Row(packet)
        if kind is PacketKind.COLUMN_DEFINITION:
            return self._definition(packet, state)
        if kind is PacketKind.COMMAND:
            return self._command(packet, ours)
        if kind is PacketKind.OK:
            ok = decode_ok(payload, capabilities)
            self.status = ok.status
            target = self._after_ending(state, kind, ok.status, target)
            if state is State.AUTH_RESULT:
                self._login_done()
            elif self.command == Command.RESET_CONNECTION:
                self.statements.clear()
            event = Ok(packet, ok, ends_reply=target is State.IDLE)
        elif kind is PacketKind.EOF:
            eof = decode_eof(payload, capabilities)
            self.status = eof.status
            target = self._after_ending(state, kind, eof.status, target)
            if (state is State.COLUMNS_EOF and eof.status & ServerStatus.CURSOR_EXISTS) or (
                state is State.PREPARE_PARAMS_EOF and not self._prepare_columns
            ):
                target = State.IDLE
            elif state is State.PREPARE_PARAMS_EOF:
                self._columns_left = self._prepare_columns
                self._definition_index = 0
            event = Eof(packet, eof, ends_reply=target is State.IDLE)
        elif kind is PacketKind.ERR:
            error = decode_err(payload)
            if state is State.AUTH_RESULT and self._changing_user:
                target = State.IDLE
                self._changing_user = False
            event = Err(packet, error, ends_reply=True)
        elif kind is PacketKind.PROGRESS:
            event = Progress(packet)
        elif kind is PacketKind.COLUMN_COUNT:
            count = decode_column_count(payload, capabilities)
            self._columns_left = count.count
            self._definition_index = 0
            if not count.metadata_follows:
                self._columns_left = 0
            target = self._enter_counted(State.COLUMNS)
            event = ColumnCountEvent(packet, count)
        elif kind is PacketKind.PREPARE_OK:
            prepare = decode_prepare_ok(payload)
            info = StatementInfo(prepare.statement_id, prepare.num_params, prepare.num_columns)
            self.statements[prepare.statement_id] = info
            self.statements[LAST_STATEMENT_ID] = info
            self._columns_left = prepare.num_params
            self._prepare_columns = prepare.num_columns
            self._definition_index = 0
            target = self._enter_counted(State.PREPARE_PARAMS)
            event = PrepareOkEvent(packet, prepare, ends_reply=target is State.IDLE)
        elif kind is PacketKind.GREETING:
            greeting = decode_initial_handshake(payload)
            self.server_capabilities = greeting.capabilities
            self.status = greeting.status
            self.auth_plugin = greeting.auth_plugin_name
            self.scramble = greeting.auth_plugin_data
            self.server_version = greeting.server_version
            self.connection_id = greeting.connection_id
            event = Greeting(packet, greeting)
        elif kind is PacketKind.SSL_REQUEST:
            request = decode_ssl_request(payload)
            if not request.capabilities & Capability.SSL or self._tls_done:
                raise self._fail(ours, _bad_handshake())
            self.client_capabilities = request.capabilities
            event = TlsRequest(packet, request)
        elif kind is PacketKind.HANDSHAKE_RESPONSE:
            response = decode_handshake_response(payload)
            self._check_response(response, ours)
            self.client_capabilities = response.capabilities
            self.username = response.username
            if response.auth_plugin_name:
                self.auth_plugin = response.auth_plugin_name
            self._changing_user = False
            event = ClientHandshake(packet, response)
        elif kind is PacketKind.AUTH_SWITCH_REQUEST:
            switch = decode_auth_switch_request(payload)
            self.auth_plugin = switch.plugin_name
            self.scramble = switch.scramble
            event = AuthSwitch(packet, switch)
        elif kind is PacketKind.AUTH_MORE_DATA:
            data = payload[1:]
            if keeps_auth_turn(self.auth_plugin, data):
                target = State.AUTH_RESULT
            event = AuthMoreDataEvent(packet, data)
        elif kind is PacketKind.AUTH_DATA:
            event = AuthData(packet)
        elif kind is PacketKind.LOCAL_INFILE_REQUEST:
            event = LocalInfileRequestEvent(packet, payload[1:])
        elif kind is PacketKind.LOCAL_INFILE_DATA:
            event = LocalInfileData(packet)
        elif kind is PacketKind.LOCAL_INFILE_END:
            event = LocalInfileEnd(packet)
        else:  # STATISTICS
            event = Statistics(packet)
        self.state = target
        return event

    def _after_ending(
        self, state: State, kind: PacketKind, status: ServerStatus, target: State
    ) -> State:
        if (state, kind) in RESULT_ENDINGS and status & ServerStatus.MORE_RESULTS_EXISTS:
            return State.RESULT
        return target

    def _enter_counted(self, state: State) -> State:
        """``state`` if definitions are expected, else where it would go after the last."""
        while state in COUNTED and not self._columns_left:
            with_eof, without_eof = COUNTED[state]
            if state is State.PREPARE_PARAMS:
                # No parameters: no parameter EOF either; the columns come next.
                self._columns_left = self._prepare_columns
                self._definition_index = 0
                state = State.PREPARE_COLUMNS
                continue
            if state is State.PREPARE_COLUMNS:
                return State.IDLE
            # COLUMNS with metadata omitted (MariaDB's cache): the EOF still comes.
            return without_eof if self._deprecate_eof else with_eof
        return state

    @property
    def _deprecate_eof(self) -> bool:
        return bool(self.capabilities & Capability.DEPRECATE_EOF)

    def _definition(self, packet: Packet, state: State) -> Event:
        index = self._definition_index
        self._definition_index = index + 1
        if state is State.FIELD_LIST:
            return ColumnDefinitionEvent(packet, index)
        self._columns_left -= 1
        target: State = state
        if not self._columns_left:
            with_eof, without_eof = COUNTED[state]
            target = without_eof if self._deprecate_eof else with_eof
            if target is State.PREPARE_COLUMNS:
                self._columns_left = self._prepare_columns
                self._definition_index = 0
                target = self._enter_counted(State.PREPARE_COLUMNS)
            self.state = target
        return ColumnDefinitionEvent(
            packet, index, is_param=state is State.PREPARE_PARAMS, ends_reply=target is State.IDLE
        )

    def _command(self, packet: Packet, ours: bool) -> Event:
        payload = packet.payload
        command = _command(payload[0])
        if packet.seq != 0:
            raise self._fail(ours, _out_of_order())
        self._track_command(payload, sent=ours)
        target = reply_state(payload[0])
        if target is None:
            self.state = State.CLOSED if command == Command.QUIT else State.IDLE
            self.command = None
            return CommandEvent(packet, command)
        self.command = command
        self._enter_reply(target)
        return CommandEvent(packet, command)

    def _track_command(self, payload: bytes, *, sent: bool) -> None:
        command = payload[0]
        if command == Command.STMT_CLOSE:
            statement_id = peek_statement_id(payload)
            if statement_id is not None:
                self.statements.pop(statement_id, None)
        elif command == Command.CHANGE_USER:
            end = payload.find(b"\x00", 1)
            if end > 0:
                self.username = payload[1:end].decode("utf-8", "surrogateescape")

    def _login_done(self) -> None:
        if self._changing_user:
            self.statements.clear()
        self._changing_user = False

    def _check_response(self, response: HandshakeResponse, ours: bool) -> None:
        server = self.server_capabilities
        wanted = response.capabilities
        if server is not None and wanted & server & Capability.COMPRESS:
            raise self._fail(ours, error_info(1047, "The compressed protocol is not supported"))


#: Reply states during which a client may pipeline another command.
_PIPELINE_STATES: Final = frozenset(
    {
        State.RESULT,
        State.COLUMNS,
        State.COLUMNS_EOF,
        State.ROWS,
        State.PREPARE,
        State.PREPARE_PARAMS,
        State.PREPARE_PARAMS_EOF,
        State.PREPARE_COLUMNS,
        State.PREPARE_COLUMNS_EOF,
        State.FIELD_LIST,
        State.STATISTICS,
        State.SIMPLE,
    }
)


def _command(byte: int) -> Command | int:
    try:
        return Command(byte)
    except ValueError:
        return byte


def _bad_handshake() -> ErrorInfo:
    return error_info(1043, "Bad handshake")


def _out_of_order() -> ErrorInfo:
    return error_info(1156, "Got packets out of order")
