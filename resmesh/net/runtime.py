"""What serving a cluster takes, whatever its protocol: the listener, the table of client
sessions, the client cap, the idle timeout, and the drain on shutdown. Written once here; each
protocol adds its runtime (a subclass of :class:`ClusterRuntime`, listed in
:data:`resmesh.server.RUNTIMES`) and its session driver (a subclass of :class:`ClientSession`).

A protocol's runtime says three things: how to open a session for a new client
(:meth:`ClusterRuntime.open_session`), what to send a client turned away because the cluster
has ``limits.max_clients`` clients already (:meth:`ClusterRuntime.too_many_clients`), and what
runs in the background for the cluster (:meth:`ClusterRuntime.run_backend`: the HA engine's
timer, backend connection readers).
"""

from __future__ import annotations

import contextlib
import enum
import itertools
import logging
import math
import socket
from collections.abc import Iterable
from typing import TYPE_CHECKING, ClassVar, Final

import trio

from ..call import Protocol
from ..config import ClientLimits
from ..policies.waiting import Waiter, wait_first
from .listen import serve_listener
from .poller import HANG_UP, Poller
from .sockio import RECV_SIZE
from .transport import ClientTransport, SocketTransport

if TYPE_CHECKING:
    from ..cluster.topology import ClusterState
    from ..policies.switch import Switch

__all__ = ["READ_YOUR_WRITES", "ClientSession", "ClusterRuntime", "Waiting"]

#: Seconds a session's reads stay on the primary after its write (replicas lag): long enough
#: for a pipeline however its bytes arrive and for a read right after a write; Rails' primary /
#: replica selector uses 2 s for the same reason. The same for every protocol.
READ_YOUR_WRITES: Final = 1.0

log = logging.getLogger(__name__)

#: Client ids are unique across every cluster of the process, as redis-server's are.
_client_ids = itertools.count(1)
#: Reads of one client per poller round before the others get their turn.
_READS_PER_TURN: Final = 4


class Waiting(enum.Enum):
    """What a session's task waits for, which says what may end the session there."""

    #: Nothing: it handles a request. A drain lets it finish.
    NOTHING = "nothing"
    #: The client's next request. A drain or the idle timeout ends the session here.
    REQUEST = "request"
    #: A subscription's messages. A drain ends the session here; the idle timeout does not
    #: (redis-server's ``timeout`` skips Pub/Sub clients too).
    MESSAGES = "messages"


class ClientSession:
    """One client connection, driven by its own task (:meth:`serve`).

    The base keeps what the runtime needs of every session: its id, its transport, the wait
    for the next request (which a drain or the idle timeout may end, never a request in
    progress), the writer of replies that did not fit in the client's socket, and the hand-off
    of the client's socket to the cluster's :class:`~resmesh.net.poller.Poller`.

    **Dispatched sessions.** While the protocol allows it (:meth:`can_dispatch`), the session's
    task hands the socket to the poller (:meth:`dispatch`) and parks. The poller's task reads
    the client when it becomes readable (:meth:`on_readable`) and gives the bytes to
    :meth:`handle_nowait`, which serves whatever needs no waiting right there (parse, govern,
    send the run; its answer is written by the backend reader's task); anything else is
    handed back to the session's task, which carries it on and then dispatches again. While a
    request is in flight (:attr:`busy`) the poller does not read the client: the protocol
    calls :meth:`resume_reading` once it is answered, so replies keep their order and a client
    that pipelines faster than the node answers waits in its socket (TCP's flow control).

    Ending a waiting session cancels :attr:`scope`, entered once for the session's life:
    entering a Trio cancel scope costs a few microseconds, as much as the rest of a proxied
    command's gateway work, so the wait for each request must not have one of its own.
    """

    #: The session's writer tasks run here (see :meth:`wake_for_output`); set by the runtime
    #: before :meth:`serve`.
    nursery: trio.Nursery

    def __init__(self, runtime: ClusterRuntime, transport: ClientTransport, client_id: int):
        self.runtime = runtime
        self.transport = transport
        self.id = client_id
        #: Cancelled (by :meth:`interrupt`) to end the session where it waits.
        self.scope = trio.CancelScope()
        #: Whether :meth:`interrupt` was called: bytes that arrived along with it are dropped.
        self.interrupted = False
        self.waiting = Waiting.NOTHING
        #: Idle-timeout sweeps that found the session waiting for the same request.
        self.idle_sweeps = 0
        #: Whether a writer task is writing what :meth:`wake_for_output` announced.
        self.writing = False
        #: Whether the last read filled the buffer, so more may be waiting: only then is a
        #: read tried before parking. After a short read the socket is almost always empty
        #: (a client waiting for its replies), and the try would only fail with EAGAIN.
        self._more_waiting = False
        #: The poller that may drive the session (set by the runtime for a socket client).
        self.poller: Poller | None = None
        #: Whether the poller drives the session now (its task waits in :meth:`dispatch`).
        self.dispatched = False
        #: Whether the client's socket may hold bytes the poller has not read: it reported
        #: them while the session was busy, or a read filled the buffer.
        self._readable = False
        #: Whether :meth:`on_readable` is running (a reply written meanwhile only notes that
        #: reading may go on: the running call does it).
        self._reading = False
        #: Whether the dispatched session ended because the client left.
        self._left = False
        #: Whether the poller saw the client close: the stream ends after what is buffered.
        self._hung_up = False
        self._handover = Waiter()

    def interrupt(self) -> None:
        """End the session where it waits (a drain, the idle timeout)."""
        self.interrupted = True
        self.scope.cancel()

    def drop(self) -> None:
        """Close the client's connection from outside the session's task, which then ends
        wherever it waits."""
        self.transport.close()
        if self.dispatched:
            self._hand_back(left=True)

    def wake_for_output(self) -> None:
        """Replies are waiting that did not fit in the client's socket: a writer task writes
        them (:meth:`write_pending`). Neither the backend reader that answered (it serves
        every session, so it never blocks) nor the session's task (it may be waiting for a
        client that itself waits for these replies) can wait for the client to read."""
        if not self.writing:
            self.writing = True
            self.nursery.start_soon(self._write_output)

    async def _write_output(self) -> None:
        try:
            await self.write_pending()
        except OSError:
            self.drop()  # the client is gone: its session ends too
        finally:
            self.writing = False
            self.output_written()
            self.resume_reading()

    async def write_pending(self) -> None:
        """Write what :meth:`wake_for_output` announced (nothing by default)."""

    def output_written(self) -> None:
        """The writer task has finished (nothing by default)."""

    # ------------------------------------------------------------------------------------
    # Dispatch: the poller reads the client

    @property
    def busy(self) -> bool:
        """Whether a request is in flight or its replies are being written: the client's
        next request waits for it."""
        return self.writing

    @property
    def idle(self) -> bool:
        """Whether nothing of the client's is in progress: the idle timeout may end it."""
        return not self.busy

    def can_dispatch(self) -> bool:
        """Whether the poller may drive the session now (never, by default)."""
        return False

    def handle_nowait(self, data: bytes) -> bool:
        """Handle the client's bytes without waiting (in the poller's task; must not raise):
        ``False`` hands the session back to its task, which carries on from what the
        protocol kept of them."""
        raise NotImplementedError

    async def dispatch(self) -> bool:
        """Let the poller drive the session until it hands it back; ``False`` when the
        client left (or its connection broke).

        Raises:
            trio.Cancelled: the session was ended here (:meth:`interrupt`).
        """
        self.dispatched = True
        self._left = False
        self.waiting = Waiting.REQUEST
        try:
            # Bytes that came while the task had the socket raised no event for the poller.
            self._readable = True
            self.on_readable()
            while self.dispatched:
                await wait_first((), self._handover)
        finally:
            self.waiting = Waiting.NOTHING
            self.dispatched = False
        return not self._left

    def _hand_back(self, *, left: bool = False) -> None:
        self.dispatched = False
        self._left = left
        if not left:
            # The task has work to carry on: a drain or the idle sweep must not end it as if
            # it waited for a request.
            self.waiting = Waiting.NOTHING
        self._handover.wake()

    def on_readable(self, events: int = 0) -> None:
        """The poller saw the client's socket become readable or hang up (``events``), or
        the session asks to read on: read and handle what came, unless the session is
        busy. (One method, not a reader calling a loop: it runs once per request.)"""
        if events & HANG_UP:
            self._hung_up = True  # read to the end of the stream, whoever reads it
        if not self.dispatched:
            return  # the session's task reads the socket itself now
        if self._reading:
            self._readable = True  # the running call reads on
            return
        self._reading = True
        transport = self.transport
        runtime = self.runtime
        try:
            for _ in range(_READS_PER_TURN):
                if not self.dispatched:
                    return
                if self.busy or runtime.draining:
                    self._readable = True  # resume_reading comes back; a drain ends it
                    return
                self._readable = False
                try:
                    data = transport.recv_nowait()
                except BlockingIOError:
                    return
                except OSError:
                    data = b""
                if not data:
                    self._hand_back(left=True)
                    return
                self.idle_sweeps = 0
                if not self.handle_nowait(data):
                    self._hand_back()
                    return
                if len(data) < RECV_SIZE and not self._readable and not self._hung_up:
                    return  # a short read emptied the socket: the next arrival raises an event
            self._readable = True
            assert self.poller is not None
            self.poller.again(self.on_readable)  # other clients first
        except Exception:
            # A bug met by one client ends that client's connection, never the poller and
            # every other client with it.
            log.exception(
                "client %s: unexpected error; its connection is closed", self.transport.peer
            )
            self.drop()
        finally:
            self._reading = False

    def resume_reading(self) -> None:
        """The request in flight is done (answered and written): read on if the client sent
        more meanwhile."""
        if self.dispatched and self._readable and not self.busy:
            self.on_readable()

    async def serve(self) -> None:
        """Serve the client until it leaves, breaks the protocol, or the gateway drains."""
        raise NotImplementedError

    async def next_input(self) -> bytes:
        """The client's next bytes; ``b""`` when it closed the connection or the gateway is
        draining.

        Raises:
            OSError: the connection broke.
            trio.Cancelled: the session was ended here (:meth:`interrupt`).
        """
        transport = self.transport
        if self._more_waiting:
            try:
                data = transport.recv_nowait()
            except BlockingIOError:
                pass
            else:
                self._more_waiting = len(data) >= RECV_SIZE
                self.idle_sweeps = 0
                return data
        if self.runtime.draining:
            return b""
        self.waiting = Waiting.REQUEST
        try:
            data = await transport.recv()
        finally:
            self.waiting = Waiting.NOTHING
        if self.interrupted:
            return b""  # ended just as the bytes came: the session must not start on them
        self._more_waiting = len(data) >= RECV_SIZE
        self.idle_sweeps = 0
        return data


class ClusterRuntime:
    """Owns what serves one listen address (a cluster's, or the Motan2 agent's, which serves
    many clusters); lives inside the gateway's nursery.

    Args:
        name: what logs call it (the cluster's name).
        listen: its listen address, for logs.
        limits: what its clients may hold (``max_clients``, ``client_idle_timeout``).
        workers: gateway processes serving it together (they share its limits).
    """

    #: The protocol this runtime serves.
    protocol: ClassVar[Protocol]

    def __init__(self, name: str, listen: str, limits: ClientLimits, *, workers: int = 1) -> None:
        self.workers = workers
        self.name = name
        self.listen = listen
        self.idle_timeout = limits.client_idle_timeout
        self.max_clients = limits.max_clients
        self.sessions: dict[int, ClientSession] = {}
        self.draining = False
        #: Reads the sessions' sockets while they are dispatched (see :class:`ClientSession`).
        self.poller = Poller()

    # ------------------------------------------------------------------------------------
    # What each protocol provides

    def open_session(self, transport: ClientTransport, client_id: int) -> ClientSession:
        raise NotImplementedError

    def too_many_clients(self) -> bytes:
        """What a client turned away at ``limits.max_clients`` is sent before the close."""
        raise NotImplementedError

    async def run_backend(self) -> None:
        """The protocol's background work for the cluster, until cancelled (none by
        default)."""

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        """Make a new layout (and, if given, the degrade switches) the one in force, as the
        registry states it: nodes, groups, weights, route and primary.

        Raises:
            ValueError: ``state`` is not a valid layout.
        """
        raise NotImplementedError

    def describe_backend(self) -> str:
        """Where the cluster's calls go, for the startup log line."""
        raise NotImplementedError

    def pool_statistics(self) -> dict[str, dict[str, int]]:
        """Per node address: its backend connections (``connections`` open, ``in_flight``
        calls...), for the metrics; none known by default."""
        return {}

    def close(self) -> None:
        """Close every backend connection (shutdown)."""

    # ------------------------------------------------------------------------------------
    # Shared by every protocol

    async def run(self) -> None:
        """The cluster's background work, until cancelled: the protocol's
        (:meth:`run_backend`) and, when ``limits.client_idle_timeout`` is set, the sweep that
        ends idle clients."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.poller.run)
            if self.idle_timeout > 0:
                nursery.start_soon(self._end_idle_sessions)
            await self.run_backend()

    async def _end_idle_sessions(self) -> None:
        """End every session that has waited for its next request for
        ``limits.client_idle_timeout``, within a quarter of it (at most a second) after.

        One periodic sweep over the sessions rather than a deadline on each wait (a deadline
        costs each request a cancel scope); redis-server enforces its ``timeout`` the same
        way, from the cron that walks its clients.
        """
        interval = min(self.idle_timeout / 4, 1.0)
        # A session seen waiting by n sweeps in a row has waited at least n - 1 intervals.
        sweeps = math.ceil(self.idle_timeout / interval) + 1
        while True:
            await trio.sleep(interval)
            for session in list(self.sessions.values()):
                if session.waiting is Waiting.REQUEST and session.idle:
                    session.idle_sweeps += 1
                    if session.idle_sweeps >= sweeps:
                        log.info("client %s: idle timeout; closing it", session.transport.peer)
                        session.interrupt()
                else:
                    session.idle_sweeps = 0

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
            poller = self.poller
            sock = transport.sock
            if sock is not None and poller.running:
                fd = poller.register(sock, session.on_readable)
                session.poller = poller
            try:
                async with trio.open_nursery() as session.nursery:
                    try:
                        with session.scope:
                            await session.serve()
                    finally:
                        if session.poller is not None:
                            poller.unregister(fd, session.on_readable)
                        transport.close()  # ends a writer task still waiting on the client
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
            if session.waiting is not Waiting.NOTHING:
                session.interrupt()
