"""Group routing: which group (data center) of a cluster a call goes to.

Weights come from config or the registry (``{dc-a: 100, dc-b: 0}``; motan-go ``MergeGroups``,
Envoy/Istio weighted clusters: share = weight / Σ weights, 0 = none). A traffic shift is a
weight change.

**Local-first.** When the router is given its ``local`` group and that group has a positive
weight, every call goes there while it is healthy. As it loses health, traffic spills to the
other weighted groups *in proportion*, not as a cliff, by Envoy's priority load (Envoy's docs,
"Priority levels": the local group is priority 0, the others together priority 1,
overprovisioning factor 1.4): each tier's health is ``min(1, 1.4 x healthy share)`` (the
others' share weighted by their route weights), and if the two add up to less than 1 both are
scaled up to fill it. So a local group at 72 % healthy still takes everything; at 50 % it takes
70 % while the others are healthy, but 83 % when they are only 10 % healthy: spill never pushes
calls to a tier in worse shape than the one they leave. Setting the local group's weight to 0
drains it like any other: the operator's shift beats locality.

**Without a local group** the weights split the calls, each group's weight first scaled by
``min(1, 1.4 x healthy share)`` (Envoy's locality-weighted balancing): a group at half health
counts with 70 % of its weight, and the shares are normalised over what remains.

**Panic.** If no weighted group has any health, calls are split by the raw weights anyway (a
group that might answer beats none; Envoy's panic threshold idea at the group level). If every
weight is 0, :meth:`GroupRouter.choose` returns ``None``: the cluster was drained on purpose.

Health is the healthy share of a group's nodes in ``[0, 1]`` (``True``/``False`` work as 1/0);
a group missing from the health map counts as healthy. The plan (probabilities) is computed
when weights or health change, so :meth:`GroupRouter.choose` costs one random draw and a
bisect. Random with an injectable ``rng`` rather than a deterministic schedule, because the
local share is a fraction that changes with health.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final, final

__all__ = ["GroupRouter", "RouterStatistics"]

#: Envoy's overprovisioning factor (``ClusterLoadAssignment.Policy.overprovisioning_factor``,
#: default 140 %; Envoy's docs, "Priority levels").
OVERPROVISIONING: Final = 1.4


@final
@dataclass(frozen=True, slots=True)
class RouterStatistics:
    weights: tuple[tuple[str, float], ...]
    local: str | None
    health: tuple[tuple[str, float], ...]
    #: The probability each group gets a call under the current plan.
    shares: tuple[tuple[str, float], ...]
    #: Whether the plan ignores health because no weighted group has any.
    panic: bool
    chosen: tuple[tuple[str, int], ...]


@final
class GroupRouter:
    """Chooses a group per call from weights, health and the local group."""

    __slots__ = (
        "_chosen",
        "_cumulative",
        "_health",
        "_names",
        "_p_local",
        "_panic",
        "_random",
        "_total",
        "_weights",
        "local",
        "overprovisioning",
    )

    def __init__(
        self,
        weights: Mapping[str, float],
        local: str | None = None,
        *,
        overprovisioning: float = OVERPROVISIONING,
        rng: random.Random | None = None,
    ) -> None:
        """Create a router; all groups start healthy.

        Raises:
            ValueError: a weight is negative, or ``overprovisioning`` is below 1.
        """
        if overprovisioning < 1.0:
            raise ValueError(f"overprovisioning must be >= 1, got {overprovisioning!r}")
        self.local = local
        self.overprovisioning = overprovisioning
        self._random = (rng or random.Random()).random
        self._weights: dict[str, float] = {}
        self._health: dict[str, float] = {}
        self._chosen: dict[str, int] = {}
        self._p_local = 0.0
        self._names: list[str] = []
        self._cumulative: list[float] = []
        self._total = 0.0
        self._panic = False
        self.set_weights(weights)

    def set_weights(self, weights: Mapping[str, float]) -> None:
        """New weights (a traffic shift).

        Raises:
            ValueError: a weight is negative.
        """
        for name, weight in weights.items():
            if weight < 0:
                raise ValueError(f"group {name!r} has a negative weight {weight!r}")
        self._weights = dict(weights)
        self._plan()

    def set_health(self, health: Mapping[str, float | bool]) -> None:
        """New healthy shares per group (``[0, 1]``; missing groups count as healthy)."""
        self._health = {name: min(1.0, max(0.0, float(h))) for name, h in health.items()}
        self._plan()

    def _plan(self) -> None:
        boost = self.overprovisioning
        weights = self._weights
        health = self._health
        local = self.local
        local_first = local is not None and weights.get(local, 0) > 0
        p_local = 0.0
        if local_first and local is not None:
            p_local = min(1.0, boost * health.get(local, 1.0))
        others = {
            name: weight * min(1.0, boost * health.get(name, 1.0))
            for name, weight in weights.items()
            if weight > 0 and not (local_first and name == local)
        }
        panic = False
        if p_local < 1.0 and not any(others.values()):
            if p_local > 0.0:
                p_local = 1.0  # nowhere to spill to: keep what the local group can do
            else:
                panic = True  # no weighted group has any health: use the raw weights
                others = {name: weight for name, weight in weights.items() if weight > 0}
        elif 0.0 < p_local < 1.0:
            # Envoy's normalisation: the remote tier's own health caps what it takes.
            remote = sum(weights[name] for name in others)
            remote_health = sum(weights[name] * health.get(name, 1.0) for name in others)
            spill_capacity = min(1.0, boost * remote_health / remote)
            p_local = min(1.0, p_local / min(1.0, p_local + spill_capacity))
        names = [name for name, w in others.items() if w > 0]
        cumulative: list[float] = []
        running = 0.0
        for name in names:
            running += others[name]
            cumulative.append(running)
        self._p_local = p_local
        self._names = names
        self._cumulative = cumulative
        self._total = running
        self._panic = panic

    def choose(self, health: Mapping[str, float | bool] | None = None) -> str | None:
        """The group for one call, or ``None`` if every weight is 0.

        ``health``, if given and different from the last one, replaces it first (compared by
        value, so a caller may pass the same mutable mapping each time).
        """
        if health is not None and health != self._health:
            self.set_health(health)
        p_local = self._p_local
        if p_local >= 1.0:
            name: str | None = self.local
        else:
            names = self._names
            if not names:
                return None
            if len(names) == 1 and p_local == 0.0:
                name = names[0]
            else:
                draw = self._random()
                if draw < p_local:
                    name = self.local
                else:
                    point = (draw - p_local) / (1.0 - p_local) * self._total
                    index = bisect_right(self._cumulative, point)
                    name = names[index if index < len(names) else -1]
        if name is not None:
            self._chosen[name] = self._chosen.get(name, 0) + 1
        return name

    def statistics(self) -> RouterStatistics:
        shares: dict[str, float] = {}
        if self._p_local > 0.0 and self.local is not None:
            shares[self.local] = self._p_local
        rest = 1.0 - self._p_local
        if self._total > 0:
            previous = 0.0
            for name, cumulative in zip(self._names, self._cumulative, strict=True):
                shares[name] = rest * (cumulative - previous) / self._total
                previous = cumulative
        return RouterStatistics(
            weights=tuple(sorted(self._weights.items())),
            local=self.local,
            health=tuple(sorted(self._health.items())),
            shares=tuple(sorted(shares.items())),
            panic=self._panic,
            chosen=tuple(sorted(self._chosen.items())),
        )
