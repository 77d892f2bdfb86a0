"""The gateway's connections to MySQL/MariaDB nodes: a login with the codec's client role, the
exchange of one command's reply packet by packet, and a per-node pool.

A client session holds one backend connection for its whole life (prepared statement ids,
session variables and transactions live on it), so the pool only hands connections out and
takes them back: a connection goes back only after ``COM_RESET_CONNECTION`` cleared what the
session left on it (transaction, variables, temporary tables, prepared statements).

Connections are keyed by what shapes the packets the session streams unchanged to its client:
the layout capabilities (``DEPRECATE_EOF``, ``SESSION_TRACK``, multi-results...), the
character set and the database named at login. The gateway's greeting to apps and its login
to nodes negotiate the same layout capabilities, so both codecs read the same bytes the same
way and the reply passes through as it came, with only the sequence ids renumbered.
"""

from __future__ import annotations

import contextlib
import select
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
from ...protocols.mysql.results import ErrPacket

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
    """One logged-in connection to a node, used by one session at a time."""

    def __init__(self, node: Node, stream: trio.SocketStream, key: PoolKey) -> None:
        self.node = node
        self.stream = stream
        self.key = key
        self.conn = Connection(Role.CLIENT, max_payload=1 << 30)
        self.broken = False

    @property
    def idle(self) -> bool:
        return self.conn.state is State.IDLE and not self.broken

    async def next_event(self, timeout: float) -> Event:
        """The next packet from the node.

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
                data = await self._receive(timeout)
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

    async def _receive(self, timeout: float) -> bytes:
        try:
            with trio.fail_after(timeout):
                return bytes(await self.stream.receive_some(_READ_SIZE))
        except trio.TooSlowError:
            self.broken = True
            raise Unavailable(self.node.address, f"no answer within {timeout:g}s") from None
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.broken = True
            raise Unavailable(self.node.address, f"connection lost: {exc}") from None

    async def send(self, payload: bytes) -> None:
        """Send one command (or an auth packet).

        Raises:
            Unavailable: the connection broke.
            MySQLLocalError: the payload cannot be sent now (a bug: nothing was sent).
        """
        wire = self.conn.send(payload)
        try:
            await self.stream.send_all(wire)
        except (OSError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
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
        an error): such a connection is not handed out again."""
        try:
            poller = select.poll()
            poller.register(self.stream.socket.fileno(), select.POLLIN)
            return bool(poller.poll(0))
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        self.broken = True
        with contextlib.suppress(Exception):
            self.stream.socket.close()


class MySQLPool:
    """The connections of one node: handed out to sessions, taken back clean.

    ``backend.max_dedicated`` caps the connections open to the node (idle or in use).
    """

    def __init__(self, node: Node, config: BackendConfig) -> None:
        self.node = node
        self.config = config
        self.idle: dict[PoolKey, list[BackendConnection]] = {}
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
                    stream = await trio.open_tcp_stream(self.node.host, self.node.port)
            except trio.TooSlowError:
                raise Unavailable(self.node.address, f"connect timed out ({timeout:g}s)") from None
            except OSError as exc:
                raise Unavailable(self.node.address, f"connect failed: {exc}") from None
            conn = BackendConnection(self.node, stream, key)
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

    def discard(self, conn: BackendConnection) -> None:
        """Close a connection that is not to be reused."""
        self._discard(conn)

    def _discard(self, conn: BackendConnection) -> None:
        conn.close()
        self.open = max(0, self.open - 1)

    def _close_one_idle(self) -> None:
        for stack in self.idle.values():
            if stack:
                self._discard(stack.pop())
                return

    def connections(self) -> Iterator[BackendConnection]:
        for stack in self.idle.values():
            yield from stack

    def close(self) -> None:
        self.closed = True
        for conn in list(self.connections()):
            conn.close()
        self.idle.clear()
