"""Backup requests: the budget, the delay from the latency window, and the race on MockClock."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.call import Outcome, Reply
from resmesh.policies.hedge import (
    HedgeBudget,
    HedgeConfig,
    HedgeDelay,
    hedge_delay,
    hedged,
)
from resmesh.policies.window import RollingHistogram

from .fakes import PINNED, READ, WRITE, FakeNodes

OK, UPSTREAM, LOCAL = Outcome.OK, Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR


def _rich_budget() -> HedgeBudget:
    budget = HedgeBudget()
    for _ in range(100):
        budget.record_call()
    return budget


# -- budget -------------------------------------------------------------------------------------


def test_budget_earns_fifteen_percent_of_a_token_per_call() -> None:
    budget = HedgeBudget()
    assert not budget.try_hedge()  # starts empty: no hedging on a cold start
    for _ in range(6):
        budget.record_call()
    assert not budget.try_hedge()  # 0.9 tokens
    budget.record_call()
    assert budget.try_hedge()  # 1.05
    assert budget.tokens == pytest.approx(0.05)
    stats = budget.statistics()
    assert (stats.calls, stats.hedges, stats.denied) == (7, 1, 2)


def test_budget_caps_saved_tokens() -> None:
    budget = HedgeBudget(max_tokens=10)
    for _ in range(10_000):
        budget.record_call()
    assert budget.tokens == 10.0
    assert sum(budget.try_hedge() for _ in range(20)) == 10


@given(st.lists(st.booleans(), max_size=400), st.sampled_from([0.05, 0.15, 0.5]))
def test_budget_never_exceeds_its_ratio(ops: list[bool], ratio: float) -> None:
    """True = a call, False = a hedge attempt: hedges <= ratio x calls, exactly."""
    budget = HedgeBudget(ratio=ratio)
    calls = hedges = 0
    for is_call in ops:
        if is_call:
            budget.record_call()
            calls += 1
        elif budget.try_hedge():
            hedges += 1
        assert hedges <= int(ratio * calls + 1e-9)


# -- delay --------------------------------------------------------------------------------------


def test_delay_is_the_p90_with_a_floor_and_none_on_a_cold_start() -> None:
    histogram = RollingHistogram()
    assert hedge_delay(histogram, 0.0) is None
    assert hedge_delay(histogram, 0.0, initial_delay=0.05) == 0.05
    for i in range(100):
        histogram.record(0.001 if i % 10 else 0.040, now=1.0)
    assert hedge_delay(histogram, 1.0) == 0.010  # p90 ~ 1 ms: the 10 ms floor
    assert hedge_delay(histogram, 1.0, percentile=95) == pytest.approx(0.040, rel=1 / 32)
    for _ in range(100):
        histogram.record(0.030, now=1.0)  # now 90 x 1 ms, 100 x 30 ms, 10 x 40 ms
    assert hedge_delay(histogram, 1.0) == pytest.approx(0.030, rel=1 / 32)


def test_hedge_delay_is_cached_for_its_refresh_period() -> None:
    delay = HedgeDelay(HedgeConfig(min_samples=5, refresh=1.0))
    assert delay.delay(0.0) is None
    for _ in range(4):
        delay.record(0.050, now=0.1)
    assert delay.delay(0.2) is None  # cold, and too few samples to try again
    for _ in range(6):
        delay.record(0.050, now=0.3)
    # Cold with enough new samples: computed at once, not at the next refresh (1.0).
    assert delay.delay(0.5) == pytest.approx(0.050, rel=1 / 32)
    for _ in range(20):
        delay.record(0.200, now=0.6)
    assert delay.delay(0.9) == pytest.approx(0.050, rel=1 / 32)  # warm: cached until 1.5
    assert delay.delay(1.5) == pytest.approx(0.200, rel=1 / 32)
    stats = delay.statistics(1.5)
    assert (stats.samples, stats.computed_at) == (30, 1.5)
    fixed = HedgeDelay(HedgeConfig(fixed_delay=0.02))
    assert fixed.delay(0.0) == 0.02


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="percentile"):
        HedgeConfig(percentile=0.9 * 1000)
    with pytest.raises(ValueError, match="ratio"):
        HedgeBudget(ratio=2)
    with pytest.raises(ValueError, match="max_tokens"):
        HedgeBudget(max_tokens=0)


# -- the race -----------------------------------------------------------------------------------


async def test_a_fast_answer_is_not_hedged(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.005, OK), "b": (0.001, OK)})
    budget = _rich_budget()
    reply = await hedged(READ, nodes.attempt, 0.010, budget)
    assert reply.node == "a"
    assert nodes.started == ["a"]
    assert budget.hedges == 0
    assert trio.current_time() == pytest.approx(0.005)


async def test_a_slow_answer_is_backed_up_and_the_loser_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (1.0, OK), "b": (0.005, OK)})
    budget = _rich_budget()
    reply = await hedged(READ, nodes.attempt, 0.010, budget)
    assert reply.node == "b"
    assert trio.current_time() == pytest.approx(0.015)
    assert nodes.started == ["a", "b"]
    assert nodes.cancelled == ["a"]
    assert (budget.hedges, budget.wins) == (1, 1)


async def test_the_first_attempt_can_still_win(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.012, OK), "b": (0.050, OK)})
    budget = _rich_budget()
    reply = await hedged(READ, nodes.attempt, 0.010, budget)
    assert reply.node == "a"
    assert nodes.cancelled == ["b"]
    assert (budget.hedges, budget.wins) == (1, 0)


@pytest.mark.parametrize("call", [WRITE, PINNED], ids=["write", "pinned"])
async def test_writes_and_pinned_calls_are_never_hedged(
    autojump_clock: trio.testing.MockClock, call: object
) -> None:
    nodes = FakeNodes({"a": (1.0, OK), "b": (0.001, OK)})
    budget = _rich_budget()
    reply = await hedged(call, nodes.attempt, 0.010, budget)  # type: ignore[arg-type]
    assert reply.node == "a"
    assert nodes.started == ["a"]
    assert budget.calls == 101  # but they earn budget


async def test_no_delay_means_no_hedge(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (1.0, OK), "b": (0.001, OK)})
    reply = await hedged(READ, nodes.attempt, None, _rich_budget())
    assert reply.node == "a"


async def test_an_empty_budget_waits_for_the_first_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (1.0, OK), "b": (0.001, OK)})
    budget = HedgeBudget()
    reply = await hedged(READ, nodes.attempt, 0.010, budget)
    assert reply.node == "a"
    assert nodes.started == ["a"]
    assert budget.denied == 1


async def test_a_fast_failure_is_backed_up_at_once(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.002, LOCAL), "b": (0.003, OK)})
    reply = await hedged(READ, nodes.attempt, 0.010, _rich_budget())
    assert reply.node == "b"
    assert trio.current_time() == pytest.approx(0.005)  # no waiting out the delay


async def test_a_failure_does_not_win_the_race(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.100, OK), "b": (0.001, UPSTREAM)})
    reply = await hedged(READ, nodes.attempt, 0.010, _rich_budget())
    assert reply.node == "a"
    assert trio.current_time() == pytest.approx(0.100)
    assert nodes.cancelled == []


async def test_an_app_error_wins(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.100, OK), "b": (0.001, Outcome.APP_ERROR)})
    reply = await hedged(READ, nodes.attempt, 0.010, _rich_budget())
    assert (reply.node, reply.outcome) == ("b", Outcome.APP_ERROR)


async def test_when_both_fail_the_node_failure_is_returned(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (0.020, UPSTREAM), "b": (0.001, LOCAL)})
    reply = await hedged(READ, nodes.attempt, 0.010, _rich_budget())
    assert (reply.node, reply.outcome) == ("a", UPSTREAM)
    lonely = FakeNodes({"a": (0.020, UPSTREAM)})  # the backup finds no node: REJECTED
    reply = await hedged(READ, lonely.attempt, 0.010, _rich_budget())
    assert (reply.node, reply.outcome) == ("a", UPSTREAM)


async def test_an_exception_in_an_attempt_propagates_unwrapped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async def broken(tried: set[str]) -> Reply:
        await trio.sleep(0.001)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        await hedged(READ, broken, 0.010, _rich_budget())


async def test_cancelling_the_caller_cancels_both_attempts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (1.0, OK), "b": (1.0, OK)})
    with trio.move_on_after(0.5):
        await hedged(READ, nodes.attempt, 0.010, _rich_budget())
    assert sorted(nodes.cancelled) == ["a", "b"]


@settings(max_examples=40, deadline=None)
@given(
    latencies=st.lists(
        st.tuples(st.floats(0.0005, 0.05), st.floats(0.0005, 0.05), st.booleans()),
        min_size=1,
        max_size=60,
    )
)
def test_hedges_through_the_race_never_exceed_the_budget(
    latencies: list[tuple[float, float, bool]],
) -> None:
    """Concurrent calls through ``hedged``: hedges sent <= 15 % of calls at every moment."""
    budget = HedgeBudget()
    sent = 0

    async def main() -> None:
        async def one(first: float, second: float, fails: bool) -> None:
            nonlocal sent
            nodes = FakeNodes({"a": (first, LOCAL if fails else OK), "b": (second, OK)})

            async def counting(tried: set[str]) -> Reply:
                nonlocal sent
                if tried:  # a backup
                    sent += 1
                    assert sent <= int(0.15 * budget.calls + 1e-9)
                return await nodes.attempt(tried)

            await hedged(READ, counting, 0.005, budget)

        async with trio.open_nursery() as nursery:
            for first, second, fails in latencies:
                nursery.start_soon(one, first, second, fails)
                await trio.sleep(0.001)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert sent == budget.hedges <= int(0.15 * budget.calls + 1e-9)
