"""A backend connection shared by many client sessions (the twemproxy/predixy design).

Why multiplex: at ``-P 1`` most of a proxied command's CPU is per-socket wakeups, and one backend
read here carries the replies of every client that sent a command since the last read: many
commands per wakeup on the backend side.

How replies find their request: Redis answers in order, so each submission of ``n`` commands
appends a :class:`Pending` (the HA engine's :class:`~resmesh.policies.engine.Attempt`) to a FIFO
and the reader hands out the next ``n`` replies to it, which finishes it (waking a task parked
on it, or calling back whoever started it). No Event, no channel, no task per submission.

Who reads and writes: with the cluster's poller running (:mod:`resmesh.net.poller`), the
socket is in its epoll set, so the replies are read in the poller's round and the requests
queued during a round leave in one ``send`` at its end; nothing wakes a task of the connection
per round. Otherwise (and for what the socket cannot take at once) a reader and a writer task
do it.

Failure rules (twemproxy's): a connection that breaks, sends garbage, or leaves a submission
unanswered past its deadline is closed, and every submission still waiting on it fails with a
:class:`BackendError`. A submitter cancelled by its own client (disconnect) leaves its pending
in place, marked abandoned, so the FIFO stays aligned; its replies are read and dropped.
"""

from __future__ import annotations

import logging
from collections import deque
from typing import Final

import trio

from ...call import Outcome
from ...policies.engine import Attempt
from ...policies.waiting import Waiter
from ...protocols._errors import ProtocolError
from ...protocols.resp.errors import replies_outcome, reply_outcomes
from ...protocols.resp.framing import is_error_reply
from ..poller import HANG_UP, Poller
from ..sockio import RECV_SIZE, recv, send_buffered
from .errors import BackendError
from .redis_conn import RedisConnection

__all__ = ["MuxConnection", "Pending"]

log = logging.getLogger(__name__)

#: Bound on commands awaiting replies on one shared connection; past it new submissions are
#: refused instead of queueing without limit behind a slow node.
MAX_OUTSTANDING: Final = 100_000

_OK: Final = Outcome.OK


#: Bytes the reader may take in a row before letting other tasks run.
_YIELD_AFTER_BYTES: Final = 4 << 20


class Pending(Attempt):
    """One submission: how many replies it waits for, and those received so far, as runs of
    raw bytes (one slice per backend read holding whole replies: a client whose batch went out
    in one write gets its replies back as one buffer, without a bytes object per reply).
    ``errors``: whether any of them is an error reply (only then are they read again to judge
    the node)."""

    __slots__ = ("deadline", "expected", "received", "replies")

    def __init__(self, expected: int, deadline: float, waiter: Waiter) -> None:
        super().__init__(waiter)
        self.expected = expected
        self.deadline = deadline
        self.received = 0
        self.replies: list[bytes] = []

    @property
    def done(self) -> bool:
        return self.error is not None or self.received == self.expected

    def outcome(self) -> Outcome:
        return replies_outcome(self.replies) if self.errors else _OK

    def call_outcomes(self) -> list[Outcome] | None:
        return reply_outcomes(self.replies) if self.errors else None


class MuxConnection:
    """Wraps a :class:`RedisConnection` with a reader task and a FIFO of submissions."""

    __slots__ = (
        "_ended",
        "_hung_up",
        "_outstanding",
        "_poller",
        "_queue",
        "_retiring",
        "_unsent",
        "_watchdog_lot",
        "_writer_lot",
        "conn",
    )

    def __init__(self, conn: RedisConnection, poller: Poller | None = None) -> None:
        self.conn = conn
        #: The poller of the sessions that write here, if any: their requests go out at the
        #: end of its round (:meth:`Poller.defer`).
        self._poller = poller
        self._queue: deque[Pending] = deque()
        self._outstanding = 0
        #: Bytes accepted but not yet written: only non-empty while the socket is full.
        self._unsent = bytearray()
        self._writer_lot = trio.lowlevel.ParkingLot()
        self._watchdog_lot = trio.lowlevel.ParkingLot()
        #: Set once its node left the cluster: no new submissions, closed when idle.
        self._retiring = False
        #: Set by :meth:`close`: what a poller-read connection's :meth:`run` waits for.
        self._ended = trio.Event()
        #: Whether the poller saw the node close: read on to the end of the stream.
        self._hung_up = False

    @property
    def closed(self) -> bool:
        return self.conn.closed

    @property
    def outstanding(self) -> int:
        """Commands sent (or queued to send) whose replies have not arrived."""
        return self._outstanding

    async def run(self) -> None:
        """Reader and writer loops; runs until the connection fails, is closed, or is
        cancelled. With a running poller, the poller's task reads the replies (no task
        wakes for them: the poller's round answers its sessions); else a reader task does."""
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._write_loop)
                nursery.start_soon(self._watchdog)
                poller = self._poller
                if poller is not None and poller.running:
                    await self._read_polled(poller)
                else:
                    await self._read_loop()
                nursery.cancel_scope.cancel()
        finally:
            self._fail(self.conn.node, "connection closed")

    def close(self) -> None:
        """Close the connection: :meth:`run` ends, failing every submission still waiting."""
        self.conn.close()
        self._ended.set()

    def _end(self, reason: str) -> None:
        """Close the connection and fail every submission waiting on it with ``reason``."""
        self.close()
        self._fail(self.conn.node, reason)

    def enqueue(self, pending: Pending, payload: bytes) -> None:
        """Queue a submission and its bytes (``pending.expected`` commands) for the writer
        task, waking it if it sleeps; the submitter learns the outcome from ``pending``. The
        connection is failed (closed, every submission with it) if the replies have not come
        by ``pending.deadline``.

        Why not send right here: every client session that runs in the same scheduler tick
        appends to the buffer before the writer runs, so one ``send`` carries all their
        commands, and a loopback ``send`` (which also wakes the node) is the single most
        expensive step of a proxied command.

        Raises:
            BackendError: the connection is closed or has too many commands in flight.
        """
        if self.conn.closed:
            raise BackendError(self.conn.node, "connection closed")
        if self._retiring:
            raise BackendError(self.conn.node, "node removed from the cluster")
        if self._outstanding + pending.expected > MAX_OUTSTANDING:
            raise BackendError(self.conn.node, "too many commands in flight")
        if not self._queue:
            self._watchdog_lot.unpark()
        self._queue.append(pending)
        self._outstanding += pending.expected
        if not self._unsent:
            poller = self._poller
            if poller is None or not poller.defer(self._flush):
                self._writer_lot.unpark()
        self._unsent += payload

    def retire(self) -> None:
        """Take no more submissions; close once those in flight have their replies."""
        self._retiring = True
        if not self._queue:
            self.close()

    def _flush(self) -> None:
        """Send the requests of a poller round from the poller's task; what the socket does
        not take is left to the writer task."""
        if self._unsent and not self._send_some():
            self._writer_lot.unpark()

    def _send_some(self) -> bool:
        """Send what the socket takes of the unsent bytes: whether nothing is left to send
        (all sent, or the connection broke and was failed)."""
        try:
            return send_buffered(self.conn.sock, self._unsent)
        except OSError as exc:
            self._end(exc.strerror or str(exc))
            return True

    async def _write_loop(self) -> None:
        sock = self.conn.sock
        while True:
            if not self._unsent:
                await self._writer_lot.park()
                continue
            if self._send_some():
                if self.conn.closed:
                    return
                continue
            try:
                await trio.lowlevel.wait_writable(sock)
            except trio.ClosedResourceError:
                return

    async def _watchdog(self) -> None:
        """Fail the connection when its oldest submission outlives its deadline.

        Why one watchdog instead of a cancel scope per call: replies come in FIFO order, so
        only the head of the queue can be the first to expire, and a scope per call costs
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
                self._end("no reply in time (backend.command_timeout)")
                return
            await trio.sleep_until(head.deadline)

    async def _read_loop(self) -> None:
        """The reader task (no poller): read and hand out replies until the connection ends."""
        conn = self.conn
        unyielded = 0
        while True:
            try:
                data = await recv(conn.sock)
            except OSError as exc:
                self._end(exc.strerror or str(exc))
                return
            # recv() only parks when the socket is empty: a 100 MB reply would hold the
            # worker (every other client, the watchdog) for a fifth of a second without this.
            unyielded += len(data)
            if unyielded >= _YIELD_AFTER_BYTES:
                unyielded = 0
                await trio.lowlevel.checkpoint()
            if not self._received(data):
                return

    async def _read_polled(self, poller: Poller) -> None:
        """Have ``poller`` read the replies (:meth:`_on_readable`) until the connection ends.
        (The poller runs for as long as its cluster, so it outlives the connection.)"""
        if self.conn.closed:
            return  # closed before this task started
        reader = self._on_readable
        fd = poller.register(self.conn.sock, reader)
        try:
            reader(0)  # what came before the registration raised no event
            await self._ended.wait()
        finally:
            poller.unregister(fd, reader)

    def _on_readable(self, events: int) -> None:
        """The poller saw the socket become readable (edge-triggered: read until it is empty,
        or until a fair share, then come back at the next round)."""
        if events & HANG_UP:
            self._hung_up = True
        conn = self.conn
        taken = 0
        try:
            while not conn.closed:
                try:
                    data = conn.sock.recv(RECV_SIZE)
                except BlockingIOError:
                    return
                except OSError as exc:
                    self._end(exc.strerror or str(exc))
                    return
                if not self._received(data):
                    return
                if len(data) < RECV_SIZE and not self._hung_up:
                    return  # a short read emptied the socket: the next arrival raises an event
                taken += len(data)
                if taken >= _YIELD_AFTER_BYTES:
                    assert self._poller is not None
                    self._poller.again(self._on_readable)  # as _read_loop's checkpoint
                    return
        except Exception:
            # A bug must end this connection only, never the poller and the cluster's clients.
            log.exception("backend %s: unexpected error; its connection is closed", conn.node)
            self._end("internal error")

    def _received(self, data: bytes) -> bool:
        """What one read brought (``b""``: the node closed the connection): ``False`` when
        the connection has ended."""
        if not data:
            self._end("connection closed by the node")
            return False
        return self._take_replies(data)

    def _take_replies(self, data: bytes) -> bool:
        """Hand the replies completed by ``data`` to their submissions, in order: ``False``
        when the connection has ended (the node broke the protocol, or it was retiring and
        has answered everything)."""
        conn = self.conn
        buffer = conn.replies
        queue = self._queue
        try:
            buffer.feed(data)
            while queue:
                ends, errors = buffer.ends(self._outstanding)
                if not ends:
                    break
                if not self._hand_out(ends, errors):
                    return False
            if not queue and not buffer.empty:
                raise BackendError(conn.node, "reply without a request")
        except (ProtocolError, BackendError) as exc:
            reason = exc.reason if isinstance(exc, BackendError) else exc.reply_hint
            self._end(f"protocol error: {reason}")
            return False
        return True

    def _hand_out(self, ends: list[int], errors: int) -> bool:
        """Hand the framed replies (``ends``: where each ends; ``errors``: how many are error
        replies) to their submissions, slicing each submission's run straight from the
        received bytes, and consume them: ``False`` when the connection has ended.

        Raises:
            BackendError: a reply came that nobody asked for.
        """
        buffer = self.conn.replies
        queue = self._queue
        data = buffer.data
        # A bytes buffer is sliced as it is (a slice of all of it is the object itself); a
        # bytearray (bytes joined to a partial reply) through one view, copied once per run.
        raw = data if isinstance(data, bytes) else None
        view = None if raw is not None else memoryview(data)
        pos = buffer.start
        count = len(ends)
        i = 0
        try:
            while i < count:
                if not queue:
                    raise BackendError(self.conn.node, "reply without a request")
                pending = queue[0]
                j = i + pending.expected - pending.received
                if j > count:
                    j = count
                end = ends[j - 1]
                if raw is not None:
                    pending.replies.append(raw[pos:end])
                else:
                    assert view is not None
                    pending.replies.append(bytes(view[pos:end]))
                if errors and (
                    is_error_reply(data, pos)
                    or any(is_error_reply(data, k) for k in ends[i : j - 1])
                ):
                    pending.errors = True
                pending.received += j - i
                pending.received_bytes += end - pos
                self._outstanding -= j - i
                pos = end
                i = j
                if pending.received == pending.expected:
                    queue.popleft()
                    pending.finish()
                    if self._retiring and not queue:
                        self.close()
                        return False
        finally:
            if view is not None:
                view.release()  # the buffer may resize on commit
            buffer.commit(pos)
        return True

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
