"""The HA engine over a scripted transport, on MockClock: where runs go, failover, backup
requests, deadlines, breakers, losers, pinned sessions and split runs."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.call import Operation, Outcome, Unavailable
from resmesh.cluster.topology import Node
from resmesh.config import (
    BalanceName,
    BreakerConfig,
    FailoverConfig,
    HedgeConfig,
    OperationSettings,
    OutlierConfig,
)
from resmesh.policies.breaker import BreakerState
from resmesh.policies.chain import ClusterPolicies
from resmesh.policies.engine import HAEngine
from resmesh.policies.retry import RetryBudget
from tests.policies.engine_support import (
    APP,
    CONNECT_FAILS,
    GET,
    LOCAL,
    OK,
    REJECTED,
    SET,
    UPSTREAM,
    FakeAttempt,
    FakeTransport,
    governance,
    in_flight,
    nodes,
    policies,
    run,
)

Setup = tuple[HAEngine[FakeAttempt], FakeTransport]


@asynccontextmanager
async def _engine(pol: ClusterPolicies, **script: Any) -> AsyncIterator[Setup]:
    """The engine over a fake transport, its timer running; everything stops on exit."""
    async with trio.open_nursery() as nursery:
        transport = FakeTransport(nursery, **script)
        engine = HAEngine(pol, transport)
        nursery.start_soon(engine.run)
        yield engine, transport
        nursery.cancel_scope.cancel()


def _hedging(latency: float = 0.050, budget: float = 1.0, **changes: Any) -> ClusterPolicies:
    """Hedging on, ``budget`` tokens per call, and 20 calls of ``latency`` counted by the
    metrics after the hedge delay's first reading (a warm window)."""
    pol = policies(governance(hedge=HedgeConfig(enabled=True, budget=budget), **changes))
    hedger = pol.hedger("GET")
    assert hedger is not None and pol.metrics is not None
    assert hedger.delay(trio.current_time()) is None
    pol.metrics.run_ended(run().calls * 20, nodes()[0], OK, latency)
    for _ in range(20):  # cold: the calls that start make it read the metrics again
        delay = hedger.delay(trio.current_time())
    assert delay == pytest.approx(max(latency, 0.010), rel=1 / 32)
    return pol


# -- where runs go ------------------------------------------------------------------------------


async def test_a_write_goes_to_the_primary_once_even_when_it_fails() -> None:
    members = nodes()
    pol = policies(members=members, primary=members[1])
    async with _engine(pol, script={members[1]: (0.0, LOCAL)}) as (engine, transport):
        for _ in range(3):
            with pytest.raises(Unavailable) as failed:
                await engine.execute(run(SET))
            assert (failed.value.node, failed.value.outcome) == (members[1].address, LOCAL)
    assert transport.sent == [members[1]] * 3
    assert pol.retry_budget.statistics().retries == 0


async def test_reads_are_spread_and_never_go_to_a_node_of_weight_zero() -> None:
    members = (*nodes(2), Node("10.0.0.9", 6379, "dc1", 0))
    pol = policies(governance(balance=BalanceName.ROUND_ROBIN), members)
    async with _engine(pol) as (engine, transport):
        for _ in range(100):
            await engine.execute(run())
    assert set(transport.sent) == set(members[:2])


async def test_with_every_route_weight_at_zero_reads_go_to_the_primary() -> None:
    pol = policies()
    pol.set_route({"dc1": 0})
    async with _engine(pol) as (engine, transport):
        await engine.execute(run())
    assert transport.sent == [pol.primary]


async def test_hash_balance_keeps_a_key_on_one_node_and_spreads_keys() -> None:
    pol = policies(governance(balance=BalanceName.HASH), nodes(4))
    async with _engine(pol) as (engine, transport):
        for _ in range(200):
            await engine.execute(run(key=b"user:42"))
        assert len(set(transport.sent)) == 1
        assert pol.pick(trio.current_time(), key=b"user:42") is transport.sent[0]
        transport.sent.clear()
        for i in range(100):
            await engine.execute(run(key=b"key:%d" % i))
    assert len(set(transport.sent)) > 1


async def test_a_run_past_its_deadline_is_not_sent_nor_counted_against_a_node() -> None:
    pol = policies(governance(breaker=BreakerConfig(consecutive_failures=2)))
    async with _engine(pol) as (engine, transport):
        for op in (SET, GET):
            for _ in range(3):
                with pytest.raises(Unavailable, match="deadline passed") as failed:
                    await engine.execute(run(op, deadline=-1.0))
                assert failed.value.outcome is REJECTED
    assert transport.sent == []
    stats = pol.statistics(trio.current_time())["breakers"]
    assert all(breaker.state is BreakerState.CLOSED for breaker in stats.values())


# -- failover -----------------------------------------------------------------------------------


@pytest.mark.parametrize("hedging", [False, True])  # a backup shares the nodes tried, too
async def test_a_failed_read_is_retried_once_on_a_different_node(hedging: bool) -> None:
    pol = _hedging(budget=0.0) if hedging else policies()
    for _ in range(20):
        async with _engine(pol, plan=[(0.0, LOCAL)]) as (engine, transport):
            attempt = await engine.execute(run())
        first, second = transport.sent
        assert first is not second
        assert attempt.node is second
    assert pol.retry_budget.statistics().retries == 20


async def test_a_connect_failure_is_a_node_failure_and_is_retried_elsewhere() -> None:
    pol = policies()
    async with _engine(pol, plan=[CONNECT_FAILS]) as (engine, transport):
        attempt = await engine.execute(run())
    assert attempt.node is transport.sent[1] is not transport.sent[0]
    assert pol.statistics(0.0)["breakers"][transport.sent[0].address].failures == 1


async def test_an_app_error_is_the_answer_at_once() -> None:
    async with _engine(policies(), plan=[(0.0, APP)]) as (engine, transport):
        attempt = await engine.execute(run())
    assert (attempt.outcome(), len(transport.sent)) == (APP, 1)


@pytest.mark.parametrize(("enabled", "attempts"), [(True, 2), (False, 1)])
async def test_attempts_are_bounded_by_the_failover_settings(enabled: bool, attempts: int) -> None:
    pol = policies(governance(failover=FailoverConfig(enabled=enabled)))
    async with _engine(pol, plan=[(0.0, UPSTREAM)] * 3) as (engine, transport):
        attempt = await engine.execute(run())
    # Every node failed: the node's own answer (its error reply) is what the client gets.
    assert attempt.outcome() is UPSTREAM
    assert len(transport.sent) == len(set(transport.sent)) == attempts


async def test_with_no_answer_anywhere_the_real_failure_is_raised() -> None:
    pol = policies(members=nodes(2))
    async with _engine(pol, plan=[(0.0, LOCAL), (0.0, LOCAL)]) as (engine, _):
        with pytest.raises(Unavailable, match="connection reset") as failed:
            await engine.execute(run())
    assert failed.value.outcome is LOCAL  # not "no node left": the node failure


async def test_an_exhausted_retry_budget_stops_retries() -> None:
    pol = policies(governance(failover=FailoverConfig(budget_ratio=0.0, budget_min=0)))
    async with _engine(pol, plan=[(0.0, LOCAL)]) as (engine, transport):
        with pytest.raises(Unavailable):
            await engine.execute(run())
    assert len(transport.sent) == 1
    assert pol.retry_budget.statistics().denied == 1


async def test_a_retry_holds_its_budget_slot_until_it_returns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = policies()
    seen: list[int] = []
    async with (
        _engine(pol, plan=[(0.0, LOCAL), (1.0, OK)]) as (engine, transport),
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(engine.execute, run())
        await trio.sleep(0.5)  # the retry is out
        seen.append(pol.retry_budget.active_retries)
    assert seen == [1] and len(transport.sent) == 2
    budget = pol.retry_budget.statistics()
    assert (budget.active_retries, budget.active_requests) == (0, 0)


async def test_a_breaker_refusal_picks_another_node_and_is_not_a_retry(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    members = nodes(2)
    pol = policies(members=members)
    refused = members[0]
    real_begin = pol.begin
    monkeypatch.setattr(
        pol,
        "begin",
        lambda node, now: (
            "circuit breaker open (test)" if node is refused else real_begin(node, now)
        ),
    )
    picks = iter([refused, members[1]])
    monkeypatch.setattr(pol, "pick", lambda now, exclude=(), key=None: next(picks, None))
    async with _engine(pol) as (engine, transport):
        attempt = await engine.execute(run())
    assert attempt.node is members[1]
    assert transport.sent == [members[1]]  # the refused node was never sent to
    assert pol.retry_budget.statistics().retries == 0


async def test_a_write_refused_by_its_breaker_is_rejected() -> None:
    pol = policies(governance(breaker=BreakerConfig(consecutive_failures=1)))
    async with _engine(pol, plan=[(0.0, LOCAL)]) as (engine, transport):
        with pytest.raises(Unavailable):
            await engine.execute(run(SET))
        with pytest.raises(Unavailable, match="circuit breaker open") as refused:
            await engine.execute(run(SET))
    assert refused.value.outcome is REJECTED
    assert len(transport.sent) == 1


# -- backup requests ----------------------------------------------------------------------------


async def test_a_hung_read_is_backed_up_and_the_loser_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = _hedging()
    hedger = pol.hedger("GET")
    assert hedger is not None
    delay = hedger.delay(trio.current_time())
    assert delay == pytest.approx(0.050, rel=1 / 32)
    async with _engine(pol, plan=[(5.0, OK), (0.010, OK)]) as (engine, transport):
        started = trio.current_time()
        attempt = await engine.execute(run())
        hung, backup = transport.sent
        assert hung is not backup and attempt.node is backup
        assert trio.current_time() - started == pytest.approx(delay + 0.010)
        assert transport.cancelled == [hung]
        # The loser stays in flight on its node until it ends (a Redis command already sent
        # cannot be called back), so a stalled node stops being chosen.
        assert (in_flight(pol, hung), in_flight(pol, backup)) == (1, 0)
        stats = pol.statistics(trio.current_time())
        assert stats["breakers"][hung.address].calls == 0  # no verdict on it yet
        budget = stats["hedges"]["*"]["budget"]
        assert (budget.calls, budget.hedges, budget.wins) == (1, 1, 1)
        await trio.sleep(10)
        assert in_flight(pol, hung) == 0


async def test_the_first_attempt_can_still_win(autojump_clock: trio.testing.MockClock) -> None:
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(0.012, OK), (0.050, OK)]) as (engine, transport):
        attempt = await engine.execute(run())
    assert attempt.node is transport.sent[0]
    assert transport.cancelled == [transport.sent[1]]
    budget = pol.statistics(0.0)["hedges"]["*"]["budget"]
    assert (budget.hedges, budget.wins) == (1, 0)


async def test_a_fast_answer_is_not_backed_up(autojump_clock: trio.testing.MockClock) -> None:
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(0.005, OK)]) as (engine, transport):
        await engine.execute(run())
    assert len(transport.sent) == 1


async def test_a_fast_failure_is_followed_at_once_not_after_the_delay(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = _hedging(latency=0.050)
    async with _engine(pol, plan=[(0.002, LOCAL), (0.003, OK)]) as (engine, transport):
        started = trio.current_time()
        await engine.execute(run())
    assert transport.sent_at[1] - started == pytest.approx(0.002)
    assert trio.current_time() - started == pytest.approx(0.005)


async def test_a_failure_does_not_win_the_race(autojump_clock: trio.testing.MockClock) -> None:
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(0.100, OK), (0.001, UPSTREAM)]) as (engine, transport):
        started = trio.current_time()
        attempt = await engine.execute(run())
    assert attempt.node is transport.sent[0]
    assert trio.current_time() - started == pytest.approx(0.100)
    assert transport.cancelled == []


async def test_an_app_error_wins_the_race(autojump_clock: trio.testing.MockClock) -> None:
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(0.100, OK), (0.001, APP)]) as (engine, transport):
        attempt = await engine.execute(run())
    assert (attempt.node, attempt.outcome()) == (transport.sent[1], APP)


async def test_writes_are_never_backed_up(autojump_clock: trio.testing.MockClock) -> None:
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(1.0, OK)]) as (engine, transport):
        await engine.execute(run(SET))
    assert len(transport.sent) == 1


async def test_no_backup_before_the_latency_window_is_warm(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = policies(governance(hedge=HedgeConfig(enabled=True, budget=1.0)))
    async with _engine(pol, plan=[(0.5, OK)]) as (engine, transport):
        await engine.execute(run())
    assert len(transport.sent) == 1
    assert pol.statistics(0.0)["hedges"]["*"]["delay"].delay is None


async def test_the_hedge_delay_is_read_from_the_latencies_the_engine_counted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The runs the engine ended, counted once by the metrics, are what the hedge delays are
    read from: an operation with settings of its own from its calls only, the cluster's from
    the others'."""
    hedge = HedgeConfig(enabled=True, budget=0.0)
    hgetall = Operation("HGETALL", write=False, idempotent=True)
    gov = governance(hedge=hedge, operations={"HGETALL": OperationSettings(hedge=hedge)})
    pol = policies(gov)
    cluster, own = pol.hedger("GET"), pol.hedger("HGETALL")
    assert cluster is not None and own is not None and cluster is not own
    plan = [(0.030, OK)] * 25 + [(0.200, OK)] * 25
    async with _engine(pol, plan=plan) as (engine, _):
        for op in [GET] * 25 + [hgetall] * 25:
            await engine.execute(run(op))
    now = trio.current_time()
    assert cluster.delay(now + 1.0) == pytest.approx(0.030, rel=1 / 32)
    assert own.delay(now + 1.0) == pytest.approx(0.200, rel=1 / 32)
    assert (cluster.statistics().samples, own.statistics().samples) == (25, 25)


async def test_an_empty_hedge_budget_waits_for_the_first_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = _hedging(latency=0.010, budget=0.0)
    async with _engine(pol, plan=[(1.0, OK)]) as (engine, transport):
        await engine.execute(run())
    assert len(transport.sent) == 1
    assert pol.statistics(0.0)["hedges"]["*"]["budget"].denied == 1


# -- deadlines ----------------------------------------------------------------------------------


async def test_a_deadline_ends_a_hung_read_and_nothing_is_retried_after_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = policies()
    async with _engine(pol, plan=[(math.inf, OK)] * 3) as (engine, transport):
        started = trio.current_time()
        with pytest.raises(Unavailable, match="no reply in time"):
            await engine.execute(run(deadline=1.0))
    assert trio.current_time() - started == pytest.approx(1.0)
    (node,) = transport.sent
    assert pol.statistics(trio.current_time())["breakers"][node.address].failures == 1


async def test_no_backup_is_sent_once_the_deadline_has_passed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = _hedging(latency=0.5)  # the hedge delay is longer than the run's deadline
    async with _engine(pol, plan=[(math.inf, OK)] * 3) as (engine, transport):
        with pytest.raises(Unavailable):
            await engine.execute(run(deadline=0.1))
    assert len(transport.sent) == 1


# -- breakers and cancellation ------------------------------------------------------------------


async def test_an_open_breaker_keeps_its_node_out_of_picks(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members = nodes()
    breaker = BreakerConfig(consecutive_failures=3)
    pol = policies(governance(breaker=breaker, outlier=OutlierConfig(enabled=False)), members)
    async with _engine(pol, script={members[0]: (0.0, LOCAL)}) as (engine, _):
        for _ in range(3):
            with pytest.raises(Unavailable):
                await engine.execute(run(SET))  # writes go to the primary, members[0]
    now = trio.current_time()
    assert members[0] not in {pol.pick(now) for _ in range(200)}
    stats = pol.statistics(now)["breakers"][members[0].address]
    assert (stats.state, stats.trips) == (BreakerState.OPEN, 1)
    await trio.sleep(breaker.open_for)  # half-open: a candidate again
    assert members[0] in {pol.pick(trio.current_time()) for _ in range(200)}


async def test_a_half_open_node_busy_probing_does_not_reject_reads(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members = nodes()
    gov = governance(
        breaker=BreakerConfig(consecutive_failures=1, open_for=1.0),
        outlier=OutlierConfig(enabled=False),
        balance=BalanceName.ROUND_ROBIN,
    )
    pol = policies(gov, members)
    async with _engine(pol, plan=[(0.0, LOCAL), (5.0, OK)]) as (engine, transport):
        with pytest.raises(Unavailable):
            await engine.execute(run(SET))
        await trio.sleep(1.0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(engine.execute, run(SET))  # the probe, in flight for 5 s
            await trio.sleep(0.1)
            for _ in range(6):
                attempt = await engine.execute(run())
                assert attempt.node is not members[0]
    assert transport.sent[:2] == [members[0], members[0]]


async def test_a_cancelled_run_stays_on_its_nodes_until_they_answer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The caller is gone, but the nodes still have the run (a Redis command already sent
    cannot be called back): each stays counted in flight until it answers."""
    pol = _hedging(latency=0.010)
    async with _engine(pol, plan=[(5.0, OK), (5.0, OK)]) as (engine, transport):
        with trio.move_on_after(0.5):
            await engine.execute(run())
        assert len(transport.sent) == 2
        assert [in_flight(pol, node) for node in transport.sent] == [1, 1]
        budget = pol.retry_budget.statistics()
        assert (budget.active_requests, budget.active_retries) == (0, 0)
        await trio.sleep(10)
        assert [in_flight(pol, node) for node in transport.sent] == [0, 0]
        assert pol.statistics(0.0)["breakers"][transport.sent[0].address].calls == 0


# -- pinned sessions and split runs -------------------------------------------------------------


async def test_a_pinned_exchange_counts_for_its_node_and_is_never_retried() -> None:
    members = nodes()
    pol = policies(governance(breaker=BreakerConfig(consecutive_failures=2)), members)
    node = members[2]
    async with _engine(pol) as (engine, _):
        answer = await engine.execute_pinned(node, _returns(b"+OK"), lambda _: OK)
        assert answer == b"+OK"
        for _ in range(2):
            with pytest.raises(Unavailable):
                await engine.execute_pinned(node, _raises(Unavailable(node.address, "reset")), _ok)
    assert pol.breakers[node].state is BreakerState.OPEN
    assert pol.refuses(node, trio.current_time()) is not None  # a new session is refused
    assert in_flight(pol, node) == 0


async def test_a_blocking_exchange_is_never_counted_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    breaker = BreakerConfig(slow_call=0.1, slow_ratio=0.5, min_calls=1)
    pol = policies(governance(breaker=breaker))
    node = pol.topology.nodes[0]

    async def blocked() -> bytes:
        await trio.sleep(5.0)
        return b"*-1"

    async with _engine(pol) as (engine, _):
        await engine.execute_pinned(node, blocked, _ok, timed=False)
        assert pol.breakers[node].state is BreakerState.CLOSED
        await engine.execute_pinned(node, blocked, _ok)
        assert pol.breakers[node].state is BreakerState.OPEN


async def test_a_split_run_goes_to_every_node_at_once_and_reports_each() -> None:
    members = nodes()
    pol = policies(members=members, sharded=True)
    assert pol.primary is None and not pol.spreads_reads
    script = {members[1]: (0.0, LOCAL)}
    async with _engine(pol, script=script) as (engine, transport):
        results = await engine.execute_split({node: run(SET) for node in members})
    assert sorted(transport.sent, key=members.index) == list(members)
    assert isinstance(results[members[1]], Unavailable)
    assert all(isinstance(results[node], FakeAttempt) for node in (members[0], members[2]))


# -- budgets under load -------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    latencies=st.lists(
        st.tuples(st.floats(0.0005, 0.05), st.floats(0.0005, 0.05), st.booleans()),
        min_size=1,
        max_size=40,
    )
)
def test_backups_and_retries_stay_within_their_budgets(
    latencies: list[tuple[float, float, bool]],
) -> None:
    """Concurrent runs, some slow, some failing: hedges never exceed 15 % of runs, and the
    retries in flight never exceed max(3, 20 % of the runs in flight)."""

    async def main() -> None:
        pol = _hedging(latency=0.005, budget=0.15)
        hedger = pol.hedger("GET")
        assert hedger is not None
        async with _engine(pol, script={}) as (engine, transport):
            budget = pol.retry_budget
            pol.retry_budget = _Checked(budget)  # type: ignore[assignment]

            async def one(first: float, second: float, fails: bool) -> None:
                transport.plan += [(first, LOCAL if fails else OK), (second, OK)]
                with suppress(Unavailable):
                    await engine.execute(run())

            async with trio.open_nursery() as nursery:
                for first, second, fails in latencies:
                    nursery.start_soon(one, first, second, fails)
                    await trio.sleep(0.001)
        stats = hedger.budget.statistics()
        assert stats.hedges <= int(0.15 * stats.calls + 1e-9)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))


class _Checked:
    """A retry budget that checks its own cap whenever a retry starts."""

    def __init__(self, budget: RetryBudget) -> None:
        self.budget = budget

    def __getattr__(self, name: str) -> Any:
        return getattr(self.budget, name)

    def try_start_retry(self) -> bool:
        budget = self.budget
        started = budget.try_start_retry()
        if started:
            assert budget.active_retries <= max(3, int(0.2 * budget.active_requests))
        return started


def _returns(value: bytes) -> Callable[[], Any]:
    async def exchange() -> bytes:
        return value

    return exchange


def _raises(error: Exception) -> Callable[[], Any]:
    async def exchange() -> bytes:
        raise error

    return exchange


def _ok(_: object) -> Outcome:
    return OK


# -- found in review ----------------------------------------------------------------------------


async def test_a_retry_s_later_hedge_deadline_never_delays_other_runs_hedges(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A retry is hedged with a deadline of its own; re-arming the run's waiter with it would
    leave a later deadline mid-queue, holding back the alarms behind it."""
    pol = policies(governance(hedge=HedgeConfig(enabled=True, budget=1.0, fixed_delay=0.1)))
    plan = [(10, OK), (0.089, LOCAL), (10, OK), (10, OK)] + [(0.001, OK)] * 6
    async with _engine(pol, plan=plan) as (engine, transport):

        async def one(at: float) -> None:
            await trio.sleep_until(at)
            await engine.execute(run())

        async with trio.open_nursery() as runs:
            for at in (0.0, 0.001, 0.002):
                runs.start_soon(one, at)
    # The third run's backup is due at 0.102 (started 0.002 + the 0.1 s delay).
    assert any(t == pytest.approx(0.102, abs=0.002) for t in transport.sent_at), transport.sent_at


async def test_no_hedge_is_paid_for_when_there_is_no_node_to_back_up_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    members = nodes(2)
    gov = governance(
        hedge=HedgeConfig(enabled=True, budget=1.0, fixed_delay=0.05),
        breaker=BreakerConfig(consecutive_failures=1, open_for=60.0),
    )
    pol = policies(gov, members=members)
    pol.breakers[members[1]].record(LOCAL, 0.0, trio.current_time())  # node 2 is out
    async with _engine(pol, plan=[(0.2, OK)]) as (engine, transport):
        await engine.execute(run())
    assert transport.sent == [members[0]]
    budget = pol.statistics(0.0)["hedges"]["*"]["budget"]
    assert (budget.hedges, budget.tokens) == (0, 1.0)


# -- started runs: the same failover and backups, with no task waiting -------------------------


def _collect() -> tuple[list[Any], trio.Event, Callable[[Any], None]]:
    results: list[Any] = []
    answered = trio.Event()

    def on_done(result: Any) -> None:
        results.append(result)
        answered.set()

    return results, answered, on_done


async def test_a_started_spread_run_is_backed_up_by_the_timer_and_answered_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = _hedging()
    hedger = pol.hedger("GET")
    assert hedger is not None
    delay = hedger.delay(trio.current_time())
    async with _engine(pol, plan=[(5.0, OK), (0.010, OK)]) as (engine, transport):
        results, answered, on_done = _collect()
        started = trio.current_time()
        engine.start(run(), on_done)
        await answered.wait()
        assert trio.current_time() - started == pytest.approx(delay + 0.010)
        hung, backup = transport.sent
        assert [r.node for r in results] == [backup]
        assert transport.cancelled == [hung]
        await trio.sleep(10)  # the loser ends: nothing more reaches on_done
        assert len(results) == 1 and in_flight(pol, hung) == 0


async def test_a_started_spread_run_fails_over_and_reports_the_last_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    pol = policies(governance(failover=FailoverConfig(max_attempts=2)))
    async with _engine(pol, plan=[(0.001, LOCAL), (0.001, OK)]) as (engine, transport):
        results, answered, on_done = _collect()
        engine.start(run(), on_done)
        await answered.wait()
        assert results[0].node is transport.sent[1] and transport.sent[0] != transport.sent[1]
    async with _engine(pol, plan=[(0.001, LOCAL), (0.001, LOCAL)]) as (engine, transport):
        results, answered, on_done = _collect()
        engine.start(run(), on_done)
        await answered.wait()
        assert isinstance(results[0], Unavailable) and results[0].node == transport.sent[1].address
    assert pol.retry_budget.statistics().active_requests == 0


async def test_many_started_runs_race_without_a_task_each(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A thousand slow runs in flight at once from one task (a Motan2 connection's shape):
    the timer backs up as many as the hedge budget holds (10 tokens), every run is answered
    once, no task is started for any of them, and nothing stays in flight."""
    pol = _hedging(budget=1.0)
    plan = [(0.5, OK)] * 1000 + [(0.010, OK)] * 1000
    async with _engine(pol, plan=plan) as (engine, transport):
        results: list[Any] = []
        for _ in range(1000):
            engine.start(run(), results.append)
        # The engine's timer and the fake node's answers; nothing of the runs' own.
        assert len(transport.nursery.child_tasks) == 1 + 1000
        await trio.sleep(1)
        assert len(results) == 1000 and all(not isinstance(r, Unavailable) for r in results)
        assert len(transport.sent) == 1010
        await trio.sleep(10)
    assert sum(in_flight(pol, node) for node in pol.topology.nodes) == 0
    assert pol.retry_budget.statistics().active_requests == 0
