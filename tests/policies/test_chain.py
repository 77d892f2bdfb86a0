"""One cluster's whole governance chain (ClusterPolicies) over in-memory nodes, on MockClock."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any

import pytest
import trio
import trio.testing

from resmesh.call import Call, Outcome, Protocol, Reply
from resmesh.cluster.topology import Node, Topology
from resmesh.config import (
    BalanceName,
    BreakerConfig,
    FailoverConfig,
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
from resmesh.policies.switch import Switch, SwitchAction, SwitchDecision, SwitchMode

OK, APP = Outcome.OK, Outcome.APP_ERROR
UPSTREAM, LOCAL, REJECTED = Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR, Outcome.REJECTED
CLUSTER = "c"


def _nodes(count: int = 3) -> tuple[Node, ...]:
    return tuple(Node(f"10.0.0.{i}", 6379, "dc1", 1) for i in range(1, count + 1))


def _gov(**changes: Any) -> GovernanceConfig:
    return dataclasses.replace(GovernanceConfig(), **changes)


def _policies(
    governance: GovernanceConfig | None = None,
    nodes: Sequence[Node] | None = None,
    primary: Node | None = None,
    **kwargs: Any,
) -> ClusterPolicies:
    nodes = tuple(nodes or _nodes())
    groups, route = MappingProxyType({"dc1": nodes}), MappingProxyType({"dc1": 100})
    topology = Topology(1, groups, route, primary or nodes[0])
    return ClusterPolicies(
        CLUSTER, topology, governance or GovernanceConfig(), trio.current_time(), **kwargs
    )


def _read(operation: str = "GET", **changes: Any) -> Call:
    fields: dict[str, Any] = {"keys": (b"k",), "idempotent": True, **changes}
    return Call(Protocol.REDIS, CLUSTER, operation, **fields)


def _write(operation: str = "SET") -> Call:
    return Call(Protocol.REDIS, CLUSTER, operation, keys=(b"k",))


def _degrade(call: Call, decision: SwitchDecision) -> Reply:
    return Reply(decision.action.value.encode(), OK, reason=decision.message)


def _never(call: Call, decision: SwitchDecision) -> Reply:
    raise AssertionError(f"{call.operation} degraded by {decision.switch}")


class FakeBackend:
    """The endpoint: ``plan`` answers the calls in order as (seconds, outcome), then each node's
    ``script`` entry, else an instant OK. ``math.inf`` seconds hangs until cancelled."""

    def __init__(
        self,
        plan: Sequence[tuple[float, Outcome]] = (),
        script: dict[Node, tuple[float, Outcome]] | None = None,
    ) -> None:
        self.plan = list(plan)
        self.script = script or {}
        self.calls: list[Node] = []
        self.cancelled: list[Node] = []

    async def __call__(self, node: Node, call: Call) -> Reply:
        self.calls.append(node)
        delay, outcome = self.plan.pop(0) if self.plan else self.script.get(node, (0.0, OK))
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            self.cancelled.append(node)
            raise
        return Reply(node.address.encode(), outcome, node.address)


def _hedging(latency: float = 0.050, budget: float = 1.0) -> ClusterPolicies:
    """Hedging on, ``budget`` tokens per call, and a warm latency window (20 x ``latency``)."""
    policies = _policies(_gov(hedge=HedgeConfig(enabled=True, budget=budget)))
    hedger = policies.hedger("GET")
    assert hedger is not None
    for _ in range(20):
        hedger.record(latency, trio.current_time())
    return policies


# -- switch -------------------------------------------------------------------------------------


async def test_a_cluster_switch_answers_every_call_without_the_endpoint() -> None:
    policies = _policies(switches=[Switch(CLUSTER, SwitchMode.MISS, None, None, "test")])
    backend = FakeBackend()
    read = await policies.call(_read(), backend, _degrade)
    write = await policies.call(_write(), backend, _degrade)
    assert (read.payload, write.payload) == (b"empty", b"acknowledge")
    assert "switch c (mode miss): test" in read.reason
    assert backend.calls == []
    assert policies.statistics(trio.current_time())["switches"].hits == 2


async def test_an_operation_switch_only_affects_that_operation() -> None:
    switches = [
        Switch(CLUSTER, SwitchMode.ERROR, "GET", None, "test"),
        Switch("other-cluster", SwitchMode.MISS),
    ]
    policies = _policies(switches=switches)
    backend = FakeBackend()
    assert (await policies.call(_read("GET"), backend, _degrade)).payload == b"error"
    assert backend.calls == []
    reply = await policies.call(_read("MGET"), backend, _never)
    assert (reply.outcome, len(backend.calls)) == (OK, 1)


# -- limit --------------------------------------------------------------------------------------


async def test_a_rate_limit_rejects_after_the_burst_and_refills(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _policies(_gov(limit=LimitConfig(rate=1, burst=3)))
    backend = FakeBackend()
    replies = [await policies.call(_read(), backend, _never) for _ in range(5)]
    assert [r.outcome for r in replies] == [OK, OK, OK, REJECTED, REJECTED]
    assert replies[-1].reason == "rate limit of cluster c (1/s) exceeded"
    assert len(backend.calls) == 3
    await trio.sleep(1.0)
    assert (await policies.call(_read(), backend, _never)).outcome is OK
    assert len(backend.calls) == 4
    limit = policies.statistics(trio.current_time())["limit"].cluster.rate
    assert (limit.admitted, limit.rejected) == (4, 2)


async def test_an_operation_rate_limit_applies_to_that_operation_only(
    autojump_clock: trio.testing.MockClock,
) -> None:
    ops = {"GET": OperationSettings(limit=LimitConfig(rate=1, burst=1))}
    policies = _policies(_gov(operations=MappingProxyType(ops)))
    backend = FakeBackend()
    assert (await policies.call(_read("GET"), backend, _never)).outcome is OK
    refused = await policies.call(_read("GET"), backend, _never)
    assert (refused.outcome, refused.reason) == (REJECTED, "rate limit of c GET (1/s) exceeded")
    assert (await policies.call(_read("MGET"), backend, _never)).outcome is OK
    assert len(backend.calls) == 2


async def test_a_concurrency_cap_rejects_while_full_and_frees_slots_as_calls_end() -> None:
    policies = _policies(_gov(limit=LimitConfig(concurrency=2)))
    gate, all_in = trio.Event(), trio.Event()
    entered: list[Node] = []

    async def blocked(node: Node, call: Call) -> Reply:
        entered.append(node)
        if len(entered) == 2:
            all_in.set()
        await gate.wait()
        return Reply(b"", OK, node.address)

    replies: list[Reply] = []

    async def one() -> None:
        replies.append(await policies.call(_read(), blocked, _never))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(one)
        nursery.start_soon(one)
        await all_in.wait()
        third = await policies.call(_read(), blocked, _never)
        assert third.outcome is REJECTED
        assert third.reason == "concurrency limit of cluster c (2) exceeded"
        assert len(entered) == 2
        gate.set()
    assert [r.outcome for r in replies] == [OK, OK]
    assert (await policies.call(_read(), blocked, _never)).outcome is OK
    cap = policies.statistics(trio.current_time())["limit"].cluster.concurrency
    assert (cap.in_flight, cap.admitted, cap.rejected) == (0, 3, 1)


async def test_a_cancelled_call_gives_back_its_slot_and_its_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _policies(_gov(limit=LimitConfig(concurrency=1)))
    backend = FakeBackend(plan=[(math.inf, OK)])
    with trio.move_on_after(0.5):
        await policies.call(_read(), backend, _never)
    assert backend.cancelled == backend.calls
    balancer = policies.balancers["dc1"]
    assert isinstance(balancer, LeastLoadedBalancer)
    assert balancer.in_flight(backend.calls[0]) == 0
    assert (await policies.call(_read(), backend, _never)).outcome is OK


# -- where calls go -----------------------------------------------------------------------------


async def test_a_write_goes_to_the_primary_once_even_when_it_fails() -> None:
    nodes = _nodes()
    backend = FakeBackend(script={nodes[1]: (0.0, LOCAL)})
    policies = _policies(nodes=nodes, primary=nodes[1])
    for _ in range(3):
        reply = await policies.call(_write(), backend, _never)
        assert (reply.outcome, reply.node) == (LOCAL, nodes[1].address)
    assert backend.calls == [nodes[1]] * 3
    assert policies.retry_budget.statistics().retries == 0


async def test_a_pinned_read_goes_to_the_primary_and_is_not_retried() -> None:
    nodes = _nodes()
    backend = FakeBackend(script={nodes[2]: (0.0, UPSTREAM)})
    policies = _policies(nodes=nodes, primary=nodes[2])
    reply = await policies.call(_read(pinned=True), backend, _never)
    assert (reply.outcome, backend.calls) == (UPSTREAM, [nodes[2]])


async def test_a_sharded_cluster_sends_reads_to_the_primary_only() -> None:
    nodes = _nodes()
    policies = _policies(nodes=nodes, sharded=True)
    backend = FakeBackend(script={nodes[0]: (0.0, LOCAL)})
    assert (await policies.call(_read(), backend, _never)).outcome is LOCAL
    assert backend.calls == [nodes[0]]
    assert policies.hedger("GET") is None


async def test_reads_never_go_to_a_node_of_weight_zero() -> None:
    nodes = (*_nodes(2), Node("10.0.0.9", 6379, "dc1", 0))
    policies = _policies(_gov(balance=BalanceName.ROUND_ROBIN), nodes)
    backend = FakeBackend()
    for _ in range(100):
        await policies.call(_read(), backend, _never)
    assert set(backend.calls) == set(nodes[:2])


@pytest.mark.parametrize("hedging", [False, True])  # a hedge-able read shares ``tried`` too
async def test_a_failed_read_is_retried_once_on_a_different_node(hedging: bool) -> None:
    policies = _hedging(budget=0.0) if hedging else _policies()
    for _ in range(20):
        backend = FakeBackend(plan=[(0.0, LOCAL)])
        reply = await policies.call(_read(), backend, _never)
        first, second = backend.calls
        assert first is not second
        assert (reply.outcome, reply.node) == (OK, second.address)
    assert policies.retry_budget.statistics().retries == 20


async def test_an_app_error_is_returned_at_once() -> None:
    policies = _policies()
    backend = FakeBackend(plan=[(0.0, APP)])
    reply = await policies.call(_read(), backend, _never)
    assert (reply.outcome, reply.node) == (APP, backend.calls[0].address)
    assert len(backend.calls) == 1


@pytest.mark.parametrize(("enabled", "attempts"), [(True, 2), (False, 1)])
async def test_attempts_are_bounded_by_the_failover_settings(enabled: bool, attempts: int) -> None:
    policies = _policies(_gov(failover=FailoverConfig(enabled=enabled)))
    backend = FakeBackend(plan=[(0.0, UPSTREAM)] * 3)
    assert (await policies.call(_read(), backend, _never)).outcome is UPSTREAM
    assert len(backend.calls) == len(set(backend.calls)) == attempts


# -- hedging and deadlines ----------------------------------------------------------------------


async def test_a_hung_read_is_backed_up_on_another_node_and_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _hedging()
    hedger = policies.hedger("GET")
    assert hedger is not None
    delay = hedger.delay(trio.current_time())
    assert delay is not None and delay == pytest.approx(0.050, rel=1 / 32)
    backend = FakeBackend(plan=[(math.inf, OK), (0.010, OK)])
    started = trio.current_time()
    with trio.fail_after(5):
        reply = await policies.call(_read(), backend, _never)
    hung, backup = backend.calls
    assert hung is not backup
    assert (reply.outcome, reply.node) == (OK, backup.address)
    assert trio.current_time() - started == pytest.approx(delay + 0.010)
    assert backend.cancelled == [hung]
    balancer = policies.balancers["dc1"]
    assert isinstance(balancer, LeastLoadedBalancer)
    assert balancer.in_flight(hung) == balancer.in_flight(backup) == 0
    stats = policies.statistics(trio.current_time())
    assert stats["breakers"][hung.address].calls == 0  # abandoned, not counted as a failure
    budget = stats["hedges"]["*"]["budget"]
    assert (budget.calls, budget.hedges, budget.wins) == (1, 1, 1)
    assert budget.hedges <= budget.ratio * budget.calls


async def test_no_hedge_before_the_latency_window_is_warm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _policies(_gov(hedge=HedgeConfig(enabled=True, budget=1.0)))
    backend = FakeBackend(plan=[(0.5, OK)])
    assert (await policies.call(_read(), backend, _never)).outcome is OK
    assert len(backend.calls) == 1
    assert policies.statistics(trio.current_time())["hedges"]["*"]["delay"].delay is None


async def test_a_deadline_ends_a_hung_read_with_a_timeout_and_no_retry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _policies()
    backend = FakeBackend(plan=[(math.inf, OK)] * 3)
    started = trio.current_time()
    with trio.fail_after(5):  # fail, not hang, if the deadline were ignored
        reply = await policies.call(_read(deadline=started + 1.0), backend, _never)
    assert trio.current_time() - started == pytest.approx(1.0)
    (node,) = backend.calls  # the deadline has passed: with_failover does not retry
    assert (reply.outcome, reply.node) == (LOCAL, node.address)
    assert "timeout" in reply.reason
    assert policies.statistics(trio.current_time())["breakers"][node.address].failures == 1


async def test_no_backup_is_sent_once_the_deadline_has_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _hedging(latency=0.5)  # hedge delay 0.5 s, longer than the call's deadline
    backend = FakeBackend(plan=[(math.inf, OK)] * 3)
    await policies.call(_read(deadline=trio.current_time() + 0.1), backend, _never)
    assert len(backend.calls) == 1


# -- breaker and balance ------------------------------------------------------------------------


async def test_an_open_breaker_keeps_its_node_out_of_picks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = _nodes()
    breaker = BreakerConfig(consecutive_failures=3)
    policies = _policies(_gov(breaker=breaker, outlier=OutlierConfig(enabled=False)), nodes)
    backend = FakeBackend(script={nodes[0]: (0.0, LOCAL)})
    for _ in range(3):
        assert (await policies.call(_read(pinned=True), backend, _never)).outcome is LOCAL
    now = trio.current_time()
    assert nodes[0] not in {policies.pick(now) for _ in range(200)}
    stats = policies.statistics(now)["breakers"][nodes[0].address]
    assert (stats.state, stats.trips) == (BreakerState.OPEN, 1)
    refused = await policies.call(_read(pinned=True), backend, _never)
    assert refused.outcome is REJECTED and "circuit breaker open" in refused.reason
    assert len(backend.calls) == 3
    await trio.sleep(breaker.open_for)  # half-open: a candidate again
    later = trio.current_time()
    assert nodes[0] in {policies.pick(later) for _ in range(200)}


async def test_a_half_open_node_busy_probing_does_not_reject_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = _nodes()
    governance = _gov(
        breaker=BreakerConfig(consecutive_failures=1, open_for=1.0),
        outlier=OutlierConfig(enabled=False),
        balance=BalanceName.ROUND_ROBIN,
    )
    policies = _policies(governance, nodes)
    await policies.call(_read(pinned=True), FakeBackend(plan=[(0.0, LOCAL)]), _never)
    await trio.sleep(1.0)
    probing, done = trio.Event(), trio.Event()

    async def probe(node: Node, call: Call) -> Reply:
        probing.set()
        await done.wait()
        return Reply(b"", OK, node.address)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(policies.call, _read(pinned=True), probe, _never)
        await probing.wait()  # the breaker's one probe is in flight on nodes[0]
        replies = [await policies.call(_read(), FakeBackend(), _never) for _ in range(6)]
        done.set()
    assert [r.outcome for r in replies] == [OK] * 6


async def test_hash_balance_keeps_a_key_on_one_node_and_spreads_keys() -> None:
    policies = _policies(_gov(balance=BalanceName.HASH), _nodes(4))
    backend = FakeBackend()
    for _ in range(200):
        await policies.call(_read(keys=(b"user:42", b"other")), backend, _never)
    assert len(set(backend.calls)) == 1
    assert policies.pick(trio.current_time(), key=b"user:42") is backend.calls[0]
    backend.calls.clear()
    for i in range(100):
        await policies.call(_read(keys=(b"key:%d" % i,)), backend, _never)
    assert len(set(backend.calls)) > 1


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


async def test_a_call_already_past_its_deadline_is_not_sent_nor_counted_against_a_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    policies = _policies(_gov(breaker=BreakerConfig(consecutive_failures=2)))
    backend = FakeBackend()
    late = dataclasses.replace(_write(), deadline=trio.current_time() - 1.0)
    for _ in range(5):
        reply = await policies.call(late, backend, _never)
        assert (reply.outcome, reply.reason) == (LOCAL, "deadline passed before sending")
    assert backend.calls == []
    stats = policies.statistics(trio.current_time())["breakers"]
    assert all(breaker.state is BreakerState.CLOSED for breaker in stats.values())


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


async def test_with_every_route_weight_at_zero_reads_go_to_the_primary() -> None:
    policies, a, _ = _two_groups({"dc-a": 0, "dc-b": 0})
    assert policies.pick(trio.current_time()) is None
    backend = FakeBackend()
    reply = await policies.call(_read(deadline=math.inf), backend, _never)
    assert (reply.outcome, backend.calls) == (OK, [a])


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
