"""The HA engine on the Redis transport against real nodes, driven in this process.

``HAEngine.execute`` is what a session calls per run; here it is called directly, so the test
can see the policies' own counts (a retry budget's slots, a breaker's slow calls) while real
``redis-server`` nodes are killed or stalled under it.
"""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from resmesh.call import Run, Unavailable
from resmesh.config import parse_config
from resmesh.net.redis.runtime import RedisRuntime
from resmesh.protocols.resp.requests import Command
from resmesh.protocols.resp.session import command_info
from tests.support.driver import wait_until
from tests.support.servers import RedisServer, encode_command, redis_cluster_config

GET = encode_command("GET", "upstream:k")


@pytest.fixture
def two_nodes() -> Iterator[tuple[RedisServer, RedisServer]]:
    """Two independent nodes, one per group (reads only: no replication needed)."""
    servers = (RedisServer(), RedisServer())
    yield servers
    for server in servers:
        if server.proc is not None:
            os.kill(server.proc.pid, signal.SIGCONT)
        server.stop()


@asynccontextmanager
async def _upstream(
    a: RedisServer, b: RedisServer, tmp_path: Path, **cluster: Any
) -> AsyncIterator[RedisRuntime]:
    data = redis_cluster_config("up", {"dc-a": [a.port], "dc-b": [b.port]}, **cluster)
    config = parse_config(data, tmp_path / "upstream.yaml").clusters["up"]
    async with trio.open_nursery() as nursery:
        upstream = RedisRuntime(config, {}, nursery)
        nursery.start_soon(upstream.run)
        try:
            yield upstream
        finally:
            upstream.close()
            nursery.cancel_scope.cancel()


async def _read(upstream: RedisRuntime) -> list[bytes]:
    op = upstream.operation(command_info(b"GET"))
    call = Command([b"GET", b"upstream:k"], GET)
    call.op, call.batch = op, 1
    deadline = trio.current_time() + upstream.config.backend.command_timeout
    run = Run([call], GET, idempotent=True, deadline=deadline, shape=(0, 2))
    return (await upstream.engine.execute(run)).replies


async def test_concurrent_retries_are_capped_by_the_retry_budget(
    two_nodes: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """20 reads fail at once on a dead node: only the budget's share (20 % of requests in
    flight, at least 3: Envoy) may retry on the other node together; the rest fail."""
    a, b = two_nodes
    reads = 20
    async with _upstream(
        a,
        b,
        tmp_path,
        route={"dc-a": 100, "dc-b": 100},
        governance={
            "local_group": "dc-a",  # every first attempt goes to a while it looks healthy
            "breaker": {"enabled": False},
            "outlier": {"enabled": False},
            "hedge": {"enabled": False},
        },
    ) as upstream:
        node_b = upstream.policies.topology.groups["dc-b"][0]
        b_pool = upstream.pool(node_b)
        await b_pool.shared(0, 2)  # connected before b stalls
        a.kill()
        assert b.proc is not None
        os.kill(b.proc.pid, signal.SIGSTOP)  # retries pile up on b, and stay there
        failed: list[Unavailable] = []
        answered: list[list[bytes]] = []

        async def one() -> None:
            try:
                answered.append(await _read(upstream))
            except Unavailable as exc:
                failed.append(exc)

        def waiting_on_b() -> int:
            return b_pool.statistics().shared_outstanding

        budget = upstream.policies.retry_budget
        async with trio.open_nursery() as nursery:
            for _ in range(reads):
                nursery.start_soon(one)
            await wait_until(lambda: len(failed) + waiting_on_b() == reads, "every read")
            retrying = waiting_on_b()
            os.kill(b.proc.pid, signal.SIGCONT)
        assert 1 <= retrying <= max(3, int(0.2 * reads)), retrying
        assert budget.denied == len(failed) == reads - retrying
        assert answered == [[b"$-1\r\n"]] * retrying
        assert (budget.active_retries, budget.active_requests) == (0, 0)


async def test_a_backup_request_is_charged_its_own_latency(
    two_nodes: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """The node that wins a hedge answered fast: its breaker must not count the hedge delay
    it did not cause as a slow call of its own."""
    a, b = two_nodes
    async with _upstream(
        a,
        b,
        tmp_path,
        route={"dc-a": 100, "dc-b": 100},
        governance={
            "local_group": "dc-a",
            "hedge": {"enabled": True, "floor": "60ms", "budget": 0.5},
            "breaker": {"slow_call": "50ms"},
            "outlier": {"enabled": False},
        },
    ) as upstream:
        node_b = upstream.policies.topology.groups["dc-b"][0]
        for _ in range(30):  # teaches the hedge delay (the 60 ms floor) and fills the budget
            assert await _read(upstream) == [b"$-1\r\n"]
        assert a.proc is not None
        os.kill(a.proc.pid, signal.SIGSTOP)
        try:
            started = trio.current_time()
            assert await _read(upstream) == [b"$-1\r\n"]
            took = trio.current_time() - started
        finally:
            os.kill(a.proc.pid, signal.SIGCONT)
        breaker_b = upstream.policies.breakers[node_b].statistics(trio.current_time())
        budget = upstream.policies.hedge_budget
        assert budget is not None and budget.hedges == 1
        assert took >= 0.06  # the read did wait the hedge delay...
        assert (breaker_b.calls, breaker_b.slow) == (1, 0)  # ...but b answered fast


async def test_a_drained_group_gets_no_reads_not_even_retries(
    two_nodes: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """Route weight 0 means no traffic: when the routed group's node dies, reads fail rather
    than spill into the group the operator drained; shifting the weights moves them."""
    a, b = two_nodes
    async with _upstream(a, b, tmp_path, route={"dc-a": 100, "dc-b": 0}) as upstream:
        assert await _read(upstream) == [b"$-1\r\n"]
        a.kill()
        for _ in range(5):
            with pytest.raises(Unavailable):
                await _read(upstream)
        assert redis.Redis(port=b.port).info("commandstats").get("cmdstat_get") is None
        upstream.policies.set_route({"dc-a": 0, "dc-b": 100})  # the operator's shift
        for _ in range(5):
            assert await _read(upstream) == [b"$-1\r\n"]
        assert redis.Redis(port=b.port).info("commandstats")["cmdstat_get"]["calls"] == 5
