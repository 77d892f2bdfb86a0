"""Backup requests: the budget and the delay from the latency window (the race itself is the
HA engine's: ``test_engine.py``)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resmesh.policies.hedge import HedgeBudget, HedgeConfig, HedgeDelay, hedge_delay
from resmesh.policies.window import RollingHistogram

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
