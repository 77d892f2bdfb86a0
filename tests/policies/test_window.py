"""Rolling counters and latency histograms (resmesh/policies/window.py)."""

from __future__ import annotations

import math
from bisect import bisect_right

import pytest
from hypothesis import given
from hypothesis import strategies as st

from resmesh.policies.window import (
    _BUCKETS,
    _MAX_MICROS,
    BUCKET_EDGES,
    HistogramStatistics,
    LatencyHistogram,
    RollingCounter,
    RollingCounterStatistics,
    _bucket_of,
    _upper_of,
    percentile_of_buckets,
)


def test_counter_counts_and_sums() -> None:
    counter = RollingCounter(window=10.0, buckets=10)
    counter.add(0.1)
    counter.add(0.2, failure=True)
    counter.add(0.3, slow=True)
    counter.add(1.5, failure=True, slow=True)
    assert (counter.total, counter.failures, counter.slow) == (4, 2, 2)
    assert counter.statistics() == RollingCounterStatistics(10.0, 10, 4, 2, 2)


def test_counter_drops_whole_buckets_as_the_window_moves() -> None:
    counter = RollingCounter(window=10.0, buckets=10)
    counter.add(0.5, failure=True)  # bucket 0
    counter.add(3.5)  # bucket 3
    counter.advance(9.99)  # window = buckets 0..9
    assert counter.total == 2
    counter.advance(10.0)  # bucket 0 leaves
    assert (counter.total, counter.failures) == (1, 0)
    counter.advance(13.99)  # buckets 4..13: bucket 3 has left
    assert counter.total == 0


def test_counter_idle_for_longer_than_the_window_forgets_everything() -> None:
    counter = RollingCounter(window=1.0, buckets=4)
    for i in range(8):
        counter.add(i * 0.1, failure=True, slow=True)
    counter.add(1000.0)
    assert (counter.total, counter.failures, counter.slow) == (1, 0, 0)


def test_counter_late_timestamps_go_to_the_newest_bucket() -> None:
    counter = RollingCounter(window=10.0, buckets=10)
    counter.add(5.0)
    counter.add(2.0, failure=True)  # out of order: never rewinds the window
    counter.advance(14.5)  # bucket 5 (holding both) is still in the window
    assert (counter.total, counter.failures) == (2, 1)
    counter.advance(15.0)
    assert counter.total == 0


def test_counter_reset() -> None:
    counter = RollingCounter()
    counter.add(1.0, failure=True)
    counter.reset()
    assert counter.statistics(1.0) == RollingCounterStatistics(10.0, 10, 0, 0, 0)
    counter.add(1.0)
    assert counter.total == 1


@pytest.mark.parametrize(("window", "buckets"), [(0.0, 10), (-1.0, 10), (10.0, 0)])
def test_counter_rejects_bad_shapes(window: float, buckets: int) -> None:
    with pytest.raises(ValueError, match="window"):
        RollingCounter(window, buckets)


@given(
    buckets=st.integers(1, 12),
    events=st.lists(
        st.tuples(st.floats(0.0, 3.0), st.booleans(), st.booleans()), min_size=1, max_size=60
    ),
)
def test_counter_matches_a_naive_model(
    buckets: int, events: list[tuple[float, bool, bool]]
) -> None:
    """The running sums equal a recount of the events whose bucket is still in the window."""
    window = 2.0
    counter = RollingCounter(window, buckets)
    now = 0.0
    seen: list[tuple[int, bool, bool]] = []
    newest = -(10**9)
    for step, failure, slow in events:
        now += step
        # The implementation multiplies by 1/width; agree with it on the bucket of a boundary.
        epoch = int(now * (buckets / window))
        newest = max(newest, epoch)
        seen.append((newest, failure, slow))
        counter.add(now, failure, slow)
        live = [e for e in seen if e[0] > newest - buckets]
        assert counter.total == len(live)
        assert counter.failures == sum(f for _, f, _ in live)
        assert counter.slow == sum(s for _, _, s in live)


# -- LatencyHistogram ---------------------------------------------------------------------------


def test_histogram_buckets_tile_the_range() -> None:
    """Every bucket holds the values from the previous bucket's top + 1 to its own top."""
    assert _bucket_of(0) == 0
    for index in range(_BUCKETS - 1):
        top = _upper_of(index)
        assert _bucket_of(top) == index
        assert _bucket_of(top + 1) == index + 1
        width = _upper_of(index + 1) - top
        assert width <= max(1, (top + 1) // 32)  # ~3 % precision
    assert _upper_of(_BUCKETS - 1) == _MAX_MICROS == 67_108_863
    assert _bucket_of(_MAX_MICROS) == _BUCKETS - 1


@given(st.integers(0, _MAX_MICROS))
def test_recording_uses_the_same_bucket_as_the_reference(micros: int) -> None:
    histogram = LatencyHistogram()
    histogram.record(micros / 1e6 + 1e-9)  # avoid float truncation just below the integer
    assert histogram._counts[_bucket_of(micros)] == 1


def test_histogram_empty() -> None:
    histogram = LatencyHistogram()
    assert histogram.percentile(90) == 0.0
    assert histogram.statistics() == HistogramStatistics(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)


def test_histogram_percentiles() -> None:
    histogram = LatencyHistogram()
    for _ in range(90):
        histogram.record(0.001)
    for _ in range(10):
        histogram.record(0.100)
    assert histogram.percentile(50) == pytest.approx(0.001, rel=1 / 32)
    assert histogram.percentile(90) == pytest.approx(0.001, rel=1 / 32)
    assert histogram.percentile(91) == pytest.approx(0.100, rel=1 / 32)
    assert histogram.percentile(100) == 0.100  # capped at the largest value recorded
    stats = histogram.statistics()
    assert stats.count == 100
    assert stats.mean == pytest.approx(0.0109)
    assert stats.max == 0.1
    assert stats.p99 == 0.1


def test_histogram_clamps_out_of_range_values() -> None:
    histogram = LatencyHistogram()
    histogram.record(-1.0)
    histogram.record(3600.0)
    assert histogram.percentile(0) == 0.0
    assert histogram.percentile(100) == pytest.approx(67.108863)


@pytest.mark.parametrize("q", [-1.0, 100.5, 0.9 * 1000])
def test_histogram_rejects_bad_percentiles(q: float) -> None:
    with pytest.raises(ValueError, match="percentile"):
        LatencyHistogram().percentile(q)


@given(st.lists(st.floats(0.0, 70.0), min_size=1, max_size=200), st.floats(0.0, 100.0))
def test_histogram_percentile_is_within_one_bucket_above_the_exact_one(
    values: list[float], q: float
) -> None:
    """Nearest-rank percentile, never understated, at most ~3 % (or 1 µs) over."""
    histogram = LatencyHistogram()
    for value in values:
        histogram.record(value)
    micros = sorted(min(int(v * 1e6), (1 << 26) - 1) for v in values)
    exact = micros[max(1, math.ceil(len(micros) * q / 100.0)) - 1]
    reported = round(histogram.percentile(q) * 1e6)
    assert exact <= reported <= exact + max(1, exact // 32)


def test_histogram_merge_and_reset() -> None:
    a, b = LatencyHistogram(), LatencyHistogram()
    a.record(0.001)
    b.record(0.002)
    b.record(0.003)
    a.merge(b)
    assert a.count == 3
    assert a.percentile(100) == 0.003
    a.reset()
    assert a.count == 0
    assert a.percentile(50) == 0.0


# -- counts per bucket (the metrics' form) ----------------------------------------------------


@given(st.lists(st.floats(0.0, 70.0), min_size=1, max_size=200), st.floats(0.0, 100.0))
def test_percentile_of_bucket_counts_is_the_histogram_s(values: list[float], q: float) -> None:
    """Counting latencies as the metrics do (``bisect_right`` over the edges) and reading a
    percentile from the counts gives the histogram's bucket: the histogram's percentile, or
    the top of its bucket (the counts do not keep the exact maximum)."""
    histogram = LatencyHistogram()
    counts = [0] * (len(BUCKET_EDGES) + 1)
    for value in values:
        histogram.record(value)
        counts[bisect_right(BUCKET_EDGES, value)] += 1
    expected = histogram.percentile(q)
    assert expected <= percentile_of_buckets(counts, q) <= expected * (1 + 1 / 32) + 1e-6


def test_percentile_of_no_counts_is_zero() -> None:
    assert percentile_of_buckets([0] * (len(BUCKET_EDGES) + 1), 99.0) == 0.0
