"""The poller alone, over socketpairs: edge-triggered calls and hang-ups, registration,
``again`` (at the next round, after the others; from another task, without a socket event),
and ``defer`` (work queued during a round runs once all its readers have, in the poller's task;
a shared backend connection uses it to send a round's requests in one ``send`` with no
writer task waking)."""

from __future__ import annotations

import math
import select
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from resmesh.net.backend.redis_conn import RedisConnection
from resmesh.net.backend.redis_mux import MuxConnection, Pending
from resmesh.net.poller import HANG_UP, Poller
from resmesh.policies.waiting import Waiter
from tests.support.driver import wait_until

PING = b"*1\r\n$4\r\nPING\r\n"


class Recorder:
    """A poller reader that records the event masks it is called with."""

    def __init__(self) -> None:
        self.events: list[int] = []

    def __call__(self, events: int) -> None:
        self.events.append(events)


@asynccontextmanager
async def running_poller() -> AsyncIterator[Poller]:
    poller = Poller()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        await wait_until(lambda: poller.running, "the poller to run")
        yield poller
        nursery.cancel_scope.cancel()
    assert not poller.running


def socketpair() -> tuple[socket.socket, socket.socket]:
    a, b = socket.socketpair()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


async def test_poller_calls_a_reader_once_per_arrival_and_on_hang_up() -> None:
    """Edge-triggered: one call per arrival, not while bytes remain unread; the peer's
    close comes with ``HANG_UP``."""
    a, b = socketpair()
    reader = Recorder()
    with a, b:
        async with running_poller() as poller:
            poller.register(a, reader)
            b.send(b"x")
            await wait_until(lambda: len(reader.events) == 1, "a call for the first bytes")
            assert reader.events[0] & select.EPOLLIN and not reader.events[0] & HANG_UP
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader.events) == 1  # unread bytes raise no second call
            b.send(b"y")
            await wait_until(lambda: len(reader.events) == 2, "a call for the second bytes")
            b.close()
            await wait_until(lambda: len(reader.events) == 3, "a call for the hang-up")
            assert reader.events[2] & HANG_UP
            assert a.recv(16) == b"xy"
            assert a.recv(16) == b""


async def test_poller_unregister_stops_the_calls_and_is_harmless_after_close() -> None:
    a, b = socketpair()
    reader = Recorder()
    with a, b:
        async with running_poller() as poller:
            fd = poller.register(a, reader)
            assert fd == a.fileno()
            poller.unregister(fd, Recorder())  # not its reader: left registered
            b.send(b"x")
            await wait_until(lambda: len(reader.events) == 1, "a call for the bytes")
            poller.unregister(fd, reader)
            b.send(b"y")
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader.events) == 1
            # Registered again, closed, then unregistered: no error.
            poller.register(a, reader)
            a.close()
            poller.unregister(fd, reader)
            poller.unregister(fd, reader)
            await trio.testing.wait_all_tasks_blocked()
            assert len(reader.events) == 1


async def test_poller_unregister_of_a_closed_socket_leaves_its_reused_number_alone() -> None:
    """Once a socket is closed its descriptor may belong to another client: unregistering
    the old reader must not unregister the new one."""
    a, b = socketpair()
    old, new = Recorder(), Recorder()
    with b:
        async with running_poller() as poller:
            fd = poller.register(a, old)
            a.close()
            c, d = socketpair()
            with c, d:
                assert c.fileno() == fd  # the kernel hands out the lowest free number
                poller.register(c, new)
                poller.unregister(fd, old)
                d.send(b"x")
                await wait_until(lambda: len(new.events) == 1, "the new reader's call")
                assert old.events == []


async def test_poller_again_calls_a_reader_at_the_next_round_after_the_others() -> None:
    """``again`` (from a reader that stopped before its socket was empty): called with mask
    0 at the next round, after every reader of the round that asked, so a greedy reader
    does not starve the others."""
    a, b = socketpair()
    c, d = socketpair()
    log: list[tuple[str, int]] = []

    def greedy(events: int) -> None:
        log.append(("greedy", events))
        if len([name for name, _ in log if name == "greedy"]) < 4:
            poller.again(greedy)

    def other(events: int) -> None:
        log.append(("other", events))

    with a, b, c, d:
        async with running_poller() as poller:
            poller.register(a, greedy)
            poller.register(c, other)
            b.send(b"x")
            d.send(b"x")
            await wait_until(lambda: len(log) == 5, "greedy's four calls and other's one")
            await trio.testing.wait_all_tasks_blocked()
            assert len(log) == 5  # greedy stopped asking: no more calls
            assert sorted(log[:2]) == [("greedy", select.EPOLLIN), ("other", select.EPOLLIN)]
            assert log[2:] == [("greedy", 0)] * 3


async def test_a_reader_that_always_asks_again_does_not_starve_other_tasks() -> None:
    """The poller runs a bounded number of rounds in a row, then lets the scheduler run the
    other tasks (timers, sessions in their own tasks)."""
    turns = 0

    def greedy(events: int) -> None:
        nonlocal turns
        turns += 1
        poller.again(greedy)

    async with running_poller() as poller:
        poller.again(greedy)
        for _ in range(10):
            with trio.fail_after(5):
                await trio.sleep(0)  # returns only if the poller lets this task run
        assert turns > 10


async def test_poller_stops_when_cancelled_and_takes_no_more_sockets() -> None:
    a, b = socketpair()
    reader = Recorder()
    with a, b:
        async with running_poller() as poller:
            poller.register(a, reader)
        assert not poller.running
        with pytest.raises(ValueError, match="closed"):
            poller.register(b, reader)  # its epoll set is closed


async def test_defer_outside_a_round_refuses_and_calls_nothing() -> None:
    calls: list[str] = []
    async with running_poller() as poller:
        assert not poller.defer(lambda: calls.append("x"))
        await trio.testing.wait_all_tasks_blocked()
    assert calls == []


async def test_again_from_another_task_wakes_the_waiting_poller() -> None:
    """A reader asked for again from outside a round (another task read its socket) runs
    even though no socket becomes readable."""
    called = trio.Event()
    async with running_poller() as poller:
        await trio.testing.wait_all_tasks_blocked()  # the poller waits for events
        poller.again(lambda events: called.set())
        with trio.fail_after(5):
            await called.wait()


async def test_deferred_work_runs_after_every_reader_of_the_round() -> None:
    order: list[str] = []
    done = trio.Event()
    first, first_peer = socketpair()
    second, second_peer = socketpair()

    def deferred() -> None:
        order.append("deferred")
        done.set()

    def read_first(events: int) -> None:
        first.recv(100)
        order.append("first")
        assert poller.defer(deferred)

    def read_second(events: int) -> None:
        second.recv(100)
        order.append("second")

    async with running_poller() as poller:
        poller.register(first, read_first)
        poller.register(second, read_second)
        # Both readable before the poller's task runs again: one round calls both readers.
        first_peer.send(b"a")
        second_peer.send(b"b")
        with trio.fail_after(5):
            await done.wait()
    assert sorted(order[:2]) == ["first", "second"] and order[2:] == ["deferred"]
    for sock in (first, first_peer, second, second_peer):
        sock.close()


async def test_a_round_s_requests_leave_in_one_send_from_the_poller_s_task() -> None:
    client, client_peer = socketpair()
    backend, node = socketpair()
    checked = trio.Event()
    seen: list[bytes] = []

    async with running_poller() as poller, trio.open_nursery() as nursery:
        mux = MuxConnection(RedisConnection(backend, "test:1", 0, 2), poller)
        nursery.start_soon(mux.run)
        await trio.testing.wait_all_tasks_blocked()

        def check() -> None:
            # Deferred after the mux's flush: the bytes are on the node's socket already,
            # sent by the poller's task, while the writer task still sleeps.
            seen.append(node.recv(1000, socket.MSG_PEEK))
            checked.set()

        def read_client(events: int) -> None:
            client.recv(100)
            for _ in range(2):
                mux.enqueue(Pending(1, math.inf, Waiter()), PING)
            poller.defer(check)

        poller.register(client, read_client)
        client_peer.send(b"go")
        with trio.fail_after(5):
            await checked.wait()
        assert seen == [PING * 2]
        assert not mux._unsent
        mux.close()
    for sock in (client, client_peer, node):
        sock.close()
