"""The Graphite push: key naming, interval differences, UDP packing, and the reporter against
in-test TCP and UDP receivers (no carbon here: see tests/integration/test_graphite_carbon.py)."""

from __future__ import annotations

import functools
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing

from resmesh.config.address import Address
from resmesh.config.metrics import GraphiteConfig, GraphiteTransport
from resmesh.observe.graphite import (
    UDP_DATAGRAM_LIMIT,
    GraphiteReporter,
    graphite_lines,
    host_component,
    pack_datagrams,
    sanitize,
)
from resmesh.policies.window import LatencyHistogram

TS = 1_700_000_000
BASE = "resmesh-redis.demo-app.dc-a.byhost.127_0_0_1_6379.feed-cache.GET"


def series(
    latencies: list[float],
    *,
    app_error: int = 0,
    upstream_error: int = 0,
    local_error: int = 0,
    rejected: int = 0,
    bytes_in: int = 0,
    bytes_out: int = 0,
) -> dict[str, Any]:
    """A series document as :class:`resmesh.observe.metrics.Series` builds it: every latency
    is one call; the first ``app_error + ...`` of them are not ``ok``."""
    histogram = LatencyHistogram()
    for seconds in latencies:
        histogram.record(seconds)
    failed = app_error + upstream_error + local_error + rejected
    return {
        "outcomes": {
            "ok": len(latencies) - failed,
            "app_error": app_error,
            "upstream_error": upstream_error,
            "local_error": local_error,
            "rejected": rejected,
        },
        "bytes_out": bytes_out,
        "bytes_in": bytes_in,
        "hedges": 0,
        "hedges_won": 0,
        "retries": 0,
        "latency": {
            "count": histogram.count,
            "sum_us": histogram.sum_micros,
            "max_us": histogram.max_micros,
            "buckets": histogram.sparse_counts(),
        },
    }


def document(
    series_by_node: dict[str, dict[str, dict[str, Any]]],
    *,
    cluster: str = "feed-cache",
    protocol: str = "redis",
    refusals: dict[str, dict[str, int]] | None = None,
    clients: int = 3,
    nodes: dict[str, str] | None = None,
    app: str = "demo-app",
) -> dict[str, Any]:
    """A metrics document with one cluster; ``nodes`` maps address → group (default: every
    address in ``series_by_node`` in ``dc-a``)."""
    if nodes is None:
        nodes = {address: "dc-a" for address in series_by_node if address}
    return {
        "gateway": {"app": app, "workers": 1},
        "registry": {"version": 3, "reachable": True},
        "clusters": {
            cluster: {
                "protocol": protocol,
                "series": series_by_node,
                "refusals": refusals or {},
                "clients": clients,
                "hedge_delay": {},
                "nodes": {
                    address: {
                        "group": group,
                        "breaker": "closed",
                        "trips": 0,
                        "ejections": 0,
                        "connections": 1,
                        "in_flight": 0,
                    }
                    for address, group in nodes.items()
                },
            }
        },
    }


def parse(lines: list[str]) -> dict[str, float]:
    """Key → value; every line must be ``<key> <value> <timestamp>\\n``."""
    values: dict[str, float] = {}
    for line in lines:
        assert line.endswith("\n") and line.count("\n") == 1, line
        key, value, stamp = line.split(" ")
        assert int(stamp) > 0
        assert key not in values, f"{key} twice"
        values[key] = float(value)
    return values


# ----------------------------------------------------------------------------------------------
# Keys


def test_sanitize_keeps_only_safe_characters() -> None:
    assert sanitize("feed-cache_2") == "feed-cache_2"
    assert sanitize("a.b c/d:é") == "a_b_c_d__"
    assert sanitize("") == "_"
    assert host_component("10.0.0.1:6379") == "10_0_0_1_6379"
    assert host_component("[::1]:6379") == "___1__6379"


def test_key_scheme_and_values_of_a_first_push() -> None:
    # 10 calls: 2 app errors, 1 upstream error, 1 rejected; 8 at 1 ms, 2 at 20 ms.
    current = document(
        {
            "127.0.0.1:6379": {
                "GET": series(
                    [0.001] * 8 + [0.020] * 2,
                    app_error=2,
                    upstream_error=1,
                    rejected=1,
                    bytes_in=500,
                    bytes_out=300,
                )
            }
        }
    )
    lines = graphite_lines(None, current, 10.0, TS, local_ip="10.1.2.3")
    assert f"{BASE}.count 10 {TS}\n" in lines
    values = parse(lines)
    assert values[f"{BASE}.count"] == 10
    assert values[f"{BASE}.error_count"] == 3
    assert values[f"{BASE}.rejected_count"] == 1
    assert values[f"{BASE}.qps"] == 1.0
    assert values[f"{BASE}.avg_time"] == pytest.approx((8 * 1.0 + 2 * 20.0) / 10, rel=1e-3)
    assert values[f"{BASE}.p50_time"] == pytest.approx(1.0, rel=0.035)
    assert values[f"{BASE}.p90_time"] == pytest.approx(20.0, rel=0.035)
    assert values[f"{BASE}.p99_time"] == pytest.approx(20.0, rel=0.035)
    assert values[f"{BASE}.p999_time"] == pytest.approx(20.0, rel=0.035)
    assert values[f"{BASE}.bytes_in"] == 500
    assert values[f"{BASE}.bytes_out"] == 300
    assert values["resmesh-redis.demo-app.cluster.byhost.10_1_2_3.feed-cache.clients"] == 3
    assert len(values) == 12


def test_prefix_roles_groups_and_sanitized_components() -> None:
    current = document(
        {
            "10.0.0.7:3306": {"COM_QUERY": series([0.002])},
            "10.0.0.8:3306": {"X.Y": series([0.002])},
        },
        cluster="orders.db",
        protocol="mysql",
        app="shop app",
        nodes={"10.0.0.7:3306": "dc b"},  # 10.0.0.8 has left the document's nodes
    )
    keys = parse(graphite_lines(None, current, 1.0, TS, prefix="prod.eu", local_ip="::1"))
    assert (
        "prod_eu.resmesh-mysql.shop_app.dc_b.byhost.10_0_0_7_3306.orders_db.COM_QUERY.count" in keys
    )
    assert "prod_eu.resmesh-mysql.shop_app.unknown.byhost.10_0_0_8_3306.orders_db.X_Y.count" in keys
    assert "prod_eu.resmesh-mysql.shop_app.cluster.byhost.__1.orders_db.clients" in keys
    assert all(key.count(".") == 8 for key in keys if not key.endswith(".clients"))

    motan = document({"127.0.0.1:8002": {"svc.Hello/say": series([0.001])}}, protocol="motan2")
    keys = parse(graphite_lines(None, motan, 1.0, TS))
    assert (
        "resmesh-motan2.demo-app.dc-a.byhost.127_0_0_1_8002.feed-cache.svc_Hello_say.count" in keys
    )


def test_refused_calls_have_group_and_ip_none() -> None:
    before = document({}, refusals={"GET": {"switch": 2, "limit": 1}})
    after = document(
        {"": {"GET": series([], rejected=0)}},  # an engine series with no node, idle
        refusals={"GET": {"switch": 5, "limit": 1, "no_node": 1}, "SET": {"limit": 4}},
    )
    values = parse(graphite_lines(before, after, 2.0, TS))
    none = "resmesh-redis.demo-app.none.byhost.none.feed-cache"
    assert values[f"{none}.GET.count"] == 4
    assert values[f"{none}.GET.rejected_count"] == 4
    assert values[f"{none}.GET.error_count"] == 0
    assert values[f"{none}.GET.qps"] == 2.0
    assert values[f"{none}.SET.rejected_count"] == 4
    # No latency recorded for refused calls: no timing keys.
    assert not [key for key in values if key.endswith("_time")]


# ----------------------------------------------------------------------------------------------
# Interval differences


def test_interval_counts_and_percentiles_are_of_the_difference() -> None:
    early = [0.001] * 50
    late = [0.004] * 45 + [0.050] * 5  # the interval: p50 4 ms, p90 4 ms, p99 50 ms
    before = document(
        {"127.0.0.1:6379": {"GET": series(early, app_error=5, bytes_in=1000, bytes_out=100)}}
    )
    after = document(
        {
            "127.0.0.1:6379": {
                "GET": series(early + late, app_error=7, bytes_in=1600, bytes_out=250),
                "SET": series([0.003, 0.003]),  # absent before: counts whole
            }
        }
    )
    # As the admin API hands it over: JSON, bucket indexes as strings.
    before, after = json.loads(json.dumps(before)), json.loads(json.dumps(after))
    values = parse(graphite_lines(before, after, 5.0, TS))

    interval = LatencyHistogram()
    for seconds in late:
        interval.record(seconds)
    assert values[f"{BASE}.count"] == 50
    assert values[f"{BASE}.error_count"] == 2
    assert values[f"{BASE}.qps"] == 10.0
    assert values[f"{BASE}.bytes_in"] == 600
    assert values[f"{BASE}.bytes_out"] == 150
    assert values[f"{BASE}.avg_time"] == pytest.approx(interval.sum_micros / 50 / 1000, abs=1e-3)
    for metric, q in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        assert values[f"{BASE}.{metric}_time"] == pytest.approx(
            interval.percentile(q) * 1000, abs=1e-3
        ), metric
    assert values[f"{BASE}.p50_time"] == pytest.approx(4.0, rel=0.035)
    assert values[f"{BASE}.p99_time"] == pytest.approx(50.0, rel=0.035)
    set_base = BASE.removesuffix("GET") + "SET"
    assert values[f"{set_base}.count"] == 2
    assert values[f"{set_base}.p50_time"] == pytest.approx(3.0, rel=0.035)


def test_idle_series_are_skipped() -> None:
    doc = document(
        {"127.0.0.1:6379": {"GET": series([0.001] * 3)}, "127.0.0.1:6380": {"GET": series([])}}
    )
    first = parse(graphite_lines(None, doc, 1.0, TS))
    assert f"{BASE}.count" in first
    assert not [key for key in first if "6380" in key]  # never called: nothing
    again = parse(graphite_lines(doc, json.loads(json.dumps(doc)), 1.0, TS))
    assert list(again) == ["resmesh-redis.demo-app.cluster.byhost.127_0_0_1.feed-cache.clients"]


def test_counts_that_went_down_count_whole() -> None:
    before = document({"127.0.0.1:6379": {"GET": series([0.001] * 100)}})
    after = document({"127.0.0.1:6379": {"GET": series([0.002] * 7)}})  # the worker restarted
    values = parse(graphite_lines(before, after, 1.0, TS))
    assert values[f"{BASE}.count"] == 7
    assert values[f"{BASE}.p50_time"] == pytest.approx(2.0, rel=0.035)


# ----------------------------------------------------------------------------------------------
# UDP packing


def test_datagrams_pack_whole_lines_under_the_limit() -> None:
    lines = [f"some.key.number{i:04d} {i * 7} {TS}\n" for i in range(400)]
    datagrams = pack_datagrams(lines)
    assert len(datagrams) > 1
    assert all(len(d) <= UDP_DATAGRAM_LIMIT for d in datagrams)
    assert all(d.endswith(b"\n") for d in datagrams)
    assert b"".join(datagrams).decode() == "".join(lines)
    # Packed tightly: each datagram but the last could not take the next line.
    sizes = [len(line) for line in lines]
    assert len(datagrams) == math.ceil(sum(sizes) / (UDP_DATAGRAM_LIMIT // sizes[0] * sizes[0]))
    huge = "x" * 2000 + " 1 2\n"
    assert pack_datagrams(["a 1 2\n", huge, "b 1 2\n"]) == [b"a 1 2\n", huge.encode(), b"b 1 2\n"]
    assert pack_datagrams([]) == []


# ----------------------------------------------------------------------------------------------
# The reporter


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Virtual time that jumps once every task has been idle for a few real milliseconds
    (not 0: a real socket's wait must not look like idleness and jump past its deadline)."""
    return trio.testing.MockClock(autojump_threshold=0.02)


def sequence(*documents: dict[str, Any]) -> Callable[[], Awaitable[dict[str, Any]]]:
    """A source returning ``documents`` in turn, then the last one again and again."""
    remaining = list(documents)

    async def source() -> dict[str, Any]:
        await trio.lowlevel.checkpoint()
        return remaining.pop(0) if len(remaining) > 1 else remaining[0]

    return source


FIRST = document({"127.0.0.1:6379": {"GET": series([0.001] * 10, app_error=1)}}, clients=2)
SECOND = document(
    {"127.0.0.1:6379": {"GET": series([0.001] * 10 + [0.002] * 4, app_error=1)}}, clients=5
)


class LineSink:
    """Lines received, parsed, with a way to wait for a count of them."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._pending = b""
        self._changed = trio.Event()

    def feed(self, data: bytes) -> None:
        self._pending += data
        *complete, self._pending = self._pending.split(b"\n")
        self.lines.extend(line.decode() + "\n" for line in complete)
        self._changed.set()
        self._changed = trio.Event()

    def values_of(self, key: str) -> list[float]:
        return [float(line.split(" ")[1]) for line in self.lines if line.split(" ")[0] == key]

    async def wait(self, condition: Callable[[], bool], timeout: float = 60) -> None:
        with trio.fail_after(timeout):
            while not condition():
                await self._changed.wait()


async def test_reporter_pushes_interval_lines_over_tcp(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sink = LineSink()
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        async for data in stream:
            sink.feed(data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    config = GraphiteConfig(Address("127.0.0.1", port), GraphiteTransport.TCP, 10.0, "")
    reporter = GraphiteReporter(config, sequence(FIRST, SECOND))
    nursery.start_soon(reporter.run)

    clients = "resmesh-redis.demo-app.cluster.byhost.127_0_0_1.feed-cache.clients"
    await sink.wait(lambda: len(sink.values_of(clients)) >= 3)
    assert sink.values_of(f"{BASE}.count") == [10, 4]  # whole, then the difference; then idle
    assert sink.values_of(f"{BASE}.error_count") == [1, 0]
    assert sink.values_of(f"{BASE}.qps") == [1.0, 0.4]
    assert sink.values_of(f"{BASE}.p50_time")[1] == pytest.approx(2.0, rel=0.035)
    assert sink.values_of(clients)[:3] == [2, 5, 5]
    assert connections == 1  # one connection kept open
    assert reporter.failures == 0
    assert reporter.sent_lines == len(sink.lines)
    stamps = sorted({int(line.split(" ")[2]) for line in sink.lines})
    assert all(abs(stamp - time.time()) < 3600 for stamp in stamps)


async def test_reporter_packs_udp_datagrams(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    receiver = trio.socket.socket(trio.socket.AF_INET, trio.socket.SOCK_DGRAM)
    await receiver.bind(("127.0.0.1", 0))
    port = receiver.getsockname()[1]
    many = document({"127.0.0.1:6379": {f"OP{i}": series([0.001] * 2) for i in range(40)}})
    config = GraphiteConfig(Address("127.0.0.1", port), GraphiteTransport.UDP, 1.0, "pfx")
    reporter = GraphiteReporter(config, sequence(many))
    nursery.start_soon(reporter.run)

    sink = LineSink()
    sizes: list[int] = []
    with trio.fail_after(60):
        while len(sink.lines) < 40 * 11 + 1:
            datagram = await receiver.recv(65536)
            sizes.append(len(datagram))
            assert datagram.endswith(b"\n")  # whole lines only
            sink.feed(datagram)
    assert len(sizes) > 1 and max(sizes) <= UDP_DATAGRAM_LIMIT
    assert len(sink.lines) == 40 * 11 + 1
    base = BASE.removesuffix("GET")
    assert all(sink.values_of(f"pfx.{base}OP{i}.count") == [2] for i in range(40))
    assert reporter.failures == 0
    receiver.close()


async def test_dead_tcp_endpoint_counts_failures_and_recovers(
    clock: trio.testing.MockClock, nursery: trio.Nursery, caplog: pytest.LogCaptureFixture
) -> None:
    # A port nothing listens on (yet).
    probe = trio.socket.socket()
    await probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    config = GraphiteConfig(Address("127.0.0.1", port), GraphiteTransport.TCP, 1.0, "")
    calls = 0

    async def source() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        # Always new calls, so every push has lines to send.
        return document({"127.0.0.1:6379": {"GET": series([0.001] * calls)}})

    reporter = GraphiteReporter(config, source)
    done = trio.Event()

    async def run() -> None:
        await reporter.run()
        done.set()  # run() returned: it must not (only cancellation ends it)

    caplog.set_level(logging.INFO, logger="resmesh.observe.graphite")
    nursery.start_soon(run)
    with trio.fail_after(120):
        while reporter.failures < 5:
            await trio.sleep(0.5)
    assert not done.is_set()
    assert reporter.sent_lines == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once per outage
    assert str(port) in warnings[0].getMessage()

    # Carbon comes up: the reporter reconnects (after its backoff) and pushes again.
    sink = LineSink()

    async def handler(stream: trio.SocketStream) -> None:
        async for data in stream:
            sink.feed(data)

    await nursery.start(functools.partial(trio.serve_tcp, handler, port, host="127.0.0.1"))
    await sink.wait(lambda: bool(sink.values_of(f"{BASE}.count")), timeout=120)
    assert sink.values_of(f"{BASE}.count")[0] == 1  # one more call than the previous document
    assert reporter.sent_lines > 0
    assert any("again" in r.getMessage() for r in caplog.records if r.levelno == logging.INFO)


async def test_tcp_reconnects_after_carbon_closes_the_connection(
    clock: trio.testing.MockClock, nursery: trio.Nursery
) -> None:
    sink = LineSink()
    connections = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal connections
        connections += 1
        if connections == 1:  # the first connection: read one push, then hang up (a restart)
            sink.feed(await stream.receive_some())
            await stream.aclose()
            return
        async for data in stream:
            sink.feed(data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    calls = 0

    async def source() -> dict[str, Any]:
        nonlocal calls
        calls += 1
        await trio.lowlevel.checkpoint()
        return document({"127.0.0.1:6379": {"GET": series([0.001] * calls)}})

    config = GraphiteConfig(Address("127.0.0.1", port), GraphiteTransport.TCP, 1.0, "")
    reporter = GraphiteReporter(config, source)
    nursery.start_soon(reporter.run)
    await sink.wait(lambda: connections >= 2 and len(sink.values_of(f"{BASE}.count")) >= 3)
    assert sink.values_of(f"{BASE}.count")[:3] == [1, 1, 1]
    # At most the pushes in flight when the peer hung up were lost, and counted.
    assert reporter.failures <= 2
