"""The HA engine: how every run of every protocol reaches a node, and what happens when the
node is slow or fails. The one place governance awaits.

A frontend decides per call (degrade switch, limits:
:class:`~resmesh.policies.chain.ClusterPolicies`) and hands the engine a
:class:`~resmesh.call.Run`; the engine chooses the node, asks its breaker, sends the run through
the protocol's :class:`Transport`, waits, judges the answer, and fails over or backs the run up.
One semantic for every protocol:

* **Where.** An idempotent run of a cluster that spreads reads goes where the router and the
  balancer say, among the nodes the breakers and the outlier detector leave available; any
  other run goes to the primary (or, in a cluster without one, to the balancer's choice), once.
* **Breaker refusals.** A node whose breaker refuses is skipped for another untried node: not
  a retry, nothing is spent.
* **Failover.** Only a node failure (``LOCAL_ERROR``, ``UPSTREAM_ERROR``) of an idempotent run is
  retried, on a node no earlier attempt used (Envoy's ``previous_hosts``), while the retry
  budget allows (Envoy's ``retry_budget``), and at most ``failover.max_attempts`` attempts
  fail before the run gives up.
* **Backup requests** (*The Tail at Scale*, Dean & Barroso, CACM 2013; motan-go's backup
  request): if an idempotent run has not been answered after its operation's hedge delay, the
  same run goes to another node too, within the hedge budget; the first answer wins. A node
  failure does not win: the other attempt is awaited. An attempt that fails *before* the hedge
  delay is followed at once by the next one (a retry), not after the delay (gRPC A6 does the
  same after a non-fatal status).
* **Losers.** An attempt that lost the race is cancelled where the protocol can
  (:meth:`Attempt.cancel`); where it cannot (a Redis command already sent), its answer is
  dropped and it stays counted in flight on its node until it ends, so a stalled node stops
  being chosen by the least-loaded balancer.
* **Deadline.** The run's deadline bounds everything: no attempt, retry or backup starts after
  it, and the transport fails an attempt still unanswered at it.

Runs that stay on one node for a whole session (Redis MULTI/WATCH, blocking commands, pub/sub;
an SQL transaction) go through :meth:`HAEngine.execute_pinned`: the breaker is asked when the
session starts on its node and every exchange's outcome is counted, but nothing is retried or
hedged mid-session. A run whose calls live on different nodes (sharding) goes through
:meth:`HAEngine.execute_split`.

Nothing here spawns a task per run: the task that sends a run parks once on a
:class:`~resmesh.policies.waiting.Waiter` its attempts share, and one timer task per cluster
(:class:`~resmesh.policies.waiting.Alarms`) fires hedge delays.
"""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

import trio

from ..call import Call, Outcome, Run, Unavailable
from ..observe.metrics import Refusal
from .waiting import Alarms, Waiter, wait_first

if TYPE_CHECKING:
    from ..cluster.topology import Node
    from .chain import ClusterPolicies
    from .hedge import HedgeDelay

__all__ = ["Attempt", "HAEngine", "Transport"]

_OK = Outcome.OK
_LOCAL = Outcome.LOCAL_ERROR
_REJECTED = Outcome.REJECTED
#: Why a run got no attempt: every node refused or none is left; its deadline came first.
_NO_NODE = "no node left to try"
_LATE = "deadline passed before sending"
#: The waiter of attempts nobody parks on (:meth:`HAEngine.start`): its task stays ``None``.
_NOBODY = Waiter()

A = TypeVar("A", bound="Attempt")
A_co = TypeVar("A_co", bound="Attempt", covariant=True)
T = TypeVar("T")


class Attempt:
    """One run in flight on one node. A :class:`Transport` makes it (a subclass holds the
    answer in the protocol's terms) and calls :meth:`finish` once it is done; the engine fills
    in the rest.

    Attributes:
        waiter: the parked task to wake when done (shared by the run's attempts).
        error: why the node gave no answer, once that is known.
        node: the node it was sent to; ``sent``: when (the engine sets both).
        probe: whether it is its node's half-open breaker probe.
        on_done: called when it finishes, for an attempt nobody waits for any more but whose
            end still counts (a hedge's loser leaves its node's load then).
        errors: whether some call's answer is an error, so the calls' outcomes may differ
            (then the metrics ask :meth:`call_outcomes`); set by the transport.
        received_bytes: bytes of the answer, where the transport counts them (else 0).
    """

    __slots__ = ("error", "errors", "node", "on_done", "probe", "received_bytes", "sent", "waiter")

    def __init__(self, waiter: Waiter) -> None:
        self.waiter = waiter
        self.error: Unavailable | None = None
        self.node: Any = None
        self.sent = 0.0
        self.probe = False
        self.on_done: Callable[[Attempt], None] | None = None
        self.errors = False
        self.received_bytes = 0

    @property
    def done(self) -> bool:
        """The node answered, or the attempt failed."""
        raise NotImplementedError

    def outcome(self) -> Outcome:
        """How a finished attempt that got an answer ended, for its node's health (``OK``,
        ``APP_ERROR``, ``UPSTREAM_ERROR``): the protocol reads its answer."""
        return _OK

    def call_outcomes(self) -> Sequence[Outcome] | None:
        """Each call's own outcome, when :attr:`errors` says they may differ from
        :meth:`outcome`'s (a pipeline with an error reply among its answers); ``None``: all
        alike."""
        return None

    def cancel(self) -> None:
        """This attempt lost a race: stop it if the protocol can (default: it cannot; its
        answer is dropped when it comes)."""

    def finish(self) -> None:
        """Called by the transport once the attempt is done."""
        waiter = self.waiter
        if waiter.task is not None:
            waiter.wake()
        on_done = self.on_done
        if on_done is not None:
            self.on_done = None
            on_done(self)


class Transport(Protocol[A_co]):
    """How a protocol sends a run to a node without waiting for the answer.

    ``submit`` never waits, not even for a connection: if none is open, the transport opens
    one and sends once it is (or fails the attempt), so no attempt holds back another's
    answer. The attempt must be failed (``error`` set, :meth:`Attempt.finish` called) if no
    answer has come by ``run.deadline``.
    """

    def submit(self, node: Node, run: Run, waiter: Waiter) -> A_co:
        """Send ``run`` to ``node``, now or as soon as a connection is open.

        Raises:
            Unavailable: the node cannot take it (it left the cluster, its connection is
                full).
        """
        ...


class HAEngine(Generic[A]):
    """Sends runs of one cluster to its nodes under its policies (the module docstring says
    how). Start :meth:`run` in a nursery that outlives every call: it keeps the hedge delays'
    timer."""

    def __init__(self, policies: ClusterPolicies, transport: Transport[A]) -> None:
        self.policies = policies
        self.transport = transport
        self.alarms = Alarms()
        self._clock = trio.lowlevel.current_clock()

    async def run(self) -> None:
        """The engine's timer task, until cancelled."""
        await self.alarms.run()

    # ------------------------------------------------------------------------------------
    # One run, any node

    async def execute(self, run: Run) -> A:
        """Send ``run`` to a node, fail it over and back it up as the policies say, and
        return the attempt that answered (its answer may still be the node's own error, if
        no other node could do better).

        Raises:
            Unavailable: no node answered: every attempt failed, or none could be made.
        """
        policies = self.policies
        now = self._clock.current_time()
        if run.idempotent and policies.spreads_reads:
            waiter = Waiter()
            spread = _Spread(self, run, lambda _: waiter.wake())
            spread.begin(now)
            try:
                await wait_first((spread,), waiter)
            except BaseException:
                spread.abandon()  # the caller is gone; the nodes still have the run
                raise
            result = spread.result
            if isinstance(result, Unavailable):
                raise result
            assert result is not None
            return result
        node = policies.primary
        if node is None:
            node = policies.pick(now, (), run.key)
            if node is None:
                failure = Unavailable(None, _NO_NODE, _REJECTED)
                self._report_failure(run, failure, now)
                raise failure
        try:
            attempt = self._send(node, run, Waiter(), now)
        except Unavailable as exc:
            self._report_failure(run, exc, now)
            raise
        if not attempt.done:
            try:
                await wait_first((attempt,), attempt.waiter)
            except BaseException:
                self._drop((attempt,))  # the caller is gone; the node still has the run
                raise
        later = self._clock.current_time()
        outcome = self._settle(attempt, later)
        self._report(run, attempt, outcome, later - now)
        if attempt.error is not None:
            raise attempt.error
        return attempt

    def start(
        self, run: Run, on_done: Callable[[A | Unavailable], None], now: float | None = None
    ) -> None:
        """Send a run and return at once: ``on_done`` gets the attempt that answered, or why
        none did, from the task that reads the node's answer (or fires the hedge delay), so
        the caller's task need not wake for it (at ``-P 1`` that wakeup is a large share of a
        command's CPU). The run is failed over and backed up exactly as :meth:`execute` does.

        ``on_done`` runs inside another task (a backend reader, the engine's timer): it must
        not block or raise. ``now``: the caller's reading of the clock, if it has just taken
        one.
        """
        policies = self.policies
        if now is None:
            now = self._clock.current_time()
        if run.idempotent and policies.spreads_reads:
            _Spread(self, run, on_done).begin(now)
            return
        node = policies.primary
        if node is None:
            node = policies.pick(now, (), run.key)
        if node is None:
            failure = Unavailable(None, _NO_NODE, _REJECTED)
            self._report_failure(run, failure, now)
            on_done(failure)
            return
        try:
            attempt = self._send(node, run, _NOBODY, now)
        except Unavailable as exc:
            self._report_failure(run, exc, now)
            on_done(exc)
            return

        def finished(done: Attempt) -> None:
            later = self._clock.current_time()
            self._report(run, done, self._settle(done, later), later - now)
            on_done(done.error if done.error is not None else attempt)

        attempt.on_done = finished

    def _back_up(
        self, run: Run, waiter: Waiter, tried: list[Node], now: float, hedger: HedgeDelay
    ) -> A | None:
        """The backup request of a slow run, to a node not tried yet, paid from the hedge
        budget only if it goes out. ``None`` if it does not."""
        if now >= run.deadline or not hedger.budget.try_hedge():
            return None
        launched = self._launch(run, waiter, tried, now)
        if isinstance(launched, Unavailable):
            if launched.outcome is _REJECTED:
                hedger.budget.refund()  # no node to send it to: nothing was spent
            return None
        return launched

    def _launch(self, run: Run, waiter: Waiter, tried: list[Node], now: float) -> A | Unavailable:
        """Send ``run`` to a node not in ``tried`` (adding every node it considers): the
        attempt, or why it could not go: the failure to send it (``LOCAL_ERROR``, counted
        against that node), or ``REJECTED`` when no node is left (every remaining one's
        breaker refuses, or there is none)."""
        if now >= run.deadline:
            return Unavailable(None, _LATE, _REJECTED)
        policies = self.policies
        key = run.key
        while True:
            node = policies.pick(now, tried, key)
            if node is None:
                if not tried:
                    node = policies.primary  # every route weight is 0: reads go there
                if node is None:
                    return Unavailable(None, _NO_NODE, _REJECTED)
            tried.append(node)
            try:
                return self._send(node, run, waiter, now)
            except Unavailable as exc:
                if exc.outcome is not _REJECTED:
                    return exc
                # The breaker refused (a race for its probe): another node, not a retry.

    def _send(self, node: Node, run: Run, waiter: Waiter, now: float) -> A:
        """Ask ``node``'s breaker, then hand ``run`` to the transport.

        Raises:
            Unavailable: the deadline has passed or the breaker refuses (``REJECTED``,
                nothing counted), or the transport cannot send (``LOCAL_ERROR``, counted
                against the node).
        """
        if now >= run.deadline:
            # Out of time before sending: the node is not to blame, nothing is counted.
            raise Unavailable(node.address, _LATE, _REJECTED)
        policies = self.policies
        probe = policies.begin(node, now)
        if isinstance(probe, str):
            raise Unavailable(node.address, probe, _REJECTED)
        try:
            attempt = self.transport.submit(node, run, waiter)
        except Unavailable as exc:
            policies.settle(node, exc.outcome, 0.0, now, probe is True)
            raise
        attempt.node = node
        attempt.sent = now
        attempt.probe = probe is True
        return attempt

    def _settle(self, attempt: Attempt, now: float) -> Outcome:
        """A finished attempt leaves its node's load and counts for its node's health."""
        outcome = _LOCAL if attempt.error is not None else attempt.outcome()
        self.policies.settle(attempt.node, outcome, now - attempt.sent, now, attempt.probe)
        return outcome

    def _report(self, run: Run, attempt: Attempt, outcome: Outcome, latency: float) -> None:
        """Count the run's calls as ended by ``attempt`` (one place for every protocol)."""
        metrics = self.policies.metrics
        if metrics is not None:
            metrics.run_ended(
                run.calls,
                attempt.node,
                outcome,
                latency,
                len(run.payload),
                attempt.received_bytes,
                attempt.call_outcomes() if attempt.errors and outcome is not _LOCAL else None,
                run.request_id,
                run.operation,
            )

    def _report_failure(self, run: Run, failure: Unavailable, now: float) -> None:
        """Count the run's calls as ended with no answer: refused (no node could take it, or
        its deadline came first), or failed on the node it was sent to."""
        policies = self.policies
        metrics = policies.metrics
        if metrics is None:
            return
        if failure.outcome is _REJECTED:
            refusal = Refusal.DEADLINE if failure.reason == _LATE else Refusal.NO_NODE
            for call in run.calls:
                metrics.refused(call.op.name, refusal)
            return
        node = policies.node_at(failure.node) if failure.node is not None else None
        latency = self._clock.current_time() - now
        metrics.run_ended(
            run.calls, node, failure.outcome, latency, len(run.payload), request_id=run.request_id
        )

    def _drop(self, losers: Sequence[A]) -> None:
        """Attempts nobody waits for any more (they lost the race, or their caller is gone):
        cancelled if the protocol can; either way they stay in flight on their node until they
        end, and a late failure still counts against it."""
        policies = self.policies
        for attempt in losers:
            if attempt.done:
                self._settle(attempt, self._clock.current_time())
                continue
            policies.release(attempt.node, attempt.probe)
            attempt.on_done = self._loser_done
            attempt.cancel()

    def _loser_done(self, attempt: Attempt) -> None:
        policies = self.policies
        policies.unload(attempt.node)
        if attempt.error is not None:
            policies.record_outlier(attempt.node, _LOCAL, self._clock.current_time())

    # ------------------------------------------------------------------------------------
    # A run split over several nodes (sharding): each part to its own node, no failover

    async def execute_split(self, parts: Mapping[Node, Run]) -> dict[Node, A | Unavailable]:
        """Send each node its part at once and wait for all (one shared waiter, no task per
        node). A key lives on one node only, so nothing is retried or hedged: a part whose
        node fails comes back as its :class:`~resmesh.call.Unavailable`."""
        now = self._clock.current_time()
        waiter = Waiter()
        results: dict[Node, A | Unavailable] = {}
        waiting: list[A] = []
        try:
            runs: dict[Node, Run] = {}
            for node, run in parts.items():
                try:
                    waiting.append(self._send(node, run, waiter, now))
                    runs[node] = run
                except Unavailable as exc:
                    self._report_failure(run, exc, now)
                    results[node] = exc
            while waiting:
                done = await wait_first(waiting, waiter)
                assert done is not None
                waiting.remove(done)
                later = self._clock.current_time()
                self._report(runs[done.node], done, self._settle(done, later), later - now)
                results[done.node] = done.error or done
        except BaseException:
            self._drop(waiting)  # the caller is gone; the nodes still have their parts
            raise
        return results

    # ------------------------------------------------------------------------------------
    # Pinned sessions

    async def execute_pinned(
        self,
        node: Node,
        exchange: Callable[[], Awaitable[T]],
        judge: Callable[[T], Outcome],
        *,
        timed: bool = True,
        calls: Sequence[Call] = (),
        sent: int = 0,
        received: Callable[[], int] | None = None,
        request_id: str | None = None,
        last_try: bool = True,
    ) -> T:
        """One exchange of a session pinned to ``node`` (the session's task does the I/O on
        its own connection: ``exchange``), counted for the node's health by ``judge`` and,
        when ``calls`` are given (with the bytes ``sent``, those ``received`` once it is done,
        and the app's ``request_id``), in the metrics. ``last_try=False``: if the node gives
        no answer the caller sends the calls elsewhere, where they are counted; here only the
        attempt's failure is.

        The session is committed to its node, so nothing is refused, retried or hedged here;
        the breaker had its say when the session started there
        (:meth:`~resmesh.policies.chain.ClusterPolicies.refuses`). ``timed``: whether the
        exchange's latency says anything about the node (a blocking command's does not: it
        waits for data by design).

        Raises:
            Unavailable: whatever ``exchange`` raised (its node gave no answer).
        """
        policies = self.policies
        now = self._clock.current_time()
        policies.begin_committed(node)
        try:
            result = await exchange()
        except Unavailable as exc:
            later = self._clock.current_time()
            policies.settle(node, exc.outcome, later - now if timed else 0.0, later)
            metrics = policies.metrics
            if metrics is not None and calls:
                if last_try:
                    metrics.run_ended(
                        calls, node, exc.outcome, later - now, sent, request_id=request_id
                    )
                else:
                    metrics.attempt_failed(calls[0].op, node)
            raise
        except BaseException:
            policies.abandon(node, False)
            raise
        later = self._clock.current_time()
        outcome = judge(result)
        policies.settle(node, outcome, later - now if timed else 0.0, later)
        if policies.metrics is not None:
            size = received() if received is not None else 0
            policies.metrics.run_ended(
                calls, node, outcome, later - now, sent, size, request_id=request_id
            )
        return result


class _HedgeAlarm(Waiter):
    """The hedge delay of one :class:`_Spread`: :class:`~resmesh.policies.waiting.Alarms`
    fires it as it would wake a parked task."""

    __slots__ = ("spread",)

    def __init__(self, spread: _Spread[Any]) -> None:
        super().__init__()
        self.spread = spread

    def wake(self) -> None:
        self.spread._on_alarm(self)


class _Spread(Generic[A]):
    """An idempotent run in a cluster that spreads reads: sent, backed up and failed over
    (the module docstring says when), driven by its attempts' ends and its hedge alarm rather
    than by a task, so the runs of a connection that multiplexes many (Motan2) need no task
    each, and a task that does wait for one (:meth:`HAEngine.execute`) parks once.

    ``on_done`` gets the attempt that answered (possibly with the node's own error, when no
    other node did better) or the :class:`~resmesh.call.Unavailable` that says why none did,
    exactly once, unless the run is :meth:`abandon`-ed first.
    """

    __slots__ = (
        "_alarm",
        "_answered",
        "_backup",
        "_began",
        "_delay",
        "_engine",
        "_failure",
        "_failures",
        "_hedge_at",
        "_hedger",
        "_on_done",
        "_racing",
        "_retries",
        "_run",
        "_tried",
        "result",
    )

    def __init__(
        self, engine: HAEngine[A], run: Run, on_done: Callable[[A | Unavailable], None]
    ) -> None:
        self._engine = engine
        self._run = run
        self._on_done = on_done
        operation = run.operation
        self._hedger: HedgeDelay | None = engine.policies.hedger(
            operation.name if operation is not None else None
        )
        self._delay: float | None = None
        self._hedge_at = math.inf
        self._alarm: _HedgeAlarm | None = None
        #: Every node an attempt went to (or whose breaker refused): none is used twice.
        self._tried: list[Node] = []
        self._racing: list[A] = []
        self._backup: A | None = None
        #: The best failure so far: an answer that was the node's error (LOADING...) beats a
        #: failure with no answer, which beats a refusal.
        self._answered: A | None = None
        self._failure: Unavailable | None = None
        self._failures = 0
        self._retries = 0
        #: What ``on_done`` got; ``None`` while the run is in flight.
        self.result: A | Unavailable | None = None

    @property
    def done(self) -> bool:
        return self.result is not None

    def begin(self, now: float) -> None:
        self._began = now
        hedger = self._hedger
        if hedger is not None:
            hedger.budget.record_call()  # every hedgeable run earns budget, warm or not
            self._delay = delay = hedger.delay(now)
            if delay is not None:
                self._hedge_at = now + delay
        self._engine.policies.retry_budget.request_started()
        self._go_on(self._engine._launch(self._run, _NOBODY, self._tried, now), now)

    def abandon(self) -> None:
        """Nobody wants the answer any more: what is in flight is dropped (it stays counted on
        its node until it ends), and ``on_done`` is not called."""
        if self.result is None:
            racing, self._racing = self._racing, []
            self._end(Unavailable(None, "abandoned", _REJECTED), notify=False)
            if racing:
                self._engine._drop(racing)

    def _go_on(self, launched: A | Unavailable | None, now: float) -> None:
        """After a launch (``None``: none was made): race what is in flight, or retry on
        another node, or end."""
        engine = self._engine
        while True:
            exhausted = False
            if isinstance(launched, Unavailable):
                if launched.outcome is _REJECTED:
                    exhausted = True  # no node left to try
                else:
                    self._failures += 1
                if self._failure is None or launched.outcome is not _REJECTED:
                    self._failure = launched
            elif launched is not None:
                self._racing.append(launched)
                if launched.done:
                    self._finished(launched)
                    return
                launched.on_done = self._finished
            if self._racing:
                if self._hedge_at < math.inf and self._alarm is None:
                    self._alarm = _HedgeAlarm(self)
                    engine.alarms.set(self._alarm, self._hedge_at)
                return
            # Nothing in flight: a retry on another node, if allowed.
            if (
                exhausted
                or self._failures >= engine.policies.max_attempts
                or now >= self._run.deadline
                or not engine.policies.retry_budget.try_start_retry()
            ):
                answered = self._answered
                if answered is not None:
                    self._end(answered)
                else:
                    assert self._failure is not None
                    self._end(self._failure)
                return
            self._retries += 1
            if self._delay is not None and self._backup is None:
                # The retry may be backed up in turn, after a delay counted from now.
                self._disarm()
                self._hedge_at = now + self._delay
            launched = engine._launch(self._run, _NOBODY, self._tried, now)

    def _on_alarm(self, alarm: _HedgeAlarm) -> None:
        """The hedge delay passed with the run unanswered: back it up on another node."""
        if alarm is not self._alarm or self.result is not None:
            return
        self._alarm = None
        self._hedge_at = math.inf
        hedger = self._hedger
        assert hedger is not None
        engine = self._engine
        now = engine._clock.current_time()
        self._backup = backup = engine._back_up(self._run, _NOBODY, self._tried, now, hedger)
        self._go_on(backup, now)

    def _finished(self, done: Attempt) -> None:
        """One of the racing attempts ended."""
        if self.result is not None:
            return
        engine = self._engine
        now = engine._clock.current_time()
        racing = self._racing
        racing.remove(done)  # type: ignore[arg-type]
        outcome = engine._settle(done, now)
        if not outcome.node_failure:
            hedger = self._hedger
            if done is self._backup:
                assert hedger is not None
                hedger.budget.wins += 1
            if racing:
                self._racing = []
                engine._drop(racing)
            self._end(done)  # type: ignore[arg-type]
            return
        self._failures += 1
        metrics = engine.policies.metrics
        if metrics is not None:
            metrics.attempt_failed(self._run.calls[0].op, done.node)
        if done.error is None:
            self._answered = done  # type: ignore[assignment]
        else:
            self._failure = done.error
        if not racing:
            self._go_on(None, now)  # the other attempt, if any, may still answer

    def _disarm(self) -> None:
        alarm, self._alarm = self._alarm, None
        if alarm is not None:
            alarm.alarm = math.inf  # the timer forgets it

    def _end(self, result: A | Unavailable, *, notify: bool = True) -> None:
        self.result = result
        self._disarm()
        engine = self._engine
        budget = engine.policies.retry_budget
        budget.request_finished()
        for _ in range(self._retries):
            budget.finish_retry()
        if notify:
            run = self._run
            if isinstance(result, Unavailable):
                engine._report_failure(run, result, self._began)
                node = None
            else:
                outcome = _LOCAL if result.error is not None else result.outcome()
                latency = engine._clock.current_time() - self._began
                engine._report(run, result, outcome, latency)
                node = result.node
            metrics = engine.policies.metrics
            if metrics is not None and (self._retries or self._backup is not None):
                metrics.spread(
                    run.calls[0].op,
                    node,
                    retries=self._retries,
                    hedged=self._backup is not None,
                    won=self._backup is not None and result is self._backup,
                )
            self._on_done(result)
