"""A backend connection shared by many client sessions (the twemproxy/predixy design).

Why multiplex: at ``-P 1`` most of a proxied command's CPU is per-socket wakeups, and one backend
read here carries the replies of every client that sent a command since the last read: many
commands per wakeup on the backend side (perf-baselines.md, recommendation 5).

How replies find their request: Redis answers in order, so each submission of ``n`` commands
appends a :class:`Pending` to a FIFO and the reader task hands out the next ``n`` replies to it.
Waiting costs one ``wait_task_rescheduled`` per submission, no Event, no channel, no task.

Failure rules (twemproxy's): a connection that breaks, sends garbage, or leaves a submission
unanswered past its deadline is closed, and every submission still waiting on it fails with a
:class:`BackendError`. A submitter cancelled by its own client (disconnect) leaves its pending
in place, marked abandoned, so the FIFO stays aligned; its replies are read and dropped.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import trio

from ...protocols._errors import ProtocolError
from ..sockio import recv
from .errors import BackendError
from .redis_conn import RedisConnection

if TYPE_CHECKING:
    from .alarms import Alarms

__all__ = ["MuxConnection", "Pending", "Waiter", "wait_first"]

#: Bound on commands awaiting replies on one shared connection; past it new submissions are
#: refused instead of queueing without limit behind a slow node.
MAX_OUTSTANDING: Final = 100_000


#: Bytes the reader may take in a row before letting other tasks run.
_YIELD_AFTER_BYTES: Final = 4 << 20


class Waiter:
    """The task parked on one or more submissions (several when a request is hedged).

    Completing a submission wakes ``task`` and clears it, so the second of two hedged
    submissions to finish cannot wake the task twice.
    """

    __slots__ = ("alarm", "task")

    def __init__(self, task: trio.lowlevel.Task | None = None) -> None:
        self.task = task
        #: The deadline an :class:`~.alarms.Alarms` will wake the current wait at, if any.
        self.alarm = math.inf

    def wake(self) -> None:
        task, self.task = self.task, None
        if task is not None:
            trio.lowlevel.reschedule(task)


class Pending:
    """One submission: how many replies it waits for, and those received so far.

    A *joined* submission collects its replies as runs of raw bytes (one slice per backend
    read), for a caller that forwards them together; otherwise ``replies`` holds one bytes
    object per reply.
    """

    __slots__ = (
        "deadline",
        "error",
        "expected",
        "joined",
        "on_done",
        "probe",
        "received",
        "replies",
        "waiter",
    )

    def __init__(self, expected: int, joined: bool, deadline: float, waiter: Waiter) -> None:
        self.expected = expected
        self.deadline = deadline
        self.joined = joined
        self.received = 0
        self.replies: list[bytes] = []
        self.error: BackendError | None = None
        self.waiter = waiter
        #: Called once it finishes, for a caller that stopped waiting but still accounts
        #: for it (the loser of a hedge stays "in flight" on its node until then).
        self.on_done: Callable[[Pending], None] | None = None
        #: Whether it is its node's half-open breaker probe (set by the caller that
        #: governs it, which must tell the breaker so if it never gets a verdict).
        self.probe = False

    def finish(self) -> None:
        self.waiter.wake()
        if self.on_done is not None:
            on_done, self.on_done = self.on_done, None
            on_done(self)

    @property
    def done(self) -> bool:
        return self.error is not None or self.received == self.expected

    def result(self) -> list[bytes]:
        """The replies of a finished submission.

        Raises:
            BackendError: it failed.
        """
        if self.error is not None:
            raise self.error
        return self.replies


async def wait_first(
    pendings: list[Pending],
    waiter: Waiter,
    alarms: Alarms | None = None,
    deadline: float = math.inf,
) -> Pending | None:
    """Park until one of ``pendings`` (all sharing ``waiter``) is done, or ``deadline``
    (kept by ``alarms``: no cancel scope per wait).

    Returns the first one done (in list order when several are), or ``None`` on the deadline.
    The others are left to finish unobserved: their replies are read and dropped.
    """
    for pending in pendings:
        if pending.done:
            return pending
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
    for pending in pendings:
        if pending.done:
            return pending
    return None


class MuxConnection:
    """Wraps a :class:`RedisConnection` with a reader task and a FIFO of submissions."""

    __slots__ = ("_outstanding", "_queue", "_unsent", "_watchdog_lot", "_writer_lot", "conn")

    def __init__(self, conn: RedisConnection) -> None:
        self.conn = conn
        self._queue: deque[Pending] = deque()
        self._outstanding = 0
        #: Bytes accepted but not yet written: only non-empty while the socket is full.
        self._unsent = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._watchdog_lot = trio.lowlevel.ParkingLot()

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def outstanding(self) -> int:
        """Commands sent (or queued to send) whose replies have not arrived."""
        return self._outstanding

    async def run(self) -> None:
        """Reader and writer loops; runs until the connection fails or is cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._watchdog)
                await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._fail(self.conn.node, "connection closed")

    def submit(
        self, payload: bytes, count: int, timeout: float, joined: bool, waiter: Waiter
    ) -> Pending:
        """Queue ``count`` commands (``payload``) without waiting; :func:`wait_first` waits
        for them. With ``joined``, the replies come back concatenated, as runs of bytes.

        Raises:
            BackendError: the connection is closed or has too many commands in flight.
        """
        if self.conn.closed:
            raise BackendError(self.conn.node, "connection closed")
        if self._outstanding + count > MAX_OUTSTANDING:
            raise BackendError(self.conn.node, "too many commands in flight")
        if not self._queue:
            self._watchdog_lot.unpark()
        deadline = trio.current_time() + timeout if math.isfinite(timeout) else math.inf
        pending = Pending(count, joined, deadline, waiter)
        self._queue.append(pending)
        self._outstanding += count
        self._write(payload)
        return pending

    def _write(self, payload: bytes) -> None:
        """Queue ``payload`` for the writer task, waking it if it sleeps.

        Why not send right here: every client session that runs in the same scheduler tick
        appends to the buffer before the writer runs, so one ``send`` carries all their
        commands, and a loopback ``send`` (which also wakes the node) is the single most
        expensive step of a proxied command.
        """
        if not self._unsent:
            self._writer_lot.unpark()
        self._unsent += payload

    async def _write_loop(self) -> None:
        sock = self.conn.sock
        while True:
            if not self._unsent:
                await self._writer_lot.park()
                continue
            try:
                sent = sock.send(self._unsent)
            except BlockingIOError:
                try:
                    await trio.lowlevel.wait_writable(sock)
                except trio.ClosedResourceError:
                    return
                continue
            except OSError as exc:
                self.conn.close()
                self._fail(self.conn.node, exc.strerror or str(exc))
                return
            if sent == len(self._unsent):
                self._unsent.clear()
            else:
                del self._unsent[:sent]

    async def _watchdog(self) -> None:
        """Fail the connection when its oldest submission outlives its deadline.

        Why one watchdog instead of a cancel scope per call: replies come in FIFO order, so
        only the head of the queue can be the first to expire, and a scope per call cost
        several microseconds of a command's budget. The watchdog sleeps until the head's
        deadline and re-checks, which is about one wakeup per ``command_timeout``.
        """
        queue = self._queue
        while True:
            if not queue:
                await self._watchdog_lot.park()
                continue
            head = queue[0]
            if head.deadline <= trio.current_time():
                self.conn.close()
                self._fail(self.conn.node, "no reply in time (backend.command_timeout)")
                return
            await trio.sleep_until(head.deadline)

    async def _read_loop(self) -> None:
        conn = self.conn
        buffer = conn.replies
        queue = self._queue
        unyielded = 0
        while True:
            try:
                data = await recv(conn.sock)
            except OSError as exc:
                conn.close()
                self._fail(conn.node, exc.strerror or str(exc))
                return
            if not data:
                conn.close()
                self._fail(conn.node, "connection closed by the node")
                return
            # recv() only parks when the socket is empty: a 100 MB reply would hold the
            # worker (every other client, the watchdog) for a fifth of a second without this.
            unyielded += len(data)
            if unyielded >= _YIELD_AFTER_BYTES:
                unyielded = 0
                await trio.lowlevel.checkpoint()
            try:
                buffer.feed(data)
                while True:
                    if not queue:
                        if buffer.empty:
                            break
                        raise BackendError(conn.node, "reply without a request")
                    pending = queue[0]
                    if pending.joined:
                        run, count = buffer.take(pending.expected - pending.received)
                        if not count:
                            break
                        pending.replies.append(run)
                    else:
                        reply = buffer.next_reply()
                        if reply is None:
                            break
                        pending.replies.append(reply)
                        count = 1
                    pending.received += count
                    self._outstanding -= count
                    if pending.received == pending.expected:
                        queue.popleft()
                        pending.finish()
            except (ProtocolError, BackendError) as exc:
                conn.close()
                reason = exc.reason if isinstance(exc, BackendError) else exc.reply_hint
                self._fail(conn.node, f"protocol error: {reason}")
                return

    def _fail(self, node: str, reason: str) -> None:
        """Fail every waiting submission; the connection is already closed or closing."""
        error = BackendError(node, reason)
        while self._queue:
            pending = self._queue.popleft()
            pending.error = error
            pending.finish()
        self._outstanding = 0
        self._unsent.clear()
        self._writer_lot.unpark_all()
