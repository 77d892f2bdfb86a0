"""``Poller.defer``: work queued during a round of readers runs once they all have, in the
poller's task, and a shared backend connection uses it to send a round's requests in one
``send`` with no writer task waking."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import trio

from resmesh.net.backend.redis_conn import RedisConnection
from resmesh.net.backend.redis_mux import MuxConnection, Pending
from resmesh.net.poller import Poller
from resmesh.policies.waiting import Waiter

PING = b"*1\r\n$4\r\nPING\r\n"


@asynccontextmanager
async def _running_poller() -> AsyncIterator[tuple[Poller, trio.Nursery]]:
    poller = Poller()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(poller.run)
        yield poller, nursery
        nursery.cancel_scope.cancel()


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.setblocking(False)
    return ours, theirs


async def test_defer_outside_a_round_refuses_and_calls_nothing() -> None:
    calls: list[str] = []
    async with _running_poller() as (poller, _):
        assert not poller.defer(lambda: calls.append("x"))
        await trio.testing.wait_all_tasks_blocked()
    assert calls == []


async def test_deferred_work_runs_after_every_reader_of_the_round() -> None:
    order: list[str] = []
    done = trio.Event()
    first, first_peer = _pair()
    second, second_peer = _pair()

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

    async with _running_poller() as (poller, _):
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
    client, client_peer = _pair()
    backend, node = _pair()
    checked = trio.Event()
    seen: list[bytes] = []

    async with _running_poller() as (poller, nursery):
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
