"""The Graphite push against a real ``carbon-cache``: what the reporter sends, over TCP and over
UDP, is what carbon stores in its whisper files; and (end to end) a gateway configured with
``metrics: {graphite: ...}`` reports the calls it serves."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import trio

from resmesh.config.address import Address
from resmesh.config.metrics import GraphiteConfig, GraphiteTransport
from resmesh.observe.graphite import GraphiteReporter
from resmesh.policies.window import LatencyHistogram
from tests.support.carbon import CarbonCache
from tests.support.servers import Gateway, RedisServer, redis_cluster_config


@pytest.fixture(scope="module")
def carbon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CarbonCache]:
    cache = CarbonCache(tmp_path_factory.mktemp("carbon"))
    yield cache
    cache.stop()


def series(latencies: list[float], app_error: int = 0, bytes_in: int = 0) -> dict[str, Any]:
    histogram = LatencyHistogram()
    for seconds in latencies:
        histogram.record(seconds)
    return {
        "outcomes": {
            "ok": len(latencies) - app_error,
            "app_error": app_error,
            "upstream_error": 0,
            "local_error": 0,
            "rejected": 0,
        },
        "bytes_out": 0,
        "bytes_in": bytes_in,
        "hedges": 0,
        "hedges_won": 0,
        "retries": 0,
        "latency": {
            "count": histogram.count,
            "sum_us": histogram.sum_micros,
            "max_us": histogram.max_micros,
            "buckets": {str(i): n for i, n in histogram.sparse_counts().items()},
        },
    }


def document(get: dict[str, Any], clients: int) -> dict[str, Any]:
    return {
        "gateway": {"app": "demo-app", "workers": 1},
        "registry": {"version": 3, "reachable": True},
        "clusters": {
            "feed-cache": {
                "protocol": "redis",
                "series": {"127.0.0.1:6379": {"GET": get}},
                "refusals": {"GET": {"switch": 0, "limit": 0, "no_node": 0, "deadline": 0}},
                "clients": clients,
                "hedge_delay": {},
                "nodes": {
                    "127.0.0.1:6379": {
                        "group": "dc-a",
                        "breaker": "closed",
                        "trips": 0,
                        "ejections": 0,
                        "connections": 1,
                        "in_flight": 0,
                    }
                },
            }
        },
    }


async def push_two_documents(
    carbon: CarbonCache, transport: GraphiteTransport, prefix: str
) -> None:
    """Run a reporter on two successive documents (then the second again: idle) until
    carbon holds what each push carried."""
    first = document(series([0.001] * 10, app_error=1, bytes_in=100), clients=2)
    second = document(series([0.001] * 10 + [0.008] * 4, app_error=3, bytes_in=180), clients=5)
    documents = [first, second]

    async def source() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return documents.pop(0) if len(documents) > 1 else documents[0]

    port = carbon.port if transport is GraphiteTransport.TCP else carbon.udp_port
    # 1.2 s apart: never two pushes in one second (carbon keeps one point per key per second).
    config = GraphiteConfig(Address("127.0.0.1", port), transport, 1.2, prefix)
    reporter = GraphiteReporter(config, source)
    base = f"{prefix}.resmesh-redis.demo-app.dc-a.byhost.127_0_0_1_6379.feed-cache.GET"
    clients = f"{prefix}.resmesh-redis.demo-app.cluster.byhost.127_0_0_1.feed-cache.clients"
    since = int(time.time()) - 1
    async with trio.open_nursery() as nursery:
        nursery.start_soon(reporter.run)
        stored = await trio.to_thread.run_sync(
            lambda: carbon.wait_values(
                {
                    f"{base}.count": [10, 4],
                    f"{base}.error_count": [1, 2],
                    f"{base}.rejected_count": [0, 0],
                    f"{base}.bytes_in": [100, 80],
                },
                timeout=30,
                since=since,
            )
        )
        nursery.cancel_scope.cancel()
    assert stored[f"{base}.count"] == [10, 4]
    # The second push's percentiles are of its 4 calls at 8 ms alone.
    p50 = [v for _, v in carbon.fetch(f"{base}.p50_time", since)]
    assert p50[0] == pytest.approx(1.0, rel=0.035)
    assert p50[1] == pytest.approx(8.0, rel=0.035)
    qps = [v for _, v in carbon.fetch(f"{base}.qps", since)]
    assert qps == [pytest.approx(10 / 1.2, abs=0.05), pytest.approx(4 / 1.2, abs=0.05)]
    gauge = [v for _, v in carbon.fetch(clients, since)]
    assert gauge[:2] == [2, 5]
    assert reporter.failures == 0
    assert reporter.sent_lines >= 2 * 11


async def test_tcp_pushes_land_in_carbon(carbon: CarbonCache) -> None:
    await push_two_documents(carbon, GraphiteTransport.TCP, "viatcp")


async def test_udp_pushes_land_in_carbon(carbon: CarbonCache) -> None:
    await push_two_documents(carbon, GraphiteTransport.UDP, "viaudp")


def test_gateway_reports_served_calls_to_carbon(
    carbon: CarbonCache, redis_node: RedisServer, tmp_path: Path
) -> None:
    """End to end: a gateway with ``metrics.graphite`` pushes the GETs it served."""
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["gateway"]["app"] = "e2e-app"
    config["metrics"] = {
        "graphite": {"address": f"127.0.0.1:{carbon.port}", "transport": "tcp", "interval": "1s"}
    }
    gateway = Gateway(config, tmp_path)
    try:
        client = redis.Redis(port=gateway.port, socket_timeout=5)
        client.set("graphite-e2e", "x")
        calls = 25
        for _ in range(calls):
            assert client.get("graphite-e2e") == b"x"
        client.close()
        key = f"resmesh-redis.e2e-app.dc-a.byhost.127_0_0_1_{redis_node.port}.feed-cache.GET.count"
        deadline = time.monotonic() + 30
        total = 0.0
        while time.monotonic() < deadline:
            total = sum(v for _, v in carbon.fetch(key))
            if total >= calls:
                break
            time.sleep(0.2)
        assert total == calls, (
            f"carbon holds {total} GETs under {key}, expected {calls}; keys: "
            f"{[k for k in carbon.stored_keys() if 'e2e' in k]}\n"
            f"gateway log:\n{gateway.log()[-3000:]}"
        )
    finally:
        assert gateway.terminate() == 0, gateway.log()
