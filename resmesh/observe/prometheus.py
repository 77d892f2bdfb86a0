"""Prometheus text exposition of the gateway's counters, built at scrape time.

The metrics document (:meth:`resmesh.admin.status.LocalView.metrics`, merged over workers) is
turned into metric families by a ``prometheus_client`` custom collector when ``/metrics`` is
scraped, so calls pay nothing for the exposition (the pattern of the client library's "custom
collectors": https://prometheus.github.io/client_python/collector/custom/). Names and labels
follow the Prometheus naming conventions (https://prometheus.io/docs/practices/naming/): a
``resmesh_`` prefix, base units (seconds, bytes), ``_total`` on counters.

Latency is exported twice from one histogram: as a Prometheus histogram with fixed ``le``
bounds (aggregatable across gateways in PromQL), and as a summary with p50/p90/p99/p99.9
(what an operator reads at a glance). The log-linear buckets are finer than the ``le``
bounds; a bucket counts under the first bound at or above its highest value, so a count
never understates a latency.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from .metrics import OUTCOME_NAMES, histogram_of

__all__ = ["CONTENT_TYPE", "render"]

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"

#: Histogram bounds, seconds: 100 µs to 10 s.
LE_BOUNDS: Final = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
QUANTILES: Final = (0.5, 0.9, 0.99, 0.999)
_BREAKER_STATES: Final = {"closed": 0, "open": 1, "half_open": 2}

_SERIES_LABELS: Final = ["cluster", "protocol", "operation", "node"]


def render(document: dict[str, Any]) -> bytes:
    """The text exposition of a metrics document."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DocumentCollector(document))
    return generate_latest(registry)


class _DocumentCollector(Collector):
    def __init__(self, document: dict[str, Any]) -> None:
        self._document = document

    def collect(self) -> Iterator[Metric]:
        document = self._document
        calls = CounterMetricFamily(
            "resmesh_calls",
            "Calls ended, by cluster, operation, node and outcome; refused ones (node empty) "
            "are also counted by policy in resmesh_rejected_calls_total",
            labels=[*_SERIES_LABELS, "outcome"],
        )
        rejected = CounterMetricFamily(
            "resmesh_rejected_calls",
            "Calls governance answered without a node: switch, limit, no_node, deadline",
            labels=["cluster", "protocol", "operation", "policy"],
        )
        duration = HistogramMetricFamily(
            "resmesh_call_duration_seconds",
            "Time from a call's run being sent to its answer (a pipelined run's calls share it)",
            labels=_SERIES_LABELS,
        )
        latency = Metric(
            "resmesh_call_latency_seconds", "Call latency percentiles since start", "summary"
        )
        sent = CounterMetricFamily(
            "resmesh_sent_bytes", "Bytes sent to nodes", labels=_SERIES_LABELS
        )
        received = CounterMetricFamily(
            "resmesh_received_bytes", "Bytes received from nodes", labels=_SERIES_LABELS
        )
        hedges = CounterMetricFamily(
            "resmesh_hedges", "Backup requests sent (hedges)", labels=_SERIES_LABELS
        )
        hedges_won = CounterMetricFamily(
            "resmesh_hedges_won", "Backup requests that answered first", labels=_SERIES_LABELS
        )
        retries = CounterMetricFamily(
            "resmesh_retries", "Retries on another node after a node failure", labels=_SERIES_LABELS
        )
        attempt_failures = CounterMetricFamily(
            "resmesh_attempt_failures",
            "Attempts that failed on a node (their calls went on elsewhere or failed there)",
            labels=_SERIES_LABELS,
        )
        clients = GaugeMetricFamily(
            "resmesh_clients", "Client connections open", labels=["cluster", "protocol"]
        )
        breaker = GaugeMetricFamily(
            "resmesh_breaker_state",
            "A node's circuit breaker: 0 closed, 1 open, 2 half-open",
            labels=["cluster", "node", "group"],
        )
        transitions = CounterMetricFamily(
            "resmesh_breaker_transitions",
            "A node's breaker changing state, by the state it went to",
            labels=["cluster", "node", "state"],
        )
        ejections = CounterMetricFamily(
            "resmesh_ejections",
            "Times a node was ejected as an outlier",
            labels=["cluster", "node"],
        )
        connections = GaugeMetricFamily(
            "resmesh_backend_connections", "Connections open to a node", labels=["cluster", "node"]
        )
        in_flight = GaugeMetricFamily(
            "resmesh_backend_in_flight", "Calls in flight on a node", labels=["cluster", "node"]
        )
        hedge_delay = GaugeMetricFamily(
            "resmesh_hedge_delay_seconds",
            "The backup-request delay in force (* is the cluster's)",
            labels=["cluster", "operation"],
        )
        for cluster, counted in document["clusters"].items():
            protocol = counted["protocol"]
            clients.add_metric([cluster, protocol], counted["clients"])
            for address, table in counted["series"].items():
                for operation, series in table.items():
                    labels = [cluster, protocol, operation, address]
                    for outcome in OUTCOME_NAMES:
                        value = series["outcomes"].get(outcome, 0)
                        if value:
                            calls.add_metric([*labels, outcome], value)
                    histogram = histogram_of(series)
                    duration.add_metric(
                        labels,
                        _buckets(histogram.upper_bounds()),
                        histogram.sum_micros / 1_000_000.0,
                    )
                    names = dict(zip(_SERIES_LABELS, labels, strict=True))
                    for q in QUANTILES:
                        latency.add_sample(
                            "resmesh_call_latency_seconds",
                            {**names, "quantile": str(q)},
                            histogram.percentile(q * 100),
                        )
                    latency.add_sample("resmesh_call_latency_seconds_count", names, histogram.count)
                    latency.add_sample(
                        "resmesh_call_latency_seconds_sum", names, histogram.sum_micros / 1e6
                    )
                    sent.add_metric(labels, series["bytes_out"])
                    received.add_metric(labels, series["bytes_in"])
                    if series["hedges"]:
                        hedges.add_metric(labels, series["hedges"])
                        hedges_won.add_metric(labels, series["hedges_won"])
                    if series["retries"]:
                        retries.add_metric(labels, series["retries"])
                    if series.get("attempt_failures"):
                        attempt_failures.add_metric(labels, series["attempt_failures"])
            for operation, by_policy in counted["refusals"].items():
                for policy, value in by_policy.items():
                    rejected.add_metric([cluster, protocol, operation, policy], value)
                    calls.add_metric([cluster, protocol, operation, "", "rejected"], value)
            for address, node in counted["nodes"].items():
                breaker.add_metric(
                    [cluster, address, node["group"]], _BREAKER_STATES.get(node["breaker"], 0)
                )
                for state, key in (
                    ("open", "trips"),
                    ("half_open", "half_opens"),
                    ("closed", "recoveries"),
                ):
                    transitions.add_metric([cluster, address, state], node.get(key, 0))
                ejections.add_metric([cluster, address], node["ejections"])
                if "connections" in node:
                    connections.add_metric([cluster, address], node["connections"])
                if "in_flight" in node:
                    in_flight.add_metric([cluster, address], node["in_flight"])
            for operation, delay in counted["hedge_delay"].items():
                hedge_delay.add_metric([cluster, operation], delay)
        registry = document["registry"]
        yield GaugeMetricFamily(
            "resmesh_registry_version", "The registry version in force", value=registry["version"]
        )
        yield GaugeMetricFamily(
            "resmesh_registry_reachable",
            "1 when the registry answers, 0 while the last good state is served without it",
            value=int(registry["reachable"]),
        )
        yield GaugeMetricFamily(
            "resmesh_workers",
            "Gateway processes counted here",
            value=document["gateway"]["workers"],
        )
        access_log = document.get("access_log")
        if access_log is not None:
            yield CounterMetricFamily(
                "resmesh_access_log_lines", "Access log lines written", value=access_log["written"]
            )
            yield CounterMetricFamily(
                "resmesh_access_log_dropped",
                "Access log lines dropped: the sink was too slow and its buffer full",
                value=access_log["dropped"],
            )
        yield from (
            calls,
            rejected,
            duration,
            latency,
            sent,
            received,
            hedges,
            hedges_won,
            retries,
            attempt_failures,
            clients,
            breaker,
            transitions,
            ejections,
            connections,
            in_flight,
            hedge_delay,
        )


def _buckets(uppers: list[tuple[float, int]]) -> list[tuple[str, float]]:
    """Cumulative counts under each ``le`` bound from (bucket highest value, count) pairs."""
    buckets: list[tuple[str, float]] = []
    index = 0
    total = 0
    for bound in LE_BOUNDS:
        while index < len(uppers) and uppers[index][0] <= bound:
            total += uppers[index][1]
            index += 1
        buckets.append((repr(bound), total))
    total += sum(count for _, count in uppers[index:])
    buckets.append(("+Inf", total))
    return buckets
