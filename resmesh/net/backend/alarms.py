"""One timer task that wakes parked waiters at their deadlines: the hedge delay's clock.

Why not ``trio.move_on_at`` per wait: every read run of a hedging cluster waits with a
deadline (the hedge delay), and a cancel scope per run cost 2 to 3 µs per command at ``-P 1``
(bench/governance.py, 2 nodes), more than the policies' own bookkeeping. Here a deadline is
an append to a FIFO; one task per cluster sleeps until the earliest one. Most runs answer
before their deadline; their entries are dropped as later ones are set.

The timer wakes at most once per ``TICK``, so a deadline may be up to ``TICK`` late: small
against a hedge delay's 10 ms floor.

A waiter is woken only if it is still parked on the wait that set the alarm: the wait
records its deadline in ``Waiter.alarm`` and clears it when it resumes, so a late alarm
never wakes a later wait of the same waiter.
"""

from __future__ import annotations

import math
from collections import deque
from typing import TYPE_CHECKING, Final

import trio

if TYPE_CHECKING:
    from .redis_mux import Waiter

__all__ = ["TICK", "Alarms"]

#: The timer's resolution (seconds): it sleeps at least this long between wakeups.
TICK: Final = 0.001


class Alarms:
    """Deadlines of parked waiters, fired by :meth:`run` (start it in the owner's nursery).

    The waiters wait in a FIFO, not a heap: a cluster's hedge delay changes at most once a
    refresh period, so deadlines arrive nearly in order, and a FIFO of the waiters themselves
    allocates nothing per run (a heap held a tuple per run until its deadline, which with a
    long delay measured several µs a command). A deadline set out of order (the delay just
    shrank) is inserted in its place by a scan from the back. Waiters whose wait ended are
    dropped from both ends as new ones come, so the FIFO holds about the runs in flight.
    """

    __slots__ = ("_not_before", "_queue", "_scope")

    def __init__(self) -> None:
        self._queue: deque[Waiter] = deque()
        #: The timer's sleep; its deadline is the front waiter's (moved when that is earlier).
        self._scope: trio.CancelScope | None = None
        #: The earliest the timer wakes next (one ``TICK`` after its last wakeup).
        self._not_before = -math.inf

    def set(self, waiter: Waiter, deadline: float) -> None:
        """Wake ``waiter`` at ``deadline`` if it is still parked on this wait by then (a
        waiter's first deadline only: each hedged run has a waiter of its own)."""
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
