"""Backup requests: the budget and the delay from the latencies counted (the race itself is the
HA engine's: ``test_engine.py``)."""

from __future__ import annotations

from bisect import bisect_right

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resmesh.policies.hedge import (
    HedgeBudget,
    HedgeConfig,
    HedgeDelay,
    HedgeDelayStatistics,
    hedge_delay,
)
from resmesh.policies.window import BUCKET_EDGES

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


class _Counted:
    """Cumulative calls per latency bucket, kept as the metrics keep them."""

    def __init__(self) -> None:
        self.counts = [0] * (len(BUCKET_EDGES) + 1)

    def record(self, seconds: float, calls: int = 1) -> None:
        self.counts[bisect_right(BUCKET_EDGES, seconds)] += calls

    def __call__(self) -> list[int]:
        return list(self.counts)


def test_delay_is_the_p90_with_a_floor_and_none_on_a_cold_start() -> None:
    counted = _Counted()
    assert hedge_delay(counted()) is None
    assert hedge_delay(counted(), initial_delay=0.05) == 0.05
    counted.record(0.001, 90)
    counted.record(0.040, 10)
    assert hedge_delay(counted()) == 0.010  # p90 ~ 1 ms: the 10 ms floor
    assert hedge_delay(counted(), percentile=95) == pytest.approx(0.040, rel=1 / 32)
    counted.record(0.030, 100)  # now 90 x 1 ms, 100 x 30 ms, 10 x 40 ms
    assert hedge_delay(counted()) == pytest.approx(0.030, rel=1 / 32)


def test_hedge_delay_is_cached_for_its_refresh_period() -> None:
    counted = _Counted()
    delay = HedgeDelay(HedgeConfig(min_samples=5, refresh=1.0), counted)
    assert delay.delay(0.0) is None  # the first reading: the window's base
    counted.record(0.050, 4)
    for _ in range(4):
        assert delay.delay(0.2) is None  # cold, and too few calls to read again
    counted.record(0.050, 6)
    # Cold, and min_samples calls started: read at once, not at the next refresh (1.0).
    assert delay.delay(0.5) == pytest.approx(0.050, rel=1 / 32)
    counted.record(0.200, 20)
    assert delay.delay(0.9) == pytest.approx(0.050, rel=1 / 32)  # warm: cached until 1.5
    assert delay.delay(1.5) == pytest.approx(0.200, rel=1 / 32)
    assert delay.statistics() == HedgeDelayStatistics(delay.delay(1.5), 30, 1.5)
    fixed = HedgeDelay(HedgeConfig(fixed_delay=0.02), counted)
    assert fixed.delay(0.0) == 0.02


def test_hedge_delay_follows_the_last_window_of_latencies() -> None:
    """A node slowed down for a while: once its slow calls are more than ``window`` seconds
    old, the delay is the fast calls' again."""
    counted = _Counted()
    delay = HedgeDelay(HedgeConfig(min_samples=10, refresh=1.0, window=10.0), counted)
    assert delay.delay(0.0) is None
    counted.record(0.300, 100)
    assert delay.delay(1.0) == pytest.approx(0.300, rel=1 / 32)
    for second in range(2, 10):
        counted.record(0.020, 10)
        delay.delay(float(second))
    counted.record(0.020, 10)
    assert delay.delay(10.0) == pytest.approx(0.300, rel=1 / 32)  # ended within 10 s
    counted.record(0.020, 10)
    assert delay.delay(11.0) == pytest.approx(0.020, rel=1 / 32)
    assert delay.statistics().samples == 100


def test_hedge_delay_without_counts_is_the_initial_one() -> None:
    """The metrics are off (nothing is counted): the configured initial delay, or none."""
    assert HedgeDelay(HedgeConfig(initial_delay=0.03)).delay(0.0) == 0.03
    assert HedgeDelay(HedgeConfig()).delay(0.0) is None


def test_counts_that_go_down_start_the_readings_over() -> None:
    """A node left the cluster and its counts with it: the delay in force stays, and the
    next computation reads only what came after."""
    counted = _Counted()
    delay = HedgeDelay(HedgeConfig(min_samples=5, refresh=1.0), counted)
    delay.delay(0.0)
    counted.record(0.100, 50)
    assert delay.delay(1.0) == pytest.approx(0.100, rel=1 / 32)
    counted.counts = [0] * len(counted.counts)
    counted.record(0.020, 5)
    assert delay.delay(2.0) == pytest.approx(0.100, rel=1 / 32)  # kept, readings restarted
    counted.record(0.020, 5)
    assert delay.delay(3.0) == pytest.approx(0.020, rel=1 / 32)
    assert delay.statistics().samples == 5


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="percentile"):
        HedgeConfig(percentile=0.9 * 1000)
    with pytest.raises(ValueError, match="ratio"):
        HedgeBudget(ratio=2)
    with pytest.raises(ValueError, match="max_tokens"):
        HedgeBudget(max_tokens=0)
