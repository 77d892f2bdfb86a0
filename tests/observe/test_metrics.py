"""resmesh.observe.metrics: calls counted per operation and node, histograms within their
stated error, and snapshots that merge as if one process had counted everything."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from resmesh.call import Call, Operation, Outcome
from resmesh.cluster.topology import Node
from resmesh.observe.metrics import (
    ClusterMetrics,
    Refusal,
    histogram_of,
    merge_snapshots,
    series_difference,
)
from resmesh.observe.prometheus import render

GET = Operation("GET", write=False, idempotent=True)
SET = Operation("SET", write=True, idempotent=False)
A = Node("127.0.0.1", 7001, "dc-a", 100)
B = Node("127.0.0.1", 7002, "dc-b", 100)


class _Call(Call):
    __slots__ = ()

    def __init__(self, op: Operation) -> None:
        self.op = op
        self.batch = 0


def calls(*ops: Operation) -> list[Call]:
    return [_Call(op) for op in ops]


def series(metrics: ClusterMetrics, node: str, operation: str) -> dict[str, object]:
    document: dict[str, object] = metrics.snapshot()["series"][node][operation]
    return document


def test_a_pipeline_of_one_operation_counts_every_call_and_one_shared_latency() -> None:
    metrics = ClusterMetrics("c", "redis")
    metrics.run_ended(calls(*[GET] * 16), A, Outcome.OK, 0.002, sent=160, received=320)
    counted = series(metrics, "127.0.0.1:7001", "GET")
    assert counted["outcomes"] == {
        "ok": 16,
        "app_error": 0,
        "upstream_error": 0,
        "local_error": 0,
        "rejected": 0,
    }
    assert (counted["bytes_out"], counted["bytes_in"]) == (160, 320)
    histogram = histogram_of(counted)  # type: ignore[arg-type]
    assert histogram.count == 16
    assert math.isclose(histogram.percentile(50), 0.002, rel_tol=0.04)


def test_a_mixed_run_gives_each_operation_its_share_and_each_call_its_outcome() -> None:
    metrics = ClusterMetrics("c", "redis")
    run = calls(GET, SET, GET, SET)
    outcomes = [Outcome.OK, Outcome.APP_ERROR, Outcome.OK, Outcome.OK]
    metrics.run_ended(run, A, Outcome.OK, 0.001, sent=400, received=40, per_call=outcomes)
    gets, sets = series(metrics, "127.0.0.1:7001", "GET"), series(metrics, "127.0.0.1:7001", "SET")
    assert gets["outcomes"]["ok"] == 2 and gets["bytes_out"] == 200  # type: ignore[index]
    assert sets["outcomes"]["ok"] == 1 and sets["outcomes"]["app_error"] == 1  # type: ignore[index]
    # A reply count that does not match the calls: the run's outcome counts for each.
    metrics.run_ended(calls(GET, GET), B, Outcome.UPSTREAM_ERROR, 0.1, per_call=[Outcome.OK])
    assert series(metrics, "127.0.0.1:7002", "GET")["outcomes"]["upstream_error"] == 2  # type: ignore[index]


def test_refusals_hedges_and_forgotten_nodes() -> None:
    metrics = ClusterMetrics("c", "motan2")
    metrics.refused("ECHO", Refusal.SWITCH, 3)
    metrics.refused("ECHO", Refusal.LIMIT)
    metrics.run_ended(calls(GET), A, Outcome.OK, 0.01)
    metrics.spread(GET, A, retries=2, hedged=True, won=True)
    metrics.spread(GET, A, retries=0, hedged=True, won=False)
    snapshot = metrics.snapshot()
    assert snapshot["refusals"] == {"ECHO": {"switch": 3, "limit": 1}}
    counted = snapshot["series"]["127.0.0.1:7001"]["GET"]
    assert (counted["hedges"], counted["hedges_won"], counted["retries"]) == (2, 1, 2)
    metrics.forget([A])
    assert "127.0.0.1:7001" not in metrics.snapshot()["series"]


def test_two_operation_objects_of_one_name_show_as_one_series() -> None:
    metrics = ClusterMetrics("c", "redis")
    other_get = Operation("GET", write=False, idempotent=False)
    metrics.run_ended(calls(GET), A, Outcome.OK, 0.001)
    metrics.run_ended(calls(other_get), A, Outcome.OK, 0.001)
    assert series(metrics, "127.0.0.1:7001", "GET")["outcomes"]["ok"] == 2  # type: ignore[index]


latencies = st.lists(st.floats(min_value=1e-6, max_value=30.0), min_size=1, max_size=300)


@settings(max_examples=80, deadline=None)
@given(latencies, st.sampled_from([50.0, 90.0, 99.0, 99.9]))
def test_percentiles_stay_within_the_histograms_stated_error(values: list[float], q: float) -> None:
    metrics = ClusterMetrics("c", "redis")
    for value in values:
        metrics.run_ended(calls(GET), A, Outcome.OK, value)
    got = histogram_of(series(metrics, "127.0.0.1:7001", "GET")).percentile(q)  # type: ignore[arg-type]
    rank = max(1, math.ceil(len(values) * q / 100))
    exact = sorted(values)[rank - 1]
    # The bucket's highest value: never below the truth by more than a µs of truncation,
    # never above it by more than one bucket (1/32 of its lower bound) plus that µs.
    assert exact - 1e-6 <= got <= exact * (1 + 1 / 32) + 2e-6


@settings(max_examples=60, deadline=None)
@given(latencies, latencies)
def test_merging_two_snapshots_equals_counting_both_streams(
    first: list[float], second: list[float]
) -> None:
    one, two, both = (ClusterMetrics("c", "redis") for _ in range(3))
    for value in first:
        one.run_ended(calls(GET), A, Outcome.OK, value, sent=3)
        both.run_ended(calls(GET), A, Outcome.OK, value, sent=3)
    for value in second:
        two.run_ended(calls(GET), A, Outcome.APP_ERROR, value, received=5)
        both.run_ended(calls(GET), A, Outcome.APP_ERROR, value, received=5)
    merged = merge_snapshots([one.snapshot(), two.snapshot()])
    expected = both.snapshot()
    got = merged["series"]["127.0.0.1:7001"]["GET"]
    want = expected["series"]["127.0.0.1:7001"]["GET"]
    assert got["outcomes"] == want["outcomes"]
    assert (got["bytes_out"], got["bytes_in"]) == (want["bytes_out"], want["bytes_in"])
    assert got["latency"]["buckets"] == want["latency"]["buckets"]
    for q in (50, 90, 99, 99.9):
        assert histogram_of(got).percentile(q) == histogram_of(want).percentile(q)


def test_the_difference_of_two_snapshots_is_what_happened_between_them() -> None:
    metrics = ClusterMetrics("c", "redis")
    metrics.run_ended(calls(GET), A, Outcome.OK, 0.001)
    before = metrics.snapshot()["series"]["127.0.0.1:7001"]["GET"]
    for _ in range(10):
        metrics.run_ended(calls(GET), A, Outcome.OK, 0.5)
    after = metrics.snapshot()["series"]["127.0.0.1:7001"]["GET"]
    delta = series_difference(before, after)
    assert delta["outcomes"]["ok"] == 10
    assert math.isclose(histogram_of(delta).percentile(1), 0.5, rel_tol=0.04)


def _document(metrics: ClusterMetrics) -> dict[str, object]:
    return {
        "gateway": {"app": "t", "workers": 1},
        "registry": {"version": 4, "reachable": True},
        "clusters": {
            "feed-cache": {
                **metrics.snapshot(),
                "clients": 3,
                "hedge_delay": {"*": 0.012},
                "nodes": {
                    "127.0.0.1:7001": {
                        "group": "dc-a",
                        "breaker": "open",
                        "trips": 2,
                        "ejections": 1,
                        "connections": 1,
                        "in_flight": 0,
                    }
                },
            }
        },
    }


def test_the_exposition_parses_and_its_counts_match_the_calls() -> None:
    metrics = ClusterMetrics("feed-cache", "redis")
    for _ in range(7):
        metrics.run_ended(calls(GET), A, Outcome.OK, 0.003, sent=10, received=20)
    metrics.run_ended(calls(SET), A, Outcome.UPSTREAM_ERROR, 0.2)
    metrics.refused("GET", Refusal.LIMIT, 4)
    text = render(_document(metrics)).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    base = {"cluster": "feed-cache", "protocol": "redis"}
    node = {**base, "node": "127.0.0.1:7001"}
    assert value("resmesh_calls_total", **node, operation="GET", outcome="ok") == 7
    assert value("resmesh_calls_total", **node, operation="SET", outcome="upstream_error") == 1
    assert value("resmesh_calls_total", **base, operation="GET", node="", outcome="rejected") == 4
    assert value("resmesh_rejected_calls_total", **base, operation="GET", policy="limit") == 4
    assert value("resmesh_call_duration_seconds_count", **node, operation="GET") == 7
    assert value("resmesh_call_duration_seconds_bucket", **node, operation="GET", le="0.0025") == 0
    assert value("resmesh_call_duration_seconds_bucket", **node, operation="GET", le="0.005") == 7
    assert value("resmesh_call_duration_seconds_bucket", **node, operation="GET", le="+Inf") == 7
    p99 = value("resmesh_call_latency_seconds", **node, operation="GET", quantile="0.99")
    assert math.isclose(p99, 0.003, rel_tol=0.04)
    assert value("resmesh_sent_bytes_total", **node, operation="GET") == 70
    assert (
        value("resmesh_breaker_state", cluster="feed-cache", node="127.0.0.1:7001", group="dc-a")
        == 1
    )
    breaker = {"cluster": "feed-cache", "node": "127.0.0.1:7001"}
    assert value("resmesh_breaker_transitions_total", **breaker, state="open") == 2
    assert value("resmesh_breaker_transitions_total", **breaker, state="closed") == 0
    assert value("resmesh_clients", **base) == 3
    assert value("resmesh_registry_version") == 4
