"""Who may send what, when: the MySQL connection's states and transitions, as tables (h11's
way). No bytes are read here beyond a packet's first byte and its length; :mod:`.connection`
drives these tables with real packets.

The protocol is half-duplex: in every state exactly one side may send (:data:`SENDER`). The
same machine serves both roles; a role only decides which side is "us". States::

    GREETING ─greeting─▶ HANDSHAKE_RESPONSE ─SSLRequest─▶ TLS ─(TLS done)─▶ HANDSHAKE_RESPONSE
                           │ HandshakeResponse
                           ▼
    AUTH_RESULT ◀─auth data── AUTH_CLIENT ◀─AuthSwitchRequest / AuthMoreData── AUTH_RESULT
        │ OK                    (caching_sha2's "fast auth success" keeps AUTH_RESULT)
        ▼
      IDLE ─command─▶ the reply state of the command (:data:`COMMAND_REPLY`) ─ ... ─▶ IDLE

Replies (https://mariadb.com/kb/en/result-set-packets/,
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_command_phase.html)::

    RESULT (COM_QUERY, COM_STMT_EXECUTE):  OK | ERR | LOCAL INFILE request | column count
      column count ─▶ COLUMNS (n definitions) ─▶ COLUMNS_EOF (unless DEPRECATE_EOF) ─▶ ROWS
      ROWS: row* then EOF | OK (0xFE) | ERR
      an OK or EOF with SERVER_MORE_RESULTS_EXISTS ends this result only: back to RESULT
    INFILE: the client sends the file in packets and an empty packet; then RESULT (OK | ERR)
    PREPARE (COM_STMT_PREPARE): PREPARE_OK | ERR, then params [EOF], columns [EOF]
    FIELD_LIST: column definitions until EOF | ERR
    STATISTICS: one string
    SIMPLE (COM_PING, COM_INIT_DB, COM_SET_OPTION...): OK | ERR | EOF
    none (COM_QUIT: CLOSED; COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA: IDLE at once)

Why tables: a proxy forwards packets opaquely and must still know, packet by packet, whether the
reply has ended and whether another result follows; a table is what the tests check without a
socket, and what a reader can compare with the documentation line by line. Counted states
(:data:`COUNTED`), the "more results" rule (:data:`RESULT_ENDINGS`) and the authentication
special cases are data too.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Final

from .constants import (
    CACHING_SHA2_FAST_AUTH_SUCCESS,
    AuthPlugin,
    Capability,
    Command,
    PacketHeader,
)
from .handshake import SSL_REQUEST_SIZE
from .results import EOF_MAX_SIZE, is_progress_report, is_row_terminator

__all__ = [
    "COMMAND_REPLY",
    "COUNTED",
    "RESULT_ENDINGS",
    "SENDER",
    "TRANSITIONS",
    "PacketKind",
    "Role",
    "State",
    "classify",
    "keeps_auth_turn",
    "reply_state",
]


class Role(enum.Enum):
    """Which end of the connection a :class:`~.connection.Connection` plays."""

    CLIENT = "client"
    SERVER = "server"


class State(enum.Enum):
    """Where a connection is; :data:`SENDER` says which side sends next."""

    GREETING = "greeting"
    HANDSHAKE_RESPONSE = "handshake-response"
    #: After an SSLRequest: the driver runs the TLS handshake, then calls ``tls_established``.
    TLS = "tls"
    AUTH_RESULT = "auth-result"
    AUTH_CLIENT = "auth-client"
    IDLE = "idle"
    RESULT = "result"
    COLUMNS = "columns"
    COLUMNS_EOF = "columns-eof"
    ROWS = "rows"
    INFILE = "infile"
    PREPARE = "prepare"
    PREPARE_PARAMS = "prepare-params"
    PREPARE_PARAMS_EOF = "prepare-params-eof"
    PREPARE_COLUMNS = "prepare-columns"
    PREPARE_COLUMNS_EOF = "prepare-columns-eof"
    FIELD_LIST = "field-list"
    STATISTICS = "statistics"
    SIMPLE = "simple"
    CLOSED = "closed"


class PacketKind(enum.Enum):
    """What a packet is, given the state it arrives in."""

    GREETING = "greeting"
    SSL_REQUEST = "ssl-request"
    HANDSHAKE_RESPONSE = "handshake-response"
    AUTH_SWITCH_REQUEST = "auth-switch-request"
    AUTH_MORE_DATA = "auth-more-data"
    AUTH_DATA = "auth-data"
    COMMAND = "command"
    OK = "ok"
    ERR = "err"
    EOF = "eof"
    PROGRESS = "progress"
    COLUMN_COUNT = "column-count"
    COLUMN_DEFINITION = "column-definition"
    ROW = "row"
    LOCAL_INFILE_REQUEST = "local-infile-request"
    LOCAL_INFILE_DATA = "local-infile-data"
    LOCAL_INFILE_END = "local-infile-end"
    PREPARE_OK = "prepare-ok"
    STATISTICS = "statistics"


S = State
K = PacketKind
_C: Final = Role.CLIENT
_S: Final = Role.SERVER

#: The side that sends in each state (``None``: nobody sends protocol packets).
SENDER: Final[Mapping[State, Role | None]] = {
    S.GREETING: _S,
    S.HANDSHAKE_RESPONSE: _C,
    S.TLS: None,
    S.AUTH_RESULT: _S,
    S.AUTH_CLIENT: _C,
    S.IDLE: _C,
    S.RESULT: _S,
    S.COLUMNS: _S,
    S.COLUMNS_EOF: _S,
    S.ROWS: _S,
    S.INFILE: _C,
    S.PREPARE: _S,
    S.PREPARE_PARAMS: _S,
    S.PREPARE_PARAMS_EOF: _S,
    S.PREPARE_COLUMNS: _S,
    S.PREPARE_COLUMNS_EOF: _S,
    S.FIELD_LIST: _S,
    S.STATISTICS: _S,
    S.SIMPLE: _S,
    S.CLOSED: None,
}

#: ``TRANSITIONS[state][kind]``: the next state. Special cases, each a table below or a line
#: in :mod:`.connection`: IDLE + COMMAND goes to :func:`reply_state`; counted states stay
#: until their last definition (:data:`COUNTED`); :data:`RESULT_ENDINGS` go back to RESULT
#: when the packet says more results exist; an EOF in COLUMNS_EOF whose status says a cursor
#: was opened ends the reply (rows come with COM_STMT_FETCH); in AUTH_RESULT, an ERR after
#: COM_CHANGE_USER goes to IDLE (the old user stays logged in) and caching_sha2's
#: "fast auth success" AuthMoreData stays in AUTH_RESULT (the OK follows).
TRANSITIONS: Final[Mapping[State, Mapping[PacketKind, State]]] = {
    S.GREETING: {K.GREETING: S.HANDSHAKE_RESPONSE, K.ERR: S.CLOSED},
    S.HANDSHAKE_RESPONSE: {K.SSL_REQUEST: S.TLS, K.HANDSHAKE_RESPONSE: S.AUTH_RESULT},
    S.TLS: {K.ERR: S.CLOSED},
    S.AUTH_RESULT: {
        K.OK: S.IDLE,
        K.ERR: S.CLOSED,
        K.AUTH_SWITCH_REQUEST: S.AUTH_CLIENT,
        K.AUTH_MORE_DATA: S.AUTH_CLIENT,
    },
    S.AUTH_CLIENT: {K.AUTH_DATA: S.AUTH_RESULT},
    S.IDLE: {K.COMMAND: S.IDLE},
    S.RESULT: {
        K.OK: S.IDLE,
        K.ERR: S.IDLE,
        K.PROGRESS: S.RESULT,
        K.LOCAL_INFILE_REQUEST: S.INFILE,
        K.COLUMN_COUNT: S.COLUMNS,
    },
    S.COLUMNS: {K.COLUMN_DEFINITION: S.COLUMNS},
    S.COLUMNS_EOF: {K.EOF: S.ROWS},
    S.ROWS: {K.ROW: S.ROWS, K.EOF: S.IDLE, K.OK: S.IDLE, K.ERR: S.IDLE},
    S.INFILE: {K.LOCAL_INFILE_DATA: S.INFILE, K.LOCAL_INFILE_END: S.RESULT},
    S.PREPARE: {K.PREPARE_OK: S.PREPARE_PARAMS, K.ERR: S.IDLE},
    S.PREPARE_PARAMS: {K.COLUMN_DEFINITION: S.PREPARE_PARAMS},
    S.PREPARE_PARAMS_EOF: {K.EOF: S.PREPARE_COLUMNS},
    S.PREPARE_COLUMNS: {K.COLUMN_DEFINITION: S.PREPARE_COLUMNS},
    S.PREPARE_COLUMNS_EOF: {K.EOF: S.IDLE},
    S.FIELD_LIST: {K.COLUMN_DEFINITION: S.FIELD_LIST, K.EOF: S.IDLE, K.OK: S.IDLE, K.ERR: S.IDLE},
    S.STATISTICS: {K.STATISTICS: S.IDLE},
    S.SIMPLE: {K.OK: S.IDLE, K.ERR: S.IDLE, K.EOF: S.IDLE, K.PROGRESS: S.SIMPLE},
    S.CLOSED: {},
}

#: States that take a known number of definitions, and where each goes after the last one:
#: ``(with EOF packets, with CLIENT_DEPRECATE_EOF)``. Entered with a count of 0, a counted
#: state is skipped the same way (its EOF too: no definitions, no EOF).
COUNTED: Final[Mapping[State, tuple[State, State]]] = {
    S.COLUMNS: (S.COLUMNS_EOF, S.ROWS),
    S.PREPARE_PARAMS: (S.PREPARE_PARAMS_EOF, S.PREPARE_COLUMNS),
    S.PREPARE_COLUMNS: (S.PREPARE_COLUMNS_EOF, S.IDLE),
}

#: ``(state, kind)`` pairs that end one result: with ``SERVER_MORE_RESULTS_EXISTS`` in the
#: packet's status the next state is RESULT (another result follows) instead of IDLE.
RESULT_ENDINGS: Final = frozenset({(S.RESULT, K.OK), (S.ROWS, K.EOF), (S.ROWS, K.OK)})

#: The state a command's reply starts in; any command not listed gets SIMPLE (OK | ERR | EOF:
#: an unknown command is answered "1047 Unknown command"). ``None``: no reply.
COMMAND_REPLY: Final[Mapping[int, State | None]] = {
    Command.QUIT: None,
    Command.QUERY: S.RESULT,
    Command.STMT_EXECUTE: S.RESULT,
    Command.STMT_BULK_EXECUTE: S.RESULT,
    Command.PROCESS_INFO: S.RESULT,
    Command.STMT_FETCH: S.ROWS,
    Command.STMT_PREPARE: S.PREPARE,
    Command.FIELD_LIST: S.FIELD_LIST,
    Command.STATISTICS: S.STATISTICS,
    Command.CHANGE_USER: S.AUTH_RESULT,
    Command.STMT_CLOSE: None,
    Command.STMT_SEND_LONG_DATA: None,
}


def reply_state(command: int) -> State | None:
    """The state a command's reply starts in (``None``: the command has no reply)."""
    return COMMAND_REPLY.get(command, S.SIMPLE)


def classify(state: State, payload: bytes, capabilities: int) -> PacketKind | None:
    """What ``payload`` is in ``state``, from its first byte and its length only.

    Args:
        state: the connection's state (the sender is :data:`SENDER`'s).
        payload: the whole (joined) payload.
        capabilities: the session's capabilities (after the handshake: the negotiated ones).

    Returns:
        The kind, or ``None`` when the packet cannot come in this state.
    """
    first = payload[0] if payload else None
    if state is S.ROWS:
        if not is_row_terminator(payload):
            return K.ROW
        if first == PacketHeader.ERR:
            return K.ERR
        return K.EOF if len(payload) <= EOF_MAX_SIZE else K.OK
    if state is S.COLUMNS or state is S.PREPARE_PARAMS or state is S.PREPARE_COLUMNS:
        return K.COLUMN_DEFINITION if payload else None
    if state is S.RESULT or state is S.SIMPLE:
        if first == PacketHeader.OK:
            return K.OK
        if first == PacketHeader.ERR:
            if is_progress_report(payload) and capabilities & Capability.MARIADB_PROGRESS:
                return K.PROGRESS
            return K.ERR
        if state is S.SIMPLE:
            if first == PacketHeader.EOF:
                return K.EOF if len(payload) <= EOF_MAX_SIZE else K.OK
            return None
        if first == PacketHeader.LOCAL_INFILE:
            return K.LOCAL_INFILE_REQUEST
        if first is None or first == PacketHeader.EOF:
            return None
        return K.COLUMN_COUNT
    if state is S.IDLE:
        return K.COMMAND if payload else None
    if state in (S.COLUMNS_EOF, S.PREPARE_PARAMS_EOF, S.PREPARE_COLUMNS_EOF):
        return K.EOF if first == PacketHeader.EOF and len(payload) <= EOF_MAX_SIZE else None
    if state is S.FIELD_LIST:
        if is_row_terminator(payload):
            if first == PacketHeader.ERR:
                return K.ERR
            return K.EOF if len(payload) <= EOF_MAX_SIZE else K.OK
        return K.COLUMN_DEFINITION if payload else None
    if state is S.INFILE:
        return K.LOCAL_INFILE_DATA if payload else K.LOCAL_INFILE_END
    if state is S.PREPARE:
        if first == PacketHeader.OK:
            return K.PREPARE_OK
        return K.ERR if first == PacketHeader.ERR else None
    if state is S.AUTH_RESULT:
        if first == PacketHeader.OK:
            return K.OK
        if first == PacketHeader.ERR:
            return K.ERR
        if first == PacketHeader.EOF:
            return K.AUTH_SWITCH_REQUEST
        if first == PacketHeader.AUTH_MORE_DATA:
            return K.AUTH_MORE_DATA
        return None
    if state is S.AUTH_CLIENT:
        return K.AUTH_DATA
    if state is S.STATISTICS:
        return K.STATISTICS
    if state is S.GREETING:
        if first == 0x0A:
            return K.GREETING
        return K.ERR if first == PacketHeader.ERR else None
    if state is S.HANDSHAKE_RESPONSE:
        if len(payload) == SSL_REQUEST_SIZE:
            return K.SSL_REQUEST
        return K.HANDSHAKE_RESPONSE if len(payload) > SSL_REQUEST_SIZE else None
    if state is S.TLS:
        return K.ERR if first == PacketHeader.ERR else None
    return None


def keeps_auth_turn(auth_plugin: str | None, data: bytes) -> bool:
    """Whether an AuthMoreData leaves the server's turn: caching_sha2_password's "fast auth
    success" (0x03) is followed by the server's OK, not by client data."""
    return auth_plugin == AuthPlugin.CACHING_SHA2_PASSWORD and data == bytes(
        (CACHING_SHA2_FAST_AUTH_SUCCESS,)
    )
