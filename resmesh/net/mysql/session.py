"""The driver of one MySQL client connection: the server side of the login, then each command
governed as a call and forwarded on the session's own backend connection.

The login: the gateway greets the client (protocol 10, mysql_native_password, or
caching_sha2_password as ``mysql.auth_plugin`` says; a client that asks for another plugin is
switched to mysql_native_password), checks the gateway user (``users:`` that list the
cluster), then takes a connection of the primary's pool for the session (the node's breaker is
asked first: :meth:`~resmesh.policies.chain.ClusterPolicies.refuses`). A database the client
names at login is the backend connection's: the node says if it does not exist.

Each command is a :class:`~resmesh.call.Call` whose operation is the SQL verb of a COM_QUERY
(every statement of a multi-statement query is looked at: one that writes makes the call a
write), the statement's verb for COM_STMT_EXECUTE, or the command's name (``COM_PING``...). It
passes the degrade switch and the limits, then goes to the node, counted for it by the
policies (:meth:`~resmesh.policies.engine.HAEngine.execute_pinned`'s accounting).

How a reply is relayed, and why: the command goes to the node with the client's own sequence
ids, so the node's reply bytes are what the client expects, and each chunk read from the node
is sent to the client as it came, in one send (one chunk in memory at a time, however large
the result). :class:`~resmesh.protocols.mysql.relay.ReplyScanner` finds where the reply ends
and reads only its first packet, its terminators, status flags and ERR
(https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_com_query_response.html); it
replaced decoding every row into an event and encoding it again, which cost ~70% of the
gateway's CPU (``bench/README.md``, MySQL).

Where it runs: like a Redis session (:class:`~resmesh.net.runtime.ClientSession`), a session
is dispatched to the cluster's poller while it waits for a command. The poller's task reads
the client, sends a command that needs no waiting to the node (:meth:`MySQLSession.handle_nowait`)
and relays the reply as the node's socket becomes readable (the node's socket is registered
with the poller too), so a plain command wakes no task at all; a reply the client reads
slower than the node sends goes to a writer task. Anything else (a degrade switch, a large
command, the node speaking out of turn, a broken connection) is handed back to the session's
task, which does it the plain way.

What a degrade switch does: ``error`` refuses every data command with ERR 1105 naming the
switch; ``readonly`` refuses writes with ERR 1290 (HY000) and serves reads; ``miss`` answers a
query or an execution with an OK packet (no rows, nothing changed) and lets prepares through;
``fallback`` answers a query that reads with its value as a one-row, one-column result set
(``value``), and a write or an execution as ``miss`` does. Commands about the
session (COM_PING, COM_INIT_DB, COM_STMT_CLOSE, COM_RESET_CONNECTION...) and queries made only
of session statements (``SET``, ``USE``, ``BEGIN``/``COMMIT``/``ROLLBACK``...: a client
library's ``SET NAMES`` at connect) are never switched.

The session keeps its backend connection (prepared statement ids are the node's, and
transactions, variables and temporary tables live there); when it ends the connection is
reset (COM_RESET_CONNECTION) and goes back to the pool. COM_CHANGE_USER ends it the same way
and takes a connection for the new login (:meth:`MySQLSession._change_user`). Two things
leave it: a read that may run anywhere goes to the balancer's node on a connection lent for it
(by the poller's task when one is at hand, :meth:`MySQLSession._lend_nowait`; else by the
session's, :meth:`MySQLSession._read_elsewhere`), and a new primary takes the session at a
safe point (:meth:`MySQLSession._follow_primary`); :mod:`~resmesh.net.mysql.reads` says when.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from ...call import Operation, Outcome, Unavailable
from ...config.mysql import READ_VERBS, SESSION_VERBS, SQL_VERBS, MySQLAuthPlugin
from ...observe.metrics import Refusal
from ...policies.limit import Limiter
from ...policies.switch import SwitchAction, SwitchDecision, SwitchMode
from ...protocols.mysql import NEED_DATA, PAUSED, Connection, MySQLLocalError, Role
from ...protocols.mysql.auth import (
    caching_sha2_hash,
    decrypt_password_rsa,
    native_password_hash,
    new_scramble,
    verify_caching_sha2,
    verify_native_password,
)
from ...protocols.mysql.commands import decode_change_user
from ...protocols.mysql.constants import (
    DEFAULT_CHARSET,
    AuthPlugin,
    Capability,
    ColumnType,
    Command,
    ServerStatus,
)
from ...protocols.mysql.errors import (
    ErrorInfo,
    MySQLRemoteError,
    access_denied,
    bad_handshake,
    dbaccess_denied,
    error_info,
    not_supported_auth_mode,
    unknown_command,
)
from ...protocols.mysql.events import (
    AuthData,
    ClientHandshake,
    CommandEvent,
    ConnectionClosed,
    Err,
    Event,
    TlsRequest,
)
from ...protocols.mysql.handshake import (
    AuthMoreData,
    AuthSwitchRequest,
    InitialHandshake,
    encode_auth_more_data,
    encode_auth_switch_request,
    encode_initial_handshake,
)
from ...protocols.mysql.relay import ReplyEnd, ReplyKind
from ...protocols.mysql.results import (
    ColumnCount,
    ColumnDefinition,
    EofPacket,
    ErrPacket,
    OkPacket,
    encode_column_count,
    encode_column_definition,
    encode_eof,
    encode_err,
    encode_ok,
    encode_text_row,
)
from ...protocols.mysql.statements import LAST_STATEMENT_ID, peek_statement_id
from ..runtime import READ_YOUR_WRITES, ClientSession, Waiting
from ..sockio import RECV_SIZE
from .backend import LAYOUT, BackendConnection, BackendLoginError, PoolKey
from .reads import SessionSettings, reads_anywhere
from .sql import leads_to_write, request_id_of, statement_verbs

if TYPE_CHECKING:
    from ...cluster.topology import Node
    from ..transport import ClientTransport
    from .runtime import MySQLRuntime

__all__ = ["SERVER_CAPABILITIES", "MySQLSession", "outcome_of", "outcome_of_reply"]

#: COM_QUERY's first byte: the command whose text may carry a request id comment.
_QUERY_BYTE: Final = bytes([Command.QUERY])

#: caching_sha2_password's AuthMoreData payloads, and the client's request for the key.
_FAST_AUTH_SUCCESS: Final = b"\x03"
_PERFORM_FULL_AUTH: Final = b"\x04"
_REQUEST_PUBLIC_KEY: Final = b"\x02"

log = logging.getLogger(__name__)

#: What the gateway's greeting offers: the layout capabilities a MariaDB or MySQL node has,
#: and the login's. Not TLS, compression, LOCAL INFILE nor MariaDB's extensions; ``CLIENT_MYSQL``
#: is set, so clients send no MariaDB extended capabilities.
SERVER_CAPABILITIES: Final = (
    LAYOUT
    | Capability.LONG_PASSWORD
    | Capability.CONNECT_WITH_DB
    | Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.CONNECT_ATTRS
)

#: ERR numbers that are the node's fault (it is overloaded, shutting down, read-only,
#: out of resources, or lost the query): they count against it. Any other ERR is the caller's.
UPSTREAM_ERRNOS: Final = frozenset(
    {
        1021,  # disk full
        1037,  # out of memory
        1038,  # out of sort memory
        1040,  # too many connections
        1041,  # out of memory (thread stack)
        1053,  # server shutdown in progress
        1077,  # normal shutdown
        1078,  # got signal
        1079,  # shutdown complete
        1080,  # forcing close of thread
        1152,  # aborted connection
        1158,  # error reading communication packets
        1159,  # timeout reading communication packets
        1160,  # error writing communication packets
        1161,  # timeout writing communication packets
        1184,  # aborted new connection
        1203,  # max_user_connections
        1290,  # --read-only
        1836,  # read-only mode
        1927,  # connection killed
        2002,
        2003,
        2006,  # server has gone away
        2013,  # lost connection during query
    }
)

#: Commands refused here: they would act on the gateway's own backend login or on the node as
#: a whole (replication, shutdown, another connection's thread).
_REFUSED: Final = frozenset(
    {
        Command.BINLOG_DUMP,
        Command.BINLOG_DUMP_GTID,
        Command.REGISTER_SLAVE,
        Command.TABLE_DUMP,
        Command.SHUTDOWN,
        Command.PROCESS_KILL,
        Command.CONNECT,
        Command.CONNECT_OUT,
        Command.DAEMON,
        Command.DELAYED_INSERT,
        Command.TIME,
        Command.SLEEP,
        Command.CREATE_DB,
        Command.DROP_DB,
        Command.STMT_BULK_EXECUTE,
    }
)
#: Commands a degrade switch applies to (the others are about the session, not data).
_SWITCHABLE: Final = frozenset(
    {
        Command.QUERY,
        Command.STMT_PREPARE,
        Command.STMT_EXECUTE,
        Command.STMT_FETCH,
        Command.FIELD_LIST,
    }
)
#: Commands that get no reply.
_NO_REPLY: Final = frozenset({Command.STMT_CLOSE, Command.STMT_SEND_LONG_DATA})
#: Commands the session's task handles (the poller's task sends only commands with a reply).
_SLOW: Final = _REFUSED | _NO_REPLY | {Command.QUIT, Command.CHANGE_USER}
#: The largest command the poller's task sends: an idle connection's socket takes it whole.
_NOWAIT_MAX: Final = 8192
#: Reads of the node's reply per poller round before the other clients get their turn.
_READS_PER_TURN: Final = 4
_NO_INFILE: Final = "LOAD DATA LOCAL INFILE is not supported"
#: Statements whose success changes what another node must repeat of the session.
_SETTLED: Final = frozenset({"SET", "USE", "LOCK", "CREATE", "PREPARE", "CALL"})
#: Operation names of commands that carry no SQL.
_COMMAND_NAMES: Final = {command: f"COM_{command.name}" for command in Command}


def outcome_of(event: Event) -> Outcome:
    """How the last packet of a reply counts for its node."""
    if isinstance(event, Err):
        return Outcome.UPSTREAM_ERROR if event.error.errno in UPSTREAM_ERRNOS else Outcome.APP_ERROR
    return Outcome.OK


def outcome_of_reply(end: ReplyEnd) -> Outcome:
    """How a relayed reply counts for its node: by the ERR that ended it, if one did."""
    error = end.error
    if error is None:
        return Outcome.OK
    return Outcome.UPSTREAM_ERROR if error.errno in UPSTREAM_ERRNOS else Outcome.APP_ERROR


class _Rejected:
    """A command the limiter refused in the poller's task: the session's task answers it."""

    __slots__ = ("error",)

    def __init__(self, error: ErrorInfo) -> None:
        self.error = error


class _Ended:
    """A node other than the session's failed in the middle of a reply (the poller's
    task hands this to the session's task): the session ends, its own connection kept."""

    __slots__ = ("failure",)

    def __init__(self, failure: Unavailable) -> None:
        self.failure = failure


class _Closing(Exception):
    """The session ends (the client left, broke the protocol, or its backend was lost)."""


class MySQLSession(ClientSession):
    """One MySQL client: login, then a governed command loop on its own backend connection."""

    runtime: MySQLRuntime

    def __init__(self, runtime: MySQLRuntime, transport: ClientTransport, client_id: int):
        super().__init__(runtime, transport, client_id)
        self.conn = Connection(Role.SERVER, max_payload=runtime.settings.max_allowed_packet)
        self.backend: BackendConnection | None = None
        self.username = ""
        #: The limits of the logged-in user (``users.NAME.limit``), if any.
        self._user_limiter: Limiter | None = None
        #: The verb-level operation of each prepared statement, by the node's statement id.
        self._statements: dict[int, Operation] = {}
        self._preparing: Operation | None = None
        #: Whether the query being handled only changes session state (never switched).
        self._session_only = False
        #: Whether the session changed its database (the connection's pool key names the one
        #: it logged in with).
        self._db_changed = False
        #: What a node other than the session's must repeat to run one of its reads.
        self._settings = SessionSettings()
        #: The statements of the query in flight, when its success changes :attr:`_settings`
        #: (``SET``, ``USE``...): SQL and verbs; or a COM_INIT_DB's database name.
        self._noting: tuple[bytes, list[str]] | str | None = None
        #: The statements of the query being handled (COM_QUERY only).
        self._verbs: list[str] = []
        #: Reads stay on the session's node until then, after a write (replicas lag).
        self._reads_home_until = 0.0
        #: Whether the command the poller's task relays is a write (:meth:`_writes`).
        self._wrote = False
        #: The node the poller's task chose for a read it handed to the session's task.
        self._read_on: Node | None = None
        #: A connection of another node lent for the read in flight (the stall sweep's).
        self.lent: BackendConnection | None = None
        #: The connection whose reply the poller's task relays: :attr:`backend`, or
        #: :attr:`lent` for a read on another node (registered with the poller for it).
        self._replying: BackendConnection | None = None
        self._lent_fd = -1
        self._lent_reader = self._on_lent_readable
        #: The command the poller's task sent on a lent connection: the session's task runs
        #: it on the session's own node if that connection fails before any reply byte.
        self._lent_event: CommandEvent | None = None
        #: The next command runs on the session's own node (its read elsewhere failed).
        self._read_home = False
        self._out: list[bytes] = []
        self._out_size = 0
        # Dispatched (see ClientSession): the poller's task reads the client, sends a command
        # that needs no waiting to the node and relays the reply as the node's socket
        # becomes readable (:meth:`_on_backend_readable`); no task wakes for either.
        #: Whether a command sent by the poller's task awaits (the rest of) its reply.
        self._inflight = False
        #: What the session's task must carry on with (see :meth:`_carry_on`).
        self._handed: object = None
        #: The in-flight command's operation, start time, bytes sent and relayed back, and
        #: the app's request id (for the metrics and the access log).
        self._op: Operation | None = None
        self._started = 0.0
        self._sent = 0
        self._received = 0
        self._request_id: str | None = None
        #: The reply's end, when its last bytes wait for the writer task.
        self._ended: ReplyEnd | None = None
        #: Reply bytes the client's socket did not take (the writer task writes them).
        self._unsent: bytes | memoryview | None = None
        #: Whether the poller saw the node's socket readable with no reply in flight.
        self._node_spoke = False
        #: The backend socket's registration with the poller (-1: none).
        self._backend_fd = -1
        self._backend_reader = self._on_backend_readable
        self._clock = trio.lowlevel.current_clock()
        host = transport.peer.rsplit(":", 1)[0] if ":" in transport.peer else transport.peer
        self.host = host.strip("[]") or "localhost"

    # ----------------------------------------------------------------------------------------
    # The client's side

    async def _client_event(self) -> Event:
        """The client's next event.

        Raises:
            _Closing: the client left, or broke the protocol (it was told why).
        """
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except MySQLRemoteError as exc:
                await self._fatal(exc.error)
                raise _Closing from None
            if event is NEED_DATA:
                try:
                    data = await self.next_input()
                except OSError:
                    data = b""
                try:
                    conn.receive_data(data)
                except MySQLRemoteError as exc:
                    await self._fatal(exc.error)
                    raise _Closing from None
                continue
            if event is PAUSED:
                raise _Closing  # cannot happen: the session answers every command
            if isinstance(event, ConnectionClosed):
                raise _Closing
            return event

    def _queue(self, payload: bytes) -> None:
        """Frame a packet for the client (the codec checks it and numbers it)."""
        wire = self.conn.send(payload)
        self._out.append(wire)
        self._out_size += len(wire)

    async def _flush(self) -> None:
        if not self._out:
            return
        data = b"".join(self._out) if len(self._out) > 1 else self._out[0]
        self._out.clear()
        self._out_size = 0
        try:
            await self.transport.send_all(data)
        except OSError:
            raise _Closing from None

    async def _reply_error(self, error: ErrorInfo) -> None:
        self._queue(encode_err(ErrPacket.from_info(error), int(self.conn.capabilities)))
        await self._flush()

    async def _fatal(self, error: ErrorInfo) -> None:
        """An ERR packet in any state, then the connection closes."""
        self._out.clear()
        self._out_size = 0
        try:
            wire = self.conn.send_fatal_error(error)
        except MySQLLocalError:
            return
        with contextlib.suppress(OSError):
            await self.transport.send_all(wire)

    # ----------------------------------------------------------------------------------------
    # The session

    async def serve(self) -> None:
        runtime = self.runtime
        try:
            if not await self._login():
                return
            while not runtime.draining:
                if self._dispatchable():
                    if self._serve_buffered() and not await self.dispatch():
                        return  # the client left
                    await self._carry_on()
                    continue
                event = await self._client_event()
                if not isinstance(event, CommandEvent):
                    await self._fatal(bad_handshake())
                    return
                if event.command == Command.QUIT:
                    return
                await self._command(event)
        except _Closing:
            pass
        finally:
            await self._release()

    async def _release(self) -> None:
        backend, self.backend = self.backend, None
        if backend is None:
            return
        self._unregister_backend(backend)
        replying = self._replying
        if self._inflight and replying is not None:
            # The client left in the middle of a reply: the rest of it is still coming.
            self._inflight = False
            self._replying = None
            replying.broken = True
            replying.parked = False
            self.runtime.policies.abandon(replying.node, False)
            self._limit_done()
            if replying is not backend:
                self._return_lent(replying, reusable=False)
        pool = self.runtime.pools.get(backend.node)
        if pool is None:  # its node left the cluster
            backend.close()
            return
        with trio.CancelScope(shield=True):
            await pool.release(backend, database_changed=self._db_changed)

    async def _login(self) -> bool:
        """Greet the client, check its login, take a backend connection and say OK; ``False``
        when the client was refused (and told why) or left."""
        runtime = self.runtime
        scramble = new_scramble()
        greeting = InitialHandshake(
            server_version=runtime.settings.server_version,
            connection_id=self.id & 0xFFFFFFFF,
            auth_plugin_data=scramble,
            capabilities=Capability(SERVER_CAPABILITIES),
            charset=DEFAULT_CHARSET,
            status=ServerStatus.AUTOCOMMIT,
            auth_plugin_name=str(runtime.settings.auth_plugin),
        )
        self._queue(encode_initial_handshake(greeting))
        await self._flush()
        event = await self._client_event()
        if isinstance(event, TlsRequest) or not isinstance(event, ClientHandshake):
            await self._fatal(bad_handshake())
            return False
        response = event.response
        self.username = response.username
        auth = response.auth_response
        plugin = response.auth_plugin_name
        capabilities = int(self.conn.capabilities)
        sha2 = (
            plugin == AuthPlugin.CACHING_SHA2_PASSWORD.value
            and runtime.settings.auth_plugin is MySQLAuthPlugin.CACHING_SHA2_PASSWORD
            and bool(capabilities & Capability.PLUGIN_AUTH)
        )
        if sha2:
            if not await self._caching_sha2(scramble, auth):
                return False
        elif plugin not in (None, AuthPlugin.NATIVE_PASSWORD.value) or (
            plugin is None and not capabilities & Capability.SECURE_CONNECTION
        ):
            if not capabilities & Capability.PLUGIN_AUTH:
                await self._fatal(not_supported_auth_mode())
                return False
            switched = await self._native_switch()
            if switched is None:
                return False
            scramble, auth = switched
        if not sha2 and not self._native_password_matches(self.username, scramble, auth):
            await self._fatal(access_denied(self.username, self.host, using_password=bool(auth)))
            return False
        return await self._start(
            PoolKey(capabilities & LAYOUT, response.charset, response.database)
        )

    async def _start(self, key: PoolKey) -> bool:
        """Take a backend connection for a login (or a COM_CHANGE_USER) and tell the client
        OK; ``False`` when none could be had (the client was told why)."""
        failure = await self._take_backend(key)
        if failure is not None:
            await self._fatal(failure)
            return False
        assert self.backend is not None
        self._user_limiter = self.runtime.user_limiters.get(self.username)
        self._settings.reset(key.database)
        self.backend.scanner.last_insert_id = 0  # the pool reset the connection
        status = self.backend.conn.status & (ServerStatus.AUTOCOMMIT | ServerStatus.IN_TRANS)
        self._queue(encode_ok(OkPacket(status=ServerStatus(status)), int(self.conn.capabilities)))
        await self._flush()
        return True

    async def _native_switch(self) -> tuple[bytes, bytes] | None:
        """Ask the client to answer mysql_native_password over a fresh scramble: the
        scramble and the answer, or ``None`` when it answered something else (it was told;
        the connection ends)."""
        scramble = new_scramble()
        switch = AuthSwitchRequest(AuthPlugin.NATIVE_PASSWORD.value, scramble + b"\x00")
        self._queue(encode_auth_switch_request(switch))
        await self._flush()
        answer = await self._client_event()
        if not isinstance(answer, AuthData):
            await self._fatal(bad_handshake())
            return None
        return scramble, answer.data

    def _native_password_matches(self, user: str, scramble: bytes, auth: bytes) -> bool:
        """Whether ``auth`` is ``user``'s password scrambled with ``scramble``
        (mysql_native_password), for a gateway user allowed on the cluster."""
        password = self.runtime.passwords.get(user)
        return password is not None and verify_native_password(
            native_password_hash(password.encode()), scramble, auth
        )

    async def _caching_sha2(self, scramble: bytes, auth: bytes) -> bool:
        """caching_sha2_password's login, as a MySQL 8 server runs it
        (https://dev.mysql.com/doc/dev/mysql-server/latest/page_caching_sha2_authentication_exchanges.html):
        the fast path (the SHA-256 scramble checked, "fast auth success") for a user who has
        logged in fully since the gateway started, else the full authentication: the client
        asks for the gateway's RSA public key and sends its password encrypted with it (a
        password in clear would need TLS, which this gateway does not offer: refused).
        Whether the login succeeded (a refused client was told why)."""
        runtime = self.runtime
        user = self.username
        password = runtime.passwords.get(user)
        if (
            password is not None
            and user in runtime.sha2_verified
            and verify_caching_sha2(caching_sha2_hash(password.encode()), scramble, auth)
        ):
            self._queue(encode_auth_more_data(AuthMoreData(_FAST_AUTH_SUCCESS)))
            return True
        if password is not None and not password and not auth:
            return True  # an empty password: nothing to send over
        self._queue(encode_auth_more_data(AuthMoreData(_PERFORM_FULL_AUTH)))
        await self._flush()
        answer = await self._client_event()
        if isinstance(answer, AuthData) and answer.data == _REQUEST_PUBLIC_KEY:
            key = await runtime.rsa_key()
            self._queue(encode_auth_more_data(AuthMoreData(key.public_key.to_pem().encode())))
            await self._flush()
            answer = await self._client_event()
            if not isinstance(answer, AuthData):
                await self._fatal(bad_handshake())
                return False
            try:
                given = decrypt_password_rsa(answer.data, scramble, key)
            except ValueError:
                given = None
        else:
            given = None  # a password in clear, or nothing: not over a plain connection
        if password is None or given is None or not hmac.compare_digest(given, password.encode()):
            await self._fatal(access_denied(user, self.host, using_password=True))
            return False
        runtime.sha2_verified.add(user)
        return True

    async def _change_user(self, payload: bytes) -> None:
        """COM_CHANGE_USER: log in again, as a gateway user allowed on the cluster.

        The password is checked over a fresh scramble (an auth switch to
        mysql_native_password, whatever plugin the client names: the same rule as the login),
        then the session starts afresh: its backend connection goes back to the pool (reset)
        and it takes one for the new login and database, so nothing of the old session (its
        transaction, variables, temporary tables, prepared statements) survives, as on a
        MariaDB server (https://mariadb.com/kb/en/com_change_user/). A refused login ends
        the connection.

        Raises:
            _Closing: the new login was refused, or no backend connection could be had.
        """
        capabilities = int(self.conn.capabilities)
        try:
            change = decode_change_user(payload, capabilities)
        except MySQLRemoteError as exc:
            await self._fatal(exc.error)
            raise _Closing from None
        switched = await self._native_switch()
        if switched is None:
            raise _Closing
        scramble, auth = switched
        if not self._native_password_matches(change.username, scramble, auth):
            denied = access_denied(change.username, self.host, using_password=bool(auth))
            await self._fatal(denied)
            raise _Closing
        self.username = change.username
        previous = self.backend.key if self.backend is not None else None
        await self._release()
        self._statements.clear()
        self._db_changed = False
        charset = change.charset
        if charset is None:
            charset = previous.charset if previous is not None else DEFAULT_CHARSET
        if not await self._start(PoolKey(capabilities & LAYOUT, charset, change.database or None)):
            raise _Closing

    async def _take_backend(self, key: PoolKey) -> ErrorInfo | None:
        """Take a connection of the primary's pool; what to tell the client if none."""
        runtime = self.runtime
        node = runtime.home
        refusal = runtime.policies.refuses(node, trio.current_time())
        if refusal is not None:
            return _unavailable(Unavailable(node.address, refusal, Outcome.REJECTED))
        pool = runtime.pool(node)
        try:
            self.backend = await runtime.engine.execute_pinned(
                node, lambda: pool.acquire(key), lambda _: Outcome.OK
            )
        except Unavailable as exc:
            if exc.outcome is Outcome.REJECTED:
                return error_info(1040, f"Too many connections (resmesh: {exc})")
            return _unavailable(exc)
        except BackendLoginError as exc:
            error = exc.error
            if error.errno == 1044 and key.database is not None:
                # The node's words name the gateway's login: say them of the app's.
                return dbaccess_denied(self.username, self.host, key.database)
            if error.errno == 1045:  # the gateway's own backend login
                log.warning(
                    "cluster %s: node %s refused the gateway's login: %s",
                    runtime.name,
                    node.address,
                    exc,
                )
                return error_info(1045, f"resmesh: the node {node.address} refused the login")
            return error.info
        return None

    # ----------------------------------------------------------------------------------------
    # Commands

    def _operation(self, command: Command | int, payload: bytes) -> Operation:
        runtime = self.runtime
        self._session_only = False
        self._noting = None
        if command == Command.QUERY:
            escapes = self._backslash_escapes()
            verbs, more = statement_verbs(payload[1:], backslash_escapes=escapes)
            self._verbs = verbs
            self._settings.backslash_escapes = escapes
            self._settings.ran_at_home(payload)
            if not verbs:
                return runtime.operation("OTHER", write=more)
            names = [verb if verb in SQL_VERBS else "OTHER" for verb in verbs]
            write = (
                more
                or any(name not in READ_VERBS for name in names)
                or leads_to_write(names, payload)
            )
            if "USE" in names:
                self._db_changed = True
            if not _SETTLED.isdisjoint(names):
                self._noting = (payload[1:], names)
            self._session_only = not more and all(name in SESSION_VERBS for name in names)
            return runtime.operation(names[0], write=write)
        if command == Command.STMT_EXECUTE or command == Command.STMT_FETCH:
            statement = peek_statement_id(payload)
            op = self._statements.get(statement if statement is not None else -1)
            if op is not None:
                return op
            return runtime.operation(_COMMAND_NAMES[Command.STMT_EXECUTE], write=True)
        if command == Command.STMT_PREPARE:
            verbs, more = statement_verbs(payload[1:], backslash_escapes=self._backslash_escapes())
            names = [verb if verb in SQL_VERBS else "OTHER" for verb in verbs] or ["OTHER"]
            write = (
                more
                or any(name not in READ_VERBS for name in names)
                or leads_to_write(names, payload)
            )
            self._preparing = runtime.operation(names[0], write=write)
            if not _SETTLED.isdisjoint(names):
                self._settings.home_only = "a prepared statement that changes the session"
        if command == Command.INIT_DB:
            self._db_changed = True
            self._noting = payload[1:].decode("utf-8", "replace")
        name = (
            _COMMAND_NAMES.get(command, "COM_UNKNOWN")
            if isinstance(command, Command)
            else ("COM_UNKNOWN")
        )
        return runtime.operation(name, write=False)

    async def _command(self, event: CommandEvent) -> None:
        command = event.command
        payload = event.packet.payload
        # Where the poller's task chose to run this command: for this command only, whatever
        # happens to it (refused, switched, limited).
        read_on, self._read_on = self._read_on, None
        read_home, self._read_home = self._read_home, False
        if command in _REFUSED:
            await self._reply_local(unknown_command())
            return
        if command == Command.CHANGE_USER:
            await self._change_user(payload)
            return
        backend = self.backend
        assert backend is not None
        if backend.node.address != self.runtime.home.address:
            backend = await self._follow_primary(backend)
        self._node_spoke = False
        if backend.readable_now():
            # An idle node speaks only to say it is closing (KILL, shutdown, wait_timeout):
            # the command would get that goodbye as its reply.
            await self._lost(Unavailable(backend.node.address, "the node closed the connection"))
        if command in _NO_REPLY:
            if command == Command.STMT_CLOSE:
                statement = peek_statement_id(payload)
                if statement is not None:
                    self._statements.pop(statement, None)
            await self._forward_quietly(backend, payload)
            return
        op = self._operation(command, payload)
        policies = self.runtime.policies
        if command in _SWITCHABLE and policies.switchboard.active and not self._session_only:
            decision = policies.decide(op.name, op.write)
            if decision is not None and (
                decision.action is SwitchAction.ERROR
                or command in (Command.QUERY, Command.STMT_EXECUTE)
            ):
                await self._degraded(decision, command, op)
                return
        refusal = self._admit(op, trio.current_time())
        if refusal is not None:
            await self._reply_local(refusal)
            return
        try:
            now = trio.current_time()
            node = read_on
            if node is None and not read_home:
                node = self._read_node(command, op, payload, now)
            if node is None or not await self._read_elsewhere(node, payload, op):
                writes = self._writes(op)
                try:
                    await self._forward(backend, payload, command, op)
                finally:
                    if writes:  # from when the node answered (or failed)
                        self._reads_home_until = trio.current_time() + READ_YOUR_WRITES
        finally:
            self._noting = None
            self._admission_done(op.name)

    def _admit(self, op: Operation, now: float) -> ErrorInfo | None:
        """Admit a command under the cluster's limits, then its user's
        (``users.NAME.limit``); what to answer (1203) when one refuses it."""
        policies = self.runtime.policies
        limiter = policies.limiter
        rejection = limiter.admit(op.name, now) if limiter is not None else None
        user = self._user_limiter
        if rejection is None and user is not None:
            rejection = user.admit(op.name, now)
            if rejection is not None and limiter is not None:
                limiter.done(op.name)
        if rejection is None:
            return None
        if policies.metrics is not None:
            policies.metrics.refused(op.name, Refusal.LIMIT)
        return error_info(1203, f"resmesh: {rejection}")

    def _admission_done(self, operation: str) -> None:
        """A command :meth:`_admit` let through has finished."""
        limiter = self.runtime.policies.limiter
        if limiter is not None:
            limiter.done(operation)
        if self._user_limiter is not None:
            self._user_limiter.done(operation)

    async def _follow_primary(self, backend: BackendConnection) -> BackendConnection:
        """The cluster's primary is no longer the session's node (an operator moved it, or
        the node left): between transactions, the session moves to the primary's pool with
        its database and settings; in a transaction it stays until the transaction ends.

        Raises:
            _Closing: the session holds state that cannot move (user variables, named
                locks, prepared statements, a temporary table...), or the primary could not
                take it; the client was told why (ERR 1927: reconnect).
        """
        if backend.conn.status & ServerStatus.IN_TRANS:
            return backend
        runtime = self.runtime
        home = runtime.home
        settings = self._settings
        why = settings.unmovable or settings.home_only
        if why is None and self._statements:
            why = "prepared statements"
        if why is None and settings.next_transaction:
            why = "a SET TRANSACTION waiting for its transaction"
        if why is not None:
            await self._fatal(_must_reconnect(home, f"its state cannot move: {why}"))
            raise _Closing
        key = self._key_elsewhere(backend)
        statements = settings.statements
        if not backend.conn.status & ServerStatus.AUTOCOMMIT:
            statements = (*statements, b"SET autocommit = 0")
        if backend.scanner.last_insert_id:
            statements = (*statements, b"DO LAST_INSERT_ID(%d)" % backend.scanner.last_insert_id)
        pool = runtime.pool(home)
        try:
            moved = await runtime.engine.execute_pinned(
                home, lambda: pool.lend(key, statements), lambda _: Outcome.OK, timed=False
            )  # a connect's time says nothing of how fast the node answers
        except (Unavailable, BackendLoginError) as exc:
            await self._fatal(_must_reconnect(home, f"the primary cannot take it: {exc}"))
            raise _Closing from None
        moved.settings = ()  # a session's own from now on, reset when it goes back
        moved.scanner.last_insert_id = backend.scanner.last_insert_id
        log.info(
            "client %s: moved from %s to the primary %s",
            self.transport.peer,
            backend.node.address,
            home.address,
        )
        # Closed, not reset for its pool: the old primary may be the node that hangs.
        self._unregister_backend(backend)
        old_pool = runtime.pools.get(backend.node)
        if old_pool is not None:
            old_pool.discard(backend)
        else:
            backend.close()
        self.backend = moved
        self._db_changed = False
        return moved

    def _read_node(
        self, command: Command | int, op: Operation, payload: bytes, now: float
    ) -> Node | None:
        """The node to run a read on when it is not the session's own (the balancer's
        choice); ``None`` keeps the command on the session's connection. A read goes
        elsewhere only outside a transaction, in autocommit mode, not within
        :data:`~resmesh.net.runtime.READ_YOUR_WRITES` of the session's last write, and when
        nothing in it or in the session's state belongs to the session's connection
        (:mod:`~resmesh.net.mysql.reads`)."""
        policies = self.runtime.policies
        backend = self.backend
        if (
            command != Command.QUERY
            or not op.idempotent
            or not policies.spreads_reads
            or backend is None
            or now < self._reads_home_until
            or self._settings.home_only is not None
        ):
            return None
        status = backend.conn.status
        if status & ServerStatus.IN_TRANS or not status & ServerStatus.AUTOCOMMIT:
            return None
        settings = self._settings
        if settings.next_transaction:
            settings.next_transaction = False  # this one takes the SET TRANSACTION
            return None
        if not reads_anywhere(payload[1:], self._verbs, settings.backslash_escapes):
            return None
        node = policies.pick(now)
        return node if node is not None and node is not backend.node else None

    def _backslash_escapes(self) -> bool:
        """Whether a backslash escapes in the session's string literals (the node's status
        flags say when the ``NO_BACKSLASH_ESCAPES`` SQL mode is on)."""
        backend = self.backend
        return backend is None or not backend.conn.status & ServerStatus.NO_BACKSLASH_ESCAPES

    def _writes(self, op: Operation) -> bool:
        """Whether a command about to go to the session's node keeps the session's reads
        there for :data:`~resmesh.net.runtime.READ_YOUR_WRITES` once answered: a write, or
        anything in a transaction (its COMMIT included)."""
        backend = self.backend
        if backend is None:
            return False
        status = backend.conn.status
        return (
            op.write or bool(status & ServerStatus.IN_TRANS) or not status & ServerStatus.AUTOCOMMIT
        )

    async def _read_elsewhere(self, node: Node, payload: bytes, op: Operation) -> bool:
        """Run a read on ``node``, on a connection of its pool lent for it and given the
        session's database and settings; ``False`` when the node could not take it or gave no
        answer before any of it reached the client (the read then runs on the session's own
        node: nothing was relayed, so nothing is replayed).

        Raises:
            _Closing: the node failed in the middle of the reply (the client was told).
        """
        runtime = self.runtime
        home = self.backend
        assert home is not None
        pool = runtime.pool(node)
        key = self._key_elsewhere(home)
        settings = self._settings.statements
        try:
            conn = await runtime.engine.execute_pinned(
                node, lambda: pool.lend(key, settings), lambda _: Outcome.OK, timed=False
            )  # a connect's time says nothing of how fast the node answers
        except (Unavailable, BackendLoginError) as exc:
            log.info("cluster %s: a read could not go to %s: %s", runtime.name, node.address, exc)
            return False
        self.lent = conn
        self._received = 0
        calls = runtime.calls_of(op)
        relayed = False
        try:
            await runtime.engine.execute_pinned(
                node,
                lambda: self._relay(conn, payload, Command.QUERY),
                outcome_of_reply,
                calls=calls,
                sent=len(payload) + 4,
                received=lambda: self._received,
                request_id=self._request_id_of(payload),
                last_try=False,
            )
            relayed = True
        except Unavailable as exc:
            if self._received:
                await self._fatal(_unavailable(exc))
                raise _Closing from None
            self._retried_home(calls[0].op, home.node)
            return False
        except MySQLLocalError as exc:
            await self._unrelayable(exc)
        finally:
            self._return_lent(conn, reusable=relayed)
        return True

    def _retried_home(self, op: Operation, home: Node) -> None:
        """A read that failed on another node before any reply byte runs on the session's
        own node, ``home``: one retry there, in the metrics."""
        metrics = self.runtime.policies.metrics
        if metrics is not None:
            metrics.spread(op, home, retries=1, hedged=False, won=False)

    def _key_elsewhere(self, backend: BackendConnection) -> PoolKey:
        """What a connection of another node's pool must match to take this session's
        statements: its login's layout and charset, and its current database."""
        return PoolKey(backend.key.capabilities, backend.key.charset, self._settings.database)

    async def _unrelayable(self, exc: MySQLLocalError) -> NoReturn:
        """A reply the client's codec refuses to relay (a bug): the client is told, and the
        session ends."""
        log.error("client %s: reply cannot be relayed: %s", self.transport.peer, exc)
        await self._fatal(exc.error)
        raise _Closing from None

    async def _reply_local(self, error: ErrorInfo) -> None:
        try:
            await self._reply_error(error)
        except MySQLLocalError:
            await self._fatal(error)
            raise _Closing from None

    async def _degraded(
        self, decision: SwitchDecision, command: Command | int, op: Operation
    ) -> None:
        action = decision.action
        if action is SwitchAction.ERROR:
            errno = 1290 if decision.mode is SwitchMode.READONLY else 1105
            await self._reply_local(error_info(errno, decision.message))
            return
        status = self._status()
        capabilities = int(self.conn.capabilities)
        try:
            if action is SwitchAction.FALLBACK and command == Command.QUERY and not op.write:
                for payload in _value_result(decision.value or b"", status, capabilities):
                    self._queue(payload)
            else:  # miss, or a fallback's write or execution: nothing read, nothing changed
                self._queue(encode_ok(OkPacket(status=status), capabilities))
        except MySQLLocalError as exc:
            await self._fatal(exc.error)
            raise _Closing from None
        await self._flush()

    def _status(self) -> ServerStatus:
        backend = self.backend
        status = backend.conn.status if backend is not None else ServerStatus.AUTOCOMMIT
        return ServerStatus(status & (ServerStatus.AUTOCOMMIT | ServerStatus.IN_TRANS))

    async def _forward_quietly(self, backend: BackendConnection, payload: bytes) -> None:
        """A command the node answers nothing to (COM_STMT_CLOSE, SEND_LONG_DATA)."""
        try:
            await backend.send(payload)
        except Unavailable as exc:
            await self._lost(exc)
        except MySQLLocalError as exc:
            await self._fatal(exc.error)
            raise _Closing from None

    async def _forward(
        self, backend: BackendConnection, payload: bytes, command: Command | int, op: Operation
    ) -> None:
        """Send the command to the node and relay its reply to the client."""
        self._received = 0
        try:
            await self.runtime.engine.execute_pinned(
                backend.node,
                lambda: self._relay(backend, payload, command),
                outcome_of_reply,
                calls=self.runtime.calls_of(op),
                sent=len(payload) + 4,
                received=lambda: self._received,
                request_id=self._request_id_of(payload),
            )
        except Unavailable as exc:
            await self._lost(exc)
        except MySQLLocalError as exc:
            await self._unrelayable(exc)
        finally:
            self._preparing = None

    async def _relay(
        self, backend: BackendConnection, payload: bytes, command: Command | int
    ) -> ReplyEnd:
        """The exchange: the command goes to the node as the client sent it (same sequence
        ids), and each chunk of the reply goes to the client as it came, in one send, while
        the scanner finds where the reply ends (its status flags, its ERR)."""
        scanner = backend.scanner
        scanner.start(payload[0], (await backend.send_command(payload)) + 1)
        send_all = self.transport.send_all
        while True:
            data = await backend.receive_reply()
            if not data:
                backend.broken = True
                raise Unavailable(backend.node.address, "the node closed the connection")
            try:
                used = scanner.feed(data)
            except MySQLRemoteError as exc:
                backend.broken = True
                raise Unavailable(backend.node.address, f"protocol error: {exc.error}") from None
            end = scanner.end
            if used:
                self._received += used
                try:
                    await send_all(data if used == len(data) else data[:used])
                except OSError:
                    raise _Closing from None
            if end is not None:
                break
        if used < len(data):
            backend.broken = True
            raise Unavailable(backend.node.address, "protocol error: bytes after the reply")
        if end.kind is ReplyKind.LOCAL_INFILE:
            backend.broken = True
            raise Unavailable(backend.node.address, _NO_INFILE)
        self._replied(backend, end)
        return end

    # ----------------------------------------------------------------------------------------
    # Dispatched: the poller's task relays plain commands (see ClientSession)

    def _dispatchable(self) -> bool:
        poller = self.poller
        backend = self.backend
        if poller is None or not poller.running or backend is None or backend.broken:
            return False
        if self._backend_fd < 0:
            try:
                self._backend_fd = poller.register(backend.sock, self._backend_reader)
            except (OSError, ValueError):
                return False
        return True

    def _unregister_backend(self, backend: BackendConnection) -> None:
        fd, self._backend_fd = self._backend_fd, -1
        if fd >= 0 and self.poller is not None:
            self.poller.unregister(fd, self._backend_reader)

    @property
    def busy(self) -> bool:
        return self._inflight or self.writing

    def handle_nowait(self, data: bytes) -> bool:
        try:
            self.conn.receive_data(data)
        except MySQLRemoteError as exc:
            self._handed = exc
            return False
        return self._serve_buffered()

    def _serve_buffered(self) -> bool:
        """Start the client's buffered commands that need no waiting; ``False`` hands the
        session to its task, with what it must carry on with in :attr:`_handed`."""
        conn = self.conn
        while not self._inflight:
            try:
                event = conn.next_event()
            except MySQLRemoteError as exc:
                self._handed = exc
                return False
            if event is NEED_DATA:
                return True
            if not isinstance(event, CommandEvent) or not self._start_nowait(event):
                if self._handed is None:
                    self._handed = event
                return False
        return True

    def _start_nowait(self, event: CommandEvent) -> bool:
        """Send a command to the node from the poller's task, if nothing about it needs a
        wait (a switch to apply, a large command, a node that spoke out of turn); ``False``
        leaves it to the session's task."""
        command = event.command
        payload = event.packet.payload
        backend = self.backend
        if (
            command in _SLOW
            or len(payload) > _NOWAIT_MAX
            or backend is None
            or self._node_spoke
            or backend.node.address != self.runtime.home.address
        ):
            return False
        op = self._operation(command, payload)
        policies = self.runtime.policies
        if command in _SWITCHABLE and policies.switchboard.active and not self._session_only:
            return False
        now = self._clock.current_time()
        conn = backend
        node = self._read_node(command, op, payload, now) if policies.spreads_reads else None
        if node is not None:
            lent = self._lend_nowait(node)
            if lent is None:
                self._read_on = node  # the session's task lends one (it may connect)
                return False
            conn = lent
        refusal = self._admit(op, now)
        if refusal is not None:
            if conn is not backend:
                self._return_lent(conn, reusable=True)
            self._handed = _Rejected(refusal)
            return False
        if conn is not backend:
            self._lent_event = event
        else:
            self._wrote = self._writes(op)
        node = conn.node
        policies.begin_committed(node)
        self._op = op
        self._started = now
        wire = len(payload).to_bytes(3, "little") + b"\x00" + payload
        self._sent = len(wire)
        self._received = 0
        self._request_id = self._request_id_of(payload)
        reason = "the node does not read its commands"
        try:
            sent = conn.sock.send(wire)
        except BlockingIOError:
            sent = 0
        except OSError as exc:
            sent = -1
            reason = f"connection lost: {exc}"
        self._inflight = True
        self._replying = conn
        if sent != len(wire):
            conn.broken = True
            self._fail_nowait(Unavailable(node.address, reason))
            return False
        conn.scanner.start(payload[0], 1)
        conn.parks += 1
        conn.parked = True
        self.waiting = Waiting.NOTHING  # a drain lets the reply finish
        return True

    def _lend_nowait(self, node: Node) -> BackendConnection | None:
        """A connection of ``node``'s pool with the session's database and settings, idle
        and at hand (registered with the poller for the read), or ``None``."""
        home = self.backend
        poller = self.poller
        assert home is not None and poller is not None
        conn = self.runtime.pool(node).lend_nowait(
            self._key_elsewhere(home), self._settings.statements
        )
        if conn is None:
            return None
        try:
            self._lent_fd = poller.register(conn.sock, self._lent_reader)
        except (OSError, ValueError):
            self.runtime.pool(node).discard(conn)
            return None
        self.lent = conn
        return conn

    def _return_lent(self, conn: BackendConnection, *, reusable: bool) -> None:
        """A lent connection's read is over: back to its pool (``reusable``: as it is; else
        closed), and out of the poller if the poller's task relayed it."""
        fd, self._lent_fd = self._lent_fd, -1
        if fd >= 0 and self.poller is not None:
            self.poller.unregister(fd, self._lent_reader)
        self.lent = None
        self._lent_event = None
        pool = self.runtime.pools.get(conn.node)
        if pool is None:  # its node left the cluster
            conn.close()
        elif reusable:
            pool.take_back(conn)
        else:
            pool.discard(conn)

    def _on_backend_readable(self, events: int = 0) -> None:
        """The session's node's socket became readable (the poller's task): relay what
        came of the reply in flight."""
        if not self._inflight or self._replying is not self.backend:
            # The node spoke out of turn (it is closing the connection: KILL, shutdown,
            # wait_timeout), or the session's task is reading a reply itself: either way
            # the next command goes through the task, which looks at the socket.
            self._node_spoke = True
            return
        self._relay_nowait()

    def _on_lent_readable(self, events: int = 0) -> None:
        """A lent connection's socket became readable: relay the read's reply."""
        if self._inflight and self._replying is self.lent:
            self._relay_nowait()

    def _relay_nowait(self) -> None:
        """Relay what came of the reply in flight, one send to the client per read."""
        if self.writing or self._ended is not None:
            return  # the client must read what it was sent first
        backend = self._replying
        assert backend is not None
        sock = backend.sock
        scanner = backend.scanner
        transport = self.transport
        try:
            for _ in range(_READS_PER_TURN):
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    backend.broken = True
                    raise Unavailable(backend.node.address, f"connection lost: {exc}") from None
                if not data:
                    backend.broken = True
                    raise Unavailable(backend.node.address, "the node closed the connection")
                try:
                    used = scanner.feed(data)
                except MySQLRemoteError as exc:
                    backend.broken = True
                    raise Unavailable(
                        backend.node.address, f"protocol error: {exc.error}"
                    ) from None
                backend.parks += 1  # progress: the timeout counts from the last bytes
                self._received += used
                end = scanner.end
                if end is not None and used < len(data):
                    backend.broken = True
                    raise Unavailable(backend.node.address, "protocol error: bytes after the reply")
                if used:
                    try:
                        sent = transport.send_nowait(data)
                    except BlockingIOError:
                        sent = 0
                    if sent < used:
                        # The client reads slower than the node answers: the node waits (in
                        # its socket) until the writer task has written this.
                        self._unsent = memoryview(data)[sent:]
                        self._ended = end
                        backend.parked = False
                        self.wake_for_output()
                        return
                if end is not None:
                    self._finish_nowait(end)
                    return
                if len(data) < RECV_SIZE:
                    return  # a short read emptied the socket: the next arrival raises an event
            assert self.poller is not None
            # Other clients first.
            self.poller.again(
                self._backend_reader if backend is self.backend else self._lent_reader
            )
        except Unavailable as exc:
            self._fail_nowait(exc)
        except OSError:
            self._client_gone()
        except Exception:
            log.exception(
                "client %s: unexpected error; its connection is closed", self.transport.peer
            )
            self._client_gone()

    async def write_pending(self) -> None:
        unsent, self._unsent = self._unsent, None
        if unsent is not None:
            await self.transport.send_all(unsent)

    def output_written(self) -> None:
        if not self._inflight or self._unsent is not None:
            return
        end, self._ended = self._ended, None
        if end is not None:
            self._finish_nowait(end)
        else:
            replying = self._replying
            if replying is not None:
                replying.parked = True
            self._relay_nowait()

    def _finish_nowait(self, end: ReplyEnd) -> None:
        """The reply in flight is complete (and written): count it, note its status, and go
        on with the client's next command."""
        backend = self._replying
        assert backend is not None
        self._inflight = False
        self._replying = None
        backend.parked = False
        later = self._clock.current_time()
        if self._wrote:
            self._wrote = False
            self._reads_home_until = later + READ_YOUR_WRITES
        outcome = outcome_of_reply(end)
        self.runtime.policies.settle(backend.node, outcome, later - self._started, later)
        self._count(backend.node, outcome, later)
        self._limit_done()
        lent = backend is not self.backend
        if end.kind is ReplyKind.LOCAL_INFILE:
            backend.broken = True
            if lent:
                self._return_lent(backend, reusable=False)
            self._handed = _Ended(Unavailable(backend.node.address, _NO_INFILE))
            self._hand_back()
            return
        self._replied(backend, end)
        if lent:
            self._return_lent(backend, reusable=True)
        if self.runtime.draining:
            self._hand_back()  # the drain came during the reply: the session ends now
            return
        if self.dispatched:
            self.waiting = Waiting.REQUEST
        if not self._serve_buffered():
            self._hand_back()
            return
        self.resume_reading()

    def _fail_nowait(self, failure: Unavailable) -> None:
        """The command in flight got no (whole) answer: counted against the node. A read on
        a lent connection of which nothing reached the client is run again by the session's
        task on the session's own node; otherwise the task tells the client and ends."""
        backend = self._replying
        self._inflight = False
        self._replying = None
        self._handed = failure
        self._wrote = False  # the session ends: nothing more is read
        if backend is not None:
            backend.parked = False
            later = self._clock.current_time()
            policies = self.runtime.policies
            policies.settle(backend.node, failure.outcome, later - self._started, later)
            if backend is self.backend:
                self._count(backend.node, failure.outcome, later)
            else:
                retry = self._lent_event if not self._received else None
                self._return_lent(backend, reusable=False)
                if retry is not None and self._op is not None and self.backend is not None:
                    if policies.metrics is not None:
                        policies.metrics.attempt_failed(self._op, backend.node)
                    self._retried_home(self._op, self.backend.node)
                    self._read_home = True
                    self._handed = retry
                else:
                    self._count(backend.node, failure.outcome, later)
                    self._handed = _Ended(failure)
        self._limit_done()
        self._hand_back()

    def _client_gone(self) -> None:
        """The client's connection broke while its reply was relayed."""
        self.drop()

    def backend_stalled(self, conn: BackendConnection) -> None:
        """The runtime's sweep closed ``conn``: no answer in time. A reply the poller's task
        relays fails here; a read the session's task waits on wakes by the close."""
        if self._inflight and self._replying is conn:
            self._fail_nowait(Unavailable(conn.node.address, f"no answer within {conn.timeout:g}s"))

    def _count(self, node: Node, outcome: Outcome, now: float) -> None:
        """Count the command the poller's task relayed, as the engine counts the exchanges
        of a pinned session (:meth:`~resmesh.policies.engine.HAEngine.execute_pinned`)."""
        metrics = self.runtime.policies.metrics
        if metrics is not None and self._op is not None:
            metrics.run_ended(
                self.runtime.calls_of(self._op),
                node,
                outcome,
                now - self._started,
                self._sent,
                self._received,
                request_id=self._request_id,
            )

    def _request_id_of(self, payload: bytes) -> str | None:
        """The app's request id in a query's comment, when an access log wants it."""
        metrics = self.runtime.policies.metrics
        if metrics is None or metrics.listener is None or payload[:1] != _QUERY_BYTE:
            return None
        return request_id_of(payload[1:])

    def _limit_done(self) -> None:
        op, self._op = self._op, None
        if op is not None:
            self._admission_done(op.name)

    async def _carry_on(self) -> None:
        """Carry on from where the poller's task handed the session back.

        Raises:
            _Closing: the session ends.
        """
        handed, self._handed = self._handed, None
        if handed is None:
            return
        if isinstance(handed, MySQLRemoteError):
            await self._fatal(handed.error)
            raise _Closing
        if isinstance(handed, Unavailable):
            await self._lost(handed)
        if isinstance(handed, _Ended):
            await self._fatal(_unavailable(handed.failure))
            raise _Closing
        if isinstance(handed, _Rejected):
            await self._reply_local(handed.error)
            return
        if isinstance(handed, ConnectionClosed):
            raise _Closing
        if not isinstance(handed, CommandEvent):
            await self._fatal(bad_handshake())
            raise _Closing
        if handed.command == Command.QUIT:
            raise _Closing
        await self._command(handed)

    def _replied(self, backend: BackendConnection, end: ReplyEnd) -> None:
        """Note what a relayed reply says: the status flags, a prepared statement's id."""
        status = end.status
        if status is not None and status != backend.conn.status:
            backend.conn.status = ServerStatus(status)
        kind = end.kind
        if kind is ReplyKind.PREPARE_OK and self._preparing is not None:
            statement = end.statement_id
            if statement is not None:
                self._statements[statement] = self._preparing
                self._statements[LAST_STATEMENT_ID] = self._preparing
        self._preparing = None
        reset = self.conn.command == Command.RESET_CONNECTION and kind is ReplyKind.OK
        noting, self._noting = self._noting, None
        if reset:
            self._settings.reset(self._settings.database)
            self._statements.clear()
            backend.scanner.last_insert_id = 0
        elif isinstance(noting, str):
            if kind is not ReplyKind.ERR:
                self._settings.select(noting)
        elif noting is not None and (kind is not ReplyKind.ERR or len(noting[1]) > 1):
            # A multi-statement query that ended in an error may have run its first ones.
            self._settings.ran(*noting)
        self.conn.reply_relayed(status, reset=reset)

    async def _lost(self, failure: Unavailable) -> None:
        """The backend connection broke: the session's state on the node went with it."""
        backend, self.backend = self.backend, None
        if backend is not None:
            self._unregister_backend(backend)
            self.runtime.pool(backend.node).discard(backend)
        await self._fatal(_unavailable(failure))
        raise _Closing


def _value_result(value: bytes, status: ServerStatus, capabilities: int) -> list[bytes]:
    """A text result set of one row and one column, ``value``: a ``fallback`` switch's
    answer to a query that reads (as Redis answers its value for a read)."""
    column = ColumnDefinition(
        name="value", type=ColumnType.VAR_STRING, charset=DEFAULT_CHARSET, length=len(value)
    )
    head = [encode_column_count(ColumnCount(1), capabilities)]
    head.append(encode_column_definition(column, capabilities))
    if capabilities & Capability.DEPRECATE_EOF:
        end = encode_ok(OkPacket(header=0xFE, status=status), capabilities)
    else:
        head.append(encode_eof(EofPacket(status=status), capabilities))
        end = encode_eof(EofPacket(status=status), capabilities)
    return [*head, encode_text_row([value]), end]


def _must_reconnect(home: Node, why: str) -> ErrorInfo:
    return error_info(
        1927,
        f"resmesh: the cluster's primary is now {home.address} and this session {why}; reconnect",
    )


def _unavailable(failure: Unavailable) -> ErrorInfo:
    return error_info(1105, f"resmesh: {failure}")
