"""A gateway's side of the registry: read it, follow it, apply every change to the clusters.

The follower keeps each cluster on its registry entry (or on its configuration, for a cluster
the registry has no entry for): a change is applied at once, for the calls that start from
then on (:meth:`resmesh.net.runtime.ClusterRuntime.apply`). When the registry cannot be
reached the clusters keep the last state applied, the status says since when and why, and the
follower reads the whole registry again as soon as it answers: a change made meanwhile is
applied then, never missed. An entry that is not valid (a bad hand edit, a layout without a
primary) is refused with a log line naming it, and its cluster keeps its last good state.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import trio

from ..cluster.topology import ClusterState
from ..config import ClusterConfig
from ..policies.chain import ClusterPolicies, configured_limits
from ..policies.limit import LimitConfig
from ..policies.switch import Switch
from .base import Registry, RegistryUnavailable
from .state import (
    ClusterEntry,
    RegistryDataError,
    Snapshot,
    cluster_state,
    entry_document,
    entry_from_config,
    limits_of,
    switches_of,
)

__all__ = ["Follower", "Target"]

log = logging.getLogger(__name__)

#: Seconds between attempts to reach an unreachable registry: the first, and the longest.
_RETRY_FIRST: Final = 0.2
_RETRY_MAX: Final = 2.0


class Target(Protocol):
    """What serves a cluster and takes its new layouts (a runtime, a Motan2 service)."""

    policies: ClusterPolicies

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None: ...


@dataclass(slots=True)
class _Applied:
    entry: ClusterEntry
    version: int
    #: Why the registry's newer entry was refused, if it was.
    error: str | None = None


class Follower:
    """Keeps ``targets`` (cluster name → what serves it) on ``registry``'s state.

    Args:
        registry: the backend.
        clusters: the configuration of every cluster this gateway serves.
        targets: what applies each cluster's layout.
    """

    def __init__(
        self,
        registry: Registry,
        clusters: Mapping[str, ClusterConfig],
        targets: Mapping[str, Target],
    ) -> None:
        self.registry = registry
        self._clusters = clusters
        self._targets = targets
        #: The registry version in force (0: the configuration's state).
        self.version = 0
        #: Whether the last attempt to reach the registry worked.
        self.reachable = False
        #: Why it did not, while it does not.
        self.error: str | None = "not read yet"
        #: Wall-clock time (Unix seconds) when ``reachable`` last changed.
        self.since = time.time()
        #: Called after every change applied (the admin API's cache of the status).
        self.on_change: Callable[[], None] = lambda: None
        self._applied = {
            name: _Applied(entry_from_config(config), 0) for name, config in clusters.items()
        }

    # ----------------------------------------------------------------------------------------

    async def start(self) -> bool:
        """Read the registry once and apply it; whether it could be read (else the clusters
        stay on their configuration)."""
        try:
            snapshot = await self.registry.read()
        except RegistryUnavailable as exc:
            self._unreachable(str(exc))
            return False
        self._reached()
        self.apply(snapshot)
        return True

    async def run(self) -> None:
        """Follow the registry until cancelled, through every outage."""
        retry = _RETRY_FIRST
        snapshot: Snapshot | None = None
        while True:
            try:
                if snapshot is None or not self.reachable:
                    snapshot = await self.registry.read()
                    self._reached()
                    self.apply(snapshot)
                retry = _RETRY_FIRST
                await self.registry.follow(snapshot, self.apply)
            except RegistryUnavailable as exc:
                self._unreachable(str(exc))
            await trio.sleep(retry)
            retry = min(retry * 2, _RETRY_MAX)

    def _reached(self) -> None:
        if not self.reachable:
            if self.error != "not read yet":
                log.info("registry %s reachable again: resyncing", self.registry.describe())
            self.reachable = True
            self.error = None
            self.since = time.time()

    def _unreachable(self, reason: str) -> None:
        if self.reachable or self.error == "not read yet":
            log.warning(
                "registry unreachable: %s; serving registry version %d until it answers",
                reason,
                self.version,
            )
            self.since = time.time()
        self.reachable = False
        self.error = reason

    # ----------------------------------------------------------------------------------------

    def apply(self, snapshot: Snapshot) -> None:
        """Put every cluster on its entry in ``snapshot`` (on its configuration when the
        snapshot has none); a cluster whose entry is invalid keeps its last good state."""
        for name, config in self._clusters.items():
            applied = self._applied[name]
            problem = snapshot.errors.get(name)
            entry = snapshot.clusters.get(name) or entry_from_config(config)
            if problem is None and entry != applied.entry:
                try:
                    state = cluster_state(name, entry, config, snapshot.version)
                    target = self._targets[name]
                    target.apply(state, switches_of(name, entry))
                    limits = limits_of(entry, configured_limits(config.governance))
                    target.policies.set_limits(limits, trio.current_time())
                except (RegistryDataError, ValueError) as exc:
                    problem = str(exc)
                else:
                    log.info(
                        "cluster %s: registry version %d applied: %s",
                        name,
                        snapshot.version,
                        describe_entry(entry),
                    )
                    applied.entry = entry
            if problem is not None and problem != applied.error:
                log.error(
                    "cluster %s: registry version %d refused, keeping version %d: %s",
                    name,
                    snapshot.version,
                    applied.version,
                    problem,
                )
            if problem is None:
                applied.version = snapshot.version
            applied.error = problem
        self.version = snapshot.version
        self.on_change()

    # ----------------------------------------------------------------------------------------

    def entry(self, cluster: str) -> ClusterEntry:
        """The entry in force for ``cluster``."""
        return self._applied[cluster].entry

    def cluster_status(self, cluster: str) -> dict[str, Any]:
        applied = self._applied[cluster]
        return {"version": applied.version, "error": applied.error}

    def status(self) -> dict[str, Any]:
        """The registry as this gateway sees it, for the admin API."""
        return {
            "kind": self.registry.kind,
            "where": self.registry.describe(),
            "version": self.version,
            "reachable": self.reachable,
            "error": self.error,
            "since": self.since,
        }

    def config(self) -> dict[str, Any]:
        """The state in force, for the admin API's ``/config``."""
        return {
            "version": self.version,
            "clusters": {
                name: {**entry_document(applied.entry), "version": applied.version}
                for name, applied in self._applied.items()
            },
        }


def describe_entry(entry: ClusterEntry) -> str:
    """One line: route, nodes, switches."""
    route = " ".join(f"{g}={w}" for g, w in entry.route.items())
    nodes = " ".join(
        n.address
        + ("(primary)" if n.role is not None and str(n.role) == "primary" else "")
        + ("(disabled)" if not n.enabled else "")
        for n in entry.nodes
    )
    switches = (
        " ".join(f"{s.operation or '*'}={s.mode}" for s in entry.switches)
        if entry.switches
        else "none"
    )
    text = f"route {route}; nodes {nodes}; switches {switches}"
    if entry.limits:
        text += "; limits " + " ".join(
            f"{scope}=" + ",".join(f"{k}:{v:g}" for k, v in _limit_fields(limit).items())
            for scope, limit in entry.limits.items()
        )
    return text


def _limit_fields(limit: LimitConfig) -> dict[str, float]:
    return {
        key: value
        for key in ("rate", "burst", "concurrency")
        if (value := getattr(limit, key)) is not None
    }
