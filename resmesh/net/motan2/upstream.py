"""The Motan2 agent's side towards the nodes of a service: one multiplexed connection per
node, the HA engine's :class:`~resmesh.policies.engine.Transport` over them, and the
heartbeats that take a silent node out of rotation.

**Many callers, one connection.** Every client connection's calls to a node share the agent's
connection to it: the requests of a poller round leave in one ``send`` at the round's end
(:meth:`~resmesh.net.poller.Poller.defer`), and one read hands out every reply that came,
each to its attempt by request id. The ids are the agent's own, per connection (a Motan2
request id is per hop: ``protocols/motan2.md`` §2); the caller's id goes back on the reply.
Replies are read raw (:meth:`~resmesh.protocols.motan2.frames.FrameDecoder.next_raw`): a reply
is forwarded as it came, its meta read only when it is an exception (whose ``errtype`` says
whose fault it is).

**Deadlines.** A call not answered by its run's deadline fails alone (its late reply is
dropped); the connection stays up, since Motan2 answers out of order and a slow call says
nothing of the others. One watchdog per connection sleeps until the oldest deadline: calls
share their cluster's timeout, so deadlines come in the order calls are sent.

**Heartbeats** (motan-go's keepalive, https://github.com/weibocom/motan-go
``endpoint/motanEndpoint.go``): every ``motan2.heartbeat_interval`` the connection sends a
heartbeat; a node that does not answer one in an interval, refuses it (a server-side agent
switched to backend-down closes the connection), or cannot be connected to, is marked down
(:meth:`~resmesh.policies.chain.ClusterPolicies.set_down`) and gets no calls until a heartbeat
is answered again. The connection is reopened at once when calls wait for it, else at the
next interval.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

import trio

from ...call import Outcome, Run, Unavailable
from ...cluster.topology import Node
from ...policies.engine import Attempt
from ...policies.waiting import Waiter
from ...protocols._errors import ProtocolError
from ...protocols.motan2.agent import agent_error, raw_outcome, with_request_id
from ...protocols.motan2.frames import (
    FLAG_HEARTBEAT,
    FLAG_PROXY,
    FLAG_RESPONSE,
    NEED_DATA,
    STATUS_EXCEPTION,
    FrameDecoder,
    RawFrame,
    encode_frame,
    heartbeat_request,
)
from ..poller import HANG_UP, Poller
from ..sockio import RECV_SIZE, close_quietly, open_tcp, recv, send_buffered

__all__ = ["Motan2Attempt", "Motan2Transport", "NodeLink"]

log = logging.getLogger(__name__)

#: Calls in flight on one node connection at most; past it new ones are refused.
MAX_IN_FLIGHT: Final = 100_000
#: Bytes the reader takes in a row before letting other tasks run.
_YIELD_AFTER_BYTES: Final = 4 << 20
#: The wait before reconnecting after a connection broke, when calls are waiting.
_RECONNECT_AFTER: Final = 0.05
_OK: Final = Outcome.OK


class Motan2Attempt(Attempt):
    """One call in flight on one node connection: answered by the raw reply with its id."""

    __slots__ = ("deadline", "reply", "request_id")

    def __init__(self, waiter: Waiter, deadline: float, request_id: int) -> None:
        super().__init__(waiter)
        self.deadline = deadline
        self.request_id = request_id
        self.reply: RawFrame | None = None

    @property
    def done(self) -> bool:
        return self.reply is not None or self.error is not None

    def outcome(self) -> Outcome:
        reply = self.reply
        return _OK if reply is None or not reply.status else raw_outcome(reply)


class NodeLink:
    """The agent's connection to one node, reopened as needed; :meth:`run` in a nursery.

    Args:
        node: the node.
        connect_timeout: seconds to open the connection.
        heartbeat_interval: seconds between heartbeats (and the time one has to answer).
        max_frame: the largest meta and the largest body a reply may have.
        poller: the poller that reads the connection and sends at its rounds' end, if any.
        on_health: called with ``False`` when the node is found down, ``True`` when a
            heartbeat is answered again.
    """

    def __init__(
        self,
        node: Node,
        *,
        connect_timeout: float,
        heartbeat_interval: float,
        max_frame: int,
        poller: Poller | None,
        on_health: Callable[[bool], None],
    ) -> None:
        self.node = node
        self.address = node.address
        self._connect_timeout = connect_timeout
        self._interval = heartbeat_interval
        self._max_frame = max_frame
        self._poller = poller
        self._on_health = on_health
        self._sock: socket.socket | None = None
        self._decoder = FrameDecoder(max_frame, max_frame, skip_big_bodies=True)
        #: Calls sent (or queued) and not answered, by the request id this link gave them.
        self._waiting: dict[int, Motan2Attempt] = {}
        #: The same calls in the order sent: the watchdog's queue (deadlines come in order).
        self._expiry: deque[Motan2Attempt] = deque()
        self._next_id = 1
        self._unsent = bytearray()
        #: The request id of the heartbeat in flight, and whether it was answered.
        self._heartbeat_id = 0
        #: Frames received so far: any of them shows the node alive.
        self._frames_heard = 0
        self._heartbeat_answered = trio.Event()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._watchdog_lot = trio.lowlevel.ParkingLot()
        #: Woken when calls wait for a connection that is not open.
        self._wanted = trio.Event()
        self._ended = trio.Event()
        self._hung_up = False
        self._retired = False
        #: Whether the node was last found up (``None``: not known yet).
        self.up: bool | None = None
        #: Why the last connection ended.
        self.reason = "not connected yet"
        #: Set while the gateway drains: nodes going away then (its own server side, say)
        #: is expected.
        self.draining = False

    @property
    def in_flight(self) -> int:
        return len(self._waiting)

    def submit(self, payload: bytes, deadline: float, waiter: Waiter) -> Motan2Attempt:
        """Send a request (encoded with request id 0: the link writes its own over it), now
        or once the connection is open.

        Raises:
            Unavailable: the node left the cluster, or has too many calls in flight.
        """
        if self._retired:
            raise Unavailable(self.address, "node removed from the cluster")
        if len(self._waiting) >= MAX_IN_FLIGHT:
            raise Unavailable(self.address, "too many calls in flight")
        request_id = self._new_id()
        attempt = Motan2Attempt(waiter, deadline, request_id)
        self._waiting[request_id] = attempt
        if not self._expiry:
            self._watchdog_lot.unpark()
        self._expiry.append(attempt)
        self._queue(with_request_id(payload, request_id))
        if self._sock is None:
            self._wanted.set()
        return attempt

    def retire(self) -> None:
        """The node left the cluster: no new calls; the connection closes once those in
        flight are answered."""
        self._retired = True
        self._wanted.set()
        if not self._waiting:
            self._close()

    def close(self) -> None:
        self._retired = True
        self._wanted.set()
        self._close()

    def _new_id(self) -> int:
        request_id = self._next_id
        self._next_id = request_id + 1 if request_id < (1 << 63) else 1
        return request_id

    def _queue(self, data: bytes) -> None:
        if self._sock is not None and not self._unsent:
            poller = self._poller
            if poller is None or not poller.defer(self._flush):
                self._writer_lot.unpark()
        self._unsent += data

    # ------------------------------------------------------------------------------------
    # The connection's life

    async def run(self) -> None:
        """Keep a connection to the node open while it is in the cluster: reopen it when it
        breaks, heartbeat it, and fail the calls of a broken one. Until cancelled."""
        try:
            while not self._retired:
                sock = await self._connect()
                if sock is None:
                    # Again when calls wait for it (not sooner than _RECONNECT_AFTER), or at
                    # the next heartbeat.
                    await trio.sleep(_RECONNECT_AFTER)
                    with trio.move_on_after(self._interval):
                        await self._wanted.wait()
                    continue
                await self._serve(sock)  # its end failed its calls, and the node is down (_end)
                if self._retired:
                    break
                await trio.sleep(_RECONNECT_AFTER)
                with trio.move_on_after(self._interval):
                    await self._wanted.wait()
        finally:
            self._close()
            self._fail_all("connection closed")

    async def _connect(self) -> socket.socket | None:
        """Open the connection; on failure fail the waiting calls, mark the node down, and
        return ``None``."""
        self._wanted = trio.Event()
        reason = "connect timeout (backend.connect_timeout)"
        with trio.move_on_after(self._connect_timeout):
            try:
                return await open_tcp(self.node.host, self.node.port)
            except OSError as exc:
                reason = (exc.strerror or str(exc)).lower()
        self.reason = f"cannot connect: {reason}"
        self._fail_all(self.reason)
        self._health(False)
        return None

    async def _serve(self, sock: socket.socket) -> None:
        """Run the open connection until it ends."""
        self._sock = sock
        self._decoder = FrameDecoder(self._max_frame, self._max_frame, skip_big_bodies=True)
        self._ended = trio.Event()
        self._hung_up = False
        self.reason = "connection closed"
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop, sock)
                nursery.start_soon(self._watchdog)
                nursery.start_soon(self._heartbeats)
                poller = self._poller
                if poller is not None and poller.running:
                    fd = poller.register(sock, self._on_readable)
                    try:
                        self._on_readable(0)  # what came before the registration
                        await self._ended.wait()
                    finally:
                        poller.unregister(fd, self._on_readable)
                else:
                    await self._read_loop(sock)
                nursery.cancel_scope.cancel()
        finally:
            self._end(self.reason)

    def _close(self) -> None:
        sock, self._sock = self._sock, None
        if sock is not None:
            close_quietly(sock)
        self._unsent.clear()
        self._ended.set()
        self._writer_lot.unpark_all()

    def _end(self, reason: str) -> None:
        """The connection failed: close it, fail its calls and take the node out of rotation
        now, in the task that saw it, so the calls fail over at once and no new call picks
        the node before its link's task runs again."""
        if self._sock is None:
            return
        self.reason = reason
        self._close()
        self._fail_all(reason)
        if not self._retired:
            self._health(False)

    def _fail_all(self, reason: str) -> None:
        """Fail every call waiting here. Their requests not sent yet are dropped with them: a
        call its caller has given up on (and may have sent elsewhere) must never reach the
        node later."""
        self._unsent.clear()
        if not self._waiting:
            return
        error = Unavailable(self.address, reason)
        waiting, self._waiting = self._waiting, {}
        self._expiry.clear()
        for attempt in waiting.values():
            if attempt.error is None and attempt.reply is None:
                attempt.error = error
                attempt.finish()

    def _health(self, up: bool) -> None:
        if self.up is not up:
            known, self.up = self.up, up
            if up:
                if known is not None:
                    log.info("motan2 node %s answers heartbeats: back in rotation", self.address)
            elif self.draining:
                log.debug("motan2 node %s gone while draining: %s", self.address, self.reason)
            else:
                log.warning("motan2 node %s is down: %s", self.address, self.reason)
            self._on_health(up)

    # ------------------------------------------------------------------------------------
    # Heartbeats and deadlines

    async def _heartbeats(self) -> None:
        """Heartbeat the node every interval. A node that sent nothing in an interval after
        a heartbeat (neither its answer nor any reply) ends the connection and is down; a
        busy node's heartbeat may wait behind the calls queued before it, and its replies
        show it alive as well as the heartbeat's would."""
        while True:
            self._heartbeat_answered = trio.Event()
            self._heartbeat_id = request_id = self._new_id()
            heard = self._frames_heard
            self._queue(encode_frame(heartbeat_request(request_id)))
            with trio.move_on_after(self._interval):
                await self._heartbeat_answered.wait()
            if not self._heartbeat_answered.is_set() and self._frames_heard == heard:
                self._end("heartbeat not answered in time (motan2.heartbeat_interval)")
                return
            self._health(True)
            await trio.sleep(self._interval)

    async def _watchdog(self) -> None:
        """Fail each call still unanswered at its deadline (its late reply is dropped)."""
        expiry = self._expiry
        while True:
            while expiry and expiry[0].done:
                expiry.popleft()
            if not expiry:
                await self._watchdog_lot.park()
                continue
            head = expiry[0]
            if head.deadline > trio.current_time():
                await trio.sleep_until(head.deadline)
                continue
            expiry.popleft()
            self._waiting.pop(head.request_id, None)
            head.error = Unavailable(self.address, "no reply in time (backend.command_timeout)")
            head.finish()
            if self._retired and not self._waiting:
                self._close()

    # ------------------------------------------------------------------------------------
    # Writing and reading

    def _flush(self) -> None:
        """Send a poller round's requests from the poller's task; what the socket does not
        take is left to the writer task."""
        if self._unsent and not self._send_some():
            self._writer_lot.unpark()

    def _send_some(self) -> bool:
        """Send what the socket takes: whether nothing is left (all sent, or it broke)."""
        sock = self._sock
        if sock is None:
            return True
        try:
            return send_buffered(sock, self._unsent)
        except OSError as exc:
            self._end(exc.strerror or str(exc))
            return True

    async def _write_loop(self, sock: socket.socket) -> None:
        while self._sock is sock:
            if not self._unsent:
                await self._writer_lot.park()
                continue
            if not self._send_some():
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return

    async def _read_loop(self, sock: socket.socket) -> None:
        unyielded = 0
        while self._sock is sock:
            try:
                data = await recv(sock)
            except OSError as exc:
                self._end(exc.strerror or str(exc))
                return
            unyielded += len(data)
            if unyielded >= _YIELD_AFTER_BYTES:
                unyielded = 0
                await trio.lowlevel.checkpoint()
            if not self._received(data):
                return

    def _on_readable(self, events: int) -> None:
        """The poller saw the socket readable (edge-triggered: read it empty, or a fair
        share and come back at the next round)."""
        if events & HANG_UP:
            self._hung_up = True
        taken = 0
        try:
            while (sock := self._sock) is not None:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._end(exc.strerror or str(exc))
                    return
                if not self._received(data):
                    return
                if len(data) < RECV_SIZE and not self._hung_up:
                    return
                taken += len(data)
                if taken >= _YIELD_AFTER_BYTES:
                    assert self._poller is not None
                    self._poller.again(self._on_readable)
                    return
        except Exception:
            log.exception(
                "motan2 node %s: unexpected error; its connection is closed", self.address
            )
            self._end("internal error")

    def _received(self, data: bytes) -> bool:
        """Hand out the replies ``data`` completes: ``False`` once the connection ended."""
        if not data:
            self._end("connection closed by the node")
            return False
        decoder = self._decoder
        waiting = self._waiting
        try:
            decoder.feed(data)
            while (reply := decoder.next_raw()) is not NEED_DATA:
                assert isinstance(reply, RawFrame)
                self._frames_heard += 1
                if reply.flags & FLAG_HEARTBEAT:
                    if reply.request_id == self._heartbeat_id:
                        self._heartbeat_answered.set()
                    continue
                attempt = waiting.pop(reply.request_id, None)
                if attempt is None:
                    continue  # its call timed out: the late reply is dropped
                if not reply.data:  # its body was over the limit, and skipped
                    reply = RawFrame(
                        FLAG_RESPONSE | FLAG_PROXY,
                        STATUS_EXCEPTION,
                        reply.request_id,
                        agent_error(
                            reply.request_id,
                            f"reply from {self.address} over the limit (motan2.max_frame)",
                        ),
                    )
                attempt.reply = reply
                attempt.received_bytes = len(reply.data)
                attempt.finish()
        except ProtocolError as exc:
            self._end(f"protocol error: {exc.reply_hint}")
            return False
        if self._retired and not waiting:
            self._close()
            return False
        return True


class Motan2Transport:
    """One :class:`NodeLink` per node of a Motan2 cluster: the HA engine sends through it."""

    def __init__(
        self,
        nodes: Iterable[Node],
        nursery: trio.Nursery,
        *,
        connect_timeout: float,
        heartbeat_interval: float,
        max_frame: int,
        poller: Poller | None,
        on_health: Callable[[Node, bool], None],
    ) -> None:
        self._nursery = nursery
        self._settings = (connect_timeout, heartbeat_interval, max_frame)
        self._poller = poller
        self._on_health = on_health
        self.links: dict[Node, NodeLink] = {}
        self.apply(nodes, ())

    def apply(self, added: Iterable[Node], removed: Iterable[Node]) -> None:
        """Connect to nodes that joined; let those that left finish their calls."""
        connect_timeout, interval, max_frame = self._settings
        for node in added:
            link = NodeLink(
                node,
                connect_timeout=connect_timeout,
                heartbeat_interval=interval,
                max_frame=max_frame,
                poller=self._poller,
                on_health=lambda up, node=node: self._on_health(node, up),  # type: ignore[misc]
            )
            self.links[node] = link
            self._nursery.start_soon(link.run)
        for node in removed:
            leaving = self.links.pop(node, None)
            if leaving is not None:
                leaving.retire()

    def pool_statistics(self) -> dict[str, dict[str, int]]:
        """Per node: whether its connection is open, and the calls in flight on it."""
        return {
            node.address: {"connections": int(link._sock is not None), "in_flight": link.in_flight}
            for node, link in self.links.items()
        }

    def submit(self, node: Node, run: Run, waiter: Waiter) -> Motan2Attempt:
        link = self.links.get(node)
        if link is None:
            raise Unavailable(node.address, "node removed from the cluster")
        return link.submit(run.payload, run.deadline, waiter)

    def start_drain(self) -> None:
        for link in self.links.values():
            link.draining = True

    def close(self) -> None:
        for link in self.links.values():
            link.close()
