"""What the admin API and ``resmesh ctl status`` show: one document per gateway process, and
the merge of several (a gateway of ``gateway.workers`` processes shows as one): the status
(``/status``) and the counters (``/metrics.json``, which ``/metrics``, the Graphite push and
``ctl top`` are made from).

Per cluster: protocol, listen address, clients, the registry version in force, route weights,
switches, and per node its group, role, weight, whether the registry enables it, its health
(``up``, ``ejected`` by outlier detection, ``down`` for a failed health check, ``open`` for a
tripped circuit breaker, ``disabled``) and its breaker's state.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from .. import __version__
from ..config import Config
from ..observe.access_log import AccessLog
from ..observe.metrics import by_operation, histogram_of, merge_snapshots
from ..policies.chain import ClusterPolicies
from ..registry.follower import Follower
from ..registry.state import entry_document

__all__ = ["LocalView", "Served", "merge_metrics", "merge_statuses", "operation_summary"]


@dataclass(frozen=True, slots=True)
class Served:
    """One cluster as this process serves it: its policies, how many clients it has, and
    its backend connections per node (open, in flight)."""

    policies: ClusterPolicies
    clients: Callable[[], int]
    pools: Callable[[], dict[str, dict[str, int]]]


class LocalView:
    """The admin view of this process.

    Args:
        config: the configuration it runs.
        follower: its registry follower.
        served: every cluster it serves.
        draining: whether it is shutting down.
        worker: its index among the gateway's workers (``None``: the only process).
        access_log: its access log, if any (lines written and dropped are counters too).
    """

    def __init__(
        self,
        config: Config,
        follower: Follower,
        served: Mapping[str, Served],
        draining: Callable[[], bool],
        worker: int | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self._config = config
        self._access_log = access_log
        self._follower = follower
        self._served = served
        self._draining = draining
        self._worker = worker
        self._started = time.time()

    async def health(self) -> tuple[bool, str]:
        follower = self._follower
        if self._draining():
            return False, "draining: shutting down"
        if not follower.reachable:
            return True, (
                f"serving registry version {follower.version}; the registry is unreachable "
                f"({follower.error})"
            )
        return True, f"serving registry version {follower.version}"

    async def status(self) -> dict[str, Any]:
        config = self._config
        now = trio.current_time()
        clusters: dict[str, dict[str, Any]] = {}
        for name, served in self._served.items():
            cluster = config.clusters[name]
            entry = self._follower.entry(name)
            document = entry_document(entry)
            clusters[name] = {
                "protocol": str(cluster.protocol),
                "listen": str(cluster.listen),
                "mode": str(cluster.mode),
                "clients": served.clients(),
                **self._follower.cluster_status(name),
                "route": document["route"],
                "switches": document["switches"],
                "limits": document["limits"],
                "groups": _groups(served.policies, document["groups"], now),
            }
        counted = await self.metrics()
        for name, shown in clusters.items():
            shown["operations"] = operation_summary(counted["clusters"][name])
        return {
            "gateway": {
                "app": config.gateway.app,
                "version": __version__,
                "pid": os.getpid(),
                "worker": self._worker,
                "started": self._started,
                "draining": self._draining(),
            },
            "registry": self._follower.status(),
            "clusters": clusters,
        }

    async def config(self) -> dict[str, Any]:
        return self._follower.config()

    async def metrics(self) -> dict[str, Any]:
        """Every counter of this process, for the exporters (:mod:`resmesh.observe`)."""
        now = trio.current_time()
        clusters = {}
        for name, served in self._served.items():
            policies = served.policies
            pools = served.pools()
            nodes = {}
            for node in policies.topology.nodes:
                breaker = policies.breakers[node]
                ejections = policies.outliers[node.group].ejections_of(node)
                nodes[node.address] = {
                    "group": node.group,
                    "breaker": breaker.state.name.lower(),
                    "trips": getattr(breaker, "trips", 0),
                    "half_opens": getattr(breaker, "half_opens", 0),
                    "recoveries": getattr(breaker, "recoveries", 0),
                    "ejections": ejections,
                    **pools.get(node.address, {}),
                }
            counted = policies.metrics
            clusters[name] = {
                **(
                    counted.snapshot()
                    if counted is not None
                    else {"protocol": "", "series": {}, "refusals": {}}
                ),
                "clients": served.clients(),
                "nodes": nodes,
                "hedge_delay": _hedge_delays(policies, now),
            }
        follower = self._follower
        access_log = self._access_log
        return {
            "gateway": {"app": self._config.gateway.app, "workers": 1},
            "registry": {"version": follower.version, "reachable": follower.reachable},
            "access_log": (
                {"written": access_log.written, "dropped": access_log.dropped}
                if access_log is not None
                else None
            ),
            "clusters": clusters,
        }


def _groups(
    policies: ClusterPolicies, groups: dict[str, list[dict[str, Any]]], now: float
) -> dict[str, list[dict[str, Any]]]:
    """The entry's nodes, each with its health and breaker state in ``policies``."""
    live = {node.address: node for node in policies.topology.nodes}
    shown: dict[str, list[dict[str, Any]]] = {}
    for group, nodes in groups.items():
        shown[group] = []
        for doc in nodes:
            node = live.get(doc["address"])
            if node is None:
                health, breaker = "disabled", None
            else:
                state = policies.breakers[node]
                breaker = state.state.name.lower()
                if node in policies.down:
                    health = "down"
                elif not state.would_allow(now):
                    health = "open"
                elif policies.outliers[node.group].is_ejected(node, now):
                    health = "ejected"
                else:
                    health = "up"
            shown[group].append({**doc, "health": health, "breaker": breaker})
    return shown


def merge_statuses(statuses: list[dict[str, Any]]) -> dict[str, Any]:
    """One status for a gateway of several workers: the first worker's, with clients summed
    and a node shown up only where every worker finds it up; each worker's own status under
    ``workers``."""
    merged = dict(statuses[0])
    merged["gateway"] = {**merged["gateway"], "worker": None, "workers": len(statuses)}
    clusters: dict[str, Any] = {}
    for name, cluster in statuses[0]["clusters"].items():
        others = [s["clusters"].get(name) for s in statuses[1:] if name in s["clusters"]]
        combined = dict(cluster)
        combined["clients"] = cluster["clients"] + sum(o["clients"] for o in others)
        combined["version"] = min([cluster["version"], *(o["version"] for o in others)])
        groups: dict[str, list[dict[str, Any]]] = {}
        for group, nodes in cluster["groups"].items():
            groups[group] = []
            for index, node in enumerate(nodes):
                seen = [node] + [
                    o["groups"][group][index]
                    for o in others
                    if len(o["groups"].get(group, ())) > index
                    and o["groups"][group][index]["address"] == node["address"]
                ]
                bad = next((n for n in seen if n["health"] != "up"), node)
                groups[group].append({**node, "health": bad["health"], "breaker": bad["breaker"]})
        combined["groups"] = groups
        clusters[name] = combined
    merged["clusters"] = clusters
    merged["workers"] = statuses
    return merged


def _hedge_delays(policies: ClusterPolicies, now: float) -> dict[str, float]:
    """The backup-request delay in force per operation (``*``: the cluster's), seconds."""
    delays = {}
    for operation, tracker in policies.hedges.items():
        if tracker is not None:
            delay = tracker.delay(now)
            if delay is not None:
                delays[operation or "*"] = delay
    return delays


def merge_metrics(documents: list[dict[str, Any]]) -> dict[str, Any]:
    """One metrics document for several workers: counters added, histograms merged, node
    gauges added (connections, calls in flight) or the worst kept (a breaker's state)."""
    merged: dict[str, Any] = {
        "gateway": {**documents[0]["gateway"], "workers": len(documents)},
        "registry": {
            "version": min(d["registry"]["version"] for d in documents),
            "reachable": all(d["registry"]["reachable"] for d in documents),
        },
        "access_log": None,
        "clusters": {},
    }
    logs = [d["access_log"] for d in documents if d.get("access_log") is not None]
    if logs:
        merged["access_log"] = {
            key: sum(log[key] for log in logs) for key in ("written", "dropped")
        }
    for name in documents[0]["clusters"]:
        parts = [d["clusters"][name] for d in documents if name in d["clusters"]]
        cluster = merge_snapshots(parts)
        cluster["clients"] = sum(p["clients"] for p in parts)
        cluster["hedge_delay"] = parts[0]["hedge_delay"]
        nodes: dict[str, dict[str, Any]] = {}
        for part in parts:
            for address, node in part["nodes"].items():
                into = nodes.get(address)
                if into is None:
                    nodes[address] = dict(node)
                    continue
                for key, value in node.items():
                    if key == "breaker":
                        if _BREAKER_RANK.get(value, 0) > _BREAKER_RANK.get(into[key], 0):
                            into[key] = value
                    elif isinstance(value, int):
                        into[key] = into.get(key, 0) + value
        cluster["nodes"] = nodes
        merged["clusters"][name] = cluster
    return merged


_BREAKER_RANK = {"closed": 0, "half_open": 1, "open": 2}


def operation_summary(cluster: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per operation, over every node: calls, errors (app, upstream, local), rejected, and
    latency percentiles in seconds since start (one cluster of a metrics document)."""
    summary: dict[str, dict[str, Any]] = {}
    for operation, series in sorted(by_operation(cluster).items()):
        outcomes = series["outcomes"]
        histogram = histogram_of(series)
        summary[operation] = {
            "calls": sum(outcomes.values()),
            "errors": outcomes["app_error"] + outcomes["upstream_error"] + outcomes["local_error"],
            "rejected": outcomes["rejected"],
            "p50": histogram.percentile(50),
            "p90": histogram.percentile(90),
            "p99": histogram.percentile(99),
            "p999": histogram.percentile(99.9),
        }
    return summary
