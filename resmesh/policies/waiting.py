"""How the HA engine waits: one parked task per run, woken by whichever attempt finishes
first or by a timer, with no task, channel or cancel scope per run.

A run (a pipelined batch, a query, an RPC) may be in flight on two nodes at once (a backup
request, *The Tail at Scale*, Dean & Barroso, CACM 2013). Racing them in a nursery costs a task
per attempt and a cancel scope per wait, several microseconds a command at ``-P 1``; here the
task that sent the run parks once on a :class:`Waiter` shared by its attempts, and each attempt
wakes it when it finishes.

Deadlines (the hedge delay) come from :class:`Alarms`: one timer task per cluster sleeping until
the earliest deadline. Setting a deadline is an append to a FIFO, not a cancel scope.

* :class:`Waiter`: the parked task of one run.
* :func:`wait_first`: park until one of a run's attempts is done, or a deadline.
* :class:`Alarms`: the timer that fires those deadlines (start :meth:`Alarms.run` in a nursery).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence
from typing import Final, Protocol, TypeVar

import trio

__all__ = ["TICK", "Alarms", "Finishes", "Waiter", "wait_first"]

#: The timer's resolution (seconds): it sleeps at least this long between wakeups, so a deadline
#: may fire up to ``TICK`` late, small against a hedge delay's 10 ms floor.
TICK: Final = 0.001


class Finishes(Protocol):
    """Anything :func:`wait_first` can wait for: it says whether it is done."""

    @property
    def done(self) -> bool: ...


F = TypeVar("F", bound=Finishes)


class Waiter:
    """The task parked on a run's attempts (several when the run is hedged).

    Finishing an attempt wakes ``task`` and clears it, so the second of two attempts to finish
    cannot wake the task twice.
    """

    __slots__ = ("alarm", "task")

    def __init__(self) -> None:
        self.task: trio.lowlevel.Task | None = None
        #: The deadline :class:`Alarms` wakes the current wait at, ``inf`` for none.
        self.alarm = math.inf

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


async def wait_first(
    attempts: Sequence[F],
    waiter: Waiter,
    alarms: Alarms | None = None,
    deadline: float = math.inf,
) -> F | None:
    """Park until one of ``attempts`` (all waking ``waiter``) is done, or ``deadline`` (kept
    by ``alarms``).

    Returns the first one done (in sequence order when several are), or ``None`` on the
    deadline. The others keep running; the caller decides what becomes of them.
    """
    for attempt in attempts:
        if attempt.done:
            return attempt
    waiter.task = trio.lowlevel.current_task()

    def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
        waiter.task = None
        return trio.lowlevel.Abort.SUCCEEDED

    if alarms is not None and deadline < math.inf:
        alarms.set(waiter, deadline)
    try:
        await trio.lowlevel.wait_task_rescheduled(abort)
    finally:
        waiter.alarm = math.inf
    for attempt in attempts:
        if attempt.done:
            return attempt
    return None


class Alarms:
    """Deadlines of parked waiters, fired by :meth:`run` (start it in the owner's nursery).

    The waiters wait in a FIFO, not a heap: a cluster's hedge delay changes at most once a
    refresh period, so deadlines arrive nearly in order, and a FIFO of the waiters themselves
    allocates nothing per run (a heap holds a tuple per run until its deadline). A deadline set
    out of order (the delay just shrank) is inserted in its place by a scan from the back.
    Waiters whose wait ended are dropped from both ends as new ones come, so the FIFO holds
    about the runs in flight.

    A waiter is woken only if it is still parked on the wait that set the alarm: the wait
    records its deadline in ``Waiter.alarm`` and clears it when it resumes, so a late alarm
    never wakes a later wait of the same waiter.
    """

    __slots__ = ("_not_before", "_queue", "_scope")

    def __init__(self) -> None:
        self._queue: deque[Waiter] = deque()
        #: The timer's sleep; its deadline is the front waiter's (moved when that is earlier).
        self._scope: trio.CancelScope | None = None
        #: The earliest the timer wakes next (one ``TICK`` after its last wakeup).
        self._not_before = -math.inf

    def set(self, waiter: Waiter, deadline: float) -> None:
        """Wake ``waiter`` at ``deadline`` if it is still parked on this wait by then.

        A waiter may be set again with the same deadline (a wait resumed early, then
        parked again), never with another one: its first entry keeps its place in the FIFO,
        and a later deadline there would hold back the alarms queued behind it. A wait with
        a new deadline takes a new :class:`Waiter`.
        """
        waiter.alarm = deadline
        queue = self._queue
        while queue and queue[0].alarm == math.inf:
            queue.popleft()  # waits that ended: forget them now, not at their deadline
        while queue and queue[-1].alarm == math.inf:
            queue.pop()
        if not queue or queue[-1].alarm <= deadline:
            queue.append(waiter)
        else:  # out of order (the delay just shrank): rare, so a scan is fine
            index = len(queue) - 1
            while index and queue[index - 1].alarm > deadline:
                index -= 1
            queue.insert(index, waiter)
        scope = self._scope
        if scope is not None and deadline < scope.deadline:
            scope.deadline = max(deadline, self._not_before)

    async def run(self) -> None:
        """Fire alarms as they come due, until cancelled."""
        queue = self._queue
        while True:
            wake_at = max(queue[0].alarm, self._not_before) if queue else math.inf
            with trio.CancelScope(deadline=wake_at) as scope:
                self._scope = scope
                await trio.sleep_forever()
            self._scope = None
            now = trio.current_time()
            self._not_before = now + TICK
            while queue:
                waiter = queue[0]
                if waiter.alarm == math.inf:
                    queue.popleft()  # its wait ended before the deadline
                elif waiter.alarm <= now:
                    queue.popleft()
                    waiter.alarm = math.inf
                    waiter.wake()
                else:
                    break

    def __len__(self) -> int:
        return len(self._queue)
