"""Blocking commands through the gateway: woken promptly, time out on their own clock.

A blocked client is recognised on the node by ``INFO clients`` (``blocked_clients``): the tests
wait for that rather than sleeping, then wake it from another client. Block times are long
(``BLOCK``) so that a reply that waited for the block time instead of the wake-up is 30 s late,
not a few hundred milliseconds: the time bounds below separate right from wrong by seconds.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support.servers import Gateway, RawRedis, RedisServer, wait_for

#: Block time (s) of the commands the tests wake up.
BLOCK = 30
#: A woken client sees its reply within this long of the wake-up. It normally takes a few
#: milliseconds; a reply held until the block time ends would come after ``BLOCK``.
WOKEN = 10.0


@pytest.fixture
def direct(redis_node: RedisServer) -> redis.Redis:
    client = redis.Redis(port=redis_node.port, socket_timeout=10)
    client.flushall()
    return client


def blocked_clients(client: redis.Redis) -> int:
    return int(client.info("clients")["blocked_clients"])


class Background:
    """Runs a blocking call in a thread; records its result and when it returned."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.finished_at = 0.0
        self._call = call
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self.result = self._call()
        except BaseException as exc:
            self.error = exc
        self.finished_at = time.monotonic()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float = BLOCK + 15) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the blocking call never returned"
        if self.error is not None:
            raise self.error
        return self.result


def _client(gateway: Gateway, protocol: int) -> redis.Redis:
    return redis.Redis(port=gateway.port, protocol=protocol, socket_timeout=BLOCK + 10)


WAKERS: dict[str, tuple[Callable[[redis.Redis], Any], Callable[[redis.Redis], Any], Any]] = {
    # name: (blocking call, waking call, expected result)
    "blpop": (
        lambda c: c.blpop(["q1", "q2"], timeout=BLOCK),
        lambda c: c.rpush("q2", "v"),
        [b"q2", b"v"],
    ),
    "brpop": (lambda c: c.brpop(["q"], timeout=0), lambda c: c.lpush("q", "a", "b"), [b"q", b"a"]),
    "blmove": (
        lambda c: c.blmove("src", "dst", BLOCK, "LEFT", "RIGHT"),
        lambda c: c.rpush("src", "moved"),
        b"moved",
    ),
    "bzpopmin": (
        lambda c: c.bzpopmin(["z"], timeout=BLOCK),
        lambda c: c.zadd("z", {"low": 1, "high": 9}),
        [b"z", b"low", 1.0],
    ),
    "xread": (
        lambda c: c.xread({"s": "$"}, block=BLOCK * 1000),
        lambda c: c.xadd("s", {"f": "v"}, id="5-1"),
        None,  # shape differs by protocol; checked below
    ),
}


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("name", list(WAKERS))
def test_blocking_command_woken_promptly(
    name: str, protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    block, wake, expected = WAKERS[name]
    waiter = Background(lambda: block(_client(gateway, protocol)))
    wait_for(lambda: blocked_clients(direct) == 1, 5, f"{name} to block on the node")
    # Other clients are not held up by the blocked one: answered while it is still blocked.
    other = _client(gateway, protocol)
    assert other.ping()
    assert waiter.running and blocked_clients(direct) == 1
    woken_at = time.monotonic()
    wake(other)
    result = waiter.join()
    assert waiter.finished_at - woken_at < WOKEN
    if name == "xread":
        entries = result[b"s"][0] if protocol == 3 else result[0][1]
        assert entries == [(b"5-1", {b"f": b"v"})]
    else:
        assert _tuples_to_lists(result) == expected
    assert blocked_clients(direct) == 0


def _tuples_to_lists(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


@pytest.mark.parametrize("protocol", [2, 3])
def test_blpop_times_out_on_its_own_clock(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    """The node's timeout ends the wait: not cut short by the gateway (the lower bounds, which
    load cannot break), and not ignored (a BLPOP left blocking would end with the client's
    own 40 s socket timeout, an error; the upper bound is that far off too)."""
    client = _client(gateway, protocol)
    started = time.monotonic()
    assert client.blpop(["never"], timeout=1) is None
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 10, elapsed
    started = time.monotonic()
    assert client.blpop(["never"], timeout=0.2) is None  # a fraction, not rounded to 0 (forever)
    elapsed = time.monotonic() - started
    assert 0.15 <= elapsed < 10, elapsed
    assert client.set("after", "ok") and client.get("after") == b"ok"


def test_blocking_timeouts_raw_match_direct(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    commands = [
        ("BLPOP", "none", "0.1"),
        ("PING",),
        ("RPUSH", "l", "x"),
        ("BLPOP", "l", "0"),
        ("BZPOPMIN", "nz", "0.1"),
        ("XREAD", "BLOCK", "100", "STREAMS", "ns", "$"),
        ("BLPOP", "l", "notanumber"),
        ("BLPOP", "l", "-1"),
        ("WAIT", "0", "0"),
        ("GET", "l"),
    ]
    outputs = []
    for protocol in (2, 3):
        for port in (redis_node.port, gateway.port):
            direct.flushall()
            with RawRedis(port) as conn:
                if protocol == 3:
                    conn.call(("HELLO", "3"))
                outputs.append(conn.call(*commands))
    assert outputs[1] == outputs[0]
    assert outputs[3] == outputs[2]
    assert outputs[0][0] == b"*-1\r\n" and outputs[2][0] == b"_\r\n"
    assert outputs[0][8] == b":0\r\n"


def test_wait_zero_replicas(gateway: Gateway) -> None:
    """``WAIT 0 0`` is answered at once (zero replicas are always reached). Its timeout 0
    means forever: had the gateway made it wait, the client would time out (an error)."""
    client = redis.Redis(port=gateway.port, socket_timeout=10)
    assert client.wait(0, 0) == 0


def test_many_blocked_clients_each_get_one_item(direct: redis.Redis, gateway: Gateway) -> None:
    count = 20
    waiters = [
        Background(lambda: _client(gateway, 3).blpop(["jobs"], timeout=BLOCK)) for _ in range(count)
    ]
    wait_for(lambda: blocked_clients(direct) == count, 10, f"{count} blocked clients")
    redis.Redis(port=gateway.port).rpush("jobs", *[f"job-{i}" for i in range(count)])
    items = sorted(waiter.join()[1] for waiter in waiters)
    assert items == sorted(f"job-{i}".encode() for i in range(count))


def test_blocked_client_disconnect_releases_the_node(direct: redis.Redis, gateway: Gateway) -> None:
    conn = RawRedis(gateway.port)
    conn.send(b"*3\r\n$5\r\nBLPOP\r\n$4\r\ngone\r\n$1\r\n0\r\n")
    wait_for(lambda: blocked_clients(direct) == 1, 5, "BLPOP to block on the node")
    conn.close()
    wait_for(lambda: blocked_clients(direct) == 0, 5, "the node connection to be released")
    # A later push is not swallowed by the abandoned BLPOP.
    direct.rpush("gone", "kept")
    assert direct.lrange("gone", 0, -1) == [b"kept"]


def test_blpop_asyncio(direct: redis.Redis, gateway: Gateway) -> None:
    async def main() -> tuple[Any, float]:
        waiter = redis.asyncio.Redis(port=gateway.port, protocol=3)
        pusher = redis.asyncio.Redis(port=gateway.port, protocol=3)
        try:
            task = asyncio.create_task(waiter.blpop(["aq"], timeout=BLOCK))
            deadline = time.monotonic() + 5
            while blocked_clients(direct) != 1:
                assert time.monotonic() < deadline, "BLPOP never blocked"
                await asyncio.sleep(0.01)
            woken_at = time.monotonic()
            await pusher.lpush("aq", "async")
            result = await asyncio.wait_for(task, BLOCK + 15)
            return result, time.monotonic() - woken_at
        finally:
            await waiter.aclose()
            await pusher.aclose()

    result, latency = asyncio.run(main())
    assert list(result) == [b"aq", b"async"]
    assert latency < WOKEN


def test_commands_sent_while_blocked_are_answered_after_the_pop(
    direct: redis.Redis, gateway: Gateway
) -> None:
    """A client may pipeline past a blocking command in a later write; those commands wait in
    the gateway's buffer and must be answered once the pop returns, without further input."""
    direct.delete("blk:later")
    direct.set("blk:later:v", "v")
    with RawRedis(gateway.port, timeout=5) as conn:
        conn.send(b"*3\r\n$5\r\nBLPOP\r\n$9\r\nblk:later\r\n$1\r\n0\r\n")
        wait_for(lambda: blocked_clients(direct) >= 1, 5, "the BLPOP to block on the node")
        conn.send(b"*2\r\n$3\r\nGET\r\n$11\r\nblk:later:v\r\n")
        direct.lpush("blk:later", "item")
        replies = conn.read_replies(2)
    assert replies == [b"*2\r\n$9\r\nblk:later\r\n$4\r\nitem\r\n", b"$1\r\nv\r\n"]
