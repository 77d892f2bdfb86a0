"""The Motan2 agent in process: its node connections (:mod:`resmesh.net.motan2.upstream`) and
its client sessions on both sides (:mod:`resmesh.net.motan2.agent`), with no subprocess.

The nodes are scripted :class:`FakeNode` listeners in this process: they read frames with the
sans-IO decoder and answer at once, hold requests until the test answers them (in any order),
ignore heartbeats or close the connection on one, or send garbage. A node link runs without a
poller (its reader task) and with a running :class:`~resmesh.net.poller.Poller` (the link
registers its socket there); both paths are parametrized.

The agents' clients are one end of a socketpair served by ``runtime.handle`` with a
:class:`~resmesh.net.transport.SocketTransport`: dispatched to the agent's poller when the
runtime runs (``runtime.run``), in the session's own task when only its backend runs. Why not a
memory stream (:class:`~resmesh.net.transport.StreamTransport`): a session writes its replies
with ``send_nowait``, which on a memory stream always says "would block", and the Motan2
session does not handle that (:func:`test_a_memory_stream_client_is_served` records the bug).

Everything timed runs on Trio's ``MockClock`` (pytest-trio's ``autojump_clock``); loopback
connects and sends complete within the syscall, so the clock only jumps when every task waits
for time.
"""

from __future__ import annotations

import itertools
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from resmesh.call import Outcome, Run, Unavailable
from resmesh.cluster.topology import Node
from resmesh.config import Config, parse_config
from resmesh.net.motan2 import Motan2Service, upstream
from resmesh.net.motan2 import agent as agent_module
from resmesh.net.motan2.agent import ClientAgent, Motan2Agent, Motan2Session, ServerAgent
from resmesh.net.motan2.upstream import Motan2Attempt, Motan2Transport, NodeLink
from resmesh.net.poller import Poller
from resmesh.net.sockio import open_tcp as real_open_tcp
from resmesh.net.transport import SocketTransport, StreamTransport
from resmesh.policies.waiting import Waiter, wait_first
from resmesh.protocols.motan2 import bodies
from resmesh.protocols.motan2.agent import Request, heartbeat_reply, with_request_id
from resmesh.protocols.motan2.frames import (
    ERRTYPE_BUSINESS,
    ERRTYPE_SERVICE,
    META_REQUEST_ID,
    META_SOURCE,
    NEED_DATA,
    ErrorInfo,
    Frame,
    FrameDecoder,
    RawFrame,
    Serialization,
    encode_frame,
    encode_meta,
    exception_response,
    heartbeat_request,
    heartbeat_response,
    request,
    response,
)
from tests.support.driver import wait_until

SERVICE = "resmesh.test.EchoService"
MockClock = trio.testing.MockClock


@pytest.fixture(autouse=True)
def no_unexpected_errors(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """No test here may make the agent log an error (a bug met by a task is logged as
    ``unexpected error``)."""
    caplog.set_level(logging.INFO)
    yield
    bad = [
        r
        for r in caplog.records
        if r.levelno >= logging.ERROR or "unexpected error" in r.getMessage()
    ]
    assert not bad, [r.getMessage() for r in bad]


# ------------------------------------------------------------------------------------------
# The scripted node


class FakeNode:
    """A Motan2 node this test scripts; ``nursery.start(node.serve)`` returns its port.

    Attributes:
        hold: requests are kept unanswered in :attr:`held` until :meth:`answer`.
        heartbeats: ``answer`` them, ``ignore`` them, or ``close`` the connection on one.
        garbage: when set, sent instead of the reply to the next request.
        requests: every request received, in order (raw, as sent: :attr:`raw_requests`).
        sent: every reply written, as bytes.
    """

    def __init__(self, name: str = "node") -> None:
        self.name = name
        # Bound now, so a config can name the port before the node serves.
        self._listening = socket.socket()
        self._listening.bind(("127.0.0.1", 0))
        self._listening.listen(128)
        self.port: int = self._listening.getsockname()[1]
        self.hold = False
        self.heartbeats = "answer"
        self.garbage: bytes | None = None
        self.requests: list[Frame] = []
        self.raw_requests: list[bytes] = []
        self.held: list[tuple[trio.SocketStream, Frame]] = []
        self.sent: list[bytes] = []
        self.heartbeats_seen = 0
        self.connections = 0
        self.open: set[trio.SocketStream] = set()
        self._locks: dict[trio.SocketStream, trio.Lock] = {}
        self._scope = trio.CancelScope()

    @property
    def node(self) -> Node:
        return Node("127.0.0.1", self.port, "a", 100)

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(self._listening))
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    task_status.started(self.port)
                    await trio.serve_listeners(self._handle, [listener], handler_nursery=nursery)
        finally:
            await trio.aclose_forcefully(listener)

    def kill(self) -> None:
        """Stop listening and drop every connection (a node that died)."""
        self._scope.cancel()

    def close_all(self) -> None:
        """Drop every connection, still listening (a node that restarted)."""
        for stream in list(self.open):
            stream.socket.close()

    def reply_to(self, frame: Frame) -> bytes:
        """The echo reply: the request's body as the result, the node's name in meta."""
        return encode_frame(
            response(
                frame.request_id,
                frame.body,
                meta={"node": self.name},
                serialization=frame.serialization,
            )
        )

    async def answer(self, which: Callable[[list[Frame]], list[Frame]] = lambda held: held) -> None:
        """Answer the held requests ``which`` chooses (in the order it gives), each
        connection's in one write."""
        chosen = which([frame for _, frame in self.held])
        by_stream: dict[trio.SocketStream, list[bytes]] = {}
        for frame in chosen:
            for index, (stream, held) in enumerate(self.held):
                if held is frame:
                    by_stream.setdefault(stream, []).append(self.reply_to(frame))
                    del self.held[index]
                    break
        for stream, replies in by_stream.items():
            await self._send(stream, b"".join(replies))

    async def _send(self, stream: trio.SocketStream, data: bytes) -> None:
        if stream not in self.open:
            return
        async with self._locks[stream]:
            self.sent.append(data)
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await stream.send_all(data)

    async def _handle(self, stream: trio.SocketStream) -> None:
        self.connections += 1
        self.open.add(stream)
        self._locks[stream] = trio.Lock()
        decoder = FrameDecoder()
        try:
            while True:
                try:
                    data = await stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                decoder.feed(data)
                out: list[bytes] = []
                for frame in decoder:
                    if frame.heartbeat:
                        self.heartbeats_seen += 1
                        if self.heartbeats == "close":
                            return
                        if self.heartbeats == "answer":
                            out.append(encode_frame(heartbeat_response(frame.request_id)))
                        continue
                    self.requests.append(frame)
                    self.raw_requests.append(encode_frame(frame))
                    if self.garbage is not None:
                        out.append(self.garbage)
                        self.garbage = None
                    elif self.hold:
                        self.held.append((stream, frame))
                    else:
                        out.append(self.reply_to(frame))
                if out:
                    await self._send(stream, b"".join(out))
        finally:
            self.open.discard(stream)
            stream.socket.close()


def free_port() -> int:
    """A port nothing listens on (connects to it are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def call_frame(
    value: Any = "hi",
    *,
    method: str = "echo",
    service: str = SERVICE,
    request_id: int = 1,
    group: str = "",
    version: str = "",
    serialization: int = Serialization.SIMPLE,
    meta: dict[str, str] | None = None,
) -> Frame:
    return request(
        request_id,
        service,
        method,
        bodies.encode_arguments(serialization, [value]),
        group=group,
        version=version,
        serialization=serialization,
        meta=meta,
    )


def value_of(frame: Frame) -> Any:
    assert not frame.is_exception, frame.exception()
    return bodies.decode_result(frame.serialization, frame.body)


# ------------------------------------------------------------------------------------------
# Node links


@dataclass
class Link:
    link: NodeLink
    health: list[bool]
    nursery: trio.Nursery
    #: Set when ``link.run`` returned.
    ended: trio.Event = field(default_factory=trio.Event)

    async def run(self) -> None:
        await self.link.run()
        self.ended.set()

    def submit(self, value: Any, *, timeout: float = 5.0, method: str = "echo") -> Motan2Attempt:
        payload = Request(call_frame(value, method=method)).upstream("app")
        return self.link.submit(payload, trio.current_time() + timeout, Waiter())


@asynccontextmanager
async def running_link(
    port: int,
    *,
    poller: bool,
    interval: float = 10.0,
    connect_timeout: float = 1.0,
    max_frame: int = 1 << 20,
    start: bool = True,
) -> AsyncIterator[Link]:
    """A :class:`NodeLink` to ``port``, its ``run`` started (unless ``start`` is false: then
    the test starts it), with a running poller when ``poller``."""
    health: list[bool] = []
    async with trio.open_nursery() as nursery:
        the_poller = None
        if poller:
            the_poller = Poller()
            nursery.start_soon(the_poller.run)
            await wait_until(lambda: the_poller.running, "the poller to run")
        link = NodeLink(
            Node("127.0.0.1", port, "a", 100),
            connect_timeout=connect_timeout,
            heartbeat_interval=interval,
            max_frame=max_frame,
            poller=the_poller,
            on_health=health.append,
        )
        running = Link(link, health, nursery)
        if start:
            nursery.start_soon(running.run)
        yield running
        link.close()
        nursery.cancel_scope.cancel()


async def finished(attempt: Motan2Attempt) -> Motan2Attempt:
    with trio.fail_after(60):
        await wait_first((attempt,), attempt.waiter)
    assert attempt.done
    return attempt


def answer_of(attempt: Motan2Attempt) -> Any:
    assert attempt.error is None, attempt.error
    assert attempt.reply is not None
    return value_of(attempt.reply.decoded())


POLLER = pytest.mark.parametrize("poller", [False, True], ids=["reader-task", "poller"])


@POLLER
async def test_replies_are_matched_by_id_in_any_order(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            attempts = [link.submit(f"call {i}") for i in range(20)]
            assert link.link.in_flight == 20
            await wait_until(lambda: len(node.held) == 20, "the node to get every call")
            ids = [frame.request_id for frame in node.requests]
            assert len(set(ids)) == 20 and 0 not in ids  # the link's own ids, none reused
            for frame in node.requests:  # as the agent sends them on
                assert frame.proxy and frame.meta[META_SOURCE] == "app"
            # Shuffled: odd ones reversed first, then the even ones, in two writes.
            await node.answer(lambda held: held[1::2][::-1])
            await node.answer()
            for i, attempt in enumerate(attempts):
                await finished(attempt)
                assert answer_of(attempt) == f"call {i}"
                assert attempt.outcome() is Outcome.OK
            assert link.link.in_flight == 0
            assert node.connections == 1
            assert link.health == [True]
        nursery.cancel_scope.cancel()


@POLLER
async def test_an_exception_reply_counts_by_its_errtype(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            business, service = link.submit(1), link.submit(2)
            await wait_until(lambda: len(node.held) == 2, "the calls")
            (_, first), (stream, second) = node.held
            await node._send(
                stream,
                encode_frame(exception_response(second.request_id, 1, "no", ERRTYPE_SERVICE))
                + encode_frame(exception_response(first.request_id, 2, "bad", ERRTYPE_BUSINESS)),
            )
            await finished(business)
            await finished(service)
            assert business.outcome() is Outcome.APP_ERROR
            assert service.outcome() is Outcome.UPSTREAM_ERROR
            assert business.reply is not None
            assert business.reply.decoded().exception() == ErrorInfo(2, "bad", ERRTYPE_BUSINESS)
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_call_unanswered_by_its_deadline_fails_alone(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            start = trio.current_time()
            slow = link.submit("slow", timeout=1.0)
            other = link.submit("other", timeout=5.0)
            await finished(slow)
            assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)
            assert isinstance(slow.error, Unavailable)
            assert "no reply in time" in slow.error.reason
            assert slow.error.outcome is Outcome.LOCAL_ERROR
            assert not other.done and link.link.in_flight == 1
            # The late reply and the other's come in one write: the late one is dropped.
            await node.answer()
            await finished(other)
            assert answer_of(other) == "other"
            assert slow.reply is None  # the late reply answered nothing
            later = link.submit("later")
            await wait_until(lambda: len(node.held) == 1, "the later call")
            await node.answer()
            assert answer_of(await finished(later)) == "later"
            assert node.connections == 1 and link.health == [True]  # the connection stayed
        nursery.cancel_scope.cancel()


@POLLER
async def test_the_node_closing_fails_every_waiting_call_and_the_link_reconnects(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller, interval=2.0) as link:
            attempts = [link.submit(i, timeout=30) for i in range(3)]
            await wait_until(lambda: len(node.held) == 3, "the calls")
            node.held.clear()
            node.close_all()
            for attempt in attempts:
                await finished(attempt)
                assert isinstance(attempt.error, Unavailable)
                assert attempt.error.outcome is Outcome.LOCAL_ERROR
                assert attempt.error.reason == "connection closed by the node"
            assert link.link.in_flight == 0
            assert link.health == [True, False]
            node.hold = False
            later = link.submit("again", timeout=30)
            assert answer_of(await finished(later)) == "again"
            assert node.connections == 2
            await wait_until(lambda: link.health == [True, False, True], "back in rotation")
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_refused_connect_fails_the_queued_calls(
    poller: bool, autojump_clock: MockClock
) -> None:
    port = free_port()
    async with running_link(port, poller=poller, start=False) as link:
        queued = [link.submit(i) for i in range(2)]  # before the link ever connects
        link.nursery.start_soon(link.run)
        for attempt in queued:
            await finished(attempt)
            assert isinstance(attempt.error, Unavailable)
            assert attempt.error.reason.startswith("cannot connect: ")
            assert "refused" in attempt.error.reason
        assert link.health == [False]
        assert link.link.up is False


@POLLER
async def test_a_call_for_an_unreachable_node_is_not_held_for_an_interval(
    poller: bool, autojump_clock: MockClock
) -> None:
    async with running_link(free_port(), poller=poller, interval=10.0) as link:
        await wait_until(lambda: link.health == [False], "the first connect to fail")
        start = trio.current_time()
        attempt = await finished(link.submit("x", timeout=30))
        assert isinstance(attempt.error, Unavailable)
        assert attempt.error.reason.startswith("cannot connect: ")
        assert trio.current_time() - start <= 1.0


@POLLER
async def test_a_connect_timeout_fails_the_queued_calls(
    poller: bool, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(host: str, port: int) -> socket.socket:
        await trio.sleep_forever()
        raise AssertionError

    monkeypatch.setattr(upstream, "open_tcp", never)
    async with running_link(1, poller=poller, start=False, connect_timeout=0.5) as link:
        queued = link.submit(1)
        start = trio.current_time()
        link.nursery.start_soon(link.run)
        await finished(queued)
        assert trio.current_time() - start == pytest.approx(0.5)
        assert isinstance(queued.error, Unavailable)
        assert queued.error.reason == "cannot connect: connect timeout (backend.connect_timeout)"
        assert link.health == [False]


@POLLER
@pytest.mark.parametrize("refusal", ["ignore", "close"])
async def test_heartbeats_take_a_node_out_and_back(
    poller: bool, refusal: str, autojump_clock: MockClock
) -> None:
    """Answered: up. Unanswered within an interval, or refused by closing: down (the
    connection is reopened and heartbeated again). Answered again: up."""
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller, interval=1.0) as link:
            await wait_until(lambda: link.health == [True], "the first heartbeat")
            seen = node.heartbeats_seen
            await trio.sleep(3.5)  # MockClock time: three and a half intervals
            assert node.heartbeats_seen == seen + 3  # one an interval
            assert link.health == [True]
            node.heartbeats = refusal
            start = trio.current_time()
            await wait_until(lambda: link.health == [True, False], "the node to be down", 30)
            assert trio.current_time() - start <= 2.1  # within two intervals
            assert link.link.up is False
            connections = node.connections
            await trio.sleep(5)  # MockClock time: five intervals
            assert node.connections > connections  # reconnected, heartbeated, refused again
            assert link.health == [True, False]  # reported once
            node.heartbeats = "answer"
            await wait_until(lambda: link.health == [True, False, True], "back up", 30)
            assert link.link.up is True
            assert answer_of(await finished(link.submit("up"))) == "up"
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_busy_nodes_replies_keep_it_up_while_its_heartbeats_wait(
    poller: bool, autojump_clock: MockClock
) -> None:
    """A heartbeat queued behind many calls may come back late: replies coming meanwhile
    show the node alive, so neither the connection nor its calls are dropped."""
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller, interval=1.0) as link:
            await wait_until(lambda: link.health == [True], "the first heartbeat")
            node.heartbeats = "ignore"  # as if each answer sat behind a long queue
            node.hold = True
            calls = [link.submit(i, timeout=30) for i in range(40)]
            for _ in range(40):  # one reply every 250 ms, for 10 intervals
                await wait_until(lambda: bool(node.held), "a call to answer", 30)
                await trio.sleep(0.25)  # MockClock time
                await node.answer(lambda held: held[:1])
            assert [answer_of(await finished(c)) for c in calls] == list(range(40))
            assert link.health == [True] and node.connections == 1
            silent = trio.current_time()  # from the last reply on: down within two intervals
            await wait_until(lambda: link.health != [True], "the silent node to be down", 30)
            assert trio.current_time() - silent <= 2.0 + 0.002  # wait_until looks every 1 ms
            assert link.health == [True, False]
        nursery.cancel_scope.cancel()


@POLLER
async def test_calls_past_max_in_flight_are_refused(
    poller: bool, autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(upstream, "MAX_IN_FLIGHT", 3)
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            attempts = [link.submit(i) for i in range(3)]
            with pytest.raises(Unavailable, match="too many calls in flight"):
                link.submit(3)
            await wait_until(lambda: len(node.held) == 3, "the calls")
            await node.answer(lambda held: held[:1])
            await finished(attempts[0])
            fourth = link.submit(4)  # a slot came back
            with pytest.raises(Unavailable, match="too many calls in flight"):
                link.submit(5)
            await wait_until(lambda: len(node.held) == 3, "the fourth call")
            await node.answer()
            assert [answer_of(await finished(a)) for a in [*attempts, fourth]] == [0, 1, 2, 4]
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_retired_link_takes_no_call_and_closes_once_answered(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            attempts = [link.submit(i) for i in range(2)]
            await wait_until(lambda: len(node.held) == 2, "the calls")
            link.link.retire()
            with pytest.raises(Unavailable, match="node removed from the cluster"):
                link.submit(9)
            await node.answer(lambda held: held[:1])
            assert answer_of(await finished(attempts[0])) == 0
            await trio.testing.wait_all_tasks_blocked()
            assert len(node.open) == 1  # still open: a call is in flight
            await node.answer()
            assert answer_of(await finished(attempts[1])) == 1
            await wait_until(lambda: not node.open, "the link to close its connection")
            with trio.fail_after(1):
                await link.ended.wait()  # and not to reopen one
            assert node.connections == 1
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_retired_idle_link_closes_at_once(poller: bool, autojump_clock: MockClock) -> None:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            await wait_until(lambda: link.health == [True], "the connection")
            link.link.retire()
            await wait_until(lambda: not node.open, "the link to close its connection")
            with trio.fail_after(1):
                await link.ended.wait()
            assert node.connections == 1
        nursery.cancel_scope.cancel()


@POLLER
async def test_garbage_from_the_node_fails_its_calls(
    poller: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller) as link:
            waiting = link.submit("waiting", timeout=30)
            await wait_until(lambda: len(node.held) == 1, "the first call")
            node.garbage = b"HTTP/1.1 400 Bad Request\r\n\r\n"
            trigger = link.submit("trigger", timeout=30)
            for attempt in (waiting, trigger):
                await finished(attempt)
                assert isinstance(attempt.error, Unavailable)
                assert attempt.error.reason == "protocol error: message magic number not correct"
            node.hold = False
            assert answer_of(await finished(link.submit("after", timeout=30))) == "after"
            assert node.connections == 2
        nursery.cancel_scope.cancel()


@POLLER
async def test_a_reply_over_max_frame_fails_its_call_alone(
    poller: bool, autojump_clock: MockClock
) -> None:
    """A reply whose body is over the limit is skipped as it comes: its call gets an
    exception, and the connection, which carries other callers' calls, stays up."""
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=poller, max_frame=1024) as link:
            big = link.submit("x" * 100_000, timeout=30)
            small = link.submit("small", timeout=30)
            attempt = await finished(big)
            assert attempt.error is None and attempt.reply is not None
            info = attempt.reply.decoded().exception()
            assert info is not None and "over the limit (motan2.max_frame)" in info.errmsg
            assert attempt.outcome() is Outcome.UPSTREAM_ERROR
            assert answer_of(await finished(small)) == "small"
            assert node.connections == 1
        nursery.cancel_scope.cancel()


async def test_a_dead_node_is_not_reconnected_in_a_busy_loop(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With no call waiting, a dead node is tried again once an interval. A link spinning on
    reconnects would keep a task runnable and the MockClock from ever moving: past ``spin``
    connects the counter parks each one (until its connect timeout), so a spin shows as
    failed asserts below, not as a hang."""
    connects: list[float] = []  # when each connect began (MockClock time)
    spin = 100

    async def counting(host: str, port: int) -> socket.socket:
        connects.append(trio.current_time())
        if len(connects) > spin:
            await trio.sleep_forever()
        return await real_open_tcp(host, port)

    monkeypatch.setattr(upstream, "open_tcp", counting)
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        async with running_link(node.port, poller=False, interval=0.2) as link:
            await wait_until(lambda: link.health == [True], "the connection")
            node.kill()
            await wait_until(lambda: link.health == [True, False], "the node to be down")
            before = len(connects)
            await trio.sleep(1.0)  # MockClock time: five heartbeat intervals
            assert 1 <= len(connects) - before <= 10  # tried again, and not in a loop
            assert len(connects) <= spin
            gaps = [b - a for a, b in itertools.pairwise(connects)]
            assert min(gaps) >= 0.2, gaps  # never sooner than an interval after the last
        nursery.cancel_scope.cancel()


async def test_the_transport_follows_the_cluster(autojump_clock: MockClock) -> None:
    """One link per node; a node that leaves has its link retired (closed when idle) and
    takes no more calls; a node that joins gets a link."""
    nodes = [FakeNode(f"n{i}") for i in range(3)]
    health: list[tuple[str, bool]] = []
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.serve)
        n0, n1, n2 = (node.node for node in nodes)
        transport = Motan2Transport(
            [n0, n1],
            nursery,
            connect_timeout=1.0,
            heartbeat_interval=10.0,
            max_frame=1 << 20,
            poller=None,
            on_health=lambda node, up: health.append((node.address, up)),
        )
        await wait_until(lambda: len(health) == 2, "both links up")
        assert sorted(health) == sorted([(n0.address, True), (n1.address, True)])

        def run(value: str) -> Run:
            payload = Request(call_frame(value)).upstream("app")
            return Run((), payload, idempotent=True, deadline=trio.current_time() + 5)

        attempt = transport.submit(n1, run("one"), Waiter())
        assert answer_of(await finished(attempt)) == "one"
        assert attempt.reply is not None
        assert attempt.reply.decoded().meta["node"] == "n1"
        transport.apply([n2], [n0])
        assert set(transport.links) == {n1, n2}
        with pytest.raises(Unavailable, match="node removed from the cluster"):
            transport.submit(n0, run("gone"), Waiter())
        await wait_until(lambda: not nodes[0].open, "the idle retired link to close")
        await wait_until(lambda: (n2.address, True) in health, "the new link up")
        assert answer_of(await finished(transport.submit(n2, run("two"), Waiter()))) == "two"
        transport.close()
        await wait_until(lambda: not nodes[1].open and not nodes[2].open, "every link closed")
        nursery.cancel_scope.cancel()


# ------------------------------------------------------------------------------------------
# Sessions: the agent's clients


class Peer:
    """An application's connection to the agent."""

    def __init__(self, stream: trio.SocketStream, peer: str) -> None:
        self.stream = stream
        self.peer = peer
        self.decoder = FrameDecoder()

    async def send(self, *frames: Frame | bytes) -> None:
        await self.stream.send_all(
            b"".join(f if isinstance(f, bytes) else encode_frame(f) for f in frames)
        )

    async def raw_replies(self, count: int) -> list[RawFrame]:
        out: list[RawFrame] = []
        with trio.fail_after(30):
            while True:
                while len(out) < count and (item := self.decoder.next_raw()) is not NEED_DATA:
                    assert isinstance(item, RawFrame)
                    out.append(item)
                if len(out) == count:
                    return out
                data = await self.stream.receive_some(65536)
                if not data:
                    raise EOFError(f"closed after {len(out)} replies")
                self.decoder.feed(data)

    async def replies(self, count: int) -> list[Frame]:
        return [raw.decoded() for raw in await self.raw_replies(count)]

    async def call(self, frame: Frame) -> Frame:
        await self.send(frame)
        (reply,) = await self.replies(1)
        assert reply.request_id == frame.request_id
        return reply

    async def closed(self) -> list[Frame]:
        """Every reply until the agent closes the connection."""
        out: list[Frame] = []
        with trio.fail_after(30):
            while True:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    data = b""
                self.decoder.feed(data)
                while isinstance(item := self.decoder.next_raw(), RawFrame):
                    out.append(item.decoded())
                if not data:
                    return out

    async def aclose(self) -> None:
        await self.stream.aclose()


@dataclass
class Agent:
    runtime: Motan2Agent
    nursery: trio.Nursery
    dispatched: bool
    _count: list[int] = field(default_factory=lambda: [0])

    async def connect(self) -> Peer:
        ours, theirs = socket.socketpair()
        ours.setblocking(False)
        theirs.setblocking(False)
        self._count[0] += 1
        name = f"app:{self._count[0]}"
        self.nursery.start_soon(self.runtime.handle, SocketTransport(theirs, name))
        await wait_until(lambda: self.session_of(name) is not None, "the session")
        session = self.session_of(name)
        assert session is not None
        if self.dispatched:
            await wait_until(lambda: session.dispatched, "the session to be dispatched")
        return Peer(trio.SocketStream(trio.socket.from_stdlib_socket(ours)), name)

    def session_of(self, name: str) -> Motan2Session | None:
        for session in self.runtime.sessions.values():
            if session.transport.peer == name:
                assert isinstance(session, Motan2Session)
                return session
        return None

    def policies(self, cluster: str) -> Any:
        return self.runtime.clusters[cluster].policies


def motan2_cluster(
    service: str,
    nodes: list[FakeNode],
    *,
    group: str | None = None,
    version: str | None = None,
    governance: dict[str, Any] | None = None,
    timeout: str = "5s",
) -> dict[str, Any]:
    settings: dict[str, Any] = {"service": service}
    if group is not None:
        settings["group"] = group
    if version is not None:
        settings["version"] = version
    return {
        "protocol": "motan2",
        "motan2": settings,
        "groups": {"a": [f"127.0.0.1:{node.port}" for node in nodes]},
        "governance": {"operations": {"echo": {"idempotent": True}}, **(governance or {})},
        "backend": {"command_timeout": timeout, "connect_timeout": "1s"},
    }


def agent_config(
    clusters: dict[str, dict[str, Any]],
    *,
    export: dict[str, FakeNode] | None = None,
    **agent: Any,
) -> Config:
    side: dict[str, Any] = {"client": "127.0.0.1:0", "heartbeat_interval": "10s", **agent}
    if export is not None:
        side["server"] = "127.0.0.1:0"
        side["export"] = {service: f"127.0.0.1:{node.port}" for service, node in export.items()}
    return parse_config({"motan2": side, "clusters": clusters}, Path("test.yaml"))


@asynccontextmanager
async def running_agent(
    config: Config, *, dispatched: bool, server: bool = False
) -> AsyncIterator[Agent]:
    """The client side (or the server side) of ``config``'s agent, run in this process:
    with its poller (``dispatched``) or only its backend."""
    assert config.motan2 is not None
    async with trio.open_nursery() as nursery:
        runtime: Motan2Agent
        if server:
            runtime = ServerAgent(config.motan2, nursery)
        else:
            clusters = [c for c in config.clusters.values() if c.motan2 is not None]
            runtime = ClientAgent(config.motan2, clusters, nursery, source="app")
        if dispatched:
            nursery.start_soon(runtime.run)
            await wait_until(lambda: runtime.poller.running, "the poller to run")
        else:
            nursery.start_soon(runtime.run_backend)
        yield Agent(runtime, nursery, dispatched)
        runtime.close()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def serving(*nodes: FakeNode) -> AsyncIterator[trio.Nursery]:
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.serve)
        yield nursery
        nursery.cancel_scope.cancel()


DISPATCHED = pytest.mark.parametrize("dispatched", [True, False], ids=["poller", "task"])


def unread(session: Motan2Session) -> bytes:
    """What the client sent that the agent has not read: still in the agent's end of the
    socketpair (peeked, so left there)."""
    sock = session.transport.sock
    assert sock is not None
    try:
        return sock.recv(1 << 20, socket.MSG_PEEK)
    except BlockingIOError:
        return b""


def error_of(frame: Frame) -> ErrorInfo:
    assert frame.response and frame.is_exception
    info = frame.exception()
    assert info is not None
    return info


@DISPATCHED
async def test_routing_by_service_group_and_version(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    one, ga, gb = FakeNode("one"), FakeNode("ga"), FakeNode("gb")
    config = agent_config(
        {
            "echo": motan2_cluster(SERVICE, [one], group="g"),
            "two-a": motan2_cluster("svc.Two", [ga], group="ga"),
            "two-b": motan2_cluster("svc.Two", [gb], group="gb"),
            "versioned": motan2_cluster("svc.V", [one], version="1.0"),
        }
    )
    async with serving(one, ga, gb), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        routed: list[tuple[dict[str, Any], str]] = [
            (dict(), "one"),
            (dict(group="g"), "one"),
            (dict(service="svc.Two", group="ga"), "ga"),
            (dict(service="svc.Two", group="gb"), "gb"),
            (dict(service="svc.V"), "one"),
            (dict(service="svc.V", version="1.0"), "one"),
            (dict(service="svc.V", group="any"), "one"),
        ]
        for i, (names, node) in enumerate(routed):
            reply = await client.call(call_frame(i, request_id=100 + i, **names))
            assert value_of(reply) == i
            assert reply.meta["node"] == node, names
        not_found: list[tuple[dict[str, Any], str]] = [
            (dict(group="other"), f"service={SERVICE}, group=other, version=(any)"),
            (dict(service="svc.Two"), "service=svc.Two, group=(none), version=(any)"),
            (dict(service="svc.V", version="2.0"), "service=svc.V, group=(none), version=2.0"),
            (dict(service="nope"), "service=nope, group=(none), version=(any)"),
        ]
        for i, (names, text) in enumerate(not_found):
            reply = await client.call(call_frame(i, request_id=200 + i, **names))
            assert error_of(reply) == ErrorInfo(400, f"cluster not found. cluster: {text}", 1)
            assert reply.proxy
        no_path = Frame(request_id=300, meta={"M_m": "echo"})
        assert error_of(await client.call(no_path)).errmsg == (
            "cluster not found. cluster: service=(no M_p), group=(none), version=(any)"
        )
        assert len(one.requests) == 5 and len(ga.requests) == len(gb.requests) == 1


@DISPATCHED
@pytest.mark.parametrize("caller_id", [0, 12345, 2**63, 2**64 - 1])
async def test_the_callers_id_comes_back_and_the_reply_is_relayed_as_is(
    dispatched: bool, caller_id: int, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        frame = call_frame("payload", request_id=caller_id, meta={"x-app": "kept"})
        await client.send(frame)
        (reply,) = await client.raw_replies(1)
        assert reply.request_id == caller_id
        (sent,) = node.requests
        assert sent.request_id not in (0, caller_id)  # the link's own per-hop id
        assert sent.proxy
        signed = struct.unpack(">q", struct.pack(">Q", caller_id))[0]
        assert sent.meta[META_REQUEST_ID] == str(signed)
        assert sent.meta[META_SOURCE] == "app"
        assert sent.meta["x-app"] == "kept" and sent.body == frame.body
        # Byte for byte what the node wrote, with the caller's id.
        assert reply.data == with_request_id(node.sent[-1], caller_id)
        # A caller's own M_rid and M_s are kept.
        mine = call_frame("x", request_id=7, meta={META_REQUEST_ID: "99", META_SOURCE: "me"})
        assert value_of(await client.call(mine)) == "x"
        assert node.requests[-1].meta[META_REQUEST_ID] == "99"
        assert node.requests[-1].meta[META_SOURCE] == "me"


@DISPATCHED
async def test_many_calls_in_flight_answered_out_of_order(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        clients = [await agent.connect() for _ in range(2)]
        for c, client in enumerate(clients):
            await client.send(*(call_frame(f"{c}/{i}", request_id=i) for i in range(50)))
        await wait_until(lambda: len(node.held) == 100, "every call at the node")
        await node.answer(lambda held: held[::-1])
        for c, client in enumerate(clients):
            replies = await client.replies(50)
            assert sorted((r.request_id, value_of(r)) for r in replies) == sorted(
                (i, f"{c}/{i}") for i in range(50)
            )
            assert [r.request_id for r in replies] == list(range(49, -1, -1))


async def test_the_replies_of_one_node_read_leave_in_one_send(autojump_clock: MockClock) -> None:
    """Dispatched: the replies a poller round makes for a client go out together at its end,
    not one ``send`` each."""
    node = FakeNode()
    node.hold = True
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=True) as agent:
        client = await agent.connect()
        session = agent.session_of(client.peer)
        assert session is not None
        sends: list[int] = []
        send = session.transport.send_nowait

        def counted(data: bytes | bytearray | memoryview) -> int:
            sends.append(len(data))
            return send(data)

        session.transport.send_nowait = counted  # type: ignore[method-assign]
        await client.send(*(call_frame(i, request_id=i) for i in range(32)))
        await wait_until(lambda: len(node.held) == 32, "every call at the node")
        await node.answer()  # one write: the agent reads them in one round
        replies = await client.replies(32)
        assert sorted(r.request_id for r in replies) == list(range(32))
        assert len(sends) == 1


@DISPATCHED
async def test_both_sides_answer_heartbeats(dispatched: bool, autojump_clock: MockClock) -> None:
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])}, export={SERVICE: node})
    java_style = bytes.fromhex("f1f110080800000000000004d20000000000000000")
    async with serving(node):
        for server in (False, True):
            async with running_agent(config, dispatched=dispatched, server=server) as agent:
                client = await agent.connect()
                await client.send(heartbeat_request(77), java_style)
                first, second = await client.raw_replies(2)
                assert first.data == heartbeat_reply(77)
                assert second.data == heartbeat_reply(1234)


@DISPATCHED
async def test_the_server_side_forwards_and_refuses_heartbeats_when_told(
    dispatched: bool, autojump_clock: MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])}, export={SERVICE: node})
    async with serving(node), running_agent(config, dispatched=dispatched, server=True) as agent:
        assert isinstance(agent.runtime, ServerAgent)
        client = await agent.connect()
        reply = await client.call(call_frame("via server", request_id=5))
        assert value_of(reply) == "via server"
        assert node.requests[-1].meta[META_REQUEST_ID] == "5"
        assert META_SOURCE not in node.requests[-1].meta  # the server side has no app name
        other = await client.call(call_frame(1, service="not.Exported", request_id=6))
        assert error_of(other) == ErrorInfo(404, "provider not exist serviceKey=not.Exported", 1)

        agent.runtime.set_heartbeats(False)
        assert "no longer answering" in caplog.text
        await client.send(heartbeat_request(8))
        assert await client.closed() == []  # closed without a reply
        await wait_until(lambda: not agent.runtime.sessions, "the session to end")
        # Calls are still served while heartbeats are refused.
        client = await agent.connect()
        assert value_of(await client.call(call_frame("still", request_id=9))) == "still"
        agent.runtime.set_heartbeats(True)
        await client.send(heartbeat_request(10))
        (beat,) = await client.raw_replies(1)
        assert beat.data == heartbeat_reply(10)


@DISPATCHED
async def test_a_concurrency_limit_refuses_and_gets_its_slot_back(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    config = agent_config(
        {"echo": motan2_cluster(SERVICE, [node], governance={"limit": {"concurrency": 1}})}
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        limiter = agent.policies("echo").limiter
        client = await agent.connect()
        await client.send(call_frame("first", request_id=1))
        await wait_until(lambda: len(node.held) == 1, "the first call")
        refused = await client.call(call_frame("second", request_id=2))
        assert error_of(refused) == ErrorInfo(
            503, "concurrency limit of cluster echo (1) exceeded", 1
        )
        assert len(node.requests) == 1
        await node.answer()
        (first,) = await client.replies(1)
        assert (first.request_id, value_of(first)) == (1, "first")
        assert limiter.statistics(0).cluster.concurrency.in_flight == 0
        node.hold = False
        assert value_of(await client.call(call_frame("third", request_id=3))) == "third"
        assert limiter.statistics(0).cluster.concurrency.in_flight == 0


@DISPATCHED
async def test_a_call_that_times_out_gets_an_agent_error_and_gives_its_slot_back(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    config = agent_config(
        {
            "echo": motan2_cluster(
                SERVICE, [node], timeout="1s", governance={"limit": {"concurrency": 1}}
            )
        }
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        start = trio.current_time()
        reply = await client.call(call_frame("slow", method="put", request_id=4))
        assert trio.current_time() - start == pytest.approx(1.0, abs=0.01)
        info = error_of(reply)
        assert info.errcode == 400 and info.errtype == ERRTYPE_SERVICE
        assert info.errmsg == (
            f"call echo failed: backend 127.0.0.1:{node.port}: "
            "no reply in time (backend.command_timeout)"
        )
        assert agent.policies("echo").limiter.statistics(0).cluster.concurrency.in_flight == 0
        node.hold = False
        assert value_of(await client.call(call_frame("next", request_id=5))) == "next"


@DISPATCHED
async def test_a_rate_limit_refuses_until_tokens_come_back(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    config = agent_config(
        {"echo": motan2_cluster(SERVICE, [node], governance={"limit": {"rate": 1, "burst": 2}})}
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        for i in range(2):
            assert value_of(await client.call(call_frame(i, request_id=i))) == i
        refused = await client.call(call_frame(2, request_id=2))
        assert error_of(refused) == ErrorInfo(503, "rate limit of cluster echo (1/s) exceeded", 1)
        await trio.sleep(1.0)  # MockClock time: one token back
        assert value_of(await client.call(call_frame(3, request_id=3))) == 3
        assert len(node.requests) == 3


@DISPATCHED
@pytest.mark.parametrize("serialization", [Serialization.SIMPLE, Serialization.MSGPACK])
async def test_degrade_switches_answer_without_a_node(
    dispatched: bool, serialization: int, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    switches = {
        "err": {"mode": "error"},
        "miss": {"mode": "miss"},
        "fallback": {"mode": "fallback", "value": "n/a"},
        "readonly": {"mode": "readonly"},
    }
    config = agent_config(
        {
            name: motan2_cluster(name, [node], governance={"switch": switch})
            for name, switch in switches.items()
        }
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()

        async def ask(service: str, method: str = "echo", **kw: Any) -> Frame:
            frame = call_frame("v", service=service, method=method, **kw)
            return await client.call(frame)

        for method in ("echo", "put"):  # a read and a write
            assert error_of(await ask("err", method, serialization=serialization)) == ErrorInfo(
                503, "degraded by switch err (mode error): set in config", 1
            )
            miss = await ask("miss", method, serialization=serialization)
            assert not miss.is_exception and miss.body == b""
            assert miss.serialization == serialization and value_of(miss) is None
            fallback = await ask("fallback", method, serialization=serialization)
            assert fallback.serialization == serialization and value_of(fallback) == "n/a"
        json_request = request(9, "fallback", "echo", b'"v"', serialization=Serialization.JSON)
        json_fallback = await client.call(json_request)
        assert json_fallback.request_id == 9
        assert "message serialize not found" in error_of(json_fallback).errmsg
        assert error_of(await ask("readonly", "put", serialization=serialization)) == ErrorInfo(
            503, "read-only by switch readonly: writes are refused: set in config", 1
        )
        assert node.requests == []
        assert value_of(await ask("readonly", "echo", serialization=serialization)) == "v"
        assert len(node.requests) == 1


def _header(meta_size: int, request_id: int, flags: int = 0) -> bytes:
    return struct.pack(">HBBBQI", 0xF1F1, flags, 0x08, 0x30, request_id, meta_size)


PROTOCOL_ERRORS = {
    # name: (bytes after a heartbeat, the exception reply's id and errmsg, or None)
    "response-frame": (encode_frame(response(5, b"x")), None),
    "bad-magic": (b"\xf1\xf0" + bytes(19), None),
    "motan1": (bytes.fromhex("f1f100003000000000000000010000000000000000"), None),
    "meta-over-limit": (
        _header(2000, 77),
        (77, "transport data content length over of limit, size: 2000 > 1024"),
    ),
    "body-over-limit": (
        _header(3, 78) + b"k\nv" + struct.pack(">I", 5000),
        (78, "transport data content length over of limit, size: 5000 > 1024"),
    ),
    "odd-meta": (
        _header(7, 2**64 - 1) + b"M_p\nx\ny" + struct.pack(">I", 0),
        (2**64 - 1, "decode meta data fail: metadata not paired"),
    ),
    "response-meta-over-limit": (_header(2000, 79, flags=0x01), None),
}


@DISPATCHED
@pytest.mark.parametrize("case", list(PROTOCOL_ERRORS))
async def test_a_protocol_error_closes_the_connection(
    dispatched: bool, case: str, autojump_clock: MockClock
) -> None:
    """What came before is answered; then an exception reply when the bad frame is a request
    whose id was read; then the close. Other clients are not disturbed."""
    bad, expected = PROTOCOL_ERRORS[case]
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])}, max_frame="1KiB")
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        bystander = await agent.connect()
        client = await agent.connect()
        await client.send(heartbeat_request(1), bad)
        replies = await client.closed()
        assert replies[0] == heartbeat_response(1)
        if expected is None:
            assert len(replies) == 1
        else:
            request_id, errmsg = expected
            (error,) = replies[1:]
            assert error.request_id == request_id
            assert error_of(error) == ErrorInfo(400, errmsg, 1)
        await wait_until(lambda: len(agent.runtime.sessions) == 1, "the session to end")
        assert value_of(await bystander.call(call_frame("ok"))) == "ok"


@DISPATCHED
async def test_a_bad_frame_after_a_call_in_flight(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    """A client closed for a protocol error while its call is in flight: the answer that
    comes later is dropped quietly and the limit slot comes back."""
    node = FakeNode()
    node.hold = True
    config = agent_config(
        {"echo": motan2_cluster(SERVICE, [node], governance={"limit": {"concurrency": 5}})}
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        await client.send(call_frame("pending", request_id=1))
        await wait_until(lambda: len(node.held) == 1, "the call")
        await client.send(b"GET / HTTP/1.1\r\n\r\n")
        assert await client.closed() == []
        await wait_until(lambda: not agent.runtime.sessions, "the session to end")
        await node.answer()
        await trio.testing.wait_all_tasks_blocked()
        limiter = agent.policies("echo").limiter
        assert limiter.statistics(0).cluster.concurrency.in_flight == 0


async def test_the_per_client_cap_stops_reading_a_client(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At ``_MAX_CALLS_PER_CLIENT`` calls in flight the session is busy: the poller reads
    nothing more of it until one is answered."""
    monkeypatch.setattr(agent_module, "_MAX_CALLS_PER_CLIENT", 2)
    node = FakeNode()
    node.hold = True
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=True) as agent:
        client = await agent.connect()
        other = await agent.connect()
        session = agent.session_of(client.peer)
        assert session is not None
        await client.send(call_frame(0, request_id=0))
        await wait_until(lambda: len(node.held) == 1, "the first call")
        await client.send(call_frame(1, request_id=1))
        await wait_until(lambda: len(node.held) == 2, "the second call")
        assert session.in_flight == 2 and session.busy
        await client.send(call_frame(2, request_id=2))
        await trio.testing.wait_all_tasks_blocked()  # the poller had its chance to read it
        assert len(node.held) == 2  # not read: still whole in the socket
        assert unread(session) == encode_frame(call_frame(2, request_id=2))
        await other.send(call_frame("other", request_id=9))  # other clients are read
        await wait_until(lambda: len(node.held) == 3, "the other client's call")
        await node.answer(lambda held: [held[2]])
        assert value_of((await other.replies(1))[0]) == "other"
        await node.answer(lambda held: held[:1])
        (first,) = await client.replies(1)
        assert first.request_id == 0
        await wait_until(lambda: len(node.held) == 2, "the third call, read once one was done")
        assert session.in_flight == 2
        await node.answer()
        replies = await client.replies(2)
        assert sorted(r.request_id for r in replies) == [1, 2]
        assert session.in_flight == 0 and not session.busy


async def test_the_per_client_cap_holds_without_a_poller(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(agent_module, "_MAX_CALLS_PER_CLIENT", 2)
    node = FakeNode()
    node.hold = True
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=False) as agent:
        client = await agent.connect()
        session = agent.session_of(client.peer)
        assert session is not None
        await client.send(call_frame(0, request_id=0))  # one read each
        await wait_until(lambda: len(node.held) == 1, "the first call")
        await client.send(call_frame(1, request_id=1))
        await wait_until(lambda: len(node.held) == 2, "the second call")
        assert session.in_flight == 2 and session.busy
        await client.send(call_frame(2, request_id=2))
        await trio.testing.wait_all_tasks_blocked()  # the session's task had its chance
        assert len(node.held) == 2  # not read: still whole in the socket
        assert unread(session) == encode_frame(call_frame(2, request_id=2))
        await node.answer(lambda held: held[:1])
        (first,) = await client.replies(1)
        assert first.request_id == 0
        await wait_until(lambda: len(node.held) == 2, "the third call, read once one was done")
        assert unread(session) == b""
        await node.answer()
        replies = await client.replies(2)
        assert sorted(r.request_id for r in replies) == [1, 2]
        assert session.in_flight == 0 and not session.busy


@DISPATCHED
async def test_a_client_leaving_with_calls_in_flight(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    node.hold = True
    config = agent_config(
        {"echo": motan2_cluster(SERVICE, [node], governance={"limit": {"concurrency": 10}})}
    )
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        limiter = agent.policies("echo").limiter
        client = await agent.connect()
        await client.send(*(call_frame(i, request_id=i) for i in range(3)))
        await wait_until(lambda: len(node.held) == 3, "the calls")
        assert limiter.statistics(0).cluster.concurrency.in_flight == 3
        await client.aclose()
        await wait_until(lambda: not agent.runtime.sessions, "the session to end")
        await node.answer()
        await trio.testing.wait_all_tasks_blocked()
        assert limiter.statistics(0).cluster.concurrency.in_flight == 0
        link = agent.runtime.clusters["echo"].transport.links[
            agent.policies("echo").topology.nodes[0]
        ]
        assert link.in_flight == 0
        node.hold = False
        fresh = await agent.connect()
        assert value_of(await fresh.call(call_frame("after"))) == "after"
        assert node.connections == 1  # the node connection was never disturbed


@DISPATCHED
async def test_a_node_down_by_heartbeats_gets_no_calls(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    silent, healthy = FakeNode("silent"), FakeNode("healthy")
    config = agent_config(
        {"echo": motan2_cluster(SERVICE, [silent, healthy])}, heartbeat_interval="1s"
    )
    async with serving(silent, healthy), running_agent(config, dispatched=dispatched) as agent:
        policies = agent.policies("echo")
        by_port = {node.port: node for node in policies.topology.nodes}
        links = agent.runtime.clusters["echo"].transport.links.values()
        await wait_until(lambda: all(link.up for link in links), "both nodes' first heartbeat")
        assert silent.heartbeats_seen == healthy.heartbeats_seen == 1
        assert policies.down == set()
        silent.heartbeats = "ignore"
        await wait_until(lambda: policies.down == {by_port[silent.port]}, "silent down", 30)
        client = await agent.connect()
        for i in range(20):
            method = "echo" if i % 2 else "put"
            reply = await client.call(call_frame(i, method=method, request_id=i))
            assert reply.meta["node"] == "healthy"
        assert silent.requests == []
        silent.heartbeats = "answer"
        await wait_until(lambda: policies.down == set(), "silent back up", 30)
        served = set()
        for i in range(40):
            served.add((await client.call(call_frame(i, request_id=i))).meta["node"])
        assert served == {"silent", "healthy"}


async def test_a_memory_stream_client_is_served(autojump_clock: MockClock) -> None:
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=True) as agent:
        ours, theirs = trio.testing.memory_stream_pair()
        agent.nursery.start_soon(agent.runtime.handle, StreamTransport(theirs))
        await ours.send_all(encode_frame(heartbeat_request(3)))
        with trio.fail_after(5):
            assert await ours.receive_some(1024) == heartbeat_reply(3)


@DISPATCHED
async def test_a_client_that_reads_slowly_gets_every_reply(
    dispatched: bool, autojump_clock: MockClock
) -> None:
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=dispatched) as agent:
        client = await agent.connect()
        session = agent.session_of(client.peer)
        assert session is not None
        sock = session.transport.sock
        assert sock is not None
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        count = 2000

        async def pipeline() -> None:
            try:
                for i in range(0, count, 100):
                    await client.send(*(heartbeat_request(n) for n in range(i, i + 100)))
            except trio.BrokenResourceError:
                pass

        async with trio.open_nursery() as nursery:
            nursery.start_soon(pipeline)
            # The client does not read until everything else is stuck: the replies that
            # did not fit in the socket wait in the agent, which stops reading the client.
            await trio.testing.wait_all_tasks_blocked()
            assert session.writing and session.busy
            replies = await client.raw_replies(count)
        assert [r.request_id for r in replies] == list(range(count))


async def test_a_service_may_be_idempotent_as_a_whole_but_a_method_not() -> None:
    cluster = motan2_cluster("svc", [], governance={"operations": {"debit": {"idempotent": False}}})
    cluster["groups"] = {"a": ["127.0.0.1:1"]}
    cluster["motan2"]["idempotent"] = True
    config = agent_config({"c": cluster})
    async with running_agent(config, dispatched=False) as agent:
        service = agent.runtime.clusters["c"]
        assert service.operation("echo").idempotent is True
        assert service.operation("debit").idempotent is False
        assert service.operation("Debit").write is True
    default = agent_config({"c": {**cluster, "motan2": {"service": "svc"}}})
    async with running_agent(default, dispatched=False) as agent:
        assert agent.runtime.clusters["c"].operation("anything").idempotent is False


async def test_a_client_that_does_not_read_its_replies_is_closed(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Unread replies are bounded per client (one largest reply on top of the bound); past
    it the client is closed, and other clients are served."""
    monkeypatch.setattr(agent_module, "_MAX_UNSENT", 64 * 1024)
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])}, max_frame="64KiB")
    async with serving(node), running_agent(config, dispatched=True) as agent:
        greedy = await agent.connect()
        greedy.stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        big = "x" * 30_000

        async def pipeline() -> None:
            with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
                await greedy.send(*(call_frame(big, request_id=i) for i in range(200)))

        agent.nursery.start_soon(pipeline)
        await wait_until(
            lambda: "does not read its replies" in caplog.text, "the greedy client closed", 30
        )
        other = await agent.connect()
        assert value_of(await other.call(call_frame("fine"))) == "fine"


async def test_a_request_over_the_limit_once_forwarded_is_refused_alone(
    autojump_clock: MockClock,
) -> None:
    """M_rid and M_s make the meta longer: a request that fits the client side but would
    not fit the next agent is answered with an error, never sent (the next agent would
    close the connection every client shares)."""
    node = FakeNode()
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])}, max_frame="1KiB")
    async with serving(node), running_agent(config, dispatched=True) as agent:
        client = await agent.connect()
        frame = call_frame("x", request_id=5)
        room = 1024 - len(encode_meta(frame.meta)) - len("\nz\n")
        fat = call_frame("x", request_id=5, meta={"z": "y" * room})
        assert len(encode_meta(fat.meta)) == 1024
        reply = await client.call(fat)
        assert reply.request_id == 5
        assert "meta over of limit" in error_of(reply).errmsg
        assert value_of(await client.call(call_frame("after", request_id=6))) == "after"
    assert [value_of(f) for f in node.requests] == ["after"]


async def test_the_server_side_never_refuses_a_call_for_callers_mistakes(
    autojump_clock: MockClock,
) -> None:
    """The local process is the server side's only node: unknown methods (service
    exceptions) open no breaker there."""
    service = Motan2Service()
    service.register(SERVICE, "hello", _hello)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(service.serve, "127.0.0.1", 0)
        local = FakeNode()
        local.port = port  # the service, not the fake node, serves the export
        config = agent_config({"echo": motan2_cluster(SERVICE, [local])}, export={SERVICE: local})
        async with running_agent(config, dispatched=True, server=True) as agent:
            client = await agent.connect()
            for i in range(30):
                reply = await client.call(call_frame("x", method="nope", request_id=i))
                assert error_of(reply).errcode == 500
            assert value_of(await client.call(call_frame("x", method="hello"))) == "hello x"
        nursery.cancel_scope.cancel()


async def _hello(name: str) -> str:
    return "hello " + name


async def test_request_bytes_in_flight_stop_reading_a_client(
    autojump_clock: MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Requests waiting for a slow node are bounded per client by their bytes too: past
    ``_MAX_IN_FLIGHT_BYTES`` the session is busy and the poller reads nothing more of it."""
    monkeypatch.setattr(agent_module, "_MAX_IN_FLIGHT_BYTES", 50_000)
    node = FakeNode()
    node.hold = True
    config = agent_config({"echo": motan2_cluster(SERVICE, [node])})
    async with serving(node), running_agent(config, dispatched=True) as agent:
        client = await agent.connect()
        session = agent.session_of(client.peer)
        assert session is not None
        calls = [call_frame("x" * 30_000, request_id=i) for i in range(5)]  # 30 kB each
        await client.send(calls[0])  # one read each: the second one takes it past the bound
        await wait_until(lambda: len(node.held) == 1, "the first call")
        await client.send(calls[1])
        await wait_until(lambda: len(node.held) == 2, "the second call")
        assert session.busy and session.in_flight_bytes > 50_000
        await client.send(*calls[2:])
        await trio.testing.wait_all_tasks_blocked()  # the poller had its chance to read them
        assert len(node.held) == 2 and session.busy  # not read: still whole in the socket
        assert unread(session) == b"".join(encode_frame(frame) for frame in calls[2:])
        await node.answer()
        # Read on once answered (the bound is checked between reads, not between frames).
        await wait_until(lambda: len(node.requests) == 5, "the rest of the calls", 30)
        await node.answer()
        replies = await client.replies(5)
        assert sorted(r.request_id for r in replies) == list(range(5))
        assert session.in_flight_bytes == 0 and not session.busy
