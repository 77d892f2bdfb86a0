"""One cluster's whole governance chain (ClusterPolicies) over in-memory nodes, on MockClock."""

from __future__ import annotations

from types import MappingProxyType

import pytest
import trio
import trio.testing

from resmesh.call import Call, Operation, Outcome
from resmesh.cluster.topology import ClusterState, Node, NodeSpec, Topology
from resmesh.config import (
    BalanceName,
    BreakerConfig,
    GovernanceConfig,
    HedgeConfig,
    LimitConfig,
    OperationSettings,
    OutlierConfig,
    SwitchModeName,
    SwitchSettings,
)
from resmesh.policies.balance import LeastLoadedBalancer
from resmesh.policies.breaker import BreakerState
from resmesh.policies.chain import ClusterPolicies, configured_switches
from resmesh.policies.limit import LimiterConfig
from resmesh.policies.switch import Switch, SwitchAction, SwitchMode
from tests.policies.engine_support import governance as _gov
from tests.policies.engine_support import nodes as _nodes
from tests.policies.engine_support import policies as _policies

OK, APP = Outcome.OK, Outcome.APP_ERROR
UPSTREAM, LOCAL, REJECTED = Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR, Outcome.REJECTED
CLUSTER = "c"


# -- switch -------------------------------------------------------------------------------------


async def test_a_cluster_switch_decides_every_call_and_an_operation_switch_its_own() -> None:
    switches = [
        Switch(CLUSTER, SwitchMode.MISS, None, None, "test"),
        Switch(CLUSTER, SwitchMode.ERROR, "GET", None, "test"),
        Switch("other-cluster", SwitchMode.ERROR),
    ]
    policies = _policies(switches=switches)
    read, write = policies.decide("MGET", False), policies.decide("SET", True)
    assert read is not None and write is not None
    assert (read.action, write.action) == (SwitchAction.EMPTY, SwitchAction.ACKNOWLEDGE)
    assert "switch c (mode miss): test" in read.message
    get = policies.decide("GET", False)
    assert get is not None and get.action is SwitchAction.ERROR
    assert policies.statistics(0.0)["switches"].hits == 3
    assert _policies().decide("GET", False) is None


# -- limit --------------------------------------------------------------------------------------


async def test_limits_come_from_the_cluster_and_each_operation() -> None:
    ops = {"GET": OperationSettings(limit=LimitConfig(rate=1, burst=1))}
    policies = _policies(_gov(limit=LimitConfig(concurrency=2), operations=MappingProxyType(ops)))
    limiter = policies.limiter
    assert limiter is not None
    assert limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) == "rate limit of c GET (1/s) exceeded"
    assert limiter.admit("MGET", 0.0) is None
    assert limiter.admit("MGET", 0.0) == "concurrency limit of cluster c (2) exceeded"
    limiter.done("GET")
    assert limiter.admit("MGET", 0.0) is None
    assert _policies().limiter is None  # no limit configured: nothing to pay per call


async def test_limits_change_at_run_time_keeping_the_workers_share_and_in_flight_calls() -> None:
    policies = _policies(workers=2)
    assert policies.limiter is None
    policies.set_limits(LimiterConfig(LimitConfig(concurrency=4)), 0.0)
    limiter = policies.limiter
    assert limiter is not None
    assert [limiter.admit("GET", 0.0) for _ in range(3)] == [
        None,
        None,
        "concurrency limit of cluster c (4 over 2 workers) exceeded",
    ]
    policies.set_limits(LimiterConfig(LimitConfig(concurrency=6)), 0.0)
    assert policies.limiter is limiter  # reconfigured in place: the 2 in flight still count
    assert limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) == "concurrency limit of cluster c (6 over 2 workers) exceeded"
    policies.set_limits(LimiterConfig(), 0.0)
    assert policies.limiter is None  # no limits left: nothing to pay per call


# -- limit --------------------------------------------------------------------------------------


# -- where calls go -----------------------------------------------------------------------------


# -- hedging and deadlines ----------------------------------------------------------------------


# -- breaker and balance ------------------------------------------------------------------------


# -- statistics and configuration ---------------------------------------------------------------


async def test_statistics_report_every_policy() -> None:
    nodes = _nodes()
    governance = _gov(limit=LimitConfig(rate=10), hedge=HedgeConfig(enabled=True))
    stats = _policies(governance, nodes).statistics(0.0)
    keys = "limit switches breakers outlier route balance retry_budget hedges"
    assert set(stats) == set(keys.split())
    assert stats["limit"].cluster.name == CLUSTER
    assert set(stats["breakers"]) == {node.address for node in nodes}
    assert set(stats["hedges"]) == {"*"}
    plain = _policies(_gov(breaker=BreakerConfig(enabled=False))).statistics(0.0)
    assert (plain["limit"], plain["breakers"], plain["hedges"]) == (None, {}, {})


async def test_configured_switches_come_from_the_cluster_and_each_operation() -> None:
    operations = {
        "GET": OperationSettings(switch=SwitchSettings(SwitchModeName.FALLBACK, "v")),
        "SET": OperationSettings(switch=SwitchSettings(SwitchModeName.OFF)),
        "DEL": OperationSettings(),
    }
    governance = _gov(
        switch=SwitchSettings(SwitchModeName.MISS), operations=MappingProxyType(operations)
    )
    assert configured_switches(CLUSTER, governance) == [
        Switch(CLUSTER, SwitchMode.MISS, None, None, "set in config"),
        Switch(CLUSTER, SwitchMode.FALLBACK, "GET", b"v", "set in config"),
    ]
    assert configured_switches(CLUSTER, GovernanceConfig()) == []
    switches = configured_switches(CLUSTER, governance)
    decision = _policies(switches=switches).decide("GET", False)
    assert decision is not None and decision.action is SwitchAction.FALLBACK


async def test_outlier_ejection_is_capped_per_group_not_per_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two groups of two: failing both nodes of dc-a ejects only one of them (half of dc-a),
    though half of the cluster would allow two."""
    a1, a2 = Node("10.0.1.1", 6379, "dc-a", 1), Node("10.0.1.2", 6379, "dc-a", 1)
    b1, b2 = Node("10.0.2.1", 6379, "dc-b", 1), Node("10.0.2.2", 6379, "dc-b", 1)
    groups = MappingProxyType({"dc-a": (a1, a2), "dc-b": (b1, b2)})
    topology = Topology(1, groups, MappingProxyType({"dc-a": 50, "dc-b": 50}), a1)
    governance = _gov(
        breaker=BreakerConfig(enabled=False),
        outlier=OutlierConfig(consecutive_failures=2, max_ejection_percent=50),
    )
    policies = ClusterPolicies(CLUSTER, topology, governance, trio.current_time())
    now = trio.current_time()
    for node in (a1, a2, a1, a2):
        assert policies.begin(node, now) is False
        policies.settle(node, LOCAL, 0.001, now)
    stats = policies.statistics(now)["outlier"]
    assert (stats["dc-a"].ejected, stats["dc-a"].max_ejected) == (1, 1)
    assert stats["dc-b"].ejected == 0
    picked = {policies.pick(now) for _ in range(200)}
    assert picked == {a2, b1, b2}  # a1 was ejected first; a2 stays, at the cap


async def test_a_slow_call_that_trips_the_breaker_takes_its_node_out_at_once() -> None:
    nodes = _nodes(2)
    breaker = BreakerConfig(slow_call=0.01, slow_ratio=1.0, min_calls=1)
    policies = _policies(_gov(breaker=breaker), nodes)
    now = trio.current_time()
    policies.pick(now)  # candidates cached: both nodes
    assert policies.begin(nodes[0], now) is False
    policies.settle(nodes[0], OK, 0.5, now)  # an answer, but slow: the breaker opens
    assert policies.breakers[nodes[0]].state is BreakerState.OPEN
    assert {policies.pick(now + 0.05) for _ in range(100)} == {nodes[1]}


async def test_an_ejected_lone_node_sends_its_group_s_reads_to_the_other_group() -> None:
    a, b = Node("10.0.1.1", 6379, "dc-a", 1), Node("10.0.2.1", 6379, "dc-b", 1)
    groups = MappingProxyType({"dc-a": (a,), "dc-b": (b,)})
    topology = Topology(1, groups, MappingProxyType({"dc-a": 50, "dc-b": 50}), a)
    governance = _gov(breaker=BreakerConfig(enabled=False))
    policies = ClusterPolicies(CLUSTER, topology, governance, trio.current_time())
    now = trio.current_time()
    assert {policies.pick(now) for _ in range(100)} == {a, b}
    for _ in range(5):  # the outlier detector's default: 5 failures in a row
        assert policies.begin(a, now) is False
        policies.settle(a, LOCAL, 0.001, now)
    assert {policies.pick(now) for _ in range(100)} == {b}


async def test_weighted_balance_keeps_each_group_s_schedule_while_calls_alternate() -> None:
    a1, a2 = Node("10.0.1.1", 6379, "dc-a", 1), Node("10.0.1.2", 6379, "dc-a", 3)
    b1, b2 = Node("10.0.2.1", 6379, "dc-b", 1), Node("10.0.2.2", 6379, "dc-b", 1)
    groups = MappingProxyType({"dc-a": (a1, a2), "dc-b": (b1, b2)})
    topology = Topology(1, groups, MappingProxyType({"dc-a": 50, "dc-b": 50}), a1)
    governance = _gov(balance=BalanceName.WEIGHTED)
    policies = ClusterPolicies(CLUSTER, topology, governance, trio.current_time())
    now = trio.current_time()
    counts = {node: 0 for node in (a1, a2, b1, b2)}
    for _ in range(8000):
        node = policies.pick(now)
        assert node is not None
        counts[node] += 1
    assert counts[a2] == pytest.approx(3 * counts[a1], rel=0.05)  # weights 1:3 inside dc-a
    assert counts[b2] == pytest.approx(counts[b1], rel=0.05)


async def test_a_plain_call_ending_without_a_verdict_keeps_the_probe_s_slot() -> None:
    """A call started while the breaker was closed holds no probe slot: when it is abandoned
    (or loses a hedge) after the breaker went half-open, it must not free the slot of the
    probe still out, or a second probe slips through."""
    nodes = _nodes(2)
    breaker = BreakerConfig(consecutive_failures=3, open_for=1.0, half_open_probes=1)
    policies = _policies(_gov(breaker=breaker), nodes)
    node = nodes[1]
    assert policies.begin(node, 0.0) is False  # a slow call, started while closed
    for _ in range(3):
        assert policies.begin(node, 0.0) is False
        policies.settle(node, LOCAL, 0.001, 0.0)
    assert policies.breakers[node].state is BreakerState.OPEN
    assert policies.begin(node, 1.5) is True  # open_for has passed: the one probe
    policies.abandon(node, False)  # the old plain call gives up
    assert isinstance(policies.begin(node, 1.5), str)  # still one probe out: refused
    policies.release(node, False)
    assert isinstance(policies.begin(node, 1.5), str)
    policies.abandon(node, True)  # the probe itself gives up: its slot is free again
    assert policies.begin(node, 1.5) is True


async def test_a_refusal_further_on_is_no_verdict_on_the_node() -> None:
    policies = _policies(_gov(breaker=BreakerConfig(consecutive_failures=1, open_for=1.0)))
    node = policies.topology.nodes[1]
    assert policies.begin(node, 0.0) is False  # a plain call, still out when...
    assert policies.begin(node, 0.0) is False
    policies.settle(node, LOCAL, 0.001, 0.0)  # ...another trips the breaker
    assert policies.begin(node, 1.5) is True  # the probe
    policies.settle(node, REJECTED, 0.001, 1.5, False)  # the plain call, refused further on
    assert policies.breakers[node].probes_in_flight == 1
    assert policies.breakers[node].state is BreakerState.HALF_OPEN


async def test_an_operation_with_its_own_hedge_settings_has_its_own_budget() -> None:
    operations = {"GET": OperationSettings(hedge=HedgeConfig(enabled=True, budget=0.5))}
    policies = _policies(_gov(hedge=HedgeConfig(enabled=True), operations=operations))
    get, other = policies.hedger("GET"), policies.hedger("HGET")
    assert get is not None and other is not None and get is not other
    assert policies.hedge_budget is other.budget
    assert (get.budget.ratio, other.budget.ratio) == (0.5, 0.15)
    for _ in range(10):
        get.budget.record_call()
    assert [get.budget.try_hedge() for _ in range(6)] == [True] * 5 + [False]
    assert not other.budget.try_hedge()  # GET's calls earned nothing for the others
    stats = policies.statistics(0.0)["hedges"]
    assert (stats["GET"]["budget"].hedges, stats["*"]["budget"].hedges) == (5, 0)


def _two_groups(route: dict[str, int]) -> tuple[ClusterPolicies, Node, Node]:
    a, b = Node("10.0.1.1", 6379, "dc-a", 1), Node("10.0.2.1", 6379, "dc-b", 1)
    groups = MappingProxyType({"dc-a": (a,), "dc-b": (b,)})
    topology = Topology(1, groups, MappingProxyType(route), a)
    return ClusterPolicies(CLUSTER, topology, GovernanceConfig(), trio.current_time()), a, b


async def test_a_group_at_route_weight_zero_gets_no_failover_and_no_backup() -> None:
    policies, a, b = _two_groups({"dc-a": 100, "dc-b": 0})
    now = trio.current_time()
    assert {policies.pick(now) for _ in range(50)} == {a}
    assert policies.pick(now, exclude=(a,)) is None  # a retry or a hedge: nowhere to go
    for _ in range(10):  # a fails until ejected and its breaker opens: still not b
        assert policies.begin(a, now) is False
        policies.settle(a, LOCAL, 0.001, now)
    assert {policies.pick(now + 0.2) for _ in range(50)} == {a}  # panic: a, never b
    policies.set_route({"dc-a": 0, "dc-b": 100})  # the operator's shift
    assert {policies.pick(now + 0.2) for _ in range(50)} == {b}
    assert policies.pick(now + 0.2, exclude=(b,)) is None


async def test_the_last_resort_pick_spreads_over_the_nodes_it_may_use() -> None:
    """No node available but one already tried: the pick among unavailable nodes must not
    always return the same one (a balancer shared between two candidate lists restarted its
    weighted schedule at every switch)."""
    nodes = _nodes(3)
    governance = _gov(
        balance=BalanceName.WEIGHTED,
        breaker=BreakerConfig(consecutive_failures=1, open_for=60.0),
        outlier=OutlierConfig(enabled=False),
    )
    policies = _policies(governance, nodes)
    now = trio.current_time()
    for node in nodes[:2]:
        assert policies.begin(node, now) is False
        policies.settle(node, LOCAL, 0.001, now)
    picks = [policies.pick(now + 1.0, exclude=(nodes[2],)) for _ in range(10)]
    assert set(picks) == set(nodes[:2])


# -- run-time changes (the registry's seam) -----------------------------------------------------


def _state(*nodes: tuple[str, str, int, bool], route: dict[str, int] | None = None) -> ClusterState:
    specs = tuple(
        NodeSpec(address.split(":")[0], int(address.split(":")[1]), group, weight, primary)
        for address, group, weight, primary in nodes
    )
    groups = {spec.group for spec in specs}
    return ClusterState(2, specs, MappingProxyType(route or dict.fromkeys(groups, 100)))


async def test_apply_keeps_what_is_counted_for_the_nodes_that_stay() -> None:
    policies = _policies(_gov(breaker=BreakerConfig(consecutive_failures=1, open_for=60.0)))
    a, b, c = policies.topology.nodes
    now = trio.current_time()
    assert policies.begin(b, now) is False
    policies.settle(b, LOCAL, 0.001, now)  # b's breaker opens
    assert policies.begin(c, now) is False  # a call in flight on c, which is removed below
    added, removed = policies.apply(
        _state(
            ("10.0.0.1:6379", "dc1", 1, True),
            ("10.0.0.2:6379", "dc1", 5, False),
            ("10.0.0.7:6379", "dc2", 1, False),
        )
    )
    assert [n.address for n in added] == ["10.0.0.7:6379"]
    assert removed == [c]
    assert policies.topology.nodes[:2] == (a, b)  # the same objects: their state carries over
    assert (b.weight, policies.breakers[b].state) == (5, BreakerState.OPEN)
    new = added[0]
    assert policies.breakers[new].state is BreakerState.CLOSED
    assert {policies.pick(now) for _ in range(200)} == {a, new}  # b open, c gone
    policies.settle(c, OK, 0.001, now)  # c's last call ends: nothing to count any more
    assert c not in policies.breakers
    assert policies.statistics(now)["route"] is not None


async def test_apply_moves_a_node_between_groups_and_forgets_its_old_load() -> None:
    policies = _policies()
    b = policies.topology.nodes[1]
    assert policies.begin(b, 0.0) is False
    balancer = policies.balancers["dc1"]
    assert isinstance(balancer, LeastLoadedBalancer) and balancer.in_flight(b) == 1
    policies.apply(_state(("10.0.0.1:6379", "dc1", 1, True), ("10.0.0.2:6379", "dc2", 1, False)))
    assert b.group == "dc2" and balancer.in_flight(b) == 0
    policies.settle(b, OK, 0.001, 0.0)  # counted against its new group's balancer: no harm
    moved = policies.balancers["dc2"]
    assert isinstance(moved, LeastLoadedBalancer) and moved.in_flight(b) == 0


async def test_apply_refuses_a_layout_without_exactly_one_primary() -> None:
    policies = _policies()
    with pytest.raises(ValueError, match="0 primaries"):
        policies.apply(_state(("10.0.0.1:6379", "dc1", 1, False)))
    with pytest.raises(ValueError, match="no node"):
        policies.apply(ClusterState(3, (), MappingProxyType({})))
    assert len(policies.topology.nodes) == 3  # nothing changed


async def test_the_primary_moves_on_its_own() -> None:
    policies = _policies()
    a, b, _ = policies.topology.nodes
    assert policies.primary is a
    assert policies.set_primary("10.0.0.2:6379") is b
    assert policies.primary is b and policies.topology.primary is b
    with pytest.raises(ValueError, match=r"no node 10\.9\.9\.9:1 \(it has 10\.0\.0\.1:6379"):
        policies.set_primary("10.9.9.9:1")
    with pytest.raises(ValueError, match="sharded"):
        _policies(sharded=True).set_primary("10.0.0.1:6379")


async def test_several_workers_share_each_limit() -> None:
    limits = LimitConfig(rate=10, burst=10, concurrency=3)
    policies = _policies(_gov(limit=limits), workers=2)
    limiter = policies.limiter
    assert limiter is not None
    admitted = [limiter.admit("GET", 0.0) for _ in range(3)]
    assert admitted[:2] == [None, None]  # ceil(3 / 2) in flight per worker
    assert admitted[2] == "concurrency limit of cluster c (3 over 2 workers) exceeded"
    limiter.done("GET")
    limiter.done("GET")
    taken = 0
    while limiter.admit("GET", 0.0) is None:
        limiter.done("GET")
        taken += 1
    assert taken == 3  # a burst of 10 / 2 = 5 tokens, two of them taken above
    assert limiter.admit("GET", 0.0) == "rate limit of cluster c (10/s over 2 workers) exceeded"


async def test_a_refused_layout_changes_nothing_in_force() -> None:
    policies = _policies()
    a, b, _ = policies.topology.nodes
    no_primary = _state(("10.0.0.1:6379", "dc1", 0, False), ("10.0.0.2:6379", "dc2", 1, False))
    with pytest.raises(ValueError, match="0 primaries"):
        policies.apply(no_primary)
    assert (a.weight, b.group) == (1, "dc1")


# -- peers and active health checks ------------------------------------------------------------


async def test_peers_have_no_primary_so_every_call_is_balanced() -> None:
    members = _nodes(3)
    policies = _policies(members=members, peers=True)
    assert policies.primary is None
    now = trio.current_time()
    assert {policies.pick(now) for _ in range(200)} == set(members)
    with pytest.raises(ValueError, match="has no primary"):
        policies.set_primary(members[1].address)


async def test_a_node_found_down_gets_no_call_until_found_up() -> None:
    a, b = Node("10.0.1.1", 8100, "dc-a", 1), Node("10.0.2.1", 8100, "dc-b", 1)
    groups = MappingProxyType({"dc-a": (a,), "dc-b": (b,)})
    topology = Topology(1, groups, MappingProxyType({"dc-a": 50, "dc-b": 50}), a)
    policies = ClusterPolicies(
        CLUSTER, topology, GovernanceConfig(), trio.current_time(), peers=True
    )
    now = trio.current_time()
    policies.set_down(a, True)
    # The router sees dc-a's health at 0 and spills its share to dc-b.
    assert {policies.pick(now) for _ in range(100)} == {b}
    assert dict(policies.router.statistics().health)["dc-a"] == 0.0
    policies.set_down(a, False)
    assert {policies.pick(now) for _ in range(100)} == {a, b}
    # With every node down, the last resort still offers them (a pick never comes back empty
    # while nodes exist: the calls fail on their own and fail over, Envoy's panic mode).
    policies.set_down(a, True)
    policies.set_down(b, True)
    assert policies.pick(now) in (a, b)
    # A node that leaves the cluster is forgotten.
    state = ClusterState(
        2,
        (NodeSpec("10.0.2.1", 8100, "dc-b", 1, False),),
        MappingProxyType({"dc-b": 100}),
        peers=True,
    )
    policies.apply(state)
    assert policies.down == {b}


async def test_a_cluster_with_a_measured_hedge_delay_says_it_needs_its_latencies_counted() -> None:
    """``metrics.enabled: false`` keeps counting such a cluster: its delay is read from them."""
    assert _policies(_gov(hedge=HedgeConfig(enabled=True))).hedging
    assert not _policies(_gov(hedge=HedgeConfig(enabled=True, fixed_delay=0.02))).hedging
    assert not _policies(_gov(hedge=HedgeConfig(enabled=False))).hedging


async def test_the_hedge_delay_reads_only_reads_the_node_answered() -> None:
    """Writes and blocking commands (not idempotent) and calls the node did not answer (a
    timeout) are counted by the metrics but are not what a backup request waits for; an
    answer that is the app's own error is."""
    pol = _policies(_gov(hedge=HedgeConfig(enabled=True)))
    hedger = pol.hedger("GET")
    metrics = pol.metrics
    assert hedger is not None and metrics is not None
    assert hedger.delay(0.0) is None
    node = _nodes()[0]
    get = Operation("GET", write=False, idempotent=True)
    blpop = Operation("BLPOP", write=True, idempotent=False)

    def calls(op: Operation, n: int) -> list[Call]:
        call = Call()
        call.op = op
        return [call] * n

    metrics.run_ended(calls(get, 900), node, Outcome.OK, 0.020)
    metrics.run_ended(calls(blpop, 150), node, Outcome.OK, 5.0)
    metrics.run_ended(calls(get, 120), node, Outcome.UPSTREAM_ERROR, 1.0)
    metrics.run_ended(calls(get, 100), node, Outcome.APP_ERROR, 0.020)  # answered: counts
    assert hedger.delay(1.0) == pytest.approx(0.020, rel=1 / 32)
    assert hedger.statistics().samples == 1000
