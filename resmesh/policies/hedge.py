"""Backup requests (hedging): if the first answer is slow, ask another node too.

Dean & Barroso, *The Tail at Scale* (CACM 2013): defer a second copy of an idempotent request
until the first has been outstanding longer than a high percentile of its expected latency;
the first answer wins. motan-go's ``backupRequest`` waits the **p90** of the method's recent
latency, **floored at 10 ms**, and allows **15 backups per 100 requests** (motan-go's
``ha/backupRequestHA.go``).

resmesh's version departs from motan-go's in three ways: the budget is a continuous token bucket
(:class:`HedgeBudget`), not a per-round count that lets backups bunch up; the backup goes to a
*different* node (the attempts share the set of nodes tried); and the loser is cancelled where
the protocol can, not left running (where it cannot, as for a Redis command already sent, its
answer is dropped and it stays counted in flight on its node until it ends).

Pieces:

* :class:`HedgeBudget`: each call earns ``ratio`` (0.15) of a token, a hedge spends one, at most
  ``max_tokens`` are held. Synchronous.
* :class:`HedgeDelay`: the hedge delay (``max(floor, p90)``) of the latencies the cluster's
  metrics counted over the last ``window`` seconds, recomputed at most every ``refresh``
  seconds. Synchronous.
* :func:`hedge_delay`: the same rule as a function of latency counts.

The race itself (send, wait, back up, first answer wins) is the HA engine's
(:mod:`~resmesh.policies.engine`), the same for every protocol.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from operator import sub
from typing import Final, final

from resmesh.knobs import Kind, knob
from resmesh.policies.window import percentile_of_buckets

__all__ = [
    "HedgeBudget",
    "HedgeBudgetStatistics",
    "HedgeConfig",
    "HedgeDelay",
    "HedgeDelayStatistics",
    "LatencySource",
    "hedge_delay",
]

#: Budget arithmetic in millionths of a token, so "15 % of calls" is exact, not float drift.
_UNIT: Final = 1_000_000


@final
@dataclass(frozen=True, slots=True)
class HedgeConfig:
    """How a cluster/operation hedges; the configuration's ``hedge:``.

    Off by default: a hedge is extra load by design, so a cluster opts in (the ``cache``
    preset does). Only the knobs up to ``budget`` are configuration keys; the rest keep their
    defaults.

    Attributes:
        enabled: whether slow idempotent calls are hedged.
        percentile: the latency percentile to wait before hedging (90: motan-go
            ``backupRequestDelayRatio``; Tail at Scale suggests 95).
        floor: never hedge sooner than this many seconds (0.010: motan-go's 10 ms floor).
        budget: hedges per call at most, as a token-bucket earn rate (0.15: motan-go
            ``backupRequestMaxRetryRatio`` 15 per 100).
        fixed_delay: a fixed delay instead of the percentile (motan-go
            ``backupRequestDelayTime``; gRPC ``hedgingDelay``); ``None`` to measure.
        initial_delay: the delay to use before enough latencies are measured (motan-go
            ``backupRequestInitDelayTime``); ``None`` means no hedging on a cold start.
        min_samples: latencies needed in the window before the percentile is trusted (20:
            resmesh's choice; a p90 of a handful of calls is just their maximum).
        refresh: recompute the percentile at most this often, in seconds (1.0: resmesh; motan-go
            reads its periodic metrics snapshot).
        window: seconds of latency history the percentile covers (10.0: resmesh's choice;
            Hystrix's 60 s percentile window adapts too slowly to a node that just slowed
            down).
        max_tokens: the most hedges that can be saved up for a burst (10: resmesh's choice,
            the size of gRPC A6's example throttle bucket; motan-go's round allowed 15 at once).
    """

    enabled: bool = knob(False, Kind.BOOL)
    percentile: float = knob(90.0, Kind.NUMBER, high=100.0, example="90")
    floor: float = knob(0.010, Kind.DURATION, example="10ms")
    budget: float = knob(0.15, Kind.RATIO, high=1.0)
    fixed_delay: float | None = None
    initial_delay: float | None = None
    min_samples: int = 20
    refresh: float = 1.0
    window: float = 10.0
    max_tokens: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.percentile <= 100.0:
            raise ValueError(f"percentile must be in [0, 100], got {self.percentile!r}")
        if self.floor < 0:
            raise ValueError(f"floor must be >= 0 s, got {self.floor!r}")
        if not 0.0 <= self.budget <= 1.0:
            raise ValueError(f"budget must be in [0, 1], got {self.budget!r}")
        if self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {self.max_tokens!r}")


@final
@dataclass(frozen=True, slots=True)
class HedgeBudgetStatistics:
    ratio: float
    tokens: float
    calls: int
    hedges: int
    denied: int
    #: Hedges whose answer won the race.
    wins: int


@final
class HedgeBudget:
    """A token bucket for hedges: each call earns ``ratio`` of a token, a hedge costs one.

    Over any run of calls, hedges ≤ ``ratio`` x calls (plus nothing: the bucket starts empty,
    so a cold gateway does not hedge its first calls). At most ``max_tokens`` are saved, which
    bounds a burst of hedges after a quiet spell (motan-go's per-round count allows all 15 at
    the start of every round).
    """

    __slots__ = ("_cap", "_earn", "_tokens", "calls", "denied", "hedges", "ratio", "wins")

    def __init__(self, ratio: float = 0.15, max_tokens: float = 10.0) -> None:
        """Create an empty budget.

        Raises:
            ValueError: ``ratio`` is outside ``[0, 1]`` or ``max_tokens`` is below 1.
        """
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_tokens!r}")
        self.ratio = ratio
        self._earn = round(ratio * _UNIT)
        self._cap = round(max_tokens * _UNIT)
        self._tokens = 0
        self.calls = 0
        self.hedges = 0
        self.denied = 0
        self.wins = 0

    def record_call(self) -> None:
        """A call that could be hedged started: earn ``ratio`` of a token."""
        self.calls += 1
        tokens = self._tokens + self._earn
        self._tokens = tokens if tokens < self._cap else self._cap

    def try_hedge(self) -> bool:
        """Spend a token on a hedge if one is there; say whether it was."""
        if self._tokens >= _UNIT:
            self._tokens -= _UNIT
            self.hedges += 1
            return True
        self.denied += 1
        return False

    def refund(self) -> None:
        """A hedge :meth:`try_hedge` paid for did not go out (no node to send it to)."""
        tokens = self._tokens + _UNIT
        self._tokens = tokens if tokens < self._cap else self._cap
        self.hedges -= 1

    @property
    def tokens(self) -> float:
        return self._tokens / _UNIT

    def statistics(self) -> HedgeBudgetStatistics:
        return HedgeBudgetStatistics(
            ratio=self.ratio,
            tokens=self.tokens,
            calls=self.calls,
            hedges=self.hedges,
            denied=self.denied,
            wins=self.wins,
        )


def hedge_delay(
    counts: Sequence[int],
    *,
    percentile: float = 90.0,
    floor: float = 0.010,
    min_samples: int = 20,
    initial_delay: float | None = None,
) -> float | None:
    """``max(floor, p<percentile>)`` of latencies counted per bucket of
    :data:`~resmesh.policies.window.BUCKET_EDGES` (the last slot: beyond the last edge).

    With fewer than ``min_samples`` latencies: ``initial_delay`` (``None`` = do not hedge),
    as motan-go does before its first metrics snapshot.
    """
    if sum(counts) < min_samples:
        return initial_delay
    return max(floor, percentile_of_buckets(counts, percentile))


#: Where a :class:`HedgeDelay` reads latencies: the calls counted so far per latency bucket
#: (cumulative, as the metrics keep them), or ``None`` when nothing is counted.
LatencySource = Callable[[], "list[int] | None"]


def _uncounted() -> list[int] | None:
    return None


@final
@dataclass(frozen=True, slots=True)
class HedgeDelayStatistics:
    #: The delay in force (seconds), ``None`` when not hedging (cold start).
    delay: float | None
    #: Latencies the delay was computed from.
    samples: int
    computed_at: float


@final
class HedgeDelay:
    """The hedging of one (cluster, operation): its delay, read from the cluster's metrics,
    and its hedge budget.

    The delay is a percentile of the latencies the metrics counted in the last ``window``
    seconds: the same calls an operator sees in ``ctl top`` and Prometheus (motan-go reads
    its backup delay from its metrics snapshot the same way). The metrics keep cumulative
    counts per latency bucket; every ``refresh`` seconds :meth:`delay` reads them and keeps
    the reading, and the window's latencies are the difference between the newest reading
    and the one ``window`` seconds older. While cold (no delay yet) it reads again after
    every ``min_samples`` calls as well, so a busy gateway starts hedging within its first
    refresh interval. ``budget`` caps this tracker's hedges at ``config.budget`` of its calls
    (each operation with settings of its own keeps its own, so every one is held to the share
    it was given).

    Args:
        config: the hedge settings.
        latencies: where the latencies are counted (:class:`LatencySource`).
    """

    __slots__ = (
        "_cold_calls",
        "_delay",
        "_latencies",
        "_next_refresh",
        "_readings",
        "budget",
        "computed_at",
        "config",
        "samples",
    )

    def __init__(
        self, config: HedgeConfig | None = None, latencies: LatencySource = _uncounted
    ) -> None:
        self.config = config or HedgeConfig()
        self.budget = HedgeBudget(self.config.budget, self.config.max_tokens)
        self._latencies = latencies
        #: (time, cumulative counts) read at most every ``refresh`` seconds, oldest first; the
        #: first is the newest one at least ``window`` old, the base of the window.
        self._readings: deque[tuple[float, list[int]]] = deque()
        self._delay: float | None = self.config.fixed_delay
        self._next_refresh = -float("inf")
        self.computed_at = -float("inf")
        self.samples = 0
        #: Calls started since the last computation that found no delay.
        self._cold_calls = 0

    def delay(self, now: float) -> float | None:
        """Seconds to wait before hedging a call starting at ``now``; ``None`` = do not hedge."""
        config = self.config
        if config.fixed_delay is not None:
            return config.fixed_delay
        if now >= self._next_refresh:
            self._next_refresh = now + config.refresh
            self._compute(now)
        elif self._delay is None:
            self._cold_calls += 1
            if self._cold_calls >= config.min_samples:
                self._compute(now)
        return self._delay

    def _compute(self, now: float) -> None:
        config = self.config
        self.computed_at = now
        self._cold_calls = 0
        counts = self._latencies()
        readings = self._readings
        if counts is None:
            readings.clear()
            self.samples = 0
            self._delay = config.initial_delay
            return
        if readings and min(map(sub, counts, readings[-1][1])) < 0:
            # A node left and took its counts with it: the readings start over from this
            # one, and the delay in force stays until they cover some calls again.
            readings.clear()
        if not readings or now - readings[-1][0] >= config.refresh:
            readings.append((now, counts))
        horizon = now - config.window
        while len(readings) > 1 and readings[1][0] <= horizon:
            readings.popleft()
        window = list(map(sub, counts, readings[0][1]))
        if len(readings) == 1 and not any(window) and self._delay is not None:
            return  # nothing read yet since the readings started over
        self.samples = sum(window)
        self._delay = hedge_delay(
            window,
            percentile=config.percentile,
            floor=config.floor,
            min_samples=config.min_samples,
            initial_delay=config.initial_delay,
        )

    def statistics(self) -> HedgeDelayStatistics:
        """A snapshot; reading it changes nothing (the delay shown is the one in force, not
        recomputed early)."""
        delay = self.config.fixed_delay if self.config.fixed_delay is not None else self._delay
        return HedgeDelayStatistics(delay=delay, samples=self.samples, computed_at=self.computed_at)
