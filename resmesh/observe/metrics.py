"""Every call counted and timed, once, where the governance pipeline ends it.

One :class:`ClusterMetrics` per cluster, owned by its :class:`~resmesh.policies.chain.
ClusterPolicies`. The HA engine reports every run it ends (:meth:`ClusterMetrics.run_ended`:
the node that answered, the outcome, the latency, the bytes), whatever the protocol; the
frontends report only the calls governance refused before any node was chosen
(:meth:`ClusterMetrics.refused`: a degrade switch, a limit). So a call is counted in exactly
one place, and the per-call cost is a few counter increments: a run's calls of one operation
share one latency sample weighted by their number (a pipeline of 16 GETs waited once).

Series are kept per operation and node, cumulative since start (Prometheus counters; Graphite
and ``ctl top`` take differences between two snapshots). Latencies go into the log-linear
:class:`~resmesh.policies.window.LatencyHistogram` (HdrHistogram's scheme: ~3 % relative
error, 704 integer buckets, mergeable by adding counts), so percentiles of several workers
are computed from their merged counts, never averaged.

Reading is never on the call path: :meth:`ClusterMetrics.snapshot` builds a plain document
(JSON-able, so a worker can hand it to another) when an exporter asks, and
:func:`merge_snapshots` adds several up.
"""

from __future__ import annotations

import enum
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from operator import add, attrgetter
from typing import TYPE_CHECKING, Any, Final, Protocol, final

from ..call import Call, Operation, Outcome
from ..policies.window import BUCKET_EDGES, LatencyHistogram, histogram_from_counts

if TYPE_CHECKING:
    from ..cluster.topology import Node

__all__ = [
    "OUTCOME_NAMES",
    "ClusterMetrics",
    "Refusal",
    "Series",
    "by_operation",
    "merge_series",
    "merge_snapshots",
    "series_difference",
]

#: A call's :class:`~resmesh.call.Operation`, fetched in C by ``map``.
_op_of: Final = attrgetter("op")

_OK: Final = Outcome.OK
_APP_ERROR: Final = Outcome.APP_ERROR

#: The label of each :class:`~resmesh.call.Outcome`, in its order.
OUTCOME_NAMES: Final = ("ok", "app_error", "upstream_error", "local_error", "rejected")


class Refusal(enum.StrEnum):
    """Which policy refused a call before it reached a node."""

    SWITCH = "switch"
    LIMIT = "limit"
    #: Every node's breaker is open or ejected, or none is routed: no node left to try.
    NO_NODE = "no_node"
    #: The run's deadline passed before it could be sent.
    DEADLINE = "deadline"


@final
class Series:
    """One operation on one node (or, for refusals, on none): what it counted."""

    __slots__ = (
        "attempt_failures",
        "buckets",
        "bytes_in",
        "bytes_out",
        "failed_buckets",
        "hedges",
        "hedges_won",
        "operation",
        "outcomes",
        "retries",
        "seconds",
    )

    def __init__(self, operation: str) -> None:
        self.operation = operation
        self.outcomes = [0, 0, 0, 0, 0]
        #: Calls the node answered (OK, or the app's own error) per latency bucket
        #: (:data:`~resmesh.policies.window.BUCKET_EDGES`, one more slot for latencies
        #: beyond the last), and the sum of every call's latency in seconds: the two updates
        #: a run makes, rather than a histogram method call. The hedge delays read these (a
        #: timeout's latency says nothing of how fast the node answers).
        self.buckets = [0] * (len(BUCKET_EDGES) + 1)
        #: The same for the calls it did not answer (made at the first).
        self.failed_buckets: list[int] | None = None
        self.seconds = 0.0
        self.bytes_out = 0
        self.bytes_in = 0
        self.hedges = 0
        self.hedges_won = 0
        self.retries = 0
        #: Attempts that failed on this node and were retried or backed up elsewhere (the
        #: call itself is counted where it ended).
        self.attempt_failures = 0

    def failed(self, bucket: int, count: int) -> None:
        """``count`` calls the node did not answer took a latency in ``bucket``."""
        failed = self.failed_buckets
        if failed is None:
            failed = self.failed_buckets = [0] * (len(BUCKET_EDGES) + 1)
        failed[bucket] += count

    def document(self) -> dict[str, Any]:
        counts = self.buckets
        if self.failed_buckets is not None:
            counts = list(map(add, counts, self.failed_buckets))
        buckets = {index: n for index, n in enumerate(counts) if n}
        top = max(buckets, default=0)
        return {
            "outcomes": dict(zip(OUTCOME_NAMES, self.outcomes, strict=True)),
            "bytes_out": self.bytes_out,
            "bytes_in": self.bytes_in,
            "hedges": self.hedges,
            "hedges_won": self.hedges_won,
            "retries": self.retries,
            "attempt_failures": self.attempt_failures,
            "latency": {
                "count": sum(buckets.values()),
                "sum_us": round(self.seconds * 1_000_000),
                "max_us": round(BUCKET_EDGES[min(top, len(BUCKET_EDGES) - 1)] * 1_000_000) - 1
                if buckets
                else 0,
                "buckets": buckets,
            },
        }


class RunListener(Protocol):
    """What the access log is told of every run the engine ends: its calls, the node's
    address (``""``: none), the outcome, the latency (seconds), the bytes out and in, and the
    app's request id."""

    def __call__(
        self,
        calls: Sequence[Call],
        node: str,
        outcome: Outcome,
        latency: float,
        sent: int,
        received: int,
        *,
        request_id: str | None,
    ) -> None: ...


@final
class ClusterMetrics:
    """The counters of one cluster: series by node and operation, refusals by operation.

    Args:
        cluster: the cluster's name.
        protocol: its protocol (a label).
    """

    __slots__ = ("_by_node", "cluster", "listener", "protocol", "refusals")

    def __init__(self, cluster: str, protocol: str) -> None:
        self.cluster = cluster
        self.protocol = protocol
        #: Node → operation → series (keyed by the Operation object: a hash by identity).
        self._by_node: dict[Node | None, dict[Operation, Series]] = {}
        #: Operation name → policy → calls it refused before the engine (switch, limit).
        self.refusals: dict[str, dict[str, int]] = {}
        #: Told of every run ended (the access log), if set.
        self.listener: RunListener | None = None

    def _series(self, node: Node | None, operation: Operation) -> Series:
        table = self._by_node.get(node)
        if table is None:
            table = self._by_node[node] = {}
        series = table.get(operation)
        if series is None:
            series = table[operation] = Series(operation.name)
        return series

    # ------------------------------------------------------------------------------------
    # The call path

    def run_ended(
        self,
        calls: Sequence[Call],
        node: Node | None,
        outcome: Outcome,
        latency: float,
        sent: int = 0,
        received: int = 0,
        per_call: Sequence[Outcome] | None = None,
        request_id: str | None = None,
        operation: Operation | None = None,
    ) -> None:
        """A run ended: ``calls`` went to ``node`` (``None``: to none) and ended with
        ``outcome`` after ``latency`` seconds, ``sent`` and ``received`` bytes on the node's
        connection. ``per_call``: each call's own outcome, when they differ (a pipeline with
        one error reply). ``request_id``: the app's, for the access log. ``operation``: the
        one every call has, when the caller knows (else each call's is looked at).

        The common run (every call of one operation, one outcome) costs one series update
        whatever its length; the per-call work is done by C loops (``map``, ``list.count``).
        """
        count = len(calls)
        if not count:
            return  # an exchange that carried no call (a pinned session taking its connection)
        table = self._by_node.get(node)
        if table is None:
            table = self._by_node[node] = {}
        op = operation or calls[0].op
        ops = list(map(_op_of, calls)) if count > 1 and operation is None else None
        if ops is None or ops.count(op) == count:
            series = table.get(op)
            if series is None:
                series = table[op] = Series(op.name)
            if per_call is None or len(per_call) != count:
                series.outcomes[outcome] += count
            else:
                outcomes = series.outcomes
                for each in per_call:
                    outcomes[each] += 1
            if outcome is _OK or outcome is _APP_ERROR:
                series.buckets[bisect_right(BUCKET_EDGES, latency)] += count
            else:
                series.failed(bisect_right(BUCKET_EDGES, latency), count)
            series.seconds += latency * count
            series.bytes_out += sent
            series.bytes_in += received
        else:
            self._mixed(table, calls, ops, outcome, latency, sent, received, per_call)
        listener = self.listener
        if listener is not None:
            address = node.address if node is not None else ""
            listener(calls, address, outcome, latency, sent, received, request_id=request_id)

    def _mixed(
        self,
        table: dict[Operation, Series],
        calls: Sequence[Call],
        ops: list[Operation],
        outcome: Outcome,
        latency: float,
        sent: int,
        received: int,
        per_call: Sequence[Outcome] | None,
    ) -> None:
        """:meth:`run_ended` for a run of several operations (``ops``: each call's): each
        gets its share, counted by C loops (``dict.fromkeys``, ``list.count``)."""
        count = len(calls)
        if per_call is not None and len(per_call) != count:
            per_call = None
        bucket = bisect_right(BUCKET_EDGES, latency)
        for op in dict.fromkeys(ops):
            share = ops.count(op)
            series = table.get(op)
            if series is None:
                series = table[op] = Series(op.name)
            if per_call is None:
                series.outcomes[outcome] += share
            if outcome is _OK or outcome is _APP_ERROR:
                series.buckets[bucket] += share
            else:
                series.failed(bucket, share)
            series.seconds += latency * share
            series.bytes_out += sent * share // count
            series.bytes_in += received * share // count
        if per_call is not None:
            for call, each in zip(calls, per_call, strict=True):
                table[call.op].outcomes[each] += 1

    def spread(
        self, operation: Operation, node: Node | None, *, retries: int, hedged: bool, won: bool
    ) -> None:
        """A run that could go to several nodes ended: how many times it was retried on
        another node, whether it was backed up, and whether the backup answered first."""
        series = self._series(node, operation)
        series.retries += retries
        if hedged:
            series.hedges += 1
            if won:
                series.hedges_won += 1

    def untimed(self, call: Call, node: Node | None, request_id: str | None = None) -> None:
        """A call whose latency means nothing was served: the gateway answered it itself
        (``node`` ``None``: a Redis PING, SELECT, CLIENT SETNAME...), or relayed it on a
        connection whose replies are not paired with requests (a Redis subscriber's). It
        counts as a call with no latency sample (its access log line says 0)."""
        self._series(node, call.op).outcomes[Outcome.OK] += 1
        listener = self.listener
        if listener is not None:
            address = node.address if node is not None else ""
            listener((call,), address, Outcome.OK, 0.0, 0, 0, request_id=request_id)

    def attempt_failed(self, operation: Operation, node: Node) -> None:
        """An attempt of a run failed on ``node`` (the run went on elsewhere, or ended with
        this failure, counted by :meth:`run_ended`)."""
        self._series(node, operation).attempt_failures += 1

    def refused(self, operation: str, refusal: Refusal, count: int = 1) -> None:
        """``count`` calls of ``operation`` were answered by governance before the engine (a
        degrade switch, a limit)."""
        by_policy = self.refusals.get(operation)
        if by_policy is None:
            by_policy = self.refusals[operation] = {}
        by_policy[refusal] = by_policy.get(refusal, 0) + count

    # ------------------------------------------------------------------------------------

    def latency_buckets(self, counted: Callable[[str], bool]) -> list[int]:
        """The calls a node answered so far (OK, or the app's own error) per latency
        bucket (cumulative, over every node), of the idempotent operations ``counted``
        accepts by name (the ones a backup request may be sent for; not writes, not blocking
        commands): what :class:`~resmesh.policies.hedge.HedgeDelay` reads."""
        total = [0] * (len(BUCKET_EDGES) + 1)
        for node, table in self._by_node.items():
            if node is not None:
                for op, series in table.items():
                    if op.idempotent and counted(op.name):
                        total = list(map(add, total, series.buckets))
        return total

    def forget(self, nodes: Iterable[Node]) -> None:
        """Drop the series of nodes that left the cluster (memory stays bounded by the
        nodes in it and the operations they serve)."""
        for node in nodes:
            self._by_node.pop(node, None)

    def snapshot(self) -> dict[str, Any]:
        """Everything counted, as a plain document (see :func:`merge_snapshots`)."""
        series: dict[str, dict[str, Any]] = {}
        for node, table in self._by_node.items():
            address = node.address if node is not None else ""
            into = series.setdefault(address, {})
            for counted in table.values():  # two Operation objects may share a name
                name = counted.operation
                into[name] = merge_series(into.get(name), counted.document())
        return {
            "protocol": self.protocol,
            "series": series,
            "refusals": {op: dict(by) for op, by in self.refusals.items()},
        }


def merge_snapshots(snapshots: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Several workers' snapshots of one cluster as one: counts added, histograms merged
    bucket by bucket, maxima kept."""
    merged: dict[str, Any] = {"protocol": snapshots[0]["protocol"], "series": {}, "refusals": {}}
    for snapshot in snapshots:
        for address, table in snapshot["series"].items():
            into = merged["series"].setdefault(address, {})
            for operation, document in table.items():
                into[operation] = merge_series(into.get(operation), document)
        for operation, by_policy in snapshot["refusals"].items():
            into = merged["refusals"].setdefault(operation, {})
            for policy, count in by_policy.items():
                into[policy] = into.get(policy, 0) + count
    return merged


def merge_series(into: dict[str, Any] | None, other: dict[str, Any]) -> dict[str, Any]:
    if into is None:
        return {
            **other,
            "outcomes": dict(other["outcomes"]),
            "latency": {**other["latency"], "buckets": dict(other["latency"]["buckets"])},
        }
    for name, count in other["outcomes"].items():
        into["outcomes"][name] = into["outcomes"].get(name, 0) + count
    for key in ("bytes_out", "bytes_in", "hedges", "hedges_won", "retries", "attempt_failures"):
        into[key] += other.get(key, 0)
    latency, more = into["latency"], other["latency"]
    latency["count"] += more["count"]
    latency["sum_us"] += more["sum_us"]
    latency["max_us"] = max(latency["max_us"], more["max_us"])
    buckets = latency["buckets"]
    for index, count in more["buckets"].items():
        buckets[index] = buckets.get(index, 0) + count
    return into


def by_operation(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A cluster's series summed over its nodes, refusals counted as rejected calls."""
    merged: dict[str, dict[str, Any]] = {}
    for table in cluster["series"].values():
        for operation, series in table.items():
            merged[operation] = merge_series(merged.get(operation), series)
    for operation, by_policy in cluster["refusals"].items():
        refused = sum(by_policy.values())
        empty = {
            "outcomes": dict.fromkeys(OUTCOME_NAMES, 0),
            "bytes_out": 0,
            "bytes_in": 0,
            "hedges": 0,
            "hedges_won": 0,
            "retries": 0,
            "latency": {"count": 0, "sum_us": 0, "max_us": 0, "buckets": {}},
        }
        entry = merged.setdefault(operation, empty)
        entry["outcomes"]["rejected"] += refused
    return merged


def series_difference(before: dict[str, Any] | None, now: dict[str, Any]) -> dict[str, Any]:
    """The counts of series document ``now`` since ``before`` (same shape): outcomes, bytes
    and latency subtracted, histogram bucket by bucket. ``before`` ``None``, or counts that
    went down (the process or the node's series started over): ``now`` whole."""
    if before is not None:
        earlier, later = before["outcomes"], now["outcomes"]
        went_down = any(later.get(name, 0) < count for name, count in earlier.items())
        if went_down or now["latency"]["count"] < before["latency"]["count"]:
            before = None
    if before is None:
        return {
            "outcomes": dict(now["outcomes"]),
            "bytes_in": now.get("bytes_in", 0),
            "bytes_out": now.get("bytes_out", 0),
            "latency": {
                **now["latency"],
                "buckets": {int(i): n for i, n in now["latency"]["buckets"].items()},
            },
        }
    buckets = {int(i): n for i, n in now["latency"]["buckets"].items()}
    for index, count in before["latency"]["buckets"].items():
        key = int(index)
        left = buckets.get(key, 0) - count
        if left > 0:
            buckets[key] = left
        else:
            buckets.pop(key, None)
    return {
        "outcomes": {
            name: count - before["outcomes"].get(name, 0) for name, count in now["outcomes"].items()
        },
        "bytes_in": max(0, now.get("bytes_in", 0) - before.get("bytes_in", 0)),
        "bytes_out": max(0, now.get("bytes_out", 0) - before.get("bytes_out", 0)),
        "latency": {
            "count": now["latency"]["count"] - before["latency"]["count"],
            "sum_us": max(0, now["latency"]["sum_us"] - before["latency"]["sum_us"]),
            # The interval's own maximum is not kept; the cumulative one bounds it (it only
            # caps the percentiles read from the buckets).
            "max_us": now["latency"]["max_us"],
            "buckets": buckets,
        },
    }


def histogram_of(document: dict[str, Any]) -> LatencyHistogram:
    """The histogram a series document's ``latency`` describes (for percentiles)."""
    latency = document["latency"]
    return histogram_from_counts(
        {int(index): count for index, count in latency["buckets"].items()},
        latency["count"],
        latency["sum_us"],
        latency["max_us"],
    )
