"""The governance pipeline of one cluster: every policy, assembled once, in this order::

    switch (degrade) -> limit -> route (DC weights) -> HA (failover | backup request)
        -> balance (pick node) -> breaker/outlier (per node) -> node

:class:`ClusterPolicies` holds one instance of each policy for a cluster, built from its
configuration, and the synchronous steps every protocol's path takes:

* per call, as a frontend reads them: :meth:`~ClusterPolicies.decide` (the degrade switch in
  force, first), then the rate and concurrency limits of ``limiter`` (a
  :class:`~resmesh.policies.limit.Limiter`, ``None`` when none is configured): ``admit`` /
  ``done`` per call, or ``admit_batch`` / ``done_batch`` for a pipelined batch admitted whole
  when it can be;
* per run, for the HA engine (:mod:`~resmesh.policies.engine`, the only place that awaits):
  :meth:`~ClusterPolicies.pick` (group by route and health, node by the balancer),
  :meth:`~ClusterPolicies.begin` (the node's breaker), :meth:`~ClusterPolicies.settle` (the
  outcome, for breaker, outlier detector and load).

The order is the one Envoy's HTTP filter chain and motan-go's filters share: refusals that
cost nothing (a switch, a limit) come before any node is chosen, and per-node health decides
last, where the node is known.

Why one object per cluster rather than per protocol: the registry swaps a cluster's topology
and switches at run time, and the admin API reads every policy's statistics; both need one
place that owns them.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from ..call import Outcome
from ..cluster.topology import build_topology
from ..observe.metrics import ClusterMetrics, Refusal
from .balance import Balancer, ConsistentHashBalancer, balancer_for
from .breaker import BreakerState, CircuitBreaker
from .hedge import HedgeBudget, HedgeDelay
from .limit import Limiter, LimiterConfig
from .outlier import OutlierDetector
from .retry import RetryBudget
from .route import GroupRouter
from .switch import Switch, Switchboard, SwitchDecision, SwitchMode

if TYPE_CHECKING:
    from ..cluster.topology import ClusterState, Node, Topology
    from ..config import GovernanceConfig, SwitchSettings

__all__ = ["ClusterPolicies", "configured_limits", "configured_switches"]

#: How often group health is recomputed for the router at most (seconds): health is a scan
#: of every node's breaker and ejection, too costly per call and slow to change.
_HEALTH_REFRESH: Final = 0.1

_CLOSED: Final = BreakerState.CLOSED
_REJECTED: Final = Outcome.REJECTED
_LOCAL: Final = Outcome.LOCAL_ERROR
_UPSTREAM: Final = Outcome.UPSTREAM_ERROR


class ClusterPolicies:
    """Every governance policy of one cluster, over its current topology.

    Args:
        cluster: the cluster's configured name (limits and switches name it in refusals).
        topology: its groups, route weights and primary.
        governance: its resolved governance settings (preset + overrides).
        now: ``trio.current_time()`` at construction (token buckets start full then).
        switches: degrade switches in force at start (the config's; see
            :func:`configured_switches`).
        sharded: the cluster partitions keys over its nodes, so no two nodes can answer the
            same call: reads are not spread, retried elsewhere or hedged.
        workers: gateway processes sharing the cluster's limits (each enforces its share).
        peers: every node serves every call (RPC service instances): no primary, so a call
            that may not be sent twice still goes to the balancer's choice, once.
        protocol: the cluster's protocol, for the metrics' labels.

    The topology changes at run time through :meth:`apply` (a new layout from the registry)
    and :meth:`set_primary`; everything kept per node carries over for the nodes that stay.
    """

    def __init__(
        self,
        cluster: str,
        topology: Topology,
        governance: GovernanceConfig,
        now: float,
        switches: Iterable[Switch] = (),
        *,
        sharded: bool = False,
        workers: int = 1,
        peers: bool = False,
        protocol: str = "",
    ) -> None:
        self.cluster = cluster
        #: Every call counted: the engine reports each run it ends, the frontends the calls
        #: refused before it; ``None`` when ``metrics.enabled`` is off.
        self.metrics: ClusterMetrics | None = ClusterMetrics(cluster, protocol)
        self.peers = peers
        #: Nodes an active health check (Motan2 heartbeats) found down: offered to no call
        #: until it finds them up again, unless no other node is left (Envoy's active health
        #: checking, with its panic threshold's last resort).
        self.down: set[Node] = set()
        self.governance = governance
        self.sharded = sharded
        self.workers = workers
        #: Rate and concurrency limits, or ``None`` when none is configured (then they cost
        #: nothing at all).
        self.limiter: Limiter | None = None
        self.set_limits(configured_limits(governance), now)
        self.switchboard = Switchboard(switches)
        self._outlier_on = governance.outlier.enabled
        #: ``balance: hash`` picks by the call's key (ketama), so a key keeps to one node and
        #: that node's caches stay warm; a call without a key goes to a random node.
        self.hashing = str(governance.balance) == "hash"
        failover = governance.failover
        self.retry_budget = RetryBudget(failover.budget_ratio, failover.budget_min)
        self.max_attempts = failover.max_attempts if failover.enabled else 1
        #: Hedge trackers (delay and budget): the cluster's (key ``None``) and each operation
        #: with its own hedge settings; ``None`` where hedging is off.
        #: Each reads its delay from the latencies the metrics counted: the cluster's from
        #: those of the operations without settings of their own.
        own = frozenset(name for name, op in governance.operations.items() if op.hedge)
        self.hedges: dict[str | None, HedgeDelay | None] = {
            None: HedgeDelay(
                governance.hedge, partial(self._latency_buckets, lambda name: name not in own)
            )
            if governance.hedge.enabled
            else None
        }
        for name, op in governance.operations.items():
            if op.hedge is not None:
                self.hedges[name] = (
                    HedgeDelay(op.hedge, partial(self._latency_buckets, name.__eq__))
                    if op.hedge.enabled
                    else None
                )
        self.router = GroupRouter(dict(topology.route), governance.local_group)
        self.breakers: dict[Node, CircuitBreaker | _NoBreaker] = {}
        self._balancer_of: dict[Node, Balancer[Node]] = {}
        #: One detector per group: "never eject more than a share of a group" (Envoy's
        #: max_ejection_percent is per cluster; a group here is a data center, and emptying
        #: one while another is healthy would shift its traffic wholesale).
        self.outliers: dict[str, OutlierDetector] = {}
        #: One balancer per group: a balancer's state (a weighted schedule, a round-robin
        #: position) belongs to one candidate set, and calls alternate between groups.
        self.balancers: dict[str, Balancer[Node]] = {}
        #: For the rare pick across groups (the chosen group has nothing left), and for the
        #: rarer one among nodes none of which is available: one each, as a balancer's state
        #: (a weighted schedule) belongs to one candidate list.
        self._fallback_balancer = self._balancer()
        self._last_resort_balancer = self._balancer()
        self._install(topology)

    def _balancer(self) -> Balancer[Node]:
        if self.hashing:
            return ConsistentHashBalancer(name=_address)
        return balancer_for(self.governance.balance)  # type: ignore[no-any-return]

    def _install(self, topology: Topology) -> None:
        """Make ``topology`` the one in force, keeping the state of every node and group that
        stays (a node's breaker, ejection and load; a group's detector and balancer)."""
        self.topology = topology
        #: Where writes and sessions go; ``None`` in a sharded cluster (each key has its node).
        self.primary: Node | None = None if self.sharded or self.peers else topology.primary
        nodes = topology.nodes
        self._by_address = {node.address: node for node in nodes}
        self.down &= set(nodes)
        governance = self.governance
        old_breakers = self.breakers
        self.breakers = {
            node: old_breakers.get(node)
            or (CircuitBreaker(governance.breaker) if governance.breaker.enabled else _NoBreaker())
            for node in nodes
        }
        outliers: dict[str, OutlierDetector] = {}
        for group, members in topology.groups.items():
            detector = self.outliers.get(group)
            if detector is None:
                detector = OutlierDetector(members, governance.outlier)
            else:
                detector.update_nodes(members)
            outliers[group] = detector
        self.outliers = outliers
        self._outlier_of = {node: outliers[node.group] for node in nodes}
        self.balancers = {
            group: self.balancers.get(group) or self._balancer() for group in topology.groups
        }
        balancer_of = {node: self.balancers[node.group] for node in nodes}
        for node, balancer in self._balancer_of.items():
            if balancer_of.get(node) is not balancer:
                balancer.forget(node)  # removed, or moved to another group
        self._balancer_of = balancer_of
        #: Nodes reads may use: weight above zero.
        self._readable = {
            group: tuple(n for n in members if n.weight > 0)
            for group, members in topology.groups.items()
        }
        self._spread_reads()
        self._candidates: dict[str, list[Node]] = {}
        self._anywhere: list[Node] = []
        self._all_readable: list[Node] = []
        self._health_at = -math.inf
        self.set_route(topology.route)

    def apply(
        self, state: ClusterState, switches: Iterable[Switch] | None = None
    ) -> tuple[list[Node], list[Node]]:
        """Make ``state`` (a new layout: nodes, groups, weights, route, primary) and, if
        given, ``switches`` (every degrade switch in force) the ones in force at once, for the
        calls that start from now on.

        A node whose address stays keeps its :class:`~resmesh.cluster.topology.Node` and
        everything counted for it (breaker, ejection, load); a new address starts fresh; a
        removed node gets no new calls, and the calls it has in flight finish and are
        counted. Returns the nodes added and removed, for the caller to open and drain their
        connections.

        Raises:
            ValueError: ``state`` is not a valid layout (no node, no single primary).
        """
        old = self.topology.nodes
        topology = build_topology(state, old)
        before, after = set(old), set(topology.nodes)
        added = [node for node in topology.nodes if node not in before]
        removed = [node for node in old if node not in after]
        self._install(topology)
        if self.metrics is not None:
            self.metrics.forget(removed)
        if switches is not None:
            self.switchboard.replace(switches)
        return added, removed

    def set_primary(self, address: str) -> Node:
        """Move writes and new sessions to the node at ``address`` (a failover the operator
        or the registry made). Sessions pinned to the old primary stay there until they end.

        Raises:
            ValueError: no node of the cluster has that address, or the cluster is sharded.
        """
        if self.sharded:
            raise ValueError(f"cluster {self.cluster} is sharded: every node owns its keys")
        if self.peers:
            raise ValueError(f"cluster {self.cluster} has no primary: every node serves")
        node = next((n for n in self.topology.nodes if n.address == address), None)
        if node is None:
            known = ", ".join(n.address for n in self.topology.nodes)
            raise ValueError(f"cluster {self.cluster} has no node {address} (it has {known})")
        self.topology = dataclasses.replace(self.topology, primary=node)
        self.primary = node
        self._spread_reads()
        return node

    def set_limits(self, limits: LimiterConfig, now: float) -> None:
        """Make ``limits`` the rate and concurrency limits in force (the config's, or the
        registry's overrides of them), for the calls admitted from now on.

        Raises:
            ValueError: a rate, burst or concurrency is not positive.
        """
        has_limits = any(
            (scope.rate, scope.concurrency) != (None, None)
            for scope in (limits.cluster, *limits.operations.values())
        )
        if not has_limits:
            self.limiter = None
        elif self.limiter is None:
            self.limiter = Limiter(self.cluster, limits, now, workers=self.workers)
        elif limits != self.limiter.config:
            self.limiter.reconfigure(limits, now)

    def _spread_reads(self) -> None:
        readable = [n for members in self._readable.values() for n in members]
        #: Whether reads may go to another node than the primary (else every call goes to
        #: the primary): more than one node reads, or the one that does is not the primary
        #: (it was drained of reads: weight 0).
        self.spreads_reads = not self.sharded and (
            len(readable) > 1
            or (len(readable) == 1 and self.primary is not None and readable[0] is not self.primary)
        )

    def _latency_buckets(self, counted: Callable[[str], bool]) -> list[int] | None:
        """The hedge delays' :class:`~resmesh.policies.hedge.LatencySource`."""
        metrics = self.metrics
        return metrics.latency_buckets(counted) if metrics is not None else None

    @property
    def hedging(self) -> bool:
        """Whether any hedge delay is measured (not fixed): then the latencies must be
        counted even with the metrics off."""
        return any(
            tracker is not None and tracker.config.fixed_delay is None
            for tracker in self.hedges.values()
        )

    @property
    def hedge_budget(self) -> HedgeBudget | None:
        """The cluster's hedge budget, ``None`` if it does not hedge (an operation with hedge
        settings of its own has its own budget: see :meth:`hedger`)."""
        tracker = self.hedges[None]
        return tracker.budget if tracker is not None else None

    def set_route(self, weights: Mapping[str, float]) -> None:
        """New route weights between groups (a traffic shift), in force at once. A group at
        weight 0 gets no reads at all: not a failover, not a backup request (it was drained
        on purpose); with every weight at 0, reads go to the primary."""
        self.router.set_weights(weights)
        routed = [group for group, weight in weights.items() if weight > 0]
        self._routed = routed
        self._all_readable = [n for group in routed for n in self._readable.get(group, ())]
        self._health_at = -math.inf

    # ----------------------------------------------------------------------------------------
    # Per call

    def decide(self, operation: str, is_write: bool) -> SwitchDecision | None:
        """The degrade switch in force for ``operation``, if any (first in the chain); a call
        it decides is counted as refused by the switch."""
        decision = self.switchboard.decide(self.cluster, operation, is_write)
        if decision is not None and self.metrics is not None:
            self.metrics.refused(operation, Refusal.SWITCH)
        return decision

    def node_at(self, address: str) -> Node | None:
        """The node at ``address``, if it is in the cluster."""
        return self._by_address.get(address)

    # ----------------------------------------------------------------------------------------
    # Per run: the HA engine's steps

    def hedger(self, operation: str | None) -> HedgeDelay | None:
        """The hedge tracker for ``operation``: its own settings, delay and budget, or the
        cluster's."""
        if not self.spreads_reads:
            return None
        return self.hedges.get(operation, self.hedges[None])

    def pick(
        self, now: float, exclude: Sequence[Node] = (), key: bytes | None = None
    ) -> Node | None:
        """A node for an idempotent call: group by route and health, node by the balancer
        among those the breakers and the outlier detector leave available.

        If the chosen group has nothing left, any available node of a routed group; if none
        is available, any readable node of a routed group not excluded (the outlier
        detector's panic mode does the same within a group). ``None`` when every such node is
        excluded, or every route weight is 0.
        """
        if now - self._health_at > _HEALTH_REFRESH:
            self._refresh(now)
        group = self.router.choose()
        node = None
        if group is not None:
            candidates = self._candidates.get(group)
            if candidates:
                node = self.balancers[group].pick(candidates, key, exclude)
        if node is None:
            node = self._fallback_balancer.pick(self._anywhere, key, exclude)
            if node is None:
                node = self._last_resort_balancer.pick(self._all_readable, key, exclude)
        return node

    def _refresh(self, now: float) -> None:
        """Recompute which nodes each group offers and tell the router each group's health.

        Done at most every ``_HEALTH_REFRESH`` seconds (that is how soon a node whose ejection
        or open time ran out is offered again), and at the next pick after anything that can
        take a node away: a node failure, or a breaker that is not closed handing out or
        taking back a probe. A pick between refreshes is a dict lookup and the balancer.
        """
        self._health_at = now
        candidates = {
            group: self._available(group, members, now) for group, members in self._readable.items()
        }
        self._candidates = candidates
        self._anywhere = [node for group in self._routed for node in candidates.get(group, ())]
        # Health counts the nodes truly up: a group in panic offers its ejected nodes, but
        # the router must still see it as down and spill its traffic to the others.
        breakers = self.breakers
        health: dict[str, float] = {}
        for group, members in self._readable.items():
            ejected = self.outliers[group].is_ejected
            up = [
                n
                for n in members
                if not ejected(n, now) and breakers[n].would_allow(now) and n not in self.down
            ]
            health[group] = len(up) / len(members) if members else 0.0
        self.router.set_health(health)

    def begin(self, node: Node, now: float) -> bool | str:
        """Start a call on ``node`` if its breaker lets it through: ``True`` if the call is
        the half-open breaker's probe, ``False`` for a plain call (either way it counts as in
        flight on ``node`` until :meth:`settle` or :meth:`abandon`, which are given this
        flag); else the reason the breaker refuses."""
        breaker = self.breakers[node]
        probe = breaker.state is not _CLOSED
        if probe:  # allow() is True when closed: not asked then
            self._health_at = -math.inf  # a probe slot taken: the node may not be offered
            if not breaker.allow(now):
                return f"circuit breaker open ({breaker.reason})"
        self._balancer_of[node].start(node)
        return probe

    def refuses(self, node: Node, now: float) -> str | None:
        """Why ``node``'s breaker would refuse a session starting there now, or ``None``
        (asks without taking a probe: the session's exchanges are counted as they come)."""
        breaker = self.breakers.get(node)
        if breaker is None:
            return f"node {node.address} left the cluster"
        if breaker.would_allow(now):
            return None
        return f"circuit breaker open ({breaker.reason})"

    def begin_committed(self, node: Node) -> bool:
        """Start a call on ``node`` that its session is committed to (a command inside a
        transaction pinned there): counted in flight, never refused; never a probe."""
        balancer = self._balancer_of.get(node)
        if balancer is not None:  # else the node left the cluster: nothing to count there
            balancer.start(node)
        return False

    def settle(
        self, node: Node, outcome: Outcome, latency: float, now: float, probe: bool = False
    ) -> None:
        """A call that :meth:`begin` started on ``node`` ended with ``outcome``. A node that
        has left the cluster meanwhile is counted no more."""
        balancer = self._balancer_of.get(node)
        if balancer is None:
            return
        balancer.finish(node)
        if outcome is _REJECTED and not probe:
            return  # refused further on: no word on the node, and no probe slot to give back
        breaker = self.breakers[node]
        was_closed = breaker.state is _CLOSED
        breaker.record(outcome, latency, now)
        if (
            outcome is _LOCAL
            or outcome is _UPSTREAM
            or not was_closed
            or breaker.state is not _CLOSED
        ):
            self._health_at = -math.inf  # the node may be ejected, tripped (slow calls too), back
        if self._outlier_on:
            self._outlier_of[node].record(node, outcome, now)

    def release(self, node: Node, probe: bool) -> None:
        """A call :meth:`begin` started gets no verdict but stays in flight on ``node`` (a
        hedge's loser left running): if it was a probe, its slot is given back. (A plain
        call must not: the slot it would free belongs to a probe still out.)"""
        if probe:
            self._health_at = -math.inf
            breaker = self.breakers.get(node)
            if breaker is not None:
                breaker.release()

    def abandon(self, node: Node, probe: bool) -> None:
        """A call that :meth:`begin` started ends with no verdict (cancelled: a backup won,
        the client left). Its probe slot, if it was one, is given back."""
        self.release(node, probe)
        self.unload(node)

    def unload(self, node: Node) -> None:
        """A call :meth:`release` left in flight on ``node`` has ended."""
        balancer = self._balancer_of.get(node)
        if balancer is not None:
            balancer.finish(node)

    def record_outlier(self, node: Node, outcome: Outcome, now: float) -> None:
        """Count an outcome for ``node``'s ejection only (a hedge's loser that failed late)."""
        detector = self._outlier_of.get(node)
        if self._outlier_on and detector is not None:
            if outcome is _LOCAL or outcome is _UPSTREAM:
                self._health_at = -math.inf
            detector.record(node, outcome, now)

    def set_down(self, node: Node, down: bool) -> None:
        """An active health check found ``node`` down (or up again)."""
        if down != (node in self.down):
            if down:
                self.down.add(node)
            else:
                self.down.discard(node)
            self._health_at = -math.inf

    def _available(self, group: str, nodes: Sequence[Node], now: float) -> list[Node]:
        """The nodes of ``group`` neither ejected (but all in panic), nor refused by a
        breaker, nor found down by a health check."""
        breakers = self.breakers
        down = self.down
        offered = self.outliers[group].available(nodes, now)
        return [n for n in offered if breakers[n].would_allow(now) and n not in down]

    # ----------------------------------------------------------------------------------------

    def statistics(self, now: float) -> dict[str, Any]:
        """Every policy's snapshot, for the admin API and ``resmesh ctl status``."""
        hedges = {
            op or "*": {"delay": tracker.statistics(), "budget": tracker.budget.statistics()}
            for op, tracker in self.hedges.items()
            if tracker is not None
        }
        return {
            "limit": self.limiter.statistics(now) if self.limiter is not None else None,
            "switches": self.switchboard.statistics(),
            "breakers": {
                node.address: breaker.statistics(now)
                for node, breaker in self.breakers.items()
                if isinstance(breaker, CircuitBreaker)
            },
            "outlier": {group: d.statistics(now) for group, d in self.outliers.items()},
            "route": self.router.statistics(),
            "balance": {group: b.statistics() for group, b in self.balancers.items()},
            "retry_budget": self.retry_budget.statistics(),
            "hedges": hedges,
        }


def configured_limits(governance: GovernanceConfig) -> LimiterConfig:
    """The rate and concurrency limits a cluster's configuration sets."""
    return LimiterConfig(
        governance.limit, {name: op.limit for name, op in governance.operations.items()}
    )


def configured_switches(cluster: str, governance: GovernanceConfig) -> list[Switch]:
    """The degrade switches a cluster's configuration sets (the registry adds its own)."""
    switches: list[Switch] = []
    scopes: list[tuple[str | None, SwitchSettings | None]] = [(None, governance.switch)]
    scopes += [(name, op.switch) for name, op in governance.operations.items()]
    for operation, settings in scopes:
        if settings is None or str(settings.mode) == "off":
            continue
        value = settings.value.encode() if settings.value is not None else None
        switches.append(
            Switch(cluster, SwitchMode(str(settings.mode)), operation, value, "set in config")
        )
    return switches


def _address(node: Node) -> str:
    return node.address


class _NoBreaker:
    """Stands in for a node's breaker when the cluster's governance turns breakers off."""

    __slots__ = ()
    reason = ""
    state = BreakerState.CLOSED

    def allow(self, now: float) -> bool:
        return True

    def record(self, outcome: Outcome, latency: float, now: float) -> None:
        pass

    def release(self) -> None:
        pass

    def would_allow(self, now: float) -> bool:
        return True
