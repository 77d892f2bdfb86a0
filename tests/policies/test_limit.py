"""Token buckets, concurrency caps and the per-cluster/per-operation limiter."""

from __future__ import annotations

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resmesh.policies.limit import (
    ConcurrencyLimit,
    LimitConfig,
    Limiter,
    LimiterConfig,
    TokenBucket,
)


def test_bucket_defaults_to_a_burst_of_twice_the_rate() -> None:
    bucket = TokenBucket(rate=10.0)
    assert bucket.burst == 20.0
    assert sum(bucket.try_take(0.0) for _ in range(25)) == 20
    assert TokenBucket(rate=0.1).burst == 1.0  # floored at one call


def test_bucket_refills_at_its_rate_up_to_the_burst() -> None:
    bucket = TokenBucket(rate=10.0, burst=5.0)
    assert all(bucket.try_take(0.0) for _ in range(5))
    assert not bucket.try_take(0.0)
    assert not bucket.try_take(0.05)  # half a token
    assert bucket.try_take(0.1)
    assert bucket.tokens(100.0) == 5.0
    assert bucket.try_take(100.0, n=5.0)
    assert not bucket.try_take(100.0)
    stats = bucket.statistics(100.0)
    assert (stats.admitted, stats.rejected, stats.tokens) == (7, 3, 0.0)


def test_bucket_ignores_time_running_backwards() -> None:
    bucket = TokenBucket(rate=1.0, burst=1.0, now=10.0)
    assert bucket.try_take(10.0)
    assert not bucket.try_take(5.0)
    assert not bucket.try_take(10.5)
    assert bucket.try_take(11.0)


@pytest.mark.parametrize(("rate", "burst"), [(0.0, None), (-1.0, None), (1.0, 0.0)])
def test_bucket_rejects_non_positive_settings(rate: float, burst: float | None) -> None:
    with pytest.raises(ValueError, match="must be > 0"):
        TokenBucket(rate, burst)


@settings(max_examples=300)
@given(
    rate=st.floats(0.5, 1000.0),
    burst=st.one_of(st.none(), st.floats(1.0, 100.0)),
    takes=st.lists(st.tuples(st.floats(0.0, 0.5), st.sampled_from([1.0, 1.0, 2.0])), max_size=80),
)
def test_bucket_never_admits_more_than_rate_times_t_plus_burst(
    rate: float, burst: float | None, takes: list[tuple[float, float]]
) -> None:
    """In every interval [t_i, t_j] the tokens admitted are <= rate x (t_j - t_i) + burst."""
    bucket = TokenBucket(rate, burst)
    now = 0.0
    admitted: list[tuple[float, float]] = []
    for step, n in takes:
        now += step
        if bucket.try_take(now, n):
            admitted.append((now, n))
    for i in range(len(admitted)):
        total = 0.0
        for j in range(i, len(admitted)):
            total += admitted[j][1]
            bound = rate * (admitted[j][0] - admitted[i][0]) + bucket.burst
            assert total <= bound + 1e-6 * bound


def test_concurrency_limit() -> None:
    cap = ConcurrencyLimit(2)
    assert cap.try_enter()
    assert cap.try_enter()
    assert not cap.try_enter()
    cap.leave()
    assert cap.try_enter()
    cap.limit = 1  # lowered at run time: refuses until enough leave
    cap.leave()
    assert not cap.try_enter()
    cap.leave()
    assert cap.try_enter()
    cap.leave()
    cap.leave()  # never below zero
    assert cap.statistics().in_flight == 0
    with pytest.raises(ValueError, match=">= 1"):
        ConcurrencyLimit(0)


def _limiter() -> Limiter:
    return Limiter(
        "feed-cache",
        LimiterConfig(
            cluster=LimitConfig(rate=1000.0, concurrency=64),
            operations={
                "GET": LimitConfig(rate=100.0, burst=2.0, concurrency=8),
                "SET": LimitConfig(concurrency=1),
            },
        ),
    )


def test_limiter_names_the_limit_it_refuses_for() -> None:
    limiter = _limiter()
    assert limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) == "rate limit of feed-cache GET (100/s) exceeded"
    assert limiter.admit("SET", 0.0) is None
    assert limiter.admit("SET", 0.0) == "concurrency limit of feed-cache SET (1) exceeded"
    limiter.done("SET")
    assert limiter.admit("SET", 0.0) is None

    tight = Limiter("c", LimiterConfig(cluster=LimitConfig(rate=1.0, burst=1.0, concurrency=1)))
    assert tight.admit("X", 0.0) is None
    assert tight.admit("X", 0.0) == "concurrency limit of cluster c (1) exceeded"
    tight.done("X")
    assert tight.admit("X", 0.0) == "rate limit of cluster c (1/s) exceeded"
    assert tight.admit("X", 1.0) is None


def test_limiter_gives_back_what_a_later_limit_refused() -> None:
    limiter = Limiter(
        "c",
        LimiterConfig(
            cluster=LimitConfig(rate=1.0, burst=2.0, concurrency=10),
            operations={"GET": LimitConfig(rate=1.0, burst=1.0, concurrency=10)},
        ),
    )
    assert limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) == "rate limit of c GET (1/s) exceeded"
    # The cluster token and both slots taken for the refused call were returned.
    stats = limiter.statistics(0.0)
    assert stats.cluster.rate is not None and stats.cluster.rate.tokens == 1.0
    assert stats.cluster.concurrency is not None and stats.cluster.concurrency.in_flight == 1
    assert stats.cluster.concurrency.admitted == 1
    assert stats.operations[0].concurrency is not None
    assert stats.operations[0].concurrency.in_flight == 1
    assert limiter.admit("SET", 0.0) is None  # the cluster token is still there


def test_limiter_without_limits_admits_everything() -> None:
    limiter = Limiter("c", LimiterConfig())
    assert all(limiter.admit("GET", 0.0) is None for _ in range(10_000))
    limiter.done("GET")
    stats = limiter.statistics(0.0)
    assert stats.cluster.rate is None and stats.cluster.concurrency is None


def test_limiter_reconfigure_keeps_in_flight_and_tokens() -> None:
    limiter = _limiter()
    for _ in range(2):
        assert limiter.admit("GET", 0.0) is None
    limiter.reconfigure(
        LimiterConfig(
            cluster=LimitConfig(rate=1000.0, concurrency=64),
            operations={"GET": LimitConfig(rate=100.0, burst=10.0, concurrency=3)},
        ),
        now=0.0,
    )
    # The bucket was empty; the change of burst is no free burst.
    assert limiter.admit("GET", 0.0) == "rate limit of feed-cache GET (100/s) exceeded"
    assert limiter.admit("GET", 0.01) is None  # 3 in flight now
    assert limiter.admit("GET", 1.0) == "concurrency limit of feed-cache GET (3) exceeded"
    limiter.done("GET")
    assert limiter.admit("GET", 1.0) is None
    assert [s.name for s in limiter.statistics(1.0).operations] == ["GET"]


class LimiterModel(RuleBasedStateMachine):
    """Concurrency accounting stays exact and rates stay within rate x t + burst, whatever
    the interleaving of admits, completions and time."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0
        self.limiter = Limiter(
            "c",
            LimiterConfig(
                cluster=LimitConfig(rate=20.0, burst=5.0, concurrency=6),
                operations={
                    "GET": LimitConfig(rate=10.0, burst=3.0, concurrency=4),
                    "SET": LimitConfig(concurrency=2),
                },
            ),
        )
        self.in_flight: list[str] = []
        self.admitted_at: dict[str, list[float]] = {"cluster": [], "GET": []}

    @rule(dt=st.sampled_from([0.0, 0.0, 0.01, 0.1, 0.5]))
    def tick(self, dt: float) -> None:
        self.now += dt

    @rule(operation=st.sampled_from(["GET", "SET", "DEL"]))
    def admit(self, operation: str) -> None:
        if self.limiter.admit(operation, self.now) is None:
            self.in_flight.append(operation)
            self.admitted_at["cluster"].append(self.now)
            if operation == "GET":
                self.admitted_at["GET"].append(self.now)

    @precondition(lambda self: self.in_flight)
    @rule(index=st.integers(0, 100))
    def finish(self, index: int) -> None:
        operation = self.in_flight.pop(index % len(self.in_flight))
        self.limiter.done(operation)

    @invariant()
    def caps_hold_and_count_exactly(self) -> None:
        stats = self.limiter.statistics(self.now)
        assert stats.cluster.concurrency is not None
        assert stats.cluster.concurrency.in_flight == len(self.in_flight) <= 6
        by_name = {s.name: s for s in stats.operations}
        for name, cap in (("GET", 4), ("SET", 2)):
            concurrency = by_name[name].concurrency
            assert concurrency is not None
            assert concurrency.in_flight == self.in_flight.count(name) <= cap

    @invariant()
    def rates_hold(self) -> None:
        for name, rate, burst in (("cluster", 20.0, 5.0), ("GET", 10.0, 3.0)):
            times = self.admitted_at[name]
            for i in range(len(times)):
                for j in range(i, len(times)):
                    assert j - i + 1 <= rate * (times[j] - times[i]) + burst + 1e-9


TestLimiterModel = LimiterModel.TestCase
TestLimiterModel.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)


def test_admit_batch_is_all_or_nothing_and_counts_every_call() -> None:
    config = LimiterConfig(
        cluster=LimitConfig(rate=100.0, burst=20.0, concurrency=30),
        operations={"GET": LimitConfig(rate=100.0, burst=10.0)},
    )
    limiter = Limiter("c", config)
    assert limiter.admit_batch({"GET": 8}, 8, 0.0)
    # 8 in flight; the operation bucket holds 2: a batch of 5 is refused whole, nothing taken.
    assert not limiter.admit_batch({"GET": 5}, 5, 0.0)
    assert limiter.admit("GET", 0.0) is None and limiter.admit("GET", 0.0) is None
    assert limiter.admit("GET", 0.0) is not None  # the operation's bucket is empty now
    stats = limiter.statistics(0.0)
    cluster_cap = stats.cluster.concurrency
    assert cluster_cap is not None and cluster_cap.in_flight == 10
    # The cluster bucket gave back what the refused batch and the refused call had taken.
    cluster_bucket = stats.cluster.rate
    assert cluster_bucket is not None and (cluster_bucket.admitted, cluster_bucket.tokens) == (
        10,
        10.0,
    )
    limiter.done_batch({"GET": 8}, 8)
    limiter.done("GET")
    limiter.done("GET")
    stats = limiter.statistics(0.0)
    assert stats.cluster.concurrency is not None and stats.cluster.concurrency.in_flight == 0


def test_admit_batch_respects_concurrency_caps() -> None:
    limiter = Limiter("c", LimiterConfig(cluster=LimitConfig(concurrency=10)))
    assert limiter.admit_batch({"SET": 10}, 10, 0.0)
    assert not limiter.admit_batch({"SET": 1}, 1, 0.0)
    limiter.done_batch({"SET": 10}, 10)
    assert limiter.admit_batch({"SET": 10}, 10, 0.0)


def test_admit_batch_of_mixed_operations_checks_each_operation_and_the_cluster() -> None:
    config = LimiterConfig(
        cluster=LimitConfig(rate=1000.0, burst=100.0, concurrency=20),
        operations={
            "GET": LimitConfig(rate=100.0, burst=4.0),
            "SET": LimitConfig(concurrency=3),
        },
    )
    limiter = Limiter("c", config)
    # 4 GETs fit the GET bucket, 3 SETs the SET cap, 9 more of other commands the cluster.
    assert limiter.admit_batch({"GET": 4, "SET": 3, "INCR": 9}, 16, 0.0)
    assert not limiter.admit_batch({"GET": 1}, 1, 0.0)  # GET bucket empty
    assert not limiter.admit_batch({"SET": 1}, 1, 0.0)  # SET cap full
    assert not limiter.admit_batch({"INCR": 5}, 5, 0.0)  # cluster cap: 16 + 5 > 20
    assert limiter.admit_batch({"INCR": 4}, 4, 0.0)
    stats = limiter.statistics(0.0)
    assert stats.cluster.concurrency is not None and stats.cluster.concurrency.in_flight == 20
    assert stats.cluster.rate is not None and stats.cluster.rate.admitted == 20
    assert stats.cluster.rate.tokens == 80.0  # the refused batches took nothing
    limiter.done_batch({"GET": 4, "SET": 3, "INCR": 9}, 16)
    limiter.done_batch({"INCR": 4}, 4)
    assert limiter.admit("SET", 0.0) is None  # the SET cap was released
    stats = limiter.statistics(0.0)
    assert stats.cluster.concurrency is not None and stats.cluster.concurrency.in_flight == 1


async def test_a_steady_stream_at_exactly_the_rate_is_always_admitted(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Float refills can fall 1e-16 short of a token; refusing then lost that fraction for
    good once the bucket was capped at its burst (75 % got through)."""
    bucket = TokenBucket(rate=10, burst=1, now=trio.current_time())
    admitted = 0
    for _ in range(1000):
        admitted += bucket.try_take(trio.current_time())
        await trio.sleep(0.1)
    assert admitted == 1000
