"""Nothing the governance pipeline counts may leak, however calls end.

Every policy keeps counts that a call takes and must give back: a concurrency slot, a node's
in-flight load (the least-loaded balancer's input), the retry budget's active requests, a
half-open breaker's probe, a hedge's parked deadline, a backend connection's outstanding
replies. A count that leaks on one odd path (a client that leaves mid-pipeline, a hedge's loser
that ends after the winner, a node that stalls and resumes) grows until the gateway refuses
everything or stops sending to a healthy node. This test runs the gateway in this process,
drives it through those paths with real clients and a real primary and replica, then waits for
every count to come back to zero.
"""

from __future__ import annotations

import os
import random
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from resmesh.config import parse_config
from resmesh.net.listen import bind_tcp
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.policies.balance import LeastLoadedBalancer
from resmesh.policies.breaker import CircuitBreaker
from tests.support.servers import (
    RedisServer,
    encode_command,
    redis_cluster_config,
    resp_frame_end,
    start_replica,
)

#: Error replies a client may see here: the limits doing their job. Anything else fails.
_ALLOWED_ERRORS = (b"-ERR resmesh: concurrency limit", b"-ERR resmesh: rate limit")


@pytest.fixture(scope="module")
def primary_and_replica() -> Iterator[tuple[RedisServer, RedisServer]]:
    primary = RedisServer()
    replica = start_replica(primary)
    yield primary, replica
    for server in (replica, primary):
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


def _commands(rng: random.Random) -> list[bytes]:
    """A random pipeline: mostly reads (spread, hedged, failed over), some writes."""
    pipeline = []
    for _ in range(rng.randint(1, 12)):
        key = f"leak:{rng.randint(0, 50)}"
        choice = rng.random()
        if choice < 0.45:
            pipeline.append(encode_command("GET", key))
        elif choice < 0.6:
            pipeline.append(encode_command("MGET", key, f"leak:{rng.randint(0, 50)}"))
        elif choice < 0.7:
            pipeline.append(encode_command("HGETALL", f"leak:h{rng.randint(0, 5)}"))
        elif choice < 0.85:
            pipeline.append(encode_command("SET", key, str(rng.random())))
        else:
            pipeline.append(encode_command("INCR", f"leak:n{rng.randint(0, 5)}"))
    return pipeline


async def _read_replies(stream: trio.SocketStream, count: int) -> list[bytes]:
    buffer = bytearray()
    replies: list[bytes] = []
    position = 0
    while len(replies) < count:
        end = resp_frame_end(buffer, position)
        if end < 0:
            chunk = await stream.receive_some(65536)
            assert chunk, f"gateway closed the connection after {len(replies)} of {count}"
            buffer += chunk
            continue
        replies.append(bytes(buffer[position:end]))
        position = end
    return replies


async def _client(port: int, seed: int, rounds: int, errors: list[bytes]) -> None:
    """Pipelines, some of them abandoned: the client closes after sending, before any reply,
    or halfway through reading them."""
    rng = random.Random(seed)
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    try:
        for _ in range(rounds):
            pipeline = _commands(rng)
            await stream.send_all(b"".join(pipeline))
            leave = rng.random()
            if leave < 0.1:
                await stream.aclose()  # gone with every reply still to come
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                continue
            if leave < 0.15 and len(pipeline) > 1:
                await _read_replies(stream, len(pipeline) // 2)
                await stream.aclose()  # gone halfway
                stream = await trio.open_tcp_stream("127.0.0.1", port)
                continue
            for reply in await _read_replies(stream, len(pipeline)):
                if reply.startswith(b"-") and not reply.startswith(_ALLOWED_ERRORS):
                    errors.append(reply)
    finally:
        await stream.aclose()


async def _stall(replica: RedisServer, times: int) -> None:
    """SIGSTOP the replica now and then, for longer than the hedge delay and shorter than
    the command timeout: reads hedge away from it and its answers arrive after the winners'."""
    assert replica.proc is not None
    for _ in range(times):
        await trio.sleep(0.15)
        os.kill(replica.proc.pid, signal.SIGSTOP)
        try:
            await trio.sleep(0.3)
        finally:
            os.kill(replica.proc.pid, signal.SIGCONT)


def _leaks(runtime: RedisRuntime) -> list[str]:
    """Every count that should be back at rest once no call is in flight."""
    policies = runtime.policies
    found: list[str] = []
    limiter = policies.limiter
    assert limiter is not None
    limits = limiter.statistics(trio.current_time())
    for scope in (limits.cluster, *limits.operations):
        if scope.concurrency is not None and scope.concurrency.in_flight:
            found.append(f"limit {scope.name}: {scope.concurrency.in_flight} in flight")
    for group, balancer in policies.balancers.items():
        assert isinstance(balancer, LeastLoadedBalancer)
        loads = balancer.statistics().in_flight
        if loads:
            found.append(f"balancer {group}: {loads}")
    budget = policies.retry_budget
    if budget.active_requests or budget.active_retries:
        found.append(f"retry budget: {budget.statistics()}")
    for node, breaker in policies.breakers.items():
        assert isinstance(breaker, CircuitBreaker)
        if breaker.probes_in_flight:
            found.append(f"breaker {node.address}: {breaker.probes_in_flight} probes out")
    for pool in runtime.transport.pools.values():
        outstanding = pool.statistics().shared_outstanding
        if outstanding:
            found.append(f"pool {pool.node}: {outstanding} replies outstanding")
    if any(waiter.alarm != float("inf") for waiter in runtime.engine.alarms._queue):
        found.append("a hedge deadline is still set")
    if runtime.sessions:
        found.append(f"{len(runtime.sessions)} sessions still open")
    return found


async def test_no_count_leaks_when_clients_leave_hedges_lose_and_a_node_stalls(
    primary_and_replica: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    primary, replica = primary_and_replica
    data = redis_cluster_config(
        "feed-cache",
        {"dc-a": [primary.port], "dc-b": [replica.port]},
        route={"dc-a": 50, "dc-b": 50},
        policy="cache",
        governance={
            "hedge": {"floor": "1ms"},
            "limit": {"rate": 1_000_000, "concurrency": 48},
            "operations": {"SET": {"limit": {"concurrency": 8}}},
        },
    )
    config = parse_config(data, tmp_path / "leaks.yaml")
    cluster = config.clusters["feed-cache"]
    errors: list[bytes] = []
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    with trio.fail_after(60):
        async with trio.open_nursery() as backend:
            runtime = RedisRuntime(cluster, config.users, backend)
            backend.start_soon(runtime.run)
            try:
                async with trio.open_nursery() as connections:
                    connections.start_soon(runtime.serve, listener, connections)
                    async with trio.open_nursery() as load:
                        load.start_soon(_stall, replica, 3)
                        for seed in range(12):
                            load.start_soon(_client, port, seed, 120, errors)
                    # Abandoned pipelines and hedges' losers finish on their own: wait for it.
                    with trio.move_on_after(10):
                        while _leaks(runtime):
                            await trio.sleep(0.02)
                    leaks = _leaks(runtime)
                    budget = runtime.policies.hedge_budget
                    assert budget is not None
                    hedges = budget.statistics()
                    connections.cancel_scope.cancel()
            finally:
                runtime.close()
                backend.cancel_scope.cancel()
    assert not errors, errors[:5]
    assert not leaks, leaks
    # The paths this test is about were taken: hedges raced, and some lost.
    assert hedges.hedges > 0, hedges
