"""The gateway's connections to MySQL/MariaDB nodes: a login with the codec's client role, the
raw relay of each command's reply (its end found by :mod:`~resmesh.protocols.mysql.relay`),
and a per-node pool.

A client session holds one backend connection for its whole life (prepared statement ids,
session variables and transactions live on it), so the pool only hands connections out and
takes them back: a connection goes back only after ``COM_RESET_CONNECTION`` cleared what the
session left on it (transaction, variables, temporary tables, prepared statements).

Connections are keyed by what shapes the packets the session streams unchanged to its client:
the layout capabilities (``DEPRECATE_EOF``, ``SESSION_TRACK``, multi-results...), the
character set and the database named at login. The gateway's greeting to apps and its login
to nodes negotiate the same layout capabilities, so both codecs read the same bytes the same
way, and the reply passes through as it came: the command goes to the node with the sequence
ids the client gave it (0, then one per 16 MiB packet), so the reply's ids are the ones the
client expects too
(https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html).

``backend.command_timeout`` is enforced by the runtime's periodic sweep
(:meth:`BackendConnection.check_stalled`), not by a cancel scope on every read: entering one
costs about as much as the read itself.
"""

from __future__ import annotations

import contextlib
import select
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

import trio

from ...call import Outcome, Unavailable
from ...cluster.topology import Node
from ...config import BackendConfig
from ...protocols.mysql import NEED_DATA, PAUSED, Connection, MySQLLocalError, Role, State
from ...protocols.mysql.auth import native_password_scramble
from ...protocols.mysql.constants import AuthPlugin, Capability, Command
from ...protocols.mysql.errors import MySQLRemoteError
from ...protocols.mysql.events import (
    AuthMoreDataEvent,
    AuthSwitch,
    ConnectionClosed,
    Err,
    Event,
    Greeting,
    Ok,
)
from ...protocols.mysql.handshake import HandshakeResponse, encode_handshake_response
from ...protocols.mysql.packets import MAX_CHUNK, encode_packet
from ...protocols.mysql.relay import ReplyScanner
from ...protocols.mysql.results import ErrPacket
from ..sockio import close_quietly, open_tcp, recv_when_readable, send_all

__all__ = ["LAYOUT", "BackendConnection", "BackendLoginError", "MySQLPool", "PoolKey"]

#: Capabilities that change what packets look like (or what the server may send): a client
#: and the backend connection it uses must agree on these.
LAYOUT: Final = (
    Capability.LONG_PASSWORD
    | Capability.FOUND_ROWS
    | Capability.LONG_FLAG
    | Capability.NO_SCHEMA
    | Capability.IGNORE_SPACE
    | Capability.PROTOCOL_41
    | Capability.INTERACTIVE
    | Capability.TRANSACTIONS
    | Capability.MULTI_STATEMENTS
    | Capability.MULTI_RESULTS
    | Capability.PS_MULTI_RESULTS
    | Capability.SESSION_TRACK
    | Capability.DEPRECATE_EOF
)
#: What the gateway's login always asks for, besides the layout.
_LOGIN: Final = (
    Capability.SECURE_CONNECTION
    | Capability.PLUGIN_AUTH
    | Capability.PLUGIN_AUTH_LENENC_CLIENT_DATA
    | Capability.PROTOCOL_41
)
_READ_SIZE: Final = 65536
#: Idle connections kept per key at most.
_MAX_IDLE: Final = 32


class BackendLoginError(Exception):
    """The node refused the login with an ERR packet (``error``)."""

    def __init__(self, error: ErrPacket) -> None:
        super().__init__(f"({error.errno}) {error.message}")
        self.error = error


@dataclass(frozen=True, slots=True)
class PoolKey:
    """What a client's backend connection must match."""

    capabilities: int
    charset: int
    database: str | None


class BackendConnection:
    """One logged-in connection to a node, used by one session at a time.

    Its socket is a raw non-blocking one (:mod:`resmesh.net.sockio`): the session's relay
    loop reads it once per chunk of reply, and a Trio stream would add a checkpoint and a
    scheduler round trip to every call. The login, and the pool's reset, go through the full
    codec (:attr:`conn`); a command's reply is relayed raw, its end found by :attr:`scanner`,
    and the codec is told the status flags that came with it.
    """

    def __init__(self, node: Node, sock: socket.socket, key: PoolKey) -> None:
        self.node = node
        self.sock = sock
        self.key = key
        self.conn = Connection(Role.CLIENT, max_payload=1 << 30)
        #: Finds the end of each reply relayed raw (capabilities set after the login).
        self.scanner = ReplyScanner(0)
        self.broken = False
        #: The ``SET`` statements it ran for sessions it was lent to (:meth:`MySQLPool.lend`).
        self.settings: tuple[bytes, ...] = ()
        #: Whether the last read filled the buffer (more may be waiting: read before parking).
        self._more = False
        #: The reply timeout (``backend.command_timeout``), enforced by the runtime's sweep
        #: (:meth:`check_stalled`) rather than a cancel scope on each read.
        self.timeout = 0.0
        #: Reads of a reply that parked so far, and whether one is parked now.
        self.parks = 0
        self.parked = False
        #: What the sweep saw: the park it saw last, and how many sweeps saw it.
        self._swept_park = -1
        self.stalled_sweeps = 0
        self.timed_out = False
        self._poll = select.poll()
        try:
            self._poll.register(sock.fileno(), select.POLLIN)
        except (OSError, ValueError):
            self.broken = True

    @property
    def idle(self) -> bool:
        return self.conn.state is State.IDLE and not self.broken

    async def next_event(self, timeout: float) -> Event:
        """The next packet from the node, through the codec (the login, the pool's reset).

        Raises:
            Unavailable: the node closed, broke the protocol, or sent nothing for ``timeout``.
        """
        conn = self.conn
        while True:
            try:
                event = conn.next_event()
            except MySQLRemoteError as exc:
                self.broken = True
                raise Unavailable(self.node.address, f"protocol error: {exc.error}") from None
            if event is NEED_DATA:
                data = await self.receive(timeout)
                try:
                    conn.receive_data(data)
                except MySQLRemoteError as exc:
                    self.broken = True
                    raise Unavailable(self.node.address, f"protocol error: {exc.error}") from None
                continue
            if event is PAUSED:
                self.broken = True
                raise Unavailable(self.node.address, "nothing to read: the node's turn is over")
            if isinstance(event, ConnectionClosed):
                self.broken = True
                raise Unavailable(self.node.address, "the node closed the connection")
            return event

    async def receive(self, timeout: float) -> bytes:
        """The node's next bytes (``b""``: it closed the connection). A read is tried at
        once only when the last one filled the buffer; otherwise the socket is almost
        always empty, and the task parks first.

        Raises:
            Unavailable: the connection broke, or nothing came for ``timeout``.
        """
        sock = self.sock
        try:
            data = self._read_ahead()
            if data is not None:
                return data
            with trio.fail_after(timeout):
                data = await recv_when_readable(sock, _READ_SIZE)
        except trio.TooSlowError:
            self.broken = True
            raise Unavailable(self.node.address, f"no answer within {timeout:g}s") from None
        except OSError as exc:
            self.broken = True
            raise Unavailable(self.node.address, f"connection lost: {exc}") from None
        self._more = len(data) >= _READ_SIZE
        return data

    async def receive_reply(self) -> bytes:
        """The next bytes of a reply (``b""``: the node closed the connection); the read a
        relayed command's reply waits on. No cancel scope: entering one costs about as much
        as the rest of the read, so the runtime sweeps for reads parked too long
        (:meth:`check_stalled`), and closes their socket, which wakes them.

        Raises:
            Unavailable: the connection broke, or the sweep found no answer in time.
        """
        sock = self.sock
        try:
            data = self._read_ahead()
            if data is not None:
                return data
            self.parks += 1
            self.parked = True
            try:
                data = await recv_when_readable(sock, _READ_SIZE)
            finally:
                self.parked = False
        except OSError as exc:
            self.broken = True
            if self.timed_out:
                raise Unavailable(
                    self.node.address, f"no answer within {self.timeout:g}s"
                ) from None
            raise Unavailable(self.node.address, f"connection lost: {exc}") from None
        self._more = len(data) >= _READ_SIZE
        return data

    def _read_ahead(self) -> bytes | None:
        """What the socket holds already, when the last read filled the buffer (so more may
        be waiting); ``None`` when nothing is to be read without waiting.

        Raises:
            OSError: the connection broke.
        """
        if not self._more:
            return None
        try:
            data = self.sock.recv(_READ_SIZE)
        except BlockingIOError:
            return None
        self._more = len(data) >= _READ_SIZE
        return data

    def check_stalled(self, sweeps: int) -> bool:
        """The runtime's sweep: a reply awaited for ``sweeps`` sweeps in a row has waited for
        ``backend.command_timeout``; its socket is closed, which ends a read parked on it (as
        :meth:`receive_reply`'s ``no answer within`` error), and ``True`` says so (a relay
        in the poller's task has no read to wake: its session is told)."""
        if not self.parked:
            self.stalled_sweeps = 0
            return False
        if self.parks != self._swept_park:
            self._swept_park = self.parks
            self.stalled_sweeps = 1
            return False
        self.stalled_sweeps += 1
        if self.stalled_sweeps < sweeps:
            return False
        self.timed_out = True
        self.close()
        return True

    async def send(self, payload: bytes) -> None:
        """Send one command (or an auth packet) through the codec.

        Raises:
            Unavailable: the connection broke.
            MySQLLocalError: the payload cannot be sent now (a bug: nothing was sent).
        """
        await self._send_wire(self.conn.send(payload))

    async def send_command(self, payload: bytes) -> int:
        """Send a command whose reply is relayed raw (the codec stays idle); the sequence id
        of its last packet (the reply starts at the next one).

        Raises:
            Unavailable: the connection broke.
        """
        if len(payload) < MAX_CHUNK:
            wire = len(payload).to_bytes(3, "little") + b"\x00" + payload
            last = 0
        else:
            wire, last = encode_packet(payload, 0)
        await self._send_wire(wire)
        return last

    async def _send_wire(self, wire: bytes) -> None:
        try:
            await send_all(self.sock, wire)
        except OSError as exc:
            self.broken = True
            raise Unavailable(self.node.address, f"connection lost: {exc}") from None

    async def login(self, username: str, password: str, capabilities: int, timeout: float) -> None:
        """Log in as ``username`` (mysql_native_password; a switch to it is followed).

        Raises:
            BackendLoginError: the node answered ERR.
            Unavailable: no answer, or a login the gateway cannot do.
        """
        greeting = await self.next_event(timeout)
        if not isinstance(greeting, Greeting):
            raise Unavailable(self.node.address, "no greeting from the node")
        server = int(greeting.handshake.capabilities)
        wanted = (self.key.capabilities & LAYOUT) | _LOGIN
        missing = wanted & ~server & ~Capability.LONG_PASSWORD
        if missing:
            raise Unavailable(
                self.node.address, f"the node lacks capabilities {Capability(missing)!r}"
            )
        if self.key.database is not None:
            wanted |= Capability.CONNECT_WITH_DB
        secret = password.encode()
        plugin = greeting.handshake.auth_plugin_name
        scramble = self.conn.scramble
        if plugin == AuthPlugin.NATIVE_PASSWORD:
            auth = native_password_scramble(secret, scramble)
        else:
            plugin, auth = AuthPlugin.NATIVE_PASSWORD.value, b""  # the node asks for a switch
        response = HandshakeResponse(
            capabilities=Capability(wanted),
            username=username,
            auth_response=auth,
            charset=self.key.charset,
            database=self.key.database,
            auth_plugin_name=plugin,
        )
        await self.send(encode_handshake_response(response))
        while True:
            event = await self.next_event(timeout)
            if isinstance(event, Ok):
                self.scanner = ReplyScanner(int(self.conn.capabilities))
                return
            if isinstance(event, Err):
                self.broken = True
                raise BackendLoginError(event.error)
            if isinstance(event, AuthSwitch) and event.request.plugin_name == (
                AuthPlugin.NATIVE_PASSWORD
            ):
                await self.send(native_password_scramble(secret, event.request.scramble))
                continue
            if isinstance(event, AuthMoreDataEvent):
                continue
            self.broken = True
            raise Unavailable(
                self.node.address, f"login needs an unsupported step ({type(event).__name__})"
            )

    async def simple(self, payload: bytes, timeout: float) -> Event:
        """Send a command whose reply is one packet (OK/ERR); its last event."""
        await self.send(payload)
        while True:
            event = await self.next_event(timeout)
            if self.conn.state is State.IDLE:
                return event

    def readable_now(self) -> bool:
        """Whether the node sent something while the connection sat idle (it closed it, or
        an error): such a connection is not handed out again. One ``poll(2)`` on a poll set
        made once: this runs before every command."""
        if self.broken:
            return True
        try:
            return bool(self._poll.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            close_quietly(self.sock)


class MySQLPool:
    """The connections of one node: handed out to sessions, taken back clean.

    ``backend.max_dedicated`` caps the connections open to the node (idle or in use).
    """

    def __init__(self, node: Node, config: BackendConfig) -> None:
        self.node = node
        self.config = config
        self.idle: dict[PoolKey, list[BackendConnection]] = {}
        #: Connections lent for one read at a time (:meth:`lend`): they keep the ``SET``
        #: statements they ran, so they are never handed to a session for its life.
        self.lendable: dict[PoolKey, list[BackendConnection]] = {}
        self.open = 0
        self.closed = False

    def _take_idle(self, key: PoolKey) -> BackendConnection | None:
        stack = self.idle.get(key)
        while stack:
            conn = stack.pop()
            if conn.readable_now():
                self._discard(conn)
                continue
            return conn
        return None

    async def acquire(self, key: PoolKey) -> BackendConnection:
        """A logged-in connection for ``key``.

        Raises:
            Unavailable: the node's cap is reached (``REJECTED``), or it cannot be reached.
            BackendLoginError: the node refused the login.
        """
        conn = self._take_idle(key)
        if conn is not None:
            return conn
        if self.open >= self.config.max_dedicated:
            self._close_one_idle()
        if self.open >= self.config.max_dedicated:
            raise Unavailable(
                self.node.address,
                f"{self.open} connections are open to it (backend.max_dedicated)",
                Outcome.REJECTED,
            )
        self.open += 1
        ok = False
        conn = None
        try:
            timeout = self.config.connect_timeout
            try:
                with trio.fail_after(timeout):
                    sock = await open_tcp(self.node.host, self.node.port)
            except trio.TooSlowError:
                raise Unavailable(self.node.address, f"connect timed out ({timeout:g}s)") from None
            except OSError as exc:
                raise Unavailable(self.node.address, f"connect failed: {exc}") from None
            conn = BackendConnection(self.node, sock, key)
            conn.timeout = self.config.command_timeout
            await conn.login(
                self.config.username or "", self.config.password or "", key.capabilities, timeout
            )
            ok = True
            return conn
        finally:
            if not ok:
                self.open -= 1
                if conn is not None:
                    conn.close()

    async def release(
        self, conn: BackendConnection, *, reset: bool = True, database_changed: bool = False
    ) -> None:
        """Take ``conn`` back: reset it (and, if the session changed it, select its pool key's
        database again) and keep it, or close it if it cannot be reused."""
        if self.closed or not conn.idle or not reset:
            self._discard(conn)
            return
        database = conn.key.database
        if database_changed and database is None:
            self._discard(conn)  # no command selects "no database" again
            return
        timeout = self.config.command_timeout
        try:
            event = await conn.simple(bytes((Command.RESET_CONNECTION,)), timeout)
            if isinstance(event, Ok) and database_changed and database is not None:
                event = await conn.simple(bytes((Command.INIT_DB,)) + database.encode(), timeout)
        except (Unavailable, MySQLLocalError):
            self._discard(conn)
            return
        stack = self.idle.setdefault(conn.key, [])
        if not isinstance(event, Ok) or len(stack) >= _MAX_IDLE or conn.broken:
            self._discard(conn)
            return
        stack.append(conn)

    async def lend(self, key: PoolKey, settings: tuple[bytes, ...]) -> BackendConnection:
        """A connection for one read of another node's session: logged in for ``key``, and
        having run the session's ``settings`` (``SET`` statements) in order, and nothing else.
        Give it back with :meth:`take_back`.

        Raises:
            Unavailable: as :meth:`acquire`, or a setting failed or could not be sent.
            BackendLoginError: the node refused the login.
        """
        stack = self.lendable.get(key)
        conn = None
        while stack:
            candidate = stack.pop()
            if candidate.readable_now():
                self._discard(candidate)
                continue
            ran = candidate.settings
            if ran == settings[: len(ran)]:
                conn = candidate
                break
            stack.insert(0, candidate)  # another session's settings: keep it for them
            break
        if conn is None:
            conn = await self.acquire(key)
        timeout = self.config.command_timeout
        try:
            for statement in settings[len(conn.settings) :]:
                event = await conn.simple(bytes((Command.QUERY,)) + statement, timeout)
                if not isinstance(event, Ok):
                    raise Unavailable(self.node.address, f"a session setting failed: {event}")
                conn.settings = (*conn.settings, statement)
        except (Unavailable, MySQLLocalError) as exc:
            self._discard(conn)
            raise Unavailable(self.node.address, str(exc)) from None
        return conn

    def lend_nowait(self, key: PoolKey, settings: tuple[bytes, ...]) -> BackendConnection | None:
        """What :meth:`lend` gives, when an idle connection has run exactly ``settings``
        (nothing to send first, so no wait); else ``None``."""
        stack = self.lendable.get(key)
        while stack:
            conn = stack[-1]
            if conn.readable_now():  # the node closed it while it sat idle
                self._discard(stack.pop())
                continue
            return stack.pop() if conn.settings == settings else None
        return None

    def take_back(self, conn: BackendConnection) -> None:
        """A connection :meth:`lend` gave out, its read done: kept as it is for the next
        read with the same settings, or closed if it cannot be reused."""
        stack = self.lendable.setdefault(conn.key, [])
        if self.closed or not conn.idle or len(stack) >= _MAX_IDLE:
            self._discard(conn)
            return
        stack.append(conn)

    def discard(self, conn: BackendConnection) -> None:
        """Close a connection that is not to be reused."""
        self._discard(conn)

    def _discard(self, conn: BackendConnection) -> None:
        conn.close()
        self.open = max(0, self.open - 1)

    def _close_one_idle(self) -> None:
        for stack in (*self.idle.values(), *self.lendable.values()):
            if stack:
                self._discard(stack.pop(0))
                return

    def connections(self) -> Iterator[BackendConnection]:
        for stack in (*self.idle.values(), *self.lendable.values()):
            yield from stack

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections()):
            conn.close()
        self.idle.clear()
        self.lendable.clear()
