"""The per-node circuit breaker: trips, probes and recovery, against a reference model."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from resmesh.call import Outcome
from resmesh.policies.breaker import BreakerConfig, BreakerState, CircuitBreaker

OK, APP, UPSTREAM, LOCAL, REJECTED = (
    Outcome.OK,
    Outcome.APP_ERROR,
    Outcome.UPSTREAM_ERROR,
    Outcome.LOCAL_ERROR,
    Outcome.REJECTED,
)


def _feed(
    breaker: CircuitBreaker, outcomes: list[Outcome], now: float, latency: float = 0.001
) -> None:
    for outcome in outcomes:
        assert breaker.allow(now)
        breaker.record(outcome, latency, now)


def _state(breaker: CircuitBreaker) -> BreakerState:
    """The stored state (a function, so mypy does not narrow it between assertions)."""
    return breaker.state


def test_defaults_come_from_the_anchors() -> None:
    config = BreakerConfig()
    assert (config.error_ratio, config.min_calls, config.window, config.buckets) == (
        0.5,
        20,
        10.0,
        10,
    )
    assert (config.consecutive_failures, config.open_for, config.half_open_probes) == (
        10,
        5.0,
        1,
    )
    assert config.slow_call is None


def test_trips_on_error_ratio_only_with_the_minimum_volume() -> None:
    breaker = CircuitBreaker()
    # 9 failures interleaved with successes: 50 % but only 18 calls.
    _feed(breaker, [UPSTREAM, OK] * 9, now=1.0)
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [OK], now=1.0)
    _feed(breaker, [LOCAL], now=1.0)  # 10 / 20 = 50 %
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason == "error ratio 50% >= 50% over 20 calls"
    assert not breaker.allow(1.0)


def test_app_errors_are_successes_and_rejections_are_ignored() -> None:
    breaker = CircuitBreaker()
    _feed(breaker, [APP] * 100, now=1.0)
    _feed(breaker, [REJECTED] * 100, now=1.0)
    _feed(breaker, [UPSTREAM] * 9 + [APP], now=1.0)  # APP_ERROR resets the streak
    _feed(breaker, [UPSTREAM] * 9, now=1.0)
    assert _state(breaker) is BreakerState.CLOSED
    stats = breaker.statistics(1.0)
    assert (stats.calls, stats.failures) == (119, 18)


def test_trips_on_consecutive_failures_whatever_the_volume() -> None:
    breaker = CircuitBreaker(BreakerConfig(min_calls=1000))
    _feed(breaker, [OK] * 100 + [UPSTREAM] * 9, now=1.0)
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [LOCAL], now=1.0)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason == "10 consecutive failures"


def test_transitions_are_counted_by_the_state_reached() -> None:
    breaker = CircuitBreaker(BreakerConfig(consecutive_failures=3))
    _feed(breaker, [LOCAL] * 3, now=1.0)
    open_for = breaker.config.open_for
    _feed(breaker, [LOCAL], now=1.0 + open_for)  # a probe that fails: open again
    _feed(breaker, [OK], now=1.0 + 2.5 * open_for)  # a probe that succeeds: closed
    assert (breaker.trips, breaker.half_opens, breaker.recoveries) == (2, 2, 1)


def test_old_failures_leave_the_window() -> None:
    breaker = CircuitBreaker()
    _feed(breaker, [UPSTREAM, OK] * 9, now=0.5)
    # 10 s later those 18 calls have left the window: 2 more failures are 2 of 2 calls.
    _feed(breaker, [OK, UPSTREAM, UPSTREAM], now=10.5)
    assert _state(breaker) is BreakerState.CLOSED
    assert breaker.statistics(10.5).calls == 3


def test_slow_ratio() -> None:
    config = BreakerConfig(slow_call=0.1, slow_ratio=0.8, min_calls=10)
    breaker = CircuitBreaker(config)
    _feed(breaker, [OK] * 2, now=1.0)
    _feed(breaker, [OK] * 7, now=1.0, latency=0.2)
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [OK], now=1.0, latency=0.100)  # not slow: must exceed the duration
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [APP], now=1.0, latency=5.0)  # 8 of 11 slow = 73 %
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [OK] * 3, now=1.0, latency=5.0)  # 9/12, 10/13, 11/14 = 79 %
    assert _state(breaker) is BreakerState.CLOSED
    _feed(breaker, [OK], now=1.0, latency=5.0)  # 12 of 15 = 80 %
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason.startswith("slow-call ratio 80% >= 80% over 15 calls")


def test_open_then_half_open_with_one_probe_then_closed() -> None:
    breaker = CircuitBreaker()
    _feed(breaker, [UPSTREAM] * 10, now=1.0)
    assert breaker.statistics(1.0).retry_at == 6.0
    assert not breaker.allow(5.99)
    assert breaker.state_at(6.0) is BreakerState.HALF_OPEN
    assert breaker.allow(6.0)  # the probe
    assert _state(breaker) is BreakerState.HALF_OPEN
    assert not breaker.allow(6.1)  # one probe at a time
    breaker.record(OK, 0.001, 6.2)
    assert _state(breaker) is BreakerState.CLOSED
    stats = breaker.statistics(6.2)
    assert (stats.calls, stats.consecutive_failures, stats.trips, stats.rejected) == (0, 0, 1, 2)


def test_a_failed_or_slow_probe_reopens() -> None:
    breaker = CircuitBreaker(BreakerConfig(slow_call=0.5))
    _feed(breaker, [LOCAL] * 10, now=0.0)
    assert breaker.allow(5.0)
    breaker.record(LOCAL, 0.001, 5.5)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason == "probe failed"
    assert not breaker.allow(10.0)  # open again for 5 s from the probe's failure
    assert breaker.allow(10.5)
    breaker.record(OK, 0.9, 10.9)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.reason == "probe slow"


def test_a_probe_that_never_reached_the_node_frees_its_slot() -> None:
    breaker = CircuitBreaker(BreakerConfig(half_open_probes=2))
    _feed(breaker, [LOCAL] * 10, now=0.0)
    assert breaker.allow(5.0)
    assert breaker.allow(5.0)
    assert not breaker.allow(5.0)
    breaker.release()  # cancelled
    assert breaker.allow(5.0)
    breaker.record(REJECTED, 0.0, 5.0)  # refused further on: same as release
    assert breaker.allow(5.0)
    assert breaker.statistics(5.0).probes_in_flight == 2
    breaker.record(OK, 0.001, 5.1)
    assert _state(breaker) is BreakerState.CLOSED


def test_results_arriving_while_open_are_ignored() -> None:
    breaker = CircuitBreaker()
    _feed(breaker, [LOCAL] * 10, now=0.0)
    breaker.record(OK, 0.001, 1.0)
    breaker.record(LOCAL, 0.001, 1.0)
    assert _state(breaker) is BreakerState.OPEN
    assert breaker.opened_at == 0.0


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("error_ratio", 0.0),
        ("slow_ratio", 1.5),
        ("slow_call", 0.0),
        ("min_calls", 0),
        ("consecutive_failures", -1),
        ("open_for", 0.0),
        ("half_open_probes", 0),
        ("buckets", 0),
    ],
)
def test_config_validation(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field.split("_")[0]):
        BreakerConfig(**{field: value})  # type: ignore[arg-type]


# -- the state machine against a reference model ------------------------------------------------

MODEL_CONFIG = BreakerConfig(
    error_ratio=0.5,
    slow_call=0.1,
    slow_ratio=0.75,
    min_calls=6,
    window=4.0,
    buckets=4,
    consecutive_failures=4,
    open_for=2.0,
    half_open_probes=2,
)


class ReferenceBreaker:
    """The breaker's rules written out naively: a list of (bucket, failed, slow) events."""

    def __init__(self, config: BreakerConfig) -> None:
        self.config = config
        self.state = "closed"
        self.events: list[tuple[int, bool, bool]] = []
        self.newest = -(10**9)
        self.streak = 0
        self.opened_at = 0.0
        self.probes = 0

    def _bucket(self, now: float) -> int:
        self.newest = max(self.newest, int(now * self.config.buckets / self.config.window))
        return self.newest

    def allow(self, now: float) -> bool:
        if self.state == "closed":
            return True
        if self.state == "open":
            if now - self.opened_at < self.config.open_for:
                return False
            self.state = "half_open"
            self.probes = 0
        if self.probes < self.config.half_open_probes:
            self.probes += 1
            return True
        return False

    def _open(self, now: float) -> None:
        self.state, self.opened_at, self.probes, self.streak = "open", now, 0, 0

    def record(self, outcome: Outcome, latency: float, now: float) -> None:
        if outcome is Outcome.REJECTED:
            self.release()
            return
        failed = outcome in (Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR)
        slow = self.config.slow_call is not None and (latency > self.config.slow_call)
        if self.state == "half_open":
            if failed or slow:
                self._open(now)
            else:
                self.state, self.probes, self.streak, self.events = "closed", 0, 0, []
                self.newest = -(10**9)
            return
        if self.state == "open":
            return
        bucket = self._bucket(now)
        self.events.append((bucket, failed, slow))
        self.streak = self.streak + 1 if failed else 0
        if self.streak >= self.config.consecutive_failures:
            self._open(now)
            return
        live = [e for e in self.events if e[0] > bucket - self.config.buckets]
        total = len(live)
        if (failed or slow) and total >= self.config.min_calls:
            failures = sum(1 for e in live if e[1])
            slows = sum(1 for e in live if e[2])
            if Fraction(failures, total) >= Fraction(self.config.error_ratio) or (
                slow and Fraction(slows, total) >= Fraction(self.config.slow_ratio)
            ):
                self._open(now)

    def release(self) -> None:
        if self.state == "half_open" and self.probes > 0:
            self.probes -= 1


class BreakerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.breaker = CircuitBreaker(MODEL_CONFIG)
        self.model = ReferenceBreaker(MODEL_CONFIG)
        self.outstanding = 0  # allowed calls not yet reported

    @rule(dt=st.sampled_from([0.0, 0.0, 0.25, 0.5, 1.0, 2.0, 5.0]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule()
    def allow(self) -> None:
        allowed = self.breaker.allow(self.now)
        assert allowed == self.model.allow(self.now)
        self.outstanding += allowed

    @rule(
        outcome=st.sampled_from(list(Outcome)),
        latency=st.sampled_from([0.001, 0.05, 0.1, 0.2, 1.0]),
    )
    def record(self, outcome: Outcome, latency: float) -> None:
        # Results may also arrive for calls sent before a trip: report whatever.
        self.outstanding = max(0, self.outstanding - 1)
        self.breaker.record(outcome, latency, self.now)
        self.model.record(outcome, latency, self.now)

    @rule()
    def release(self) -> None:
        self.breaker.release()
        self.model.release()

    @invariant()
    def same_state(self) -> None:
        assert self.breaker.state.name.lower() == self.model.state
        if self.model.state == "half_open":
            assert self.breaker.probes_in_flight == self.model.probes
            assert self.breaker.probes_in_flight <= MODEL_CONFIG.half_open_probes
        if self.model.state == "open":
            assert self.breaker.opened_at == self.model.opened_at


TestBreakerMachine = BreakerMachine.TestCase
TestBreakerMachine.settings = settings(max_examples=200, stateful_step_count=60, deadline=None)


def test_an_error_ratio_reached_exactly_trips() -> None:
    """7 failures in 100 calls reach 0.07 (in floats, 0.07 x 100 is 7.000000000000001)."""
    breaker = CircuitBreaker(BreakerConfig(error_ratio=0.07, min_calls=100, consecutive_failures=0))
    for i in range(93):
        breaker.record(Outcome.OK, 0.001, i * 0.01)
    for i in range(7):
        breaker.record(Outcome.UPSTREAM_ERROR, 0.001, 1.0 + i * 0.01)
    assert breaker.state is BreakerState.OPEN
