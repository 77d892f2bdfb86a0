"""A circuit breaker per node: stop sending to a node that fails, probe it, take it back.

States (as in Hystrix, Sentinel and resilience4j)::

    CLOSED ──trip──▶ OPEN ──open_for elapsed, next allow()──▶ HALF_OPEN
      ▲                ▲                                              │
      │                └────────────── a probe fails ◀────────────────┤
      └─────────────────────────────── a probe succeeds ◀─────────────┘

It trips when, in the rolling window, at least ``min_calls`` calls ended and the share of
failures reaches ``error_ratio``, or the share of slow calls reaches ``slow_ratio``; or
after ``consecutive_failures`` failures in a row, whatever the volume (motan-go ``failfast``).

What counts: ``UPSTREAM_ERROR`` and ``LOCAL_ERROR`` are failures (:attr:`Outcome.node_failure`);
``OK`` and ``APP_ERROR`` are successes (a WRONGTYPE or a duplicate key says nothing bad about
the node; gRPC A6's retry throttling likewise does not count answers to malformed requests,
such as ``INVALID_ARGUMENT``, as failures); ``REJECTED`` is ignored (the node never saw the
call). A call is slow when its latency exceeds ``slow_call``, whatever its outcome
(resilience4j counts slow failures as slow too).

The ratio rules are evaluated when a failure (or a slow call) is recorded, the moments a
ratio can cross its threshold on the node's account; a ratio that rises only because old
successes left the window trips at the next failure.

Synchronous and O(1): the caller asks :meth:`CircuitBreaker.allow` with ``now`` before sending
and reports :meth:`CircuitBreaker.record` after; nothing here awaits or allocates per call.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from resmesh.call import Outcome
from resmesh.knobs import Kind, knob
from resmesh.policies.window import RollingCounter

__all__ = ["BreakerConfig", "BreakerState", "BreakerStatistics", "CircuitBreaker"]


class BreakerState(enum.IntEnum):
    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


_CLOSED: Final = BreakerState.CLOSED
_OPEN: Final = BreakerState.OPEN
_HALF_OPEN: Final = BreakerState.HALF_OPEN
_OK: Final = Outcome.OK
_NODE_FAILURES: Final = frozenset({Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR})
#: Ratios are compared in floats: 7 failures of 100 must reach a 0.07 threshold (0.07 x 100 is
#: 7.000000000000001).
_ROUNDING: Final = 1e-9
#: Far above any real threshold, low enough to be clearly a typo.
_MAX_COUNT: Final = 1_000_000


@final
@dataclass(frozen=True, slots=True)
class BreakerConfig:
    """When a node's breaker trips and how it recovers; the configuration's ``breaker:``.

    Attributes:
        enabled: whether nodes have breakers at all.
        error_ratio: trip when failures / calls in the window reach this (0.5: Hystrix
            ``errorThresholdPercentage`` 50, resilience4j ``failureRateThreshold`` 50 %).
        slow_call: a call slower than this (seconds) is slow; ``None`` turns the slow-call
            rule off (resmesh's default: a threshold only means something per cluster).
        slow_ratio: trip when slow calls / calls in the window reach this (1.0: resilience4j
            ``slowCallRateThreshold`` 100 %, Sentinel ``slowRatioThreshold`` 1.0).
        min_calls: the ratio rules apply only once the window holds this many calls (20:
            Hystrix ``requestVolumeThreshold``; Sentinel's 5 is too twitchy for a proxy).
        window: rolling window length in seconds (10 s: Hystrix ``rollingStats``).
        buckets: buckets in the window (10: Hystrix; Sentinel's single tumbling bucket lets a
            burst straddle a boundary). Not a configuration key.
        consecutive_failures: trip after this many failures in a row, whatever the volume
            (10: motan-go ``failfast``); 0 turns the rule off.
        open_for: how long the breaker stays open before probing (5 s: Hystrix
            ``sleepWindowInMilliseconds``, hystrix-go ``SleepWindow``; resilience4j's 60 s is
            long for a gateway).
        half_open_probes: concurrent probes allowed while half-open (1: Sentinel and Hystrix;
            resilience4j allows 10). With more than one, the first result decides (Sentinel's
            rule), where resilience4j waits for all of them and judges their failure ratio:
            a gateway sees many calls, and the first answer is already fresh news.
    """

    enabled: bool = knob(True, Kind.BOOL)
    error_ratio: float = knob(0.5, Kind.RATIO, high=1.0, low_open=True)
    slow_call: float | None = knob(None, Kind.DURATION, low_open=True, example="500ms")
    slow_ratio: float = knob(1.0, Kind.RATIO, high=1.0, low_open=True, example="0.8")
    min_calls: int = knob(20, Kind.INT, low=1, high=_MAX_COUNT)
    window: float = knob(10.0, Kind.DURATION, low_open=True, example="10s")
    buckets: int = 10
    consecutive_failures: int = knob(10, Kind.INT, high=_MAX_COUNT)
    open_for: float = knob(5.0, Kind.DURATION, low_open=True, example="5s")
    half_open_probes: int = knob(1, Kind.INT, low=1, high=1000)

    def __post_init__(self) -> None:
        if not 0.0 < self.error_ratio <= 1.0:
            raise ValueError(f"error_ratio must be in (0, 1], got {self.error_ratio!r}")
        if not 0.0 < self.slow_ratio <= 1.0:
            raise ValueError(f"slow_ratio must be in (0, 1], got {self.slow_ratio!r}")
        if self.slow_call is not None and not self.slow_call > 0:
            raise ValueError(f"slow_call must be > 0 s or None, got {self.slow_call!r}")
        if self.min_calls < 1:
            raise ValueError(f"min_calls must be >= 1, got {self.min_calls!r}")
        if self.consecutive_failures < 0:
            raise ValueError(
                f"consecutive_failures must be >= 0 (0 = off), got {self.consecutive_failures!r}"
            )
        if not self.open_for > 0:
            raise ValueError(f"open_for must be > 0 s, got {self.open_for!r}")
        if self.half_open_probes < 1:
            raise ValueError(f"half_open_probes must be >= 1, got {self.half_open_probes!r}")
        if not self.window > 0 or self.buckets < 1:
            raise ValueError(
                f"need window > 0 s and buckets >= 1, got {self.window!r}, {self.buckets!r}"
            )


@final
@dataclass(frozen=True, slots=True)
class BreakerStatistics:
    state: BreakerState
    calls: int
    failures: int
    slow: int
    consecutive_failures: int
    probes_in_flight: int
    trips: int
    rejected: int
    #: Why it last tripped ("error ratio 60% >= 50% over 20 calls"); "" if it never did.
    reason: str
    #: When an OPEN breaker starts probing (Trio time); ``None`` unless OPEN.
    retry_at: float | None


@final
class CircuitBreaker:
    """The breaker of one node. Not thread-safe (one Trio run uses it)."""

    __slots__ = (
        "_consecutive",
        "_consecutive_limit",
        "_duration_limit",
        "_error_ratio",
        "_min_calls",
        "_open_for",
        "_probe_limit",
        "_slow_ratio",
        "_window",
        "config",
        "half_opens",
        "opened_at",
        "probes_in_flight",
        "reason",
        "recoveries",
        "rejected",
        "state",
        "trips",
    )

    def __init__(self, config: BreakerConfig | None = None) -> None:
        config = config or BreakerConfig()
        self.config = config
        self._window = RollingCounter(config.window, config.buckets)
        self._error_ratio = config.error_ratio
        self._slow_ratio = config.slow_ratio
        self._duration_limit = float("inf") if config.slow_call is None else config.slow_call
        self._min_calls = config.min_calls
        self._consecutive_limit = config.consecutive_failures or 1 << 62
        self._open_for = config.open_for
        self._probe_limit = config.half_open_probes
        self._consecutive = 0
        self.state: BreakerState = _CLOSED
        self.opened_at = 0.0
        self.probes_in_flight = 0
        self.trips = 0
        #: Transitions to half-open (a probe let through) and back to closed (recovered),
        #: as ``trips`` counts those to open: for the metrics.
        self.half_opens = 0
        self.recoveries = 0
        self.rejected = 0
        self.reason = ""

    def allow(self, now: float) -> bool:
        """May a call go to this node at ``now``?

        CLOSED: yes. OPEN: no, until ``open_for`` has passed; then the breaker turns
        HALF_OPEN and this call is its first probe. HALF_OPEN: yes while fewer than
        ``half_open_probes`` probes are in flight. A call this returns ``True`` for must be
        reported to :meth:`record` (or :meth:`release` if it never reached the node).
        """
        state = self.state
        if state is _CLOSED:
            return True
        if state is _OPEN:
            if now - self.opened_at < self._open_for:
                self.rejected += 1
                return False
            self.state = _HALF_OPEN
            self.half_opens += 1
            self.probes_in_flight = 0
        if self.probes_in_flight < self._probe_limit:
            self.probes_in_flight += 1
            return True
        self.rejected += 1
        return False

    def record(self, outcome: Outcome, latency: float, now: float) -> None:
        """Report how an allowed call ended (``latency`` in seconds, ``now`` its end time).

        While HALF_OPEN, the first result decides: a success (not slow) closes the breaker
        with a fresh window, a failure or slow call re-opens it for another ``open_for``.
        Results arriving while OPEN are from calls sent before it tripped and are ignored; one
        such late result arriving while HALF_OPEN is taken as the probe's (it is as recent a
        word on the node's health, and :meth:`allow` hands out no token to tell them apart).
        """
        if outcome is _OK and self.state is _CLOSED and latency <= self._duration_limit:
            # The common case, kept short (it runs once per forwarded run): a healthy call
            # only counts, and a fresh success cannot trip anything.
            self._consecutive = 0
            self._window.add_ok(now)
            return
        if outcome is Outcome.REJECTED:
            self.release()
            return
        failed = outcome in _NODE_FAILURES
        slow = latency > self._duration_limit
        state = self.state
        if state is _CLOSED:
            window = self._window
            window.add(now, failed, slow)
            if failed:
                self._consecutive += 1
                if self._consecutive >= self._consecutive_limit:
                    self._trip(now, f"{self._consecutive} consecutive failures")
                    return
            else:
                self._consecutive = 0
            if (failed or slow) and window.total >= self._min_calls:
                total = window.total
                if window.failures >= self._error_ratio * total - _ROUNDING:
                    self._trip(
                        now,
                        f"error ratio {window.failures / total:.0%} >= "
                        f"{self._error_ratio:.0%} over {total} calls",
                    )
                elif slow and window.slow >= self._slow_ratio * total - _ROUNDING:
                    self._trip(
                        now,
                        f"slow-call ratio {window.slow / total:.0%} >= "
                        f"{self._slow_ratio:.0%} over {total} calls "
                        f"(slow = over {self._duration_limit:g}s)",
                    )
        elif state is _HALF_OPEN:
            if failed or slow:
                self._trip(now, "probe failed" if failed else "probe slow")
            else:
                self._close()

    def release(self) -> None:
        """An allowed call never reached the node (cancelled, or refused further on).

        Frees its probe slot while HALF_OPEN and counts nothing: without this a cancelled
        probe would leave the breaker half-open with no probe able to start (the bug behind
        Sentinel issue #1638, which Sentinel fixes by re-opening instead).
        """
        if self.state is _HALF_OPEN and self.probes_in_flight > 0:
            self.probes_in_flight -= 1

    def _trip(self, now: float, reason: str) -> None:
        self.state = _OPEN
        self.opened_at = now
        self.probes_in_flight = 0
        self.trips += 1
        self.reason = reason
        self._consecutive = 0

    def _close(self) -> None:
        if self.state is not _CLOSED:
            self.recoveries += 1
        self.state = _CLOSED
        self.probes_in_flight = 0
        self._consecutive = 0
        self._window.reset()

    def would_allow(self, now: float) -> bool:
        """Whether :meth:`allow` at ``now`` would let a call through, changing nothing: a
        balancer must not pick a node whose breaker would then refuse (a half-open node
        whose probes are all out, too)."""
        state = self.state
        if state is _CLOSED:
            return True
        if state is _OPEN:
            return now - self.opened_at >= self._open_for
        return self.probes_in_flight < self._probe_limit

    def state_at(self, now: float) -> BreakerState:
        """The state a call at ``now`` would see (OPEN reads as HALF_OPEN once it may probe),
        without changing anything."""
        if self.state is _OPEN and now - self.opened_at >= self._open_for:
            return _HALF_OPEN
        return self.state

    def statistics(self, now: float) -> BreakerStatistics:
        window = self._window
        window.advance(now)
        state = self.state_at(now)
        return BreakerStatistics(
            state=state,
            calls=window.total,
            failures=window.failures,
            slow=window.slow,
            consecutive_failures=self._consecutive,
            probes_in_flight=self.probes_in_flight if self.state is _HALF_OPEN else 0,
            trips=self.trips,
            rejected=self.rejected,
            reason=self.reason,
            retry_at=self.opened_at + self._open_for if state is _OPEN else None,
        )
