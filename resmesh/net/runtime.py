"""What serving a cluster takes, whatever its protocol: the listener, the table of client
sessions, the client cap, the idle timeout, and the drain on shutdown. Written once here; each
protocol adds its runtime (a subclass of :class:`ClusterRuntime`, listed in
:data:`resmesh.server.RUNTIMES`) and its session driver (a subclass of :class:`ClientSession`).

A protocol's runtime says three things: how to open a session for a new client
(:meth:`ClusterRuntime.open_session`), what to send a client turned away because the cluster
has ``limits.max_clients`` clients already (:meth:`ClusterRuntime.too_many_clients`), and what
runs in the background for the cluster (:meth:`ClusterRuntime.run`: the HA engine's timer,
backend connection readers).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, ClassVar

import trio

from ..call import Protocol
from ..config import ClusterConfig, UserConfig
from .listen import serve_listener
from .sockio import RECV_SIZE
from .transport import ClientTransport, SocketTransport

if TYPE_CHECKING:
    from ..cluster.topology import ClusterState
    from ..policies.switch import Switch

__all__ = ["ClientSession", "ClusterRuntime"]

log = logging.getLogger(__name__)

#: Client ids are unique across every cluster of the process, as redis-server's are.
_client_ids = itertools.count(1)


class ClientSession:
    """One client connection, driven by its own task (:meth:`serve`).

    The base keeps what the runtime needs of every session: its id, its transport, and the
    wait for the next request, which a drain or the idle timeout interrupts (never a request
    in progress). Replies may be written from another task (a backend connection's reader
    answering a run, see :meth:`wake_for_output`); the session's own task then writes only
    what did not fit in the socket.
    """

    def __init__(self, runtime: ClusterRuntime, transport: ClientTransport, client_id: int):
        self.runtime = runtime
        self.transport = transport
        self.id = client_id
        #: Cancelled by a drain to interrupt the wait for the next request.
        self.idle_scope: trio.CancelScope | None = None
        #: Whether the last read filled the buffer, so more may be waiting: only then is a
        #: read tried before parking. After a short read the socket is almost always empty
        #: (a client waiting for its replies), and the try would only fail with EAGAIN.
        self._more_waiting = False
        #: Set by :meth:`wake_for_output`: the wait for input was interrupted to write.
        self._output_waiting = False

    def wake_for_output(self) -> None:
        """Replies are waiting that only the session's task may write (the socket was full):
        interrupt its wait for input so it writes them (:meth:`write_pending`), then waits
        again."""
        self._output_waiting = True
        if self.idle_scope is not None:
            self.idle_scope.cancel()

    async def write_pending(self) -> None:
        """Write what :meth:`wake_for_output` announced (nothing by default)."""

    async def serve(self) -> None:
        """Serve the client until it leaves, breaks the protocol, or the gateway drains."""
        raise NotImplementedError

    async def next_input(self) -> bytes:
        """The client's next bytes; ``b""`` when it closed the connection, stayed silent past
        ``limits.client_idle_timeout``, or the gateway is draining.

        Raises:
            OSError: the connection broke.
        """
        transport = self.transport
        if self._more_waiting:
            try:
                data = transport.recv_nowait()
            except BlockingIOError:
                pass
            else:
                self._more_waiting = len(data) >= RECV_SIZE
                return data
        runtime = self.runtime
        while True:
            if self._output_waiting:
                self._output_waiting = False
                await self.write_pending()
            if runtime.draining:
                return b""
            # Nothing to read: park, interruptible by a drain, the idle timeout, or replies
            # to write. (The scope is only paid for here, not on the pipelined fast path.)
            with trio.CancelScope() as scope:
                self.idle_scope = scope
                if runtime.idle_timeout > 0:
                    scope.deadline = trio.current_time() + runtime.idle_timeout
                data = await transport.recv()
            self.idle_scope = None
            if not scope.cancelled_caught:
                self._more_waiting = len(data) >= RECV_SIZE
                return data
            if not self._output_waiting:
                return b""  # the drain, or the idle timeout


class ClusterRuntime:
    """Owns what serves one cluster; lives inside the gateway's nursery.

    Args:
        config: the cluster's configuration.
        users: every gateway user; the runtime keeps those allowed on this cluster.
        nursery: where the cluster's background tasks run (it outlives every session).
        workers: gateway processes serving the cluster together (they share its limits).
    """

    #: The protocol this runtime serves.
    protocol: ClassVar[Protocol]

    def __init__(
        self,
        config: ClusterConfig,
        users: Mapping[str, UserConfig],
        nursery: trio.Nursery,
        *,
        workers: int = 1,
    ) -> None:
        self.config = config
        self.workers = workers
        self.name = config.name
        self.listen = str(config.listen)
        self.users: Mapping[str, UserConfig] = MappingProxyType(
            {name: user for name, user in users.items() if config.name in user.clusters}
        )
        self.idle_timeout = config.limits.client_idle_timeout
        self.max_clients = config.limits.max_clients
        self.sessions: dict[int, ClientSession] = {}
        self.draining = False

    # ------------------------------------------------------------------------------------
    # What each protocol provides

    def open_session(self, transport: ClientTransport, client_id: int) -> ClientSession:
        raise NotImplementedError

    def too_many_clients(self) -> bytes:
        """What a client turned away at ``limits.max_clients`` is sent before the close."""
        raise NotImplementedError

    async def run(self) -> None:
        """The cluster's background work, until cancelled (none by default)."""

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        """Make a new layout (and, if given, the degrade switches) the one in force, as the
        registry states it: nodes, groups, weights, route and primary.

        Raises:
            ValueError: ``state`` is not a valid layout.
        """
        raise NotImplementedError

    def describe_backend(self) -> str:
        """Where the cluster's calls go, for the startup log line."""
        return ", ".join(str(n.address) for nodes in self.config.groups.values() for n in nodes)

    def close(self) -> None:
        """Close every backend connection (shutdown)."""

    # ------------------------------------------------------------------------------------
    # Shared by every protocol

    async def serve(self, listener: socket.socket, connections: trio.Nursery) -> None:
        """Accept clients on ``listener`` into ``connections`` until cancelled."""
        await serve_listener(listener, self._accepted, connections)

    async def _accepted(self, sock: socket.socket, peer: str) -> None:
        await self.handle(SocketTransport(sock, peer))

    async def handle(self, transport: ClientTransport) -> None:
        """Serve one client connection to its end (also the entry point for tests, with any
        transport)."""
        try:
            if len(self.sessions) >= self.max_clients:
                with contextlib.suppress(OSError):
                    transport.send_nowait(self.too_many_clients())
                return
            session = self.open_session(transport, next(_client_ids))
            self.sessions[session.id] = session
            try:
                await session.serve()
            except Exception:
                # A bug met by one client ends that client's connection, never the gateway
                # and every other client with it.
                log.exception(
                    "client %s: unexpected error; its connection is closed", transport.peer
                )
            finally:
                del self.sessions[session.id]
        finally:
            transport.close()

    def start_drain(self) -> None:
        """Stop taking new requests: idle sessions end now, busy ones after their request."""
        self.draining = True
        for session in list(self.sessions.values()):
            if session.idle_scope is not None:
                session.idle_scope.cancel()
