"""The Motan2 agent, both sides: the client side (``motan2.client``) takes apps' calls and
governs each through the same pipeline as a Redis command, to the nodes of the service's
cluster; the server side (``motan2.server``) takes calls from remote agents and clients and
forwards them to the local process serving the service (``motan2.export``).

The model is Weibo Mesh's motan-go agent (https://github.com/weibocom/motan-go): one port for
every service an app calls, routed by the request's service path (``M_p``), group (``M_g``)
and version (``M_v``); one export port for the services this host serves, with heartbeats
the agent answers itself and a switch that makes it stop answering them (the backend-down
degrade real agents have: upstream agents then take this host out of rotation).

**One pipeline.** Each request is a :class:`~resmesh.protocols.motan2.agent.Request` call of
its method's :class:`~resmesh.call.Operation`: the degrade switch and the limits decide per
call, then the cluster's :class:`~resmesh.policies.engine.HAEngine` picks the node, asks its
breaker, fails an idempotent call over and backs it up (:meth:`HAEngine.start`: no task per
call, however many a connection has in flight). An exported service is a cluster of one node
(the local process) with the default governance: its breaker fails calls fast while the
process is down.

**No waiting per request.** Motan2 answers out of order, so nothing a client sends needs its
session to wait: the cluster's poller reads every client (:meth:`Motan2Session.handle_nowait`)
and every node connection, and a reply goes back to its client from the round that read it.
A client that sends faster than its replies are read, or has ``_MAX_CALLS_PER_CLIENT`` calls
or ``_MAX_IN_FLIGHT_BYTES`` of requests in flight, is not read until it catches up (TCP's flow
control holds it back); one that leaves more than ``_MAX_UNSENT`` of replies unread is
closed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterable
from types import MappingProxyType
from typing import ClassVar, Final

import trio

from ...call import Operation, Outcome, Protocol, Run, Unavailable
from ...cluster.topology import ClusterState, Node, Topology, topology_from_config
from ...config import BreakerConfig, ClientLimits, ClusterConfig, GovernanceConfig, OutlierConfig
from ...config.motan2 import Motan2AgentConfig, Motan2Settings
from ...observe.metrics import Refusal
from ...policies.chain import ClusterPolicies, configured_switches
from ...policies.engine import HAEngine
from ...policies.switch import Switch, SwitchAction
from ...protocols.motan2.agent import (
    ERRCODE_AGENT,
    ERRCODE_NOT_EXPORTED,
    ERRCODE_REFUSED,
    Request,
    agent_error,
    empty_reply,
    fallback_reply,
    heartbeat_reply,
    meta_size,
    set_request_id,
    with_request_id,
)
from ...protocols.motan2.frames import Frame, FrameDecoder, FrameError
from ..poller import Poller
from ..runtime import ClientSession, ClusterRuntime
from ..transport import ClientTransport
from .upstream import Motan2Attempt, Motan2Transport

__all__ = [
    "CLIENT_SIDE",
    "SERVER_SIDE",
    "ClientAgent",
    "Motan2Session",
    "ServerAgent",
    "ServiceCluster",
]

log = logging.getLogger(__name__)

#: Calls one client connection may have in flight before the agent stops reading it.
_MAX_CALLS_PER_CLIENT: Final = 65536
#: Request bytes one client may have in flight before the agent stops reading it (they wait
#: in the node connections' buffers while a node is slow to read them).
_MAX_IN_FLIGHT_BYTES: Final = 16 * 1024 * 1024
#: Reply bytes one client may leave unread (besides one largest reply) before the agent
#: closes its connection: the client stopped reading, and its replies would grow without
#: bound (redis-server's client-output-buffer-limit closes such a client too).
_MAX_UNSENT: Final = 16 * 1024 * 1024
#: Methods remembered per cluster at most (method names come from clients).
_OPERATIONS_MAX: Final = 4096
#: The names of the two sides in logs (no cluster name has a space).
CLIENT_SIDE: Final = "motan2 client"
SERVER_SIDE: Final = "motan2 server"
#: How long a client closed for a protocol error has to read its exception reply.
_LAST_WORDS_TIMEOUT: Final = 1.0


class ServiceCluster:
    """One service the agent sends calls to: its governance, engine and node connections.

    Args:
        name: the cluster's name (switches and limits name it).
        topology: its nodes.
        governance: its policies.
        switches: the degrade switches in force at start.
        timeout: seconds a call may take (its run's deadline).
        connect_timeout: seconds to open a node connection.
        agent: the agent's settings (frame limit, heartbeat interval).
        nursery: where the node connections run.
        poller: the poller of the agent's port.
        workers: gateway processes sharing the limits.
        idempotent: every method may run twice unless its operation says otherwise.
    """

    def __init__(
        self,
        name: str,
        topology: Topology,
        governance: GovernanceConfig,
        switches: Iterable[Switch],
        *,
        timeout: float,
        connect_timeout: float,
        agent: Motan2AgentConfig,
        nursery: trio.Nursery,
        poller: Poller | None = None,
        workers: int = 1,
        idempotent: bool = False,
    ) -> None:
        self.name = name
        self.timeout = timeout
        #: Whether a method is idempotent unless its operation settings say otherwise.
        self.idempotent = idempotent
        self.policies = ClusterPolicies(
            name,
            topology,
            governance,
            trio.current_time(),
            switches,
            workers=workers,
            peers=True,
            protocol="motan2",
        )
        self.transport = Motan2Transport(
            topology.nodes,
            nursery,
            connect_timeout=connect_timeout,
            heartbeat_interval=agent.heartbeat_interval,
            max_frame=agent.max_frame,
            poller=poller,
            on_health=self._health,
        )
        self.engine: HAEngine[Motan2Attempt] = HAEngine(self.policies, self.transport)
        self._operations: dict[str, Operation] = {}

    def _health(self, node: Node, up: bool) -> None:
        self.policies.set_down(node, not up)

    def operation(self, method: str) -> Operation:
        """The :class:`~resmesh.call.Operation` of a method: idempotent as the cluster's
        ``governance.operations.METHOD.idempotent`` says, else as its ``motan2.idempotent``
        (only the service knows whether a call may run twice); an idempotent method is a read
        for the degrade switches, any other a write (``readonly`` refuses it)."""
        op = self._operations.get(method)
        if op is None:
            name = method.upper()
            settings = self.policies.governance.operations.get(name)
            idempotent = self.idempotent
            if settings is not None and settings.idempotent is not None:
                idempotent = settings.idempotent
            op = Operation(name, write=not idempotent, idempotent=idempotent)
            if len(self._operations) < _OPERATIONS_MAX:
                self._operations[method] = op
        return op

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        """A new set of instances (and, if given, degrade switches) from the registry: new
        instances get a connection, removed ones finish their calls in flight.

        Raises:
            ValueError: ``state`` is not a valid layout.
        """
        added, removed = self.policies.apply(state, switches)
        self.transport.apply(added, removed)

    async def run(self) -> None:
        await self.engine.run()

    def close(self) -> None:
        self.transport.close()


class Motan2Session(ClientSession):
    """One client connection to either side of the agent.

    Every request is handled without waiting (:meth:`handle_nowait`, in the poller's round,
    or in the session's task when no poller runs); the session's task only waits for the
    poller to hand the connection back, which it does when the client leaves or breaks the
    protocol.
    """

    runtime: Motan2Agent

    def __init__(self, runtime: Motan2Agent, transport: ClientTransport, client_id: int) -> None:
        super().__init__(runtime, transport, client_id)
        max_frame = runtime.settings.max_frame
        self._decoder = FrameDecoder(max_frame, max_frame)
        self._clock = trio.lowlevel.current_clock()
        #: Replies the client's socket did not take yet (the writer task sends them), and
        #: how many bytes the writer is sending now.
        self._unsent = bytearray()
        self._sending = 0
        #: Unread reply bytes allowed: room for one largest reply on top of the bound.
        self._max_unsent = _MAX_UNSENT + max_frame
        self.in_flight = 0
        #: Bytes of the requests in flight (they wait in node connections' buffers while a
        #: node is slow to read).
        self.in_flight_bytes = 0
        #: Set when the connection must close (a protocol error), after its last words.
        self._closing = False
        #: Set when the session stops being busy, for its task when it reads the client
        #: itself (no poller).
        self._unbusy: trio.Event | None = None

    @property
    def busy(self) -> bool:
        return (
            self.writing
            or self.in_flight >= _MAX_CALLS_PER_CLIENT
            or self.in_flight_bytes >= _MAX_IN_FLIGHT_BYTES
        )

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.writing

    def can_dispatch(self) -> bool:
        return not self._closing

    async def serve(self) -> None:
        try:
            while not self._closing:
                if self.poller is not None:
                    if not await self.dispatch():
                        return
                    continue
                while self.busy:  # too many calls in flight, or replies not read yet
                    self._unbusy = unbusy = trio.Event()
                    await unbusy.wait()
                data = await self.next_input()
                if not data or not self.handle_nowait(data):
                    break
        finally:
            if self._closing and self._unsent:
                with trio.move_on_after(_LAST_WORDS_TIMEOUT):
                    await self.write_pending()

    def handle_nowait(self, data: bytes) -> bool:
        decoder = self._decoder
        try:
            decoder.feed(data)
            while True:
                frame = decoder.next_frame()
                if not isinstance(frame, Frame):
                    return True
                if not self._received(frame):
                    self._closing = True
                    return False
        except FrameError as exc:
            log.info("client %s: %s; closing its connection", self.transport.peer, exc)
            if exc.request_id is not None and exc.is_request:
                with contextlib.suppress(OSError):  # gone already: nobody to tell
                    self._write(agent_error(exc.request_id, exc.reply_hint, ERRCODE_AGENT))
            self._closing = True
            return False
        except OSError:
            self._closing = True
            return False

    def _received(self, frame: Frame) -> bool:
        """Handle one frame from the client: ``False`` closes the connection."""
        if frame.response:
            log.info("client %s sent a response frame; closing it", self.transport.peer)
            return False
        if frame.heartbeat:
            if not self.runtime.answers_heartbeats:
                return False  # backend-down: the upstream agent takes this host out
            self._write(heartbeat_reply(frame.request_id))
            return True
        request = Request(frame)
        cluster = self.runtime.route(request)
        if isinstance(cluster, tuple):
            errcode, errmsg = cluster
            self._write(agent_error(frame.request_id, errmsg, errcode))
            return True
        op = cluster.operation(request.method)
        request.op = op
        request.batch = 0
        policies = cluster.policies
        now = self._clock.current_time()
        if policies.switchboard.active:
            decision = policies.decide(op.name, op.write)
            if decision is not None:
                action = decision.action
                if action is SwitchAction.ERROR:
                    reply = agent_error(frame.request_id, decision.message, ERRCODE_REFUSED)
                elif action is SwitchAction.FALLBACK:
                    reply = fallback_reply(
                        frame.request_id, frame.serialization, decision.value or b""
                    )
                else:
                    reply = empty_reply(frame.request_id, frame.serialization)
                self._write(reply)
                return True
        limiter = policies.limiter
        if limiter is not None:
            rejection = limiter.admit(op.name, now)
            if rejection is not None:
                if policies.metrics is not None:
                    policies.metrics.refused(op.name, Refusal.LIMIT)
                self._write(agent_error(frame.request_id, rejection, ERRCODE_REFUSED))
                return True
        payload = request.upstream(self.runtime.source)
        if meta_size(payload) > self.runtime.settings.max_frame:
            # M_rid and M_s took it over the limit: the next agent would refuse it, and close
            # the connection every client's calls share.
            if limiter is not None:
                limiter.done(op.name)
            self._write(
                agent_error(
                    frame.request_id,
                    "meta over of limit once M_rid and M_s are added (motan2.max_frame)",
                    ERRCODE_AGENT,
                )
            )
            return True
        run = Run(
            (request,),
            payload,
            idempotent=op.idempotent,
            deadline=now + cluster.timeout,
            operation=op,
            request_id=request.end_to_end_id,
        )
        self.in_flight += 1
        self.in_flight_bytes += len(payload)
        answer = _Answer(self, cluster, frame.request_id, op.name, len(payload))
        cluster.engine.start(run, answer, now)
        return True

    def answered(
        self,
        cluster: ServiceCluster,
        caller_id: int,
        operation: str,
        size: int,
        result: Motan2Attempt | Unavailable,
    ) -> None:
        """A call's answer (or why there is none) is in: give back its limit slot and write
        the reply with the caller's request id (``size``: its request's bytes). Runs in the
        task that read the answer."""
        self.in_flight -= 1
        self.in_flight_bytes -= size
        limiter = cluster.policies.limiter
        if limiter is not None:
            limiter.done(operation)
        if isinstance(result, Unavailable):
            errcode = ERRCODE_REFUSED if result.outcome is Outcome.REJECTED else ERRCODE_AGENT
            reply = agent_error(caller_id, f"call {cluster.name} failed: {result}", errcode)
            caller_id_in_reply = None
        else:
            assert result.reply is not None
            reply = result.reply.data
            caller_id_in_reply = caller_id
        try:
            self._write(reply, caller_id_in_reply)
        except OSError:
            self.drop()  # the client went away
            return
        if self.runtime.draining:
            self.end_if_done()
        else:
            self.resume_reading()

    def end_if_done(self) -> None:
        """During a drain: end the session once every call is answered and every reply
        written (closing the socket sooner would lose them)."""
        if not self.in_flight and not self._unsent and not self.writing:
            self.interrupt()

    def output_written(self) -> None:
        if self.runtime.draining:
            self.end_if_done()

    def resume_reading(self) -> None:
        super().resume_reading()
        unbusy = self._unbusy
        if unbusy is not None and not self.busy:
            self._unbusy = None
            unbusy.set()

    def _write(self, data: bytes, request_id: int | None = None) -> None:
        """Send a frame without waiting (``request_id``: the id to write over its own, the
        caller's on a relayed reply). In a poller round, the replies the round makes for
        this client leave together at its end (one ``send`` for the replies of a node read,
        not one each); what the socket does not take goes to the writer task.

        Raises:
            OSError: the client's connection broke, or it holds more unread replies than
                :data:`_MAX_UNSENT` (it is closed: redis-server's output buffer limit).
        """
        if self._unsent or self.writing:
            if self._sending + len(self._unsent) + len(data) > self._max_unsent:
                log.warning(
                    "client %s does not read its replies (over %d bytes waiting); closing it",
                    self.transport.peer,
                    self._max_unsent,
                )
                raise OSError("too many unread replies")
            self._append(data, request_id)
            return
        poller = self.poller
        if poller is not None and poller.defer(self._send_round):
            self._append(data, request_id)
            return
        self._send(data if request_id is None else with_request_id(data, request_id))

    def _append(self, data: bytes, request_id: int | None) -> None:
        """Queue a frame, its id written over in the queue (no copy of its own)."""
        unsent = self._unsent
        at = len(unsent)
        unsent += data
        if request_id is not None:
            set_request_id(unsent, at, request_id)

    def _send_round(self) -> None:
        """The end of a poller round: send its replies (must not raise)."""
        if not self._unsent or self.writing:
            return
        data, self._unsent = self._unsent, bytearray()
        try:
            self._send(data)
        except OSError:
            self.drop()  # the client went away

    def _send(self, data: bytes | bytearray) -> None:
        try:
            sent = self.transport.send_nowait(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            self._unsent += memoryview(data)[sent:]
            self.wake_for_output()

    async def write_pending(self) -> None:
        while self._unsent:
            data, self._unsent = self._unsent, bytearray()
            self._sending = len(data)
            try:
                await self.transport.send_all(data)
            finally:
                self._sending = 0


class _Answer:
    """The callback of one call in flight (``HAEngine.start``'s ``on_done``)."""

    __slots__ = ("caller_id", "cluster", "operation", "session", "size")

    def __init__(
        self,
        session: Motan2Session,
        cluster: ServiceCluster,
        caller_id: int,
        operation: str,
        size: int,
    ) -> None:
        self.session = session
        self.cluster = cluster
        self.caller_id = caller_id
        self.operation = operation
        self.size = size

    def __call__(self, result: Motan2Attempt | Unavailable) -> None:
        try:
            self.session.answered(self.cluster, self.caller_id, self.operation, self.size, result)
        except Exception:
            # A bug here must end this client only, never the reader every client shares.
            log.exception("client %s: unexpected error; closing it", self.session.transport.peer)
            self.session.drop()


class Motan2Agent(ClusterRuntime):
    """What both sides share: a listener, its sessions, the clusters calls go to."""

    protocol: ClassVar[Protocol] = Protocol.MOTAN2

    def __init__(
        self, name: str, listen: str, settings: Motan2AgentConfig, *, source: str, workers: int
    ) -> None:
        limits = ClientLimits(settings.max_clients, settings.client_idle_timeout)
        super().__init__(name, listen, limits, workers=workers)
        self.settings = settings
        #: The app name put in ``M_s`` of requests that have none.
        self.source = source
        self.answers_heartbeats = True
        self.clusters: dict[str, ServiceCluster] = {}

    def route(self, request: Request) -> ServiceCluster | tuple[int, str]:
        """The cluster ``request`` goes to, or the errcode and errmsg when there is none."""
        raise NotImplementedError

    def open_session(self, transport: ClientTransport, client_id: int) -> Motan2Session:
        return Motan2Session(self, transport, client_id)

    def start_drain(self) -> None:
        """Stop taking requests; a session ends once its calls in flight are answered (a
        Motan2 client's session always waits for its next request, whatever it has in
        flight)."""
        self.draining = True
        for cluster in self.clusters.values():
            cluster.transport.start_drain()
        for session in list(self.sessions.values()):
            assert isinstance(session, Motan2Session)
            session.end_if_done()

    def too_many_clients(self) -> bytes:
        return agent_error(0, "too many connections (motan2.max_clients)", ERRCODE_REFUSED)

    async def run_backend(self) -> None:
        async with trio.open_nursery() as nursery:
            for cluster in self.clusters.values():
                nursery.start_soon(cluster.run)

    def close(self) -> None:
        for cluster in self.clusters.values():
            cluster.close()


class ClientAgent(Motan2Agent):
    """The client side: apps' calls, routed by service, group and version to a cluster."""

    def __init__(
        self,
        settings: Motan2AgentConfig,
        clusters: Iterable[ClusterConfig],
        nursery: trio.Nursery,
        *,
        source: str,
        workers: int = 1,
    ) -> None:
        super().__init__(
            CLIENT_SIDE, str(settings.client), settings, source=source, workers=workers
        )
        #: Service path → its clusters (one per group).
        self._by_service: dict[str, list[tuple[Motan2Settings, ServiceCluster]]] = {}
        for config in clusters:
            assert config.motan2 is not None
            cluster = ServiceCluster(
                config.name,
                topology_from_config(config),
                config.governance,
                configured_switches(config.name, config.governance),
                timeout=config.backend.command_timeout,
                connect_timeout=config.backend.connect_timeout,
                agent=settings,
                nursery=nursery,
                workers=workers,
                poller=self.poller,
                idempotent=config.motan2.idempotent,
            )
            self.clusters[config.name] = cluster
            self._by_service.setdefault(config.motan2.service, []).append((config.motan2, cluster))

    def route(self, request: Request) -> ServiceCluster | tuple[int, str]:
        """The cluster of the request's service whose group and version match; a request
        without a group goes to the service's only cluster."""
        group, version = request.group, request.version
        found = None
        for settings, cluster in self._by_service.get(request.service, ()):
            if (group and settings.group not in (None, group)) or (
                version and settings.version not in (None, version)
            ):
                continue
            if group:
                return cluster
            if found is not None:
                found = None  # several: the request must name its group
                break
            found = cluster
        if found is not None:
            return found
        # motan-go's agent code and words for the same failure.
        return ERRCODE_AGENT, (
            f"cluster not found. cluster: service={request.service or '(no M_p)'}, "
            f"group={request.group or '(none)'}, version={request.version or '(any)'}"
        )

    def describe_backend(self) -> str:
        return ", ".join(sorted(self.clusters))


class ServerAgent(Motan2Agent):
    """The server side: remote calls forwarded to the local process of their service."""

    def __init__(
        self,
        settings: Motan2AgentConfig,
        nursery: trio.Nursery,
        *,
        workers: int = 1,
    ) -> None:
        assert settings.server is not None
        super().__init__(SERVER_SIDE, str(settings.server), settings, source="", workers=workers)
        self.answers_heartbeats = settings.heartbeats
        # The local process is the only node: a breaker or an ejection would turn callers'
        # mistakes (an unknown method is a service exception) into refusals for everyone,
        # with no other node to send to (a motan-go server has neither).
        governance = dataclasses.replace(
            GovernanceConfig(),
            breaker=BreakerConfig(enabled=False),
            outlier=OutlierConfig(enabled=False),
        )
        for service, address in settings.export.items():
            node = Node(address.host, address.port, "local", 1)
            topology = Topology(
                1, MappingProxyType({"local": (node,)}), MappingProxyType({"local": 100}), node
            )
            self.clusters[service] = ServiceCluster(
                service,
                topology,
                governance,
                (),
                timeout=settings.export_timeout,
                connect_timeout=settings.export_timeout,
                agent=settings,
                nursery=nursery,
                workers=workers,
                poller=self.poller,
            )

    def set_heartbeats(self, answer: bool) -> None:
        """Answer heartbeats (``True``), or close the connection of each one (``False``: the
        backend-down degrade; upstream agents stop sending calls here)."""
        if answer != self.answers_heartbeats:
            log.warning(
                "motan2 server side: %s heartbeats",
                "answering" if answer else "no longer answering (backend-down degrade)",
            )
        self.answers_heartbeats = answer

    def route(self, request: Request) -> ServiceCluster | tuple[int, str]:
        cluster = self.clusters.get(request.service)
        if cluster is None:
            # A motan-go server's code and words for a service it does not export.
            return ERRCODE_NOT_EXPORTED, (
                f"provider not exist serviceKey={request.service or '(no M_p)'}"
            )
        return cluster

    def describe_backend(self) -> str:
        return ", ".join(f"{s} -> {a}" for s, a in self.settings.export.items()) or "no exports"
