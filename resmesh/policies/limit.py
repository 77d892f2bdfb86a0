"""Admission limits: token-bucket QPS and a concurrency cap, per cluster and per operation.

Over a limit a call is *rejected*, never queued: the frontend answers ``REJECTED`` at once with a
protocol error naming the limit (the text :meth:`Limiter.admit` returns). A gateway that queues
turns an overload into latency for everyone; Envoy's local rate limit and resilience4j's
bulkhead (``maxWaitDuration`` 0) reject too. motan-go's ``rateLimit`` filter waits for a token
up to the request timeout; resmesh does not.

Why not ``trio.CapacityLimiter``? It is built for *waiting* tasks and tracks borrowers per task;
a non-blocking cap needs only a counter, which the frontend can check for each command of a
pipelined batch without an await. The counter's ``limit`` can be changed at run time, as
CapacityLimiter's ``total_tokens`` can.

Everything takes an explicit ``now`` (``trio.current_time()``), allocates nothing per call, and
is O(1).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Final, final

from resmesh.knobs import Kind, knob

__all__ = [
    "BucketStatistics",
    "ConcurrencyLimit",
    "ConcurrencyStatistics",
    "LimitConfig",
    "Limiter",
    "LimiterConfig",
    "LimiterStatistics",
    "ScopeStatistics",
    "TokenBucket",
]


#: Refills are float arithmetic: a call arriving exactly one token's time after the last can
#: find 0.9999999999999998 tokens. Refusing it would also lose that fraction for good once the
#: bucket is capped at ``burst``, so a steady stream at exactly the rate would get only ~75 %
#: through.
_ROUNDING: Final = 1e-9
#: Calls per second: far above what one gateway can pass, low enough to be clearly a typo.
_MAX_RATE: Final = 1e9


@final
@dataclass(frozen=True, slots=True)
class BucketStatistics:
    rate: float
    burst: float
    tokens: float
    admitted: int
    rejected: int


@final
class TokenBucket:
    """A token bucket: ``rate`` tokens per second, holding at most ``burst``; starts full.

    Over any interval of length ``t`` it admits at most ``rate * t + burst`` tokens' worth of
    calls: the bucket holds at most ``burst`` at the start of the interval and gains at most
    ``rate * t`` during it. Refill is computed lazily from the time since the last take, so
    there is no timer.

    Default ``burst`` = 2 x ``rate``: motan-go's ``rateLimit`` filter capacity; motan-go also
    clamps it to [1000, 5000], which resmesh does not (a small cluster's 50/s limit would
    otherwise allow a burst of 1000). Floored at 1 so that a rate below 0.5/s can still admit
    a call.
    """

    __slots__ = ("_last", "_tokens", "admitted", "burst", "rate", "rejected")

    def __init__(self, rate: float, burst: float | None = None, now: float = 0.0) -> None:
        """Create a full bucket.

        Raises:
            ValueError: ``rate`` or ``burst`` is not positive: a zero rate would reject every
                call forever, which is a degrade switch, not a rate limit.
        """
        if not rate > 0:
            raise ValueError(f"rate must be > 0 tokens per second, got {rate!r}")
        if burst is None:
            burst = max(1.0, 2.0 * rate)
        if not burst > 0:
            raise ValueError(f"burst must be > 0, got {burst!r}")
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = self.burst
        self._last = now
        self.admitted = 0
        self.rejected = 0

    def try_take(self, now: float, n: float = 1.0) -> bool:
        """Take ``n`` tokens if the bucket holds them at ``now``; say whether it did.

        A ``now`` before the last one adds nothing (time never runs backwards here).
        """
        tokens = self._tokens
        elapsed = now - self._last
        if elapsed > 0.0:
            tokens += elapsed * self.rate
            if tokens > self.burst:
                tokens = self.burst
            self._last = now
        if tokens >= n - _ROUNDING:
            self._tokens = tokens - n
            self.admitted += 1
            return True
        self._tokens = tokens
        self.rejected += 1
        return False

    def take_batch(self, now: float, n: int) -> bool:
        """Take ``n`` tokens for ``n`` calls admitted together, if the bucket holds them.

        A shortfall is not a refusal (the caller then admits the calls one by one), so it
        counts nothing; statistics count the calls, not the take.
        """
        if self.try_take(now, n):
            self.admitted += n - 1
            return True
        self.rejected -= 1
        return False

    def give_back(self, n: float = 1.0, calls: int = 1) -> None:
        """Return ``n`` tokens taken for ``calls`` calls that another limit then refused."""
        tokens = self._tokens + n
        self._tokens = tokens if tokens < self.burst else self.burst
        self.admitted -= calls

    def tokens(self, now: float) -> float:
        """How many tokens the bucket holds at ``now``."""
        elapsed = now - self._last
        if elapsed <= 0.0:
            return self._tokens
        return min(self.burst, self._tokens + elapsed * self.rate)

    def statistics(self, now: float) -> BucketStatistics:
        return BucketStatistics(
            rate=self.rate,
            burst=self.burst,
            tokens=self.tokens(now),
            admitted=self.admitted,
            rejected=self.rejected,
        )


@final
@dataclass(frozen=True, slots=True)
class ConcurrencyStatistics:
    limit: int
    in_flight: int
    admitted: int
    rejected: int


@final
class ConcurrencyLimit:
    """At most ``limit`` calls in flight; the rest are refused, not queued.

    ``limit`` may be changed at run time; lowering it below :attr:`in_flight` refuses new
    calls until enough of the running ones leave.
    """

    __slots__ = ("admitted", "in_flight", "limit", "rejected")

    def __init__(self, limit: int) -> None:
        """Create an idle limit.

        Raises:
            ValueError: ``limit`` is below 1: a cap of 0 refuses everything, which is a degrade
                switch, not a concurrency limit.
        """
        if limit < 1:
            raise ValueError(f"concurrency limit must be >= 1, got {limit!r}")
        self.limit = limit
        self.in_flight = 0
        self.admitted = 0
        self.rejected = 0

    def try_enter(self) -> bool:
        """Count one more call in flight if that stays within the limit; say whether it did."""
        if self.in_flight < self.limit:
            self.in_flight += 1
            self.admitted += 1
            return True
        self.rejected += 1
        return False

    def enter_many(self, n: int) -> None:
        """Count ``n`` calls in flight at once (the caller checked they fit)."""
        self.in_flight += n
        self.admitted += n

    def leave(self) -> None:
        """A call admitted by :meth:`try_enter` finished (never goes below zero)."""
        if self.in_flight > 0:
            self.in_flight -= 1

    def undo(self) -> None:
        """Take back a :meth:`try_enter` for a call that another limit then refused."""
        self.in_flight -= 1
        self.admitted -= 1

    def statistics(self) -> ConcurrencyStatistics:
        return ConcurrencyStatistics(
            limit=self.limit,
            in_flight=self.in_flight,
            admitted=self.admitted,
            rejected=self.rejected,
        )


@final
@dataclass(frozen=True, slots=True)
class LimitConfig:
    """The limits of one scope (a cluster, or one operation of it); the configuration's
    ``limit:``.

    Attributes:
        rate: calls per second (token bucket refill); ``None`` for no rate limit.
        burst: bucket size; ``None`` for 2 x ``rate`` (motan-go's rate limiter).
        concurrency: calls in flight at most; ``None`` for no cap. Envoy's cluster
            ``max_requests`` default of 1024 is a sensible value to configure, but resmesh
            imposes no cap unless asked (new limits default to off: Envoy's "0 % enforced,
            for safety" for runtime features).
    """

    rate: float | None = knob(
        None,
        Kind.NUMBER,
        high=_MAX_RATE,
        low_open=True,
        example="1000",
        at_zero=(
            "a rate of 0 would refuse every call",
            "write rate: null for no limit; to refuse calls on purpose, use switch: {mode: error}",
        ),
    )
    burst: float | None = knob(None, Kind.NUMBER, low=1, high=_MAX_RATE, example="2000")
    concurrency: int | None = knob(None, Kind.INT, low=1, high=1_000_000, example="256")


@final
@dataclass(frozen=True, slots=True)
class LimiterConfig:
    """Limits for a cluster as a whole and for some of its operations.

    An operation's limits apply *in addition to* the cluster's: a call must pass both.
    Operations not named in ``operations`` are limited by the cluster's limits only.
    """

    cluster: LimitConfig = LimitConfig()
    operations: Mapping[str, LimitConfig] = field(default_factory=dict)


@final
@dataclass(frozen=True, slots=True)
class ScopeStatistics:
    name: str
    rate: BucketStatistics | None
    concurrency: ConcurrencyStatistics | None


@final
@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    cluster: ScopeStatistics
    operations: tuple[ScopeStatistics, ...]


def _share(config: LimitConfig, workers: int) -> LimitConfig:
    """One worker's share of a limit the gateway's ``workers`` processes enforce together.

    Each worker process limits its own calls, and the kernel spreads client connections evenly
    over them (``SO_REUSEPORT``), so each enforces ``1/workers`` of the rate and of the burst,
    and of the concurrency cap rounded up (a cap never drops to 0). The gateway as a whole then
    admits the configured limit, give or take the unevenness of the spread: with few client
    connections, a busy one's worker may refuse while another has room. Envoy's local rate
    limit is per instance in the same way; a global limit needs a shared store.
    """
    if workers <= 1:
        return config
    return LimitConfig(
        rate=None if config.rate is None else config.rate / workers,
        burst=None if config.burst is None else max(1.0, config.burst / workers),
        concurrency=None if config.concurrency is None else -(-config.concurrency // workers),
    )


@final
class _Scope:
    """The bucket and cap of one scope, with the rejection texts precomputed (no formatting
    per call)."""

    __slots__ = ("bucket", "cap", "cap_message", "name", "rate_message")

    def __init__(
        self, name: str, description: str, config: LimitConfig, now: float, workers: int = 1
    ) -> None:
        self.name = name
        share = _share(config, workers)
        self.bucket = None if share.rate is None else TokenBucket(share.rate, share.burst, now=now)
        self.cap = None if share.concurrency is None else ConcurrencyLimit(share.concurrency)
        here = f" over {workers} workers" if workers > 1 else ""
        self.rate_message = (
            ""
            if config.rate is None
            else f"rate limit of {description} ({config.rate:g}/s{here}) exceeded"
        )
        self.cap_message = (
            ""
            if config.concurrency is None
            else f"concurrency limit of {description} ({config.concurrency}{here}) exceeded"
        )

    def statistics(self, now: float) -> ScopeStatistics:
        return ScopeStatistics(
            name=self.name,
            rate=None if self.bucket is None else self.bucket.statistics(now),
            concurrency=None if self.cap is None else self.cap.statistics(),
        )


@final
class Limiter:
    """The rate and concurrency limits of one cluster and its operations.

    Call :meth:`admit` before a call goes on; if it returns ``None`` the call is admitted and
    :meth:`done` must be called exactly once when it finishes (whatever its outcome, including
    cancellation: put it in a ``finally``). If it returns a string the call is refused and the
    string names the limit, e.g. ``"rate limit of cluster feed-cache (1000/s) exceeded"``; the
    frontend puts it in its protocol's error reply.
    """

    __slots__ = ("_cluster", "_operations", "cluster", "config", "scope", "workers")

    def __init__(
        self,
        cluster: str,
        config: LimiterConfig,
        now: float = 0.0,
        *,
        workers: int = 1,
        scope: str | None = None,
    ) -> None:
        """Create the limiter with full buckets.

        ``workers``: how many gateway processes share the configured limits (each enforces
        its share: see :func:`_share`). ``scope``: what the whole-scope limit is of, in its
        refusals (default ``cluster NAME``; a user's limits say ``user NAME on CLUSTER``).

        Raises:
            ValueError: a configured rate, burst or concurrency is not positive.
        """
        self.cluster = cluster
        self.config = config
        self.workers = workers
        self.scope = scope or f"cluster {cluster}"
        self._cluster = _Scope(cluster, self.scope, config.cluster, now, workers)
        self._operations = {
            operation: _Scope(operation, f"{cluster} {operation}", limits, now, workers)
            for operation, limits in config.operations.items()
        }

    def admit(self, operation: str, now: float) -> str | None:
        """Admit one call of ``operation`` at ``now``: ``None``, or the text of the limit hit.

        Concurrency is checked before rate, so a call refused for concurrency does not use up a
        token; a token or slot taken for a limit that passed is given back when a later limit
        refuses the call.
        """
        # ConcurrencyLimit.try_enter/leave are inlined here: this runs for every command.
        scope = self._cluster
        op = self._operations.get(operation)
        cap = scope.cap
        if cap is not None:
            if cap.in_flight >= cap.limit:
                cap.rejected += 1
                return scope.cap_message
            cap.in_flight += 1
            cap.admitted += 1
        if op is not None:
            op_cap = op.cap
            if op_cap is not None:
                if op_cap.in_flight >= op_cap.limit:
                    op_cap.rejected += 1
                    if cap is not None:
                        cap.undo()
                    return op.cap_message
                op_cap.in_flight += 1
                op_cap.admitted += 1
        bucket = scope.bucket
        if bucket is not None and not bucket.try_take(now):
            self._undo_caps(op)
            return scope.rate_message
        if op is not None:
            op_bucket = op.bucket
            if op_bucket is not None and not op_bucket.try_take(now):
                if bucket is not None:
                    bucket.give_back()
                self._undo_caps(op)
                return op.rate_message
        return None

    def admit_batch(self, counts: Mapping[str, int], total: int, now: float) -> bool:
        """Admit a batch of calls at once, all or none: ``counts`` maps each operation to its
        number of calls, ``total`` is their sum.

        Why: a pipeline of 16 commands then pays for one admission per scope instead of 16
        (per-call admission would be most of governance's cost at ``-P 16``). On ``False``
        nothing was taken, and the caller admits the calls one by one to find which are
        refused. Release with :meth:`done_batch` and the same arguments.
        """
        scope = self._cluster
        cap = scope.cap
        if cap is not None and cap.in_flight + total > cap.limit:
            return False
        operations = self._operations
        if len(counts) == 1:  # one command repeated, the usual pipeline: a shorter path
            for name in counts:
                return self._admit_one_operation(operations.get(name), total, now)
        limited = (
            [(op, n) for name, n in counts.items() if (op := operations.get(name)) is not None]
            if operations
            else None
        )
        if limited:
            for op, n in limited:
                op_cap = op.cap
                if op_cap is not None and op_cap.in_flight + n > op_cap.limit:
                    return False
        bucket = scope.bucket
        if bucket is not None and not bucket.take_batch(now, total):
            return False
        if limited:
            for index, (op, n) in enumerate(limited):
                op_bucket = op.bucket
                if op_bucket is not None and not op_bucket.take_batch(now, n):
                    if bucket is not None:
                        bucket.give_back(total, total)
                    for earlier, m in limited[:index]:
                        if earlier.bucket is not None:
                            earlier.bucket.give_back(m, m)
                    return False
            for op, n in limited:
                if op.cap is not None:
                    op.cap.enter_many(n)
        if cap is not None:
            cap.enter_many(total)
        return True

    def _admit_one_operation(self, op: _Scope | None, n: int, now: float) -> bool:
        """:meth:`admit_batch` for ``n`` calls of one operation (scope ``op``, if limited),
        the cluster's concurrency cap already checked."""
        op_cap = op.cap if op is not None else None
        if op_cap is not None and op_cap.in_flight + n > op_cap.limit:
            return False
        bucket = self._cluster.bucket
        if bucket is not None and not bucket.take_batch(now, n):
            return False
        op_bucket = op.bucket if op is not None else None
        if op_bucket is not None and not op_bucket.take_batch(now, n):
            if bucket is not None:
                bucket.give_back(n, n)
            return False
        cap = self._cluster.cap
        if cap is not None:
            cap.enter_many(n)
        if op_cap is not None:
            op_cap.enter_many(n)
        return True

    def done_batch(self, counts: Mapping[str, int], total: int) -> None:
        """The calls :meth:`admit_batch` admitted together have finished."""
        cap = self._cluster.cap
        if cap is not None:
            cap.in_flight = cap.in_flight - total if cap.in_flight > total else 0
        operations = self._operations
        if operations:
            for name, n in counts.items():
                op = operations.get(name)
                if op is not None and (cap := op.cap) is not None:
                    cap.in_flight = cap.in_flight - n if cap.in_flight > n else 0

    def _undo_caps(self, op: _Scope | None) -> None:
        if self._cluster.cap is not None:
            self._cluster.cap.undo()
        if op is not None and op.cap is not None:
            op.cap.undo()

    def done(self, operation: str) -> None:
        """A call of ``operation`` that :meth:`admit` let in has finished."""
        cap = self._cluster.cap
        if cap is not None and cap.in_flight > 0:
            cap.in_flight -= 1
        op = self._operations.get(operation)
        if op is not None:
            cap = op.cap
            if cap is not None and cap.in_flight > 0:
                cap.in_flight -= 1

    def reconfigure(self, config: LimiterConfig, now: float) -> None:
        """Apply new limits at run time (a registry update).

        In-flight counts carry over to a scope that keeps a concurrency cap, so calls admitted
        under the old limits still count against the new ones; bucket fill levels carry over
        too (capped at the new burst), so a change of limits is not a free burst. A cap new
        to a scope starts at 0 in flight: the calls already running there are not counted,
        and as each ends it frees a slot, so for as long as they run the scope may admit up
        to that many calls over its cap (a bounded overshoot, once, at the change).

        Raises:
            ValueError: a configured rate, burst or concurrency is not positive.
        """
        fresh = Limiter(self.cluster, config, now, workers=self.workers, scope=self.scope)
        _carry_over(self._cluster, fresh._cluster, now)
        for name, scope in fresh._operations.items():
            old = self._operations.get(name)
            if old is not None:
                _carry_over(old, scope, now)
        self.config = config
        self._cluster = fresh._cluster
        self._operations = fresh._operations

    def statistics(self, now: float) -> LimiterStatistics:
        return LimiterStatistics(
            cluster=self._cluster.statistics(now),
            operations=tuple(
                self._operations[name].statistics(now) for name in sorted(self._operations)
            ),
        )


def _carry_over(old: _Scope, new: _Scope, now: float) -> None:
    if old.cap is not None and new.cap is not None:
        new.cap.in_flight = old.cap.in_flight
    if old.bucket is not None and new.bucket is not None:
        new.bucket._tokens = min(new.bucket.burst, old.bucket.tokens(now))
        new.bucket._last = now
