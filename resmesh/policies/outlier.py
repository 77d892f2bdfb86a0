"""Outlier ejection: take a node that keeps failing out of its group for a while (Envoy).

A node is ejected after ``consecutive_failures`` node failures in a row (``UPSTREAM_ERROR`` or
``LOCAL_ERROR``; ``APP_ERROR`` and ``OK`` reset the count, ``REJECTED`` is ignored) for
``base_ejection x n`` seconds, where ``n`` counts its ejections (decaying by one per
``decay_interval`` it spends healthy), capped at ``max_ejection``. It returns by itself
when the time is up; there is no probe (the breaker, per node, does probing).

Two guards keep detection from emptying a group (Envoy's ``max_ejection_percent`` and panic
threshold):

* **Ejection cap**: at most ``max_ejection_percent`` of the group's nodes are ejected at once,
  but always at least one (gRPC A50: "Defaults to 10% but will eject at least one address
  regardless of the value"; Envoy alone would never eject from a group under 10 nodes). A
  group of one node can lose it too: the group is a data center, and its calls then spill to
  the others (the router reads group health); if there are none, panic mode below offers the
  node anyway.
* **Panic mode**: when fewer than ``panic_threshold`` percent of the nodes offered to
  :meth:`OutlierDetector.available` are healthy, all of them are returned (Envoy's panic
  threshold, 50 %): a node that might answer beats a certain "no healthy upstream".

With the defaults, ejecting 1 of 2 nodes leaves 50 % healthy (not below the threshold), so the
other node serves alone; in a group of 3, at most 1 is ejected.

Synchronous, explicit ``now``; :meth:`OutlierDetector.available` returns the very sequence it
was given when nothing is ejected (the common case) and a cached list otherwise, so the
per-call cost is a couple of attribute reads.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Final, TypeVar, final

from resmesh.call import Outcome
from resmesh.knobs import Kind, knob

__all__ = ["NodeOutlierStatistics", "OutlierConfig", "OutlierDetector", "OutlierStatistics"]

N = TypeVar("N", bound=Hashable)

_NODE_FAILURES: Final = frozenset({Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR})
_NOT_EJECTED: Final = -math.inf


@final
@dataclass(frozen=True, slots=True)
class OutlierConfig:
    """When nodes are ejected and for how long; the configuration's ``outlier:``.

    Attributes:
        enabled: whether failing nodes are ejected.
        consecutive_failures: node failures in a row that eject it (5: Envoy
            ``consecutive_5xx`` / ``consecutive_local_origin_failure``, Istio
            ``consecutive5xxErrors``).
        base_ejection: seconds per ejection, multiplied by the ejection count (30 s: Envoy
            ``base_ejection_time``).
        max_ejection: cap on one ejection (300 s: Envoy ``max_ejection_time``).
        max_ejection_percent: share of a group that may be ejected at once, but at least one
            node of a group of two or more (10 %: Envoy ``max_ejection_percent``; "at least one":
            gRPC A50).
        panic_threshold: below this percentage of healthy nodes, use them all (50 %: Envoy
            ``healthy_panic_threshold``); 0 disables panic mode.
        decay_interval: the ejection multiplier drops by one per this many seconds a node
            spends healthy (10 s: Envoy's detection ``interval``). Not a configuration key.

    The two percentages are floats here, and whole numbers in the configuration file.
    """

    enabled: bool = knob(True, Kind.BOOL)
    consecutive_failures: int = knob(5, Kind.INT, low=1, high=1_000_000)
    base_ejection: float = knob(30.0, Kind.DURATION, low_open=True, example="30s")
    max_ejection: float = knob(300.0, Kind.DURATION, low_open=True, example="5m")
    max_ejection_percent: float = knob(10.0, Kind.INT, high=100, example="10")
    panic_threshold: float = knob(50.0, Kind.INT, high=100, example="50")
    decay_interval: float = 10.0

    def __post_init__(self) -> None:
        if self.consecutive_failures < 1:
            raise ValueError(
                f"consecutive_failures must be >= 1, got {self.consecutive_failures!r}"
            )
        if not 0 < self.base_ejection <= self.max_ejection:
            raise ValueError(
                "need 0 < base_ejection <= max_ejection, got "
                f"{self.base_ejection!r}, {self.max_ejection!r}"
            )
        if not 0.0 <= self.max_ejection_percent <= 100.0:
            raise ValueError(
                f"max_ejection_percent must be in [0, 100], got {self.max_ejection_percent!r}"
            )
        if not 0.0 <= self.panic_threshold <= 100.0:
            raise ValueError(f"panic_threshold must be in [0, 100], got {self.panic_threshold!r}")
        if not self.decay_interval > 0:
            raise ValueError(f"decay_interval must be > 0 s, got {self.decay_interval!r}")


@final
@dataclass(frozen=True, slots=True)
class NodeOutlierStatistics:
    node: str
    consecutive_failures: int
    ejections: int
    #: Trio time the node returns; ``None`` if it is not ejected.
    ejected_until: float | None


@final
@dataclass(frozen=True, slots=True)
class OutlierStatistics:
    nodes: int
    ejected: int
    max_ejected: int
    #: Whether the whole group is in panic mode at ``now``.
    panic: bool
    total_ejections: int
    per_node: tuple[NodeOutlierStatistics, ...]


@final
class _NodeState:
    __slots__ = ("consecutive", "ejected_until", "ejections", "returned_at", "total")

    def __init__(self) -> None:
        self.consecutive = 0
        #: The ejection multiplier (decays while the node stays healthy).
        self.ejections = 0
        #: Every ejection since start (a counter for the metrics).
        self.total = 0
        self.ejected_until = _NOT_EJECTED
        self.returned_at = 0.0


@final
class OutlierDetector:
    """Ejection state for the nodes of one group (any hashable node ids)."""

    __slots__ = (
        "_cache_nodes",
        "_cache_result",
        "_cache_version",
        "_ejected",
        "_max_ejected",
        "_max_multiplier",
        "_next_return",
        "_states",
        "_version",
        "config",
        "total_ejections",
    )

    def __init__(self, nodes: Iterable[Hashable], config: OutlierConfig | None = None) -> None:
        self.config = config or OutlierConfig()
        self._states: dict[Hashable, _NodeState] = {}
        self._ejected: set[Hashable] = set()
        self._next_return = math.inf
        self._version = 0
        self._cache_nodes: Sequence[Hashable] | None = None
        self._cache_version = -1
        self._cache_result: Sequence[Hashable] = ()
        self._max_ejected = 0
        self._max_multiplier = math.ceil(self.config.max_ejection / self.config.base_ejection)
        self.total_ejections = 0
        self.update_nodes(nodes)

    def update_nodes(self, nodes: Iterable[Hashable]) -> None:
        """The group's membership changed: keep the state of nodes that stay, forget the rest."""
        old = self._states
        self._states = {node: old.get(node) or _NodeState() for node in nodes}
        self._ejected &= self._states.keys()
        self._next_return = min(
            (self._states[node].ejected_until for node in self._ejected), default=math.inf
        )
        n = len(self._states)
        percent = self.config.max_ejection_percent
        # At least one (a lone node can be ejected), unless 0 %: then never (Envoy, gRPC A50).
        self._max_ejected = max(1, int(n * percent / 100.0)) if n and percent > 0 else 0
        self._version += 1

    def record(self, node: Hashable, outcome: Outcome, now: float) -> None:
        """Report how a call to ``node`` ended at ``now``.

        Failures of a node that is already ejected (calls sent before, or in panic mode) are
        not counted, so they cannot extend its ejection. Unknown nodes are ignored.
        """
        state = self._states.get(node)
        if state is None:
            return
        if outcome in _NODE_FAILURES:
            if now >= self._next_return:
                self._return_due(now)
            if state.ejected_until > now:
                return
            state.consecutive += 1
            if state.consecutive >= self.config.consecutive_failures:
                self._eject(node, state, now)
        elif outcome is not Outcome.REJECTED:
            state.consecutive = 0

    def _eject(self, node: Hashable, state: _NodeState, now: float) -> None:
        if len(self._ejected) >= self._max_ejected:
            return  # at the cap: it stays, and is ejected at its next failure once a slot frees
        config = self.config
        if state.ejections:
            healthy_intervals = int((now - state.returned_at) / config.decay_interval)
            state.ejections = max(0, state.ejections - healthy_intervals)
        # The multiplier stops growing once it reaches the cap (Envoy), so it decays from there.
        state.ejections = min(state.ejections + 1, self._max_multiplier)
        duration = min(config.base_ejection * state.ejections, config.max_ejection)
        state.ejected_until = now + duration
        state.consecutive = 0
        self._ejected.add(node)
        self._next_return = min(self._next_return, state.ejected_until)
        self.total_ejections += 1
        state.total += 1
        self._version += 1

    def _return_due(self, now: float) -> None:
        """Bring back every node whose ejection ended by ``now``."""
        states = self._states
        back = [node for node in self._ejected if states[node].ejected_until <= now]
        for node in back:
            state = states[node]
            state.returned_at = state.ejected_until
            state.ejected_until = _NOT_EJECTED
            self._ejected.discard(node)
        self._next_return = min(
            (states[node].ejected_until for node in self._ejected), default=math.inf
        )
        self._version += 1

    def restore(self, node: Hashable, now: float) -> None:
        """Bring ``node`` back now (an active health check or an operator says it is fine)."""
        state = self._states.get(node)
        if state is None or node not in self._ejected:
            return
        state.ejected_until = now
        self._return_due(now)

    def ejections_of(self, node: Hashable) -> int:
        """How many times ``node`` was ejected since start."""
        state = self._states.get(node)
        return state.total if state is not None else 0

    def is_ejected(self, node: Hashable, now: float) -> bool:
        state = self._states.get(node)
        return state is not None and state.ejected_until > now

    def available(self, nodes: Sequence[N], now: float) -> Sequence[N]:
        """The nodes of ``nodes`` to balance over at ``now``: the non-ejected ones, or all of
        them in panic mode (fewer than ``panic_threshold`` % healthy).

        Returns ``nodes`` itself when nothing is ejected; otherwise a list that is cached until
        the ejections change or another sequence is passed. Do not mutate the result.
        """
        if not self._ejected:
            return nodes
        if now >= self._next_return:
            self._return_due(now)
            if not self._ejected:
                return nodes
        if nodes is self._cache_nodes and self._version == self._cache_version:
            return self._cache_result  # type: ignore[return-value]  # built from these nodes
        ejected = self._ejected
        healthy = [node for node in nodes if node not in ejected]
        result: Sequence[N] = (
            nodes if len(healthy) * 100.0 < self.config.panic_threshold * len(nodes) else healthy
        )
        self._cache_nodes = nodes
        self._cache_version = self._version
        self._cache_result = result
        return result

    def statistics(self, now: float) -> OutlierStatistics:
        if now >= self._next_return:
            self._return_due(now)
        n = len(self._states)
        healthy = n - len(self._ejected)
        return OutlierStatistics(
            nodes=n,
            ejected=len(self._ejected),
            max_ejected=self._max_ejected,
            panic=n > 0 and healthy * 100.0 < self.config.panic_threshold * n,
            total_ejections=self.total_ejections,
            per_node=tuple(
                NodeOutlierStatistics(
                    node=str(node),
                    consecutive_failures=state.consecutive,
                    ejections=state.ejections,
                    ejected_until=state.ejected_until if state.ejected_until > now else None,
                )
                for node, state in self._states.items()
            ),
        )
