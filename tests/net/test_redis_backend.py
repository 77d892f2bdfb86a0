"""The Redis backend without redis-server: the multiplexed connection over a socketpair (the
test plays the node on the other end), and the node pool against an in-process fake node."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from resmesh.call import Outcome
from resmesh.config import BackendConfig
from resmesh.net.backend.errors import BackendError
from resmesh.net.backend.redis_conn import RedisConnection
from resmesh.net.backend.redis_mux import MuxConnection, Pending
from resmesh.net.backend.redis_pool import NodePool
from resmesh.net.poller import Poller
from resmesh.policies.waiting import Waiter, wait_first
from resmesh.protocols.resp import framing
from tests.net.fake_node import FakeNode


@pytest.fixture(params=["compiled scanner", "python framer"], autouse=True)
def reply_scanner(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test runs with the compiled reply scanner and without it (a machine where
    resmesh was installed without a C compiler), where the Python framer frames everything."""
    if request.param == "python framer":
        monkeypatch.setattr(framing, "scan_replies", None)


@pytest.fixture(params=["reader task", "poller"])
def polled(request: pytest.FixtureRequest) -> bool:
    """Every mux test runs twice: replies read by the connection's reader task, and by a
    cluster's poller (the mode of a gateway whose sessions the poller serves)."""
    return bool(request.param == "poller")


@asynccontextmanager
async def _mux(polled: bool) -> AsyncIterator[tuple[MuxConnection, trio.SocketStream]]:
    """A multiplexed connection whose node is the test: write replies to the stream."""
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    node = trio.SocketStream(trio.socket.from_stdlib_socket(theirs))
    poller = Poller() if polled else None
    async with trio.open_nursery() as nursery:
        if poller is not None:
            nursery.start_soon(poller.run)
            await trio.testing.wait_all_tasks_blocked()
        mux = MuxConnection(RedisConnection(ours, "test:1", 0, 2), poller)
        nursery.start_soon(mux.run)
        yield mux, node
        mux.close()
        await node.aclose()
        nursery.cancel_scope.cancel()


async def _submit(mux: MuxConnection, count: int, deadline: float = math.inf) -> Pending:
    pending = Pending(count, deadline, Waiter())
    mux.enqueue(pending, b"*1\r\n$4\r\nPING\r\n" * count)
    return pending


async def _done(pending: Pending) -> Pending:
    with trio.fail_after(5):
        done = await wait_first([pending], pending.waiter)
    assert done is pending
    return pending


async def test_replies_go_to_submissions_in_order_however_they_are_split(polled: bool) -> None:
    async with _mux(polled) as (mux, node):
        first, second = await _submit(mux, 2), await _submit(mux, 1)
        assert await node.receive_some(1000) == b"*1\r\n$4\r\nPING\r\n" * 3
        replies = b"+A\r\n$2\r\nbb\r\n:3\r\n"
        for byte in replies:
            await node.send_all(bytes([byte]))
        await _done(first)
        await _done(second)
        assert b"".join(first.replies) == b"+A\r\n$2\r\nbb\r\n"
        assert second.replies == [b":3\r\n"]
        assert (first.error, second.error, mux.outstanding) == (None, None, 0)


async def test_a_submission_s_outcome_blames_the_node_only_for_its_own_errors(polled: bool) -> None:
    """The reader counts error replies as it frames them; the outcome reads them only then:
    WRONGTYPE is the caller's (OK for the node), LOADING the node's, however the replies of a
    submission arrive (one read, or one at a time through the Python framer's resumption)."""
    cases = [
        (b"+A\r\n:1\r\n", Outcome.OK),
        (b"-WRONGTYPE Operation\r\n:1\r\n", Outcome.OK),
        (b":1\r\n-LOADING Redis is loading\r\n", Outcome.UPSTREAM_ERROR),
        (b"*1\r\n-LOADING inside an array\r\n:1\r\n", Outcome.OK),  # EXEC's, not the node's
    ]
    async with _mux(polled) as (mux, node):
        for replies, outcome in cases:
            for pieces in ([replies], [bytes([byte]) for byte in replies]):
                pending = await _submit(mux, 2)
                await node.receive_some(1000)
                for piece in pieces:
                    await node.send_all(piece)
                await _done(pending)
                assert pending.outcome() is outcome, replies


async def test_one_read_s_replies_are_blamed_on_the_submission_they_answer(polled: bool) -> None:
    """Replies of several submissions in one read are handed out in one scan: a node error
    counts only against the submission whose reply it is, wherever it sits in the read."""
    async with _mux(polled) as (mux, node):
        for replies, outcomes in [
            (b":1\r\n:2\r\n-LOADING x\r\n", [Outcome.OK, Outcome.UPSTREAM_ERROR]),
            (b"-LOADING x\r\n:2\r\n:3\r\n", [Outcome.UPSTREAM_ERROR, Outcome.OK]),
            (b":1\r\n-LOADING x\r\n:3\r\n", [Outcome.UPSTREAM_ERROR, Outcome.OK]),
        ]:
            first, second = await _submit(mux, 2), await _submit(mux, 1)
            await node.receive_some(1000)
            await node.send_all(replies)
            await _done(first)
            await _done(second)
            assert [first.outcome(), second.outcome()] == outcomes, replies
            assert b"".join(first.replies + second.replies) == replies


async def test_a_node_that_closes_fails_every_waiting_submission(polled: bool) -> None:
    async with _mux(polled) as (mux, node):
        waiting = [await _submit(mux, 1) for _ in range(3)]
        await node.aclose()
        for pending in waiting:
            await _done(pending)
            assert isinstance(pending.error, BackendError)
            assert "closed by the node" in pending.error.reason
        with pytest.raises(BackendError, match="connection closed"):
            await _submit(mux, 1)


async def test_garbage_from_the_node_fails_the_connection(polled: bool) -> None:
    async with _mux(polled) as (mux, node):
        pending = await _submit(mux, 1)
        await node.send_all(b"?what\r\n")
        await _done(pending)
        assert pending.error is not None and "protocol error" in pending.error.reason
        assert mux.closed


async def test_a_reply_without_a_request_fails_the_connection(polled: bool) -> None:
    async with _mux(polled) as (mux, node):
        await node.send_all(b"+surprise\r\n")
        with trio.fail_after(5):
            while not mux.closed:
                await trio.sleep(0.001)


async def test_an_unanswered_submission_fails_at_its_deadline(
    polled: bool,
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _mux(polled) as (mux, _):
        pending = await _submit(mux, 1, deadline=trio.current_time() + 1.0)
        await _done(pending)
        assert pending.error is not None and "no reply in time" in pending.error.reason
        assert trio.current_time() == pytest.approx(1.0)
        assert mux.closed  # its replies would be read as answers to the next request


async def test_too_many_commands_in_flight_are_refused(polled: bool) -> None:
    async with _mux(polled) as (mux, _):
        with pytest.raises(BackendError, match="too many commands in flight"):
            mux.enqueue(Pending(100_001, math.inf, Waiter()), b"")


# -- the pool -----------------------------------------------------------------------------------


@asynccontextmanager
async def _pool(**backend: object) -> AsyncIterator[tuple[NodePool, FakeNode]]:
    node = FakeNode()
    async with trio.open_nursery() as nursery:
        await nursery.start(node.serve)
        pool = NodePool("127.0.0.1", node.port, BackendConfig(**backend), nursery)  # type: ignore[arg-type]
        yield pool, node
        pool.close()
        nursery.cancel_scope.cancel()


async def test_shared_connections_are_kept_per_database_and_protocol() -> None:
    async with _pool(connections=2) as (pool, node):
        first = await pool.shared(0, 2)
        second = await pool.shared(0, 2)
        assert first is not second  # round robin over two
        assert await pool.shared(0, 2) is first
        assert pool.shared_nowait(0, 2) is second
        other = await pool.shared(3, 2)
        assert other not in (first, second)
        assert [b"SELECT", b"3"] in node.received  # opened straight into its database
        assert pool.statistics().shared == 3


async def test_a_clean_dedicated_connection_is_pooled_and_a_dirty_one_closed() -> None:
    async with _pool(max_dedicated=2) as (pool, _):
        conn = await pool.acquire_dedicated(0, 2)
        pool.release(conn)
        again = await pool.acquire_dedicated(0, 2)
        assert again is conn  # reused
        again.reusable = False  # a client's SELECT or MULTI may linger on it
        pool.release(again)
        assert again.closed
        fresh = await pool.acquire_dedicated(0, 2)
        assert fresh is not conn
        pool.release(fresh)
        assert pool.statistics().dedicated_in_use == 0


async def test_callers_beyond_the_dedicated_cap_wait_then_are_refused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _pool(max_dedicated=1, connect_timeout=2.0) as (pool, _):
        held = await pool.acquire_dedicated(0, 2)
        with pytest.raises(BackendError, match="all 1 pinned connections are in use"):
            await pool.acquire_dedicated(0, 2)
        pool.release(held)
        pool.release(await pool.acquire_dedicated(0, 2))


async def test_a_stalled_handshake_fails_within_the_connect_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _pool(connect_timeout=1.0, password="pw") as (pool, node):
        node.stall = trio.Event()  # takes the connection, never answers the AUTH
        started = trio.current_time()
        with pytest.raises(BackendError, match="connect timed out"):
            await pool.shared(0, 2)
        assert trio.current_time() - started == pytest.approx(1.0)
        node.stall.set()


async def test_a_submission_without_a_connection_is_sent_once_one_is_open() -> None:
    async with _pool() as (pool, _):
        waiter = Waiter()
        pending = pool.submit(0, 2, b"*1\r\n$4\r\nPING\r\n", 1, trio.current_time() + 5, waiter)
        assert not pending.done  # the connect happens in the pool's own task
        await _done(pending)
        assert (pending.error, pending.replies) == (None, [b"+PONG\r\n"])


async def test_a_connect_that_fails_fails_the_submission(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with _pool(connect_timeout=1.0, password="pw") as (pool, node):
        node.stall = trio.Event()  # the handshake is never answered
        pending = pool.submit(0, 2, b"*1\r\n$4\r\nPING\r\n", 1, trio.current_time() + 5, Waiter())
        await _done(pending)
        assert pending.error is not None and "connect timed out" in pending.error.reason
        node.stall.set()


async def test_a_pool_retired_during_a_connect_closes_the_new_connection_once_idle() -> None:
    async with _pool(connect_timeout=5.0, password="pw") as (pool, node):
        node.stall = trio.Event()  # the handshake waits
        opened: list[MuxConnection] = []

        async def open_shared() -> None:
            opened.append(await pool.shared(0, 2))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(open_shared)
            await trio.testing.wait_all_tasks_blocked()
            pool.retire()  # the node leaves the cluster mid-connect
            node.stall.set()
        with trio.fail_after(5):
            while not opened[0].closed:
                await trio.sleep(0.001)
