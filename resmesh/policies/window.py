"""Rolling counters and latency histograms: the statistics every other policy decides on.

Everything here is synchronous and takes an explicit ``now`` (``trio.current_time()`` read once by
the caller), so a pipelined batch of commands pays for one clock read, and tests drive time by
hand. Methods on the per-call path are O(1) amortized and allocate nothing.

* :class:`RollingCounter` counts calls, failures and slow calls over a rolling window of time
  buckets: Hystrix's rolling 10 s window of 10 buckets (``metrics.rollingStats.*``), not the
  single tumbling bucket of Sentinel's circuit breakers (``statIntervalMs``), so a burst of
  failures cannot hide at a bucket boundary.
* :class:`LatencyHistogram` is a log-linear (HdrHistogram-style) histogram with 1 µs resolution
  below 64 µs and 32 sub-buckets per power of two above, so every recorded value is within
  ~3 % of the value reported for it, from 1 µs to ~67 s, in 704 integer counters.
* :data:`BUCKET_EDGES` and :func:`percentile_of_buckets` are the same buckets as plain counts,
  for the metrics' counters and for percentiles of a difference of two of their readings (a
  window of time: the hedge delay's).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Final, final

__all__ = [
    "BUCKET_EDGES",
    "HistogramStatistics",
    "LatencyHistogram",
    "RollingCounter",
    "RollingCounterStatistics",
    "histogram_from_counts",
    "percentile_of_buckets",
]

#: Values below ``2 ** _LINEAR_BITS`` µs get one bucket each (exact).
_LINEAR_BITS: Final = 6
#: Sub-buckets per power of two above the linear range: ``2 ** (_LINEAR_BITS - 1)`` = 32, so a
#: bucket is at most 1/32 (~3 %) of its lower bound wide.
_SUB_BUCKETS: Final = 1 << (_LINEAR_BITS - 1)
#: Largest recordable value, in µs: 2**26 - 1 µs ≈ 67.1 s. Longer latencies are clamped to it.
_MAX_MICROS: Final = (1 << 26) - 1
_BUCKETS: Final = ((26 - _LINEAR_BITS + 1) << (_LINEAR_BITS - 1)) + _SUB_BUCKETS


def _bucket_of(micros: int) -> int:
    """The bucket index of a value in µs (already clamped to ``[0, _MAX_MICROS]``)."""
    shift = micros.bit_length() - _LINEAR_BITS
    if shift <= 0:
        return micros
    return (shift << (_LINEAR_BITS - 1)) + (micros >> shift)


def _upper_of(index: int) -> int:
    """The largest value in µs that lands in bucket ``index`` (HdrHistogram's "highest
    equivalent value": a percentile read from a bucket never understates the latency)."""
    if index < (1 << _LINEAR_BITS):
        return index
    shift = (index >> (_LINEAR_BITS - 1)) - 1
    mantissa = index - (shift << (_LINEAR_BITS - 1))
    return ((mantissa + 1) << shift) - 1


#: The exclusive upper edge of each bucket, in seconds: ``bisect_right(BUCKET_EDGES, s)`` is
#: the bucket of a latency of ``s`` seconds (the same bucket as :meth:`LatencyHistogram.record`
#: gives it), found by a C loop, for counters on the call path; an index of ``len(...)``
#: is a latency beyond the last bucket, counted in it.
BUCKET_EDGES: Final = [(_upper_of(index) + 1) / 1_000_000.0 for index in range(_BUCKETS)]

#: "No bucket yet": far enough in the past that the first update clears every slot.
_NEVER: Final = -(1 << 62)


@final
@dataclass(frozen=True, slots=True)
class RollingCounterStatistics:
    """A snapshot of a :class:`RollingCounter` (totals over the window ending at ``now``)."""

    window: float
    buckets: int
    total: int
    failures: int
    slow: int


@final
class RollingCounter:
    """Counts of calls, failures and slow calls over the last ``window`` seconds.

    The window is ``buckets`` time buckets of ``window / buckets`` seconds; a bucket leaves the
    window whole, so the totals cover between ``window - width`` and ``window`` seconds. Running
    sums are kept, so reading the totals is O(1); moving the window clears only the buckets that
    expired (at most ``buckets`` of them, however long the counter sat idle).

    Default 10 buckets over 10 s: Hystrix ``metrics.rollingStats.timeInMilliseconds`` 10000,
    ``metrics.rollingStats.numBuckets`` 10.

    The totals (:attr:`total`, :attr:`failures`, :attr:`slow`) are as of the last :meth:`add`
    or :meth:`advance`; call :meth:`advance` before reading them after a pause.
    """

    __slots__ = (
        "_current",
        "_failures",
        "_inverse_width",
        "_slow",
        "_total",
        "buckets",
        "failures",
        "slow",
        "total",
        "window",
    )

    def __init__(self, window: float = 10.0, buckets: int = 10) -> None:
        """Create an empty counter.

        Raises:
            ValueError: ``window`` is not positive or ``buckets`` is below 1: a window needs
                at least one bucket of some width.
        """
        if not window > 0 or buckets < 1:
            raise ValueError(f"need window > 0 and buckets >= 1, got {window!r}, {buckets!r}")
        self.window = float(window)
        self.buckets = buckets
        self._inverse_width = buckets / self.window
        self._total = [0] * buckets
        self._failures = [0] * buckets
        self._slow = [0] * buckets
        #: Absolute number (``floor(now / width)``) of the newest bucket; slot = number % n.
        #: Every slot holds only counts from inside the window: a slot is cleared on reuse.
        self._current = _NEVER
        self.total = 0
        self.failures = 0
        self.slow = 0

    def advance(self, now: float) -> None:
        """Move the window to end at ``now``, dropping the buckets that fell out of it.

        A ``now`` earlier than the newest bucket counts into the newest bucket: clocks read by
        concurrent tasks may arrive slightly out of order, and that must not rewind the window.
        """
        epoch = int(now * self._inverse_width)
        if epoch > self._current:
            self._rotate(epoch)

    def _rotate(self, epoch: int) -> None:
        n = self.buckets
        if epoch - self._current >= n:  # idle for a whole window: everything expired
            self._total = [0] * n
            self._failures = [0] * n
            self._slow = [0] * n
            self.total = self.failures = self.slow = 0
        else:
            for e in range(self._current + 1, epoch + 1):
                slot = e % n
                self.total -= self._total[slot]
                self.failures -= self._failures[slot]
                self.slow -= self._slow[slot]
                self._total[slot] = self._failures[slot] = self._slow[slot] = 0
        self._current = epoch

    def add(self, now: float, failure: bool = False, slow: bool = False) -> None:
        """Count one call that ended at ``now``."""
        epoch = int(now * self._inverse_width)
        if epoch > self._current:
            self._rotate(epoch)
        slot = self._current % self.buckets
        self._total[slot] += 1
        self.total += 1
        if failure:
            self._failures[slot] += 1
            self.failures += 1
        if slow:
            self._slow[slot] += 1
            self.slow += 1

    def add_ok(self, now: float) -> None:
        """Count one call that ended at ``now``, neither failed nor slow (:meth:`add`'s
        common case, without its branches)."""
        epoch = int(now * self._inverse_width)
        if epoch > self._current:
            self._rotate(epoch)
        self._total[self._current % self.buckets] += 1
        self.total += 1

    def reset(self) -> None:
        """Forget every count (a breaker that closes starts a fresh window)."""
        n = self.buckets
        self._total = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._current = _NEVER
        self.total = self.failures = self.slow = 0

    def statistics(self, now: float | None = None) -> RollingCounterStatistics:
        """The totals over the window ending at ``now`` (or at the last update)."""
        if now is not None:
            self.advance(now)
        return RollingCounterStatistics(
            window=self.window,
            buckets=self.buckets,
            total=self.total,
            failures=self.failures,
            slow=self.slow,
        )


@final
@dataclass(frozen=True, slots=True)
class HistogramStatistics:
    """A snapshot of a latency histogram; latencies in seconds (0.0 when empty)."""

    count: int
    mean: float
    max: float
    p50: float
    p90: float
    p99: float
    p999: float


@final
class LatencyHistogram:
    """A log-linear latency histogram, µs resolution, ~3 % relative precision, up to ~67 s.

    Recording is O(1) with no allocation (an index computed from ``int.bit_length`` and one
    counter increment); percentiles walk a cumulative sum built in C (``itertools.accumulate``
    then ``bisect``), about 10 µs, so read them per snapshot or per timer, not per call.
    """

    __slots__ = ("_counts", "count", "max_micros", "sum_micros")

    def __init__(self) -> None:
        self._counts = [0] * _BUCKETS
        self.count = 0
        self.sum_micros = 0
        self.max_micros = 0

    def record(self, seconds: float) -> None:
        """Add one latency in seconds (negative values count as 0, values above ~67 s as ~67 s)."""
        micros = int(seconds * 1_000_000.0)
        if micros < 0:
            micros = 0
        elif micros > _MAX_MICROS:
            micros = _MAX_MICROS
        # _bucket_of inlined, with its constants as literals (6 = _LINEAR_BITS, 5 = 6 - 1).
        shift = micros.bit_length() - 6
        self._counts[micros if shift <= 0 else (shift << 5) + (micros >> shift)] += 1
        self.count += 1
        self.sum_micros += micros
        if micros > self.max_micros:
            self.max_micros = micros

    def sparse_counts(self) -> dict[int, int]:
        """The non-empty buckets, by index (a compact, mergeable form)."""
        return {index: n for index, n in enumerate(self._counts) if n}

    def upper_bounds(self) -> list[tuple[float, int]]:
        """Each non-empty bucket's highest value (seconds) and its count, in order."""
        return [(_upper_of(index) / 1_000_000.0, n) for index, n in enumerate(self._counts) if n]

    def percentile(self, q: float) -> float:
        """The latency in seconds at or below which ``q`` percent of the recorded values fall.

        ``q`` is in ``[0, 100]`` (``percentile(90)`` is the p90). The value reported is the top
        of the bucket holding that rank, capped at the largest value recorded, so it never
        understates the latency by more than the bucket width. Empty histogram: 0.0.

        Raises:
            ValueError: ``q`` is outside ``[0, 100]``: a percentile outside that range has no
                meaning, and silently clamping it would hide a configuration slip (0.9 vs 90).
        """
        return _percentile(self._counts, self.count, self.max_micros, q)

    def merge(self, other: LatencyHistogram) -> None:
        """Add ``other``'s counts into this histogram."""
        self._counts = [a + b for a, b in zip(self._counts, other._counts, strict=True)]
        self.count += other.count
        self.sum_micros += other.sum_micros
        self.max_micros = max(self.max_micros, other.max_micros)

    def reset(self) -> None:
        """Forget every value."""
        self._counts = [0] * _BUCKETS
        self.count = 0
        self.sum_micros = 0
        self.max_micros = 0

    def statistics(self) -> HistogramStatistics:
        """Count, mean, max and the usual percentiles (p50/p90/p99/p99.9)."""
        return _histogram_statistics(self._counts, self.count, self.sum_micros, self.max_micros)


def histogram_from_counts(
    buckets: dict[int, int], count: int, sum_micros: int, max_micros: int
) -> LatencyHistogram:
    """A histogram rebuilt from :meth:`LatencyHistogram.sparse_counts` and its totals (a
    snapshot another process sent)."""
    histogram = LatencyHistogram()
    counts = histogram._counts
    for index, n in buckets.items():
        if 0 <= index <= _BUCKETS:
            counts[min(index, _BUCKETS - 1)] += n
    histogram.count = count
    histogram.sum_micros = sum_micros
    histogram.max_micros = max_micros
    return histogram


def percentile_of_buckets(counts: Sequence[int], q: float) -> float:
    """The ``q``-th percentile of latencies counted per bucket of :data:`BUCKET_EDGES` (one
    more slot for latencies beyond the last edge), as the metrics count them.

    Raises:
        ValueError: ``q`` is outside ``[0, 100]``.
    """
    return _percentile(counts, sum(counts), _MAX_MICROS, q)


def _percentile(counts: Sequence[int], count: int, max_micros: int, q: float) -> float:
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within [0, 100], got {q!r}")
    if count == 0:
        return 0.0
    # The rank (1-based) of the value at percentile q: the smallest value with at least
    # q% of the values at or below it (nearest-rank method).
    rank = max(1, math.ceil(count * q / 100.0))
    index = bisect_left(list(accumulate(counts)), rank)
    return min(_upper_of(index), max_micros) / 1_000_000.0


def _histogram_statistics(
    counts: list[int], count: int, sum_micros: int, max_micros: int
) -> HistogramStatistics:
    if count == 0:
        return HistogramStatistics(0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    cumulative = list(accumulate(counts))

    def at(q: float) -> float:
        rank = max(1, math.ceil(count * q / 100.0))
        return min(_upper_of(bisect_left(cumulative, rank)), max_micros) / 1_000_000.0

    return HistogramStatistics(
        count=count,
        mean=sum_micros / count / 1_000_000.0,
        max=max_micros / 1_000_000.0,
        p50=at(50.0),
        p90=at(90.0),
        p99=at(99.0),
        p999=at(99.9),
    )
