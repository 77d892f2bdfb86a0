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
* :class:`HedgeDelay`: a per-operation rolling latency histogram and the hedge delay read from
  it (``max(floor, p90)``), recomputed at most every ``refresh`` seconds. Synchronous.
* :func:`hedge_delay`: the same rule as a function of a histogram.

The race itself (send, wait, back up, first answer wins) is the HA engine's
(:mod:`~resmesh.policies.engine`), the same for every protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, final

from resmesh.knobs import Kind, knob
from resmesh.policies.window import RollingHistogram

__all__ = [
    "HedgeBudget",
    "HedgeBudgetStatistics",
    "HedgeConfig",
    "HedgeDelay",
    "HedgeDelayStatistics",
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
        window: seconds of latency history the percentile covers (10.0, in ``buckets`` buckets:
            see :class:`~resmesh.policies.window.RollingHistogram`).
        buckets: see ``window`` (5).
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
    buckets: int = 5
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
    histogram: RollingHistogram,
    now: float,
    *,
    percentile: float = 90.0,
    floor: float = 0.010,
    min_samples: int = 20,
    initial_delay: float | None = None,
) -> float | None:
    """``max(floor, p<percentile>)`` of the latencies in ``histogram``'s window at ``now``.

    With fewer than ``min_samples`` latencies: ``initial_delay`` (``None`` = do not hedge),
    as motan-go does before its first metrics snapshot. Costs a histogram merge (tens of µs):
    use :class:`HedgeDelay` on the per-call path, which caches it.
    """
    if histogram.count(now) < min_samples:
        return initial_delay
    return max(floor, histogram.percentile(percentile, now))


@final
@dataclass(frozen=True, slots=True)
class HedgeDelayStatistics:
    #: The delay in force (seconds), ``None`` when not hedging (cold start).
    delay: float | None
    samples: int
    computed_at: float


@final
class HedgeDelay:
    """The hedging of one (cluster, operation): its latency window, cached percentile and
    hedge budget.

    Record every call's latency with :meth:`record` (O(1)); read the delay with :meth:`delay`,
    which recomputes it at most every ``config.refresh`` seconds, and, while still cold (no
    delay yet), as soon as ``min_samples`` new latencies are in: otherwise a busy gateway would
    not hedge at all during its first refresh interval. ``budget`` caps this operation's
    hedges at ``config.budget`` of its calls (each operation with settings of its own keeps
    its own, so every one is held to the share it was given).
    """

    __slots__ = (
        "_cold_samples",
        "_delay",
        "_next_refresh",
        "budget",
        "computed_at",
        "config",
        "histogram",
    )

    def __init__(self, config: HedgeConfig | None = None) -> None:
        self.config = config or HedgeConfig()
        self.budget = HedgeBudget(self.config.budget, self.config.max_tokens)
        self.histogram = RollingHistogram(self.config.window, self.config.buckets)
        self._delay: float | None = self.config.fixed_delay
        self._next_refresh = -float("inf")
        self.computed_at = -float("inf")
        #: Latencies recorded since the last computation that found no delay.
        self._cold_samples = 0

    def record(self, latency: float, now: float) -> None:
        """One call of this operation took ``latency`` seconds, ending at ``now``."""
        self.histogram.record(latency, now)
        if self._delay is None:
            self._cold_samples += 1
            if self._cold_samples >= self.config.min_samples:
                self._next_refresh = now  # enough to try: recompute at the next delay()

    def delay(self, now: float) -> float | None:
        """Seconds to wait before hedging a call starting at ``now``; ``None`` = do not hedge."""
        config = self.config
        if config.fixed_delay is not None:
            return config.fixed_delay
        if now >= self._next_refresh:
            self._next_refresh = now + config.refresh
            self.computed_at = now
            self._cold_samples = 0
            self._delay = hedge_delay(
                self.histogram,
                now,
                percentile=config.percentile,
                floor=config.floor,
                min_samples=config.min_samples,
                initial_delay=config.initial_delay,
            )
        return self._delay

    def statistics(self, now: float) -> HedgeDelayStatistics:
        """A snapshot; reading it changes nothing (the delay shown is the one in force, not
        recomputed early)."""
        delay = self.config.fixed_delay if self.config.fixed_delay is not None else self._delay
        return HedgeDelayStatistics(
            delay=delay, samples=self.histogram.count(now), computed_at=self.computed_at
        )
