"""The driver of one Redis client connection: its I/O and its governance.

The session's state and every decision about a command live in the sans-IO
:class:`~resmesh.protocols.resp.session.RespSession`; this driver feeds it the client's commands
and carries out what it decides.

Each read from the client is parsed into every complete command it holds; the commands are
handled in order and their replies written back together in one write (pipelining preserved).
Every command that reaches a node is a :class:`~resmesh.call.Call`: it passes the degrade switch
and the limits first (:meth:`RedisSession._switch`, :meth:`RedisSession._limit`), then the calls
the batch forwards together become one :class:`~resmesh.call.Run`, which the HA engine
(:mod:`resmesh.policies.engine`) sends to a node's shared connection. Pinned calls (a
transaction, a watch, a blocking command, a subscription) pass the switch and the limits too;
the node's breaker is asked when the session pins its connection, and every exchange on that
connection is counted for the node's health.

What a degrade switch does to a pinned session:

* ``error``: ``MULTI``'s commands are refused at queue time, so ``EXEC`` answers ``EXECABORT``
  and nothing runs; ``WATCH``, blocking commands and ``SUBSCRIBE`` are refused.
* ``readonly``: writes queued in ``MULTI`` are refused at queue time (``EXECABORT``); reads,
  ``WATCH`` and subscriptions are served; a blocking pop (a write) is refused.
* ``miss``: a switched command inside ``MULTI`` is answered ``+QUEUED`` by the gateway and its
  empty or acknowledged reply is put in ``EXEC``'s array, so the node never sees it; ``WATCH``
  answers ``+OK`` (nothing there can change); a blocking command waits its block time and
  answers as when it times out; subscriptions are served and ``PUBLISH`` answers 0.
* ``fallback``: as ``miss``, with the configured value as the reply; ``SUBSCRIBE`` is refused
  (a value cannot stand in for a subscription).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from typing import TYPE_CHECKING, Final

import trio

from ...call import Operation, Outcome, Run, Unavailable
from ...observe.metrics import Refusal
from ...policies.switch import SwitchAction, SwitchDecision
from ...policies.waiting import Waiter, wait_first
from ...protocols._errors import ProtocolError
from ...protocols.resp import commands as cmdtable
from ...protocols.resp import degrade, sharding
from ...protocols.resp import replies as R
from ...protocols.resp.errors import replies_outcome
from ...protocols.resp.framing import split_replies
from ...protocols.resp.requests import Command, RequestParser, encode_command
from ...protocols.resp.session import (
    CONNECTION_STATE,
    Action,
    CommandInfo,
    Kind,
    Mode,
    RespSession,
    batch_operations,
    classify,
    command_info,
)
from ..backend.errors import BackendError
from ..backend.redis_conn import RedisConnection
from ..backend.redis_mux import Pending
from ..backend.redis_pool import NodePool
from ..runtime import READ_YOUR_WRITES, ClientSession
from ..transport import ClientTransport
from .relay import relay
from .sharded import forward_sharded

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ...cluster.topology import Node
    from .runtime import RedisRuntime

__all__ = ["RedisSession"]

log = logging.getLogger(__name__)

#: A client that does not take its replies within this long is dropped (redis-server's
#: ``client-output-buffer-limit`` plays this role there): a stuck reader must not pin memory
#: and a backend connection forever.
CLIENT_WRITE_TIMEOUT: Final = 60.0
#: Batches handled without parking before the session yields to others (fairness).
_YIELD_EVERY: Final = 32
#: Inside MULTI, a command the gateway refuses is sent to the node as this arity error, so the
#: node marks the transaction failed (EXECABORT), as it would for any command it refuses; the
#: reply in that slot is the gateway's own error text.
_QUEUE_TIME_FAILURE: Final = encode_command([b"ECHO"])
#: The queued calls' operation when they have several.
_MIXED: Final = Operation("(mixed)", write=True, idempotent=False)
_EMPTY_ACTIONS: Final = frozenset({SwitchAction.EMPTY, SwitchAction.ACKNOWLEDGE})
#: The switch actions that refuse a subscription (a value cannot stand in for one).
_REFUSING_SUBSCRIPTIONS: Final = frozenset({SwitchAction.ERROR, SwitchAction.FALLBACK})


class RedisSession(ClientSession):
    """One client connection of a Redis cluster."""

    runtime: RedisRuntime

    def __init__(self, runtime: RedisRuntime, transport: ClientTransport, client_id: int):
        super().__init__(runtime, transport, client_id)
        self.state = RespSession(
            client_id,
            transport.peer,
            runtime.listen,
            runtime.passwords,
            sharded=runtime.sharded,
            peers=runtime.states,
        )
        self.parser = RequestParser(runtime.request_limits, authenticated=self.state.authenticated)
        #: The dedicated backend connection while the session's state lives on a node, and
        #: that node.
        self.pinned: RedisConnection | None = None
        self.pinned_node: Node = runtime.home
        self._pinned_pool: NodePool | None = None
        self._timeout = runtime.config.backend.command_timeout
        # Per batch: replies in order, and the run of calls to forward with their reply slots.
        self._out: list[bytes] = []
        self._fwd: list[Command] = []
        self._fwd_slots: list[int] = []
        #: Whether every call queued since the last flush is idempotent.
        self._fwd_idempotent = True
        #: The operation every queued call has (``None``: none queued; :data:`_MIXED`:
        #: they differ), for the run (its hedge settings, its metrics).
        self._fwd_op: Operation | None = None
        #: Replies the gateway puts in place of the node's (slot → reply).
        self._substitutes: dict[int, bytes] = {}
        #: Operations admitted by the limiter whose run has not returned yet.
        self._admitted: list[str] = []
        #: Whether the limiter admitted the current batch whole (then not call by call).
        self._admitted_whole = False
        #: A batch admitted whole, as (operation counts, calls), until its run returns.
        self._batch_admission: tuple[dict[str, int], int] | None = None
        #: The batch whose run is in flight without this task waiting for it (its answer is
        #: handled by :meth:`_answered`, in the backend reader's task): (reply slots, calls,
        #: operations admitted one by one, whether it wrote). ``None``: none.
        self._inflight: tuple[list[int], int, list[str], bool] | None = None
        #: Woken when the run in flight has been answered or the writer task is done, if
        #: this task waits for them.
        self._settle_waiter = Waiter()
        #: Replies :meth:`_answered` could not fit in the client's socket: the writer task's
        #: to write (:meth:`wake_for_output`), before anything else.
        self._unsent: memoryview | None = None
        #: SELECTs sent on the pinned connection while WATCH is active: (reply slot, db), in
        #: order; the session follows each one the node answers +OK.
        self._pinned_selects: list[tuple[int, int]] = []
        #: The client's own bytes for the whole current batch, when the parser kept them:
        #: forwarded as they are when every command of the batch goes to the node unchanged.
        self._batch_raw: bytes | None = None
        self._batch_len = 0
        self._batch = 0
        #: Until when this session's reads go to the primary: ``READ_YOUR_WRITES`` after its
        #: last write (0.0: it never wrote).
        self._reads_on_primary_until = 0.0
        #: What :meth:`handle_nowait` left to the session's task: the protocol error to
        #: answer, or a batch and the index of its first command not run yet (``None``: the
        #: batch is not begun).
        self._handed: ProtocolError | tuple[list[Command], int | None] | None = None
        #: Trio's clock, read directly (once per batch) rather than through
        #: ``trio.current_time()``'s extra call.
        self._clock = trio.lowlevel.current_clock()

    # ----------------------------------------------------------------------------------------
    # Connection loop

    async def serve(self) -> None:
        runtime = self.runtime
        state = self.state
        batches = 0
        try:
            while not state.closing and not runtime.draining:
                if self.poller is not None and self.can_dispatch():
                    if not await self.dispatch():
                        break
                    await self._carry_on()
                    continue
                data = await self.next_input()
                if not data:
                    break
                await self._handle_input(data)
                batches += 1
                if batches % _YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            with trio.CancelScope(shield=True), contextlib.suppress(OSError):
                # A run in flight still holds its slots and owes the client its replies.
                with trio.move_on_after(self._timeout):
                    await self._settled()
            self._release_pinned()
            admitted, self._admitted = self._admitted, []
            self._done(admitted)
            if self._inflight is None:
                self._release_batch()  # a batch admitted whole that ended unfinished

    async def _handle_input(self, data: bytes) -> None:
        """Feed ``data`` and run every complete command, including any that arrived while a
        batch waited (a blocking command buffers the client's next commands) and any error
        that followed them."""
        try:
            self.parser.feed(data)
            while not self.state.closing:
                commands = self.parser.commands()
                if not commands:
                    break
                await self._run_batch(commands)
        except ProtocolError as exc:
            await self._settled()  # the replies of the commands before it go first
            await self.write(R.error(exc.reply_hint))
            self.state.closing = True

    # ----------------------------------------------------------------------------------------
    # Dispatched: the poller's task serves plain batches (see ClientSession)

    def can_dispatch(self) -> bool:
        # A session on its own connection waits in its task at every batch.
        return self.runtime.dispatchable and self.pinned is None and self.state.forwards_plain

    def handle_nowait(self, data: bytes) -> bool:
        try:
            self.parser.feed(data)
            commands = self.parser.commands()
        except ProtocolError as exc:
            self._handed = exc
            return False
        if not commands:
            return True
        # Dispatched, the session only ever runs plain commands (it is handed back before
        # anything else), so only a new layout can take it off the poller here.
        if not self.runtime.dispatchable:
            self._handed = (commands, None)
            return False
        self._admit_batch(commands)
        self._begin_batch(commands, self.parser.batch_raw)
        index = self._run_plain(commands, 0)
        if index < len(commands):
            self._handed = (commands, index)  # the rest of the batch may have to wait
            return False
        self._admitted_whole = False
        if self._fwd:
            started = self._start_run()
            assert started, "a dispatched session's run always goes to one node once"
        if self._inflight is None:
            self._release_batch()
            self._send_out()
        # Malformed bytes after the batch: the session's task answers the error once the
        # batch's replies are out, and closes.
        return not self.parser.failed

    async def _carry_on(self) -> None:
        """Carry on from where :meth:`handle_nowait` handed the session back."""
        handed, self._handed = self._handed, None
        if isinstance(handed, ProtocolError):
            await self._settled()
            await self.write(R.error(handed.reply_hint))
            self.state.closing = True
            return
        if handed is not None:
            commands, index = handed
            if index is None:
                await self._run_batch(commands)
            else:
                await self._finish_batch(commands, index)
        await self._handle_input(b"")  # commands or an error that came with the batch

    async def write(self, data: bytes | memoryview) -> None:
        """Send ``data`` to the client; one that does not read its replies within
        ``CLIENT_WRITE_TIMEOUT`` is closed."""
        try:
            sent = self.transport.send_nowait(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return  # the common case: the socket took it all, no deadline needed
        with trio.move_on_after(CLIENT_WRITE_TIMEOUT) as scope:
            await self.transport.send_all(memoryview(data)[sent:])
        if scope.cancelled_caught:
            log.warning("client %s did not read its replies; closing it", self.transport.peer)
            self.state.closing = True
            self.transport.close()  # wakes the session's task if it waits on the client

    async def _write_out(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            await self.write(data)

    async def _settled(self) -> None:
        """Wait until the run in flight, if any, has been answered and its replies written:
        the next batch's replies come after them."""
        waiter = self._settle_waiter
        while self._inflight is not None or self.writing:
            await wait_first((), waiter)  # _answered and output_written wake it

    async def write_pending(self) -> None:
        unsent, self._unsent = self._unsent, None
        if unsent is not None:
            await self.write(unsent)

    def output_written(self) -> None:
        self._settle_waiter.wake()

    @property
    def busy(self) -> bool:
        return self._inflight is not None or self.writing

    def _answered(self, result: Pending | Unavailable) -> None:
        """The run :meth:`_start_run` left in flight has its answer: count it, put the
        replies in their slots and write the batch's replies; what does not fit in the socket
        is left to the writer task. Runs in the backend reader's task: never blocks."""
        info, self._inflight = self._inflight, None
        assert info is not None
        slots, count, admitted, wrote = info
        try:
            if admitted:
                self._done(admitted)
            if self._batch_admission is not None:
                self._release_batch()
            if wrote:
                self._reads_on_primary_until = self._clock.current_time() + READ_YOUR_WRITES
            out = self._out
            if isinstance(result, Unavailable):
                failure = R.unavailable(result.node, result.reason)
                for slot in slots:
                    out[slot] = failure
            elif slots[-1] - slots[0] == count - 1:
                chunks = result.replies
                out[slots[0]] = chunks[0] if len(chunks) == 1 else b"".join(chunks)
            else:
                replies = split_replies(b"".join(result.replies), count)
                for slot, reply in zip(slots, replies, strict=True):
                    out[slot] = reply
            self._send_out()
        except OSError:
            self.state.closing = True  # the client went away
            self.drop()
        except Exception:
            # A bug here must end this client only, never the reader every session shares.
            log.exception(
                "client %s: unexpected error; its connection is closed", self.transport.peer
            )
            self.state.closing = True
            self.drop()
        finally:
            if self._settle_waiter.task is not None:
                self._settle_waiter.wake()
        if self._readable:
            self.resume_reading()

    def _send_out(self) -> None:
        """Write the batch's replies without waiting; what does not fit in the socket goes
        to the writer task.

        Raises:
            OSError: the client's connection broke.
        """
        out = self._out
        if not out:
            return
        data = out[0] if len(out) == 1 else b"".join(out)
        out.clear()
        if self.state.closing:
            return
        try:
            sent = self.transport.send_nowait(data)
        except BlockingIOError:
            sent = 0
        if sent < len(data):
            assert self._unsent is None  # the next batch waits for the writer
            self._unsent = memoryview(data)[sent:]
            self.wake_for_output()

    def _release_batch(self) -> None:
        """Give back a batch's whole admission, once (whoever ends the batch first)."""
        admission, self._batch_admission = self._batch_admission, None
        if admission is not None:
            limiter = self.runtime.policies.limiter
            if limiter is not None:  # else the registry lifted every limit meanwhile
                limiter.done_batch(*admission)

    # ----------------------------------------------------------------------------------------
    # One batch: every command of one read, replies written together

    async def _run_batch(self, commands: list[Command]) -> None:
        """Run a batch and write its replies."""
        await self._settled()  # the previous batch's replies go first
        self._admit_batch(commands)
        self._begin_batch(commands, self.parser.batch_raw)
        await self._finish_batch(commands, 0)

    async def _finish_batch(self, commands: list[Command], index: int) -> None:
        """Run a begun batch from ``index`` on (:meth:`handle_nowait` may have run the
        commands before it) and write its replies."""
        try:
            await self._run_commands(commands, index)
        finally:
            self._admitted_whole = False
            # Given back once the backend has answered, before the replies are written: a
            # client slow to read them must not hold the cluster's concurrency slots. A run
            # still in flight gives it back when answered.
            if self._inflight is None:
                self._release_batch()
        if self._inflight is None:
            await self._write_out()

    def _admit_batch(self, commands: list[Command]) -> None:
        """Admit a pipeline of plain commands under the limits in one step, when every limit
        has room (then not call by call)."""
        policies = self.runtime.policies
        limiter = policies.limiter
        admitted = None
        if (
            limiter is not None
            and len(commands) > 1
            and self.state.forwards_plain
            and not policies.switchboard.active  # switched calls are never admitted
        ):
            admitted = batch_operations(commands)
            if admitted is not None and not limiter.admit_batch(
                admitted, len(commands), self._clock.current_time()
            ):
                admitted = None
        self._admitted_whole = admitted is not None
        if admitted is not None:
            self._batch_admission = (admitted, len(commands))

    def _begin_batch(self, commands: list[Command], raw: bytes | None) -> None:
        """``raw``: the client's own bytes for the whole batch, when the parser kept them."""
        self._batch_raw = raw
        self._batch_len = len(commands)
        self._batch += 1

    async def _run_commands(self, commands: list[Command], start: int) -> None:
        """Run a begun batch from ``start``, leaving its replies in ``_out``."""
        state = self.state
        index = start
        while index < len(commands) and not state.closing:
            if state.forwards_plain:
                index = self._run_plain(commands, index)
                if index == len(commands):
                    break
            command = commands[index]
            index += 1
            info = classify(command.args)
            action = state.step(command, info)
            if action is Action.SUBSCRIBE:
                if await self._subscribe(info):
                    await self._write_out()
                    after_reset = await relay(self, commands[index - 1 :])
                    if after_reset:  # the session left subscribed mode: go on as a new one
                        self._begin_batch(after_reset, None)
                        await self._run_commands(after_reset, 0)
                    return
            else:
                await self._act(action, command, info)
        await self._flush(last=True)

    def _run_plain(self, commands: list[Command], index: int) -> int:
        """Govern and queue the plain commands from ``index`` on (forwarded as they are; a
        switched or limited one is answered in its slot): the index of the first command
        that is not plain, or the batch's length."""
        state = self.state
        policies = self.runtime.policies
        limiter = None if self._admitted_whole else policies.limiter
        governed = policies.switchboard.active or limiter is not None
        now = self._clock.current_time() if governed else 0.0
        limit = limiter is not None
        plain = self.runtime.plain
        batch = self._batch
        out = self._out
        fwd = self._fwd
        fwd_slots = self._fwd_slots
        idempotent = self._fwd_idempotent
        fwd_op = self._fwd_op
        last: bytes | None = None
        count = len(commands)
        while index < count and not state.closing:
            command = commands[index]
            name = command.args[0]
            op = plain.get(name)
            if op is None:
                break
            index += 1
            last = name
            if governed:
                reply = self._govern(op, command_info(name), command, now, limit)
                if reply is not None:
                    out.append(reply)
                    continue
            command.op = op
            command.batch = batch
            idempotent = idempotent and op.idempotent
            if op is not fwd_op:
                fwd_op = op if fwd_op is None else _MIXED
            fwd.append(command)
            fwd_slots.append(len(out))
            out.append(b"")
        self._fwd_idempotent = idempotent
        self._fwd_op = fwd_op
        if last is not None:
            state.last_command = last  # as the client spelled it (CLIENT LIST lowers it)
        return index

    async def _act(self, action: Action, command: Command, info: CommandInfo) -> None:
        """Carry out what the session decided for one command (every action but the fast
        path's forwarding and ``SUBSCRIBE``)."""
        out = self._out
        state = self.state
        if action is Action.REPLY:
            out.append(state.reply)
        elif action is Action.FORWARD:
            op = self.runtime.operation(info)
            if info.plain:  # from now on the fast path knows its name as this client spells it
                self.runtime.remember_plain(command.args[0], op)
            self._forward(command, info, op)
        elif action is Action.LOCAL:
            await self._local(command, info)
        elif action is Action.BLOCK:
            await self._block(command, info)
        elif action is Action.QUEUE:
            if self.state.mode is Mode.WATCHING:
                await self._multi_after_watch(command, info)
            else:
                self._queue_in_multi(command, info)
        elif action is Action.REFUSE_QUEUED:
            self._refuse_queued(state.reply)
        elif action is Action.END_MULTI:
            slot = len(out)
            self._queue(command, self.runtime.operation(info))
            selects, local = state.ending_multi()
            await self._flush()
            if info.name == b"EXEC":
                out[slot] = state.exec_reply(out[slot], selects, local)
        elif action is Action.UNWATCH:
            self._queue(command, self.runtime.operation(info))
            state.unwatched()
        elif action is Action.BEGIN_MULTI:
            await self._begin_multi(command, info)
        elif action is Action.BEGIN_WATCH:
            await self._begin_watch(command, info)
        else:  # pragma: no cover - every action is handled above
            raise AssertionError(action)

    # ----------------------------------------------------------------------------------------
    # Governance per call: the degrade switch, then the limits

    def _govern(
        self, op: Operation, info: CommandInfo, command: Command, now: float, limit: bool = True
    ) -> bytes | None:
        """A call's switch and limits: the reply that answers it instead, or ``None`` to
        forward it (the limiter then counts it until its run returns). ``now`` ``0.0``: read
        the clock if a limit needs it; ``limit`` false: the batch was admitted whole."""
        decision = self._switch(op, info)
        if decision is not None:
            return self._degraded(decision, info, command)
        if not limit:
            return None
        rejection = self._limit(op, now)
        return R.gateway_error(rejection) if rejection is not None else None

    def _switch(self, op: Operation, info: CommandInfo) -> SwitchDecision | None:
        """The degrade switch in force for this call, if any. Commands about the server
        rather than data (``INFO``, ``TIME``...) are never switched."""
        policies = self.runtime.policies
        if not policies.switchboard.active or not info.switchable:
            return None
        return policies.decide(op.name, op.write)

    def _limit(self, op: Operation, now: float = 0.0) -> str | None:
        """Admit one call under the rate and concurrency limits: the refusal's text, or
        ``None`` (then :meth:`_flush` gives its concurrency slot back when its run returns)."""
        limiter = self.runtime.policies.limiter
        if limiter is None or self._admitted_whole:
            return None
        rejection = limiter.admit(op.name, now or self._clock.current_time())
        if rejection is None:
            self._admitted.append(op.name)
        elif (metrics := self.runtime.policies.metrics) is not None:
            metrics.refused(op.name, Refusal.LIMIT)
        return rejection

    def _done(self, admitted: list[str]) -> None:
        """Give back the concurrency slots of calls that have ended."""
        limiter = self.runtime.policies.limiter
        if limiter is not None:
            for name in admitted:
                limiter.done(name)

    def _degraded(self, decision: SwitchDecision, info: CommandInfo, command: Command) -> bytes:
        """The reply a degrade switch gives a call in its stead."""
        action = decision.action
        if action is SwitchAction.ERROR:
            return R.gateway_error(decision.message)
        if info.kind is Kind.WATCH:
            return R.OK  # nothing there can change under a miss or a fallback: it holds
        if action is SwitchAction.FALLBACK:
            return R.bulk(decision.value or b"")
        if info.kind is Kind.BLOCKING:
            return degrade.timed_out(info.name, self.state.resp)  # nothing came to take
        if action is SwitchAction.EMPTY:
            return degrade.empty(info.name, command.args, self.state.resp)
        return degrade.acknowledged(info.name, self.state.resp)

    # ----------------------------------------------------------------------------------------
    # Forwarding

    def _queue(self, command: Command, op: Operation) -> None:
        """Make ``command`` a call of ``op`` and add it to the run forwarded at the next
        flush; reserve its reply slot."""
        command.op = op
        command.batch = self._batch
        self._fwd_idempotent = self._fwd_idempotent and op.idempotent
        if op is not self._fwd_op:
            self._fwd_op = op if self._fwd_op is None else _MIXED
        self._fwd.append(command)
        self._fwd_slots.append(len(self._out))
        self._out.append(b"")

    def _forward(self, command: Command, info: CommandInfo, op: Operation) -> None:
        """A command off the fast path that goes to the node as it is, once governed."""
        reply = self._govern(op, info, command, 0.0)
        if reply is not None:
            self._out.append(reply)
            return
        if info.name in CONNECTION_STATE and self.pinned is not None:
            self.pinned.reusable = False  # it leaves with a db or a name of its own
        self._queue(command, op)

    async def _flush(self, *, last: bool = False) -> None:
        """Forward the queued run and put each reply in its slot. ``last``: the batch ends
        here, so a run to one node may be left in flight (:meth:`_start_run`)."""
        if not self._fwd or (last and self._start_run()):
            return
        calls = self._fwd
        run, slots, wrote = self._take_run(self._reads_anywhere(), self._clock.current_time())
        payload = run.payload
        count = len(calls)
        runtime = self.runtime
        out = self._out
        admitted, self._admitted = self._admitted, []
        replies: list[bytes]
        try:
            if self.pinned is not None:
                replies = await self._pinned_request(payload, count, self._timeout, calls=calls)
            elif runtime.shards is not None:
                shape = (self.state.db, self.state.resp)
                await forward_sharded(runtime, calls, slots, self._out, shape, run.deadline)
                return
            else:
                chunks = (await runtime.engine.execute(run)).replies
                if slots[-1] - slots[0] == count - 1 and not self._substitutes:
                    # The replies fill adjacent slots: take them as one run of bytes.
                    out[slots[0]] = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                    return
                replies = split_replies(b"".join(chunks), count)
        except Unavailable as exc:
            replies = [R.unavailable(exc.node, exc.reason)] * count
            if self.pinned is not None and self.pinned.closed:
                self._lost_pinned(exc)
        finally:
            if wrote:  # counted from when the write was answered (or failed)
                self._reads_on_primary_until = self._clock.current_time() + READ_YOUR_WRITES
            if admitted:
                self._done(admitted)
        substitutes = self._substitutes
        for slot, reply in zip(slots, replies, strict=True):
            out[slot] = substitutes.pop(slot, reply) if substitutes else reply
        if self._pinned_selects:
            for slot, db in self._pinned_selects:
                if out[slot] == R.OK:
                    self.state.selected(db)
            self._pinned_selects = []
        if self.pinned is not None and self.state.mode is Mode.NORMAL:
            self._release_pinned()

    def _start_run(self) -> bool:
        """Send the queued run, the batch's last, so that the backend reader's task answers
        it (:meth:`_answered`) while this one goes back to reading the client: when it goes
        to one node once (not pinned, not sharded, not spread) and every slot is the node's.
        ``False``, with nothing done, otherwise."""
        runtime = self.runtime
        if (
            self.pinned is not None
            or runtime.shards is not None
            or self._substitutes
            or self._pinned_selects
        ):
            return False
        if runtime.policies.spreads_reads:
            if self._reads_anywhere():
                return False  # spread over the replicas: that waits in the session's task
            idempotent = False  # to the primary, as a read after this session's write must
        else:
            idempotent = self._fwd_idempotent  # one node: no read-your-writes window to keep
        now = self._clock.current_time()
        run, slots, wrote = self._take_run(idempotent, now)
        admitted, self._admitted = self._admitted, []
        self._inflight = (slots, len(run.calls), admitted, wrote)
        runtime.engine.start(run, self._answered, now)
        return True

    def _request_id(self) -> str | None:
        """The app's request id: the client's name (``CLIENT SETNAME``)."""
        name = self.state.name
        return name.decode() if name else None

    def _reads_anywhere(self) -> bool:
        """Whether the queued run may go to any node: it only reads, and not right after
        this session wrote (replicas lag, so a client must read its own writes)."""
        if not self._fwd_idempotent:
            return False
        until = self._reads_on_primary_until
        return not until or self._clock.current_time() >= until

    def _take_run(self, idempotent: bool, now: float) -> tuple[Run, list[int], bool]:
        """Take the queued run (``idempotent``: it may go to any node; ``now``: when it
        starts): the run, its calls' reply slots, and whether it writes where reads are
        spread (its answer then starts the read-your-writes window)."""
        calls = self._fwd
        slots = self._fwd_slots
        self._fwd = []
        self._fwd_slots = []
        runtime = self.runtime
        policies = runtime.policies
        wrote = not self._fwd_idempotent and policies.spreads_reads
        self._fwd_idempotent = True
        operation, self._fwd_op = self._fwd_op, None
        if len(calls) == self._batch_len and self._batch_raw is not None:
            payload = self._batch_raw
        else:
            payload = b"".join([command.raw for command in calls])
        run = Run(
            calls,
            payload,
            idempotent=idempotent,
            deadline=now + self._timeout,
            operation=operation if operation is not _MIXED else None,
            key=_run_key(calls) if idempotent and runtime.hash_reads else None,
            shape=(self.state.db, self.state.resp),
            request_id=self._request_id(),
        )
        return run, slots, wrote

    # ----------------------------------------------------------------------------------------
    # Pinned sessions: MULTI/WATCH, blocking commands, pub/sub

    async def _pin(self, node: Node | None = None) -> Unavailable | None:
        """Move the session onto a dedicated connection to ``node`` (the primary by default),
        flushing what is queued first. The node's breaker may refuse: a session starting
        there would only fail. Returns why it could not, or ``None``."""
        if self.pinned is not None:
            return None
        await self._flush()
        runtime = self.runtime
        node = node or runtime.home
        refusal = runtime.policies.refuses(node, self._clock.current_time())
        if refusal is not None:
            return Unavailable(node.address, refusal, Outcome.REJECTED)
        try:
            pool = runtime.pool(node)
            self.pinned = await pool.acquire_dedicated(self.state.db, self.state.resp)
        except BackendError as exc:
            return exc
        self.pinned_node = node
        self._pinned_pool = pool
        return None

    def _release_pinned(self) -> None:
        """Give the dedicated connection back; one still in MULTI or WATCH is closed instead.

        A transaction or watch left open on a pooled connection would be inherited by the next
        session that takes it (its EXEC would run our queued commands), so only a connection
        with no server-side session state goes back to the pool.
        """
        conn, self.pinned = self.pinned, None
        if conn is not None:
            if self.state.mode is not Mode.NORMAL:
                conn.reusable = False
            assert self._pinned_pool is not None
            self._pinned_pool.release(conn)  # its node may have left the cluster meanwhile
        self.state.released()
        self._pinned_selects = []

    async def _pinned_request(
        self,
        payload: bytes,
        count: int,
        timeout: float,
        *,
        calls: Sequence[Command],
        timed: bool = True,
    ) -> list[bytes]:
        """One exchange of ``calls`` on the dedicated connection, counted for its node's
        health and in the metrics."""
        conn = self.pinned
        assert conn is not None
        return await self.runtime.engine.execute_pinned(
            self.pinned_node,
            functools.partial(conn.request, payload, count, timeout),
            replies_outcome,
            timed=timed,
            calls=calls,
            sent=len(payload),
            request_id=self._request_id(),
        )

    def _lost_pinned(self, failure: Unavailable) -> None:
        """The dedicated connection broke: the session's state on the node went with it. A
        transaction's remaining commands are refused up to its EXEC (EXECABORT), as for a
        refused MULTI, so none runs outside it; a watch cannot be kept or replayed, so the
        client's connection is closed once this batch's replies are out."""
        mode = self.state.mode
        self._release_pinned()
        if mode is Mode.MULTI:
            self.state.refused_multi(f"its backend connection was lost: {failure.reason}")
        elif mode is Mode.WATCHING:
            self.state.closing = True

    async def _start_pinned(self, op: Operation, node: Node | None = None) -> str | None:
        """A pinned session starting with a call of ``op``: what is queued goes out first,
        then the limits admit the call, then the session takes a dedicated connection. Why it
        could not (with nothing left held), or ``None``."""
        await self._flush()
        rejection = self._limit(op)
        if rejection is not None:
            return f"ERR resmesh: {rejection}"
        admitted = len(self._admitted)  # the call's slot, if a limiter took one
        failure = await self._pin(node)
        if failure is not None:
            if len(self._admitted) == admitted and admitted:
                self._done([self._admitted.pop()])
            return f"ERR resmesh: backend {failure.node} unavailable: {failure.reason}"
        return None

    async def _begin_multi(self, command: Command, info: CommandInfo) -> None:
        """MULTI: a call of its own (limits apply; no switch: the commands it queues are
        switched one by one), then a dedicated connection. Refused, the transaction's
        commands are refused too, up to EXEC (which answers EXECABORT) or DISCARD."""
        op = self.runtime.operation(info)
        refusal = await self._start_pinned(op)
        if refusal is not None:
            self._out.append(R.error(refusal))
            self.state.refused_multi(refusal.removeprefix("ERR resmesh: "))
            return
        self.state.began_multi()
        self._queue(command, op)

    async def _begin_watch(self, command: Command, info: CommandInfo) -> None:
        op = self.runtime.operation(info)
        decision = self._switch(op, info)
        if decision is not None:
            self._out.append(self._degraded(decision, info, command))
            return
        refusal = await self._start_pinned(op)
        if refusal is not None:
            self._out.append(R.error(refusal))
            return
        self.state.began_watch()
        self._queue(command, op)

    async def _multi_after_watch(self, command: Command, info: CommandInfo) -> None:
        """MULTI while watching: the transaction starts on the connection that holds the
        watch. Refused, the watch goes with it (as EXEC would end it): the connection is not
        reused, and the transaction's commands are refused up to EXEC."""
        state = self.state
        op = self.runtime.operation(info)
        rejection = self._limit(op)
        if rejection is not None:
            self._out.append(R.gateway_error(rejection))
            await self._flush()
            self._release_pinned()  # still watching: closed, not pooled
            state.refused_multi(rejection)
            return
        state.began_multi()
        self._queue(command, op)

    def _queue_in_multi(self, command: Command, info: CommandInfo) -> None:
        """Inside MULTI: governed, then queued on the node; the gateway's own commands are
        answered here and their replies put in EXEC's array."""
        state = self.state
        op = self.runtime.operation(info)
        if info.kind is Kind.MULTI or info.kind is Kind.WATCH:
            # Not queued: the node answers them with an error on the spot.
            self._queue(command, op)
            return
        if info.name == b"CLIENT":
            # About the client's own connection, which the node's is not.
            self._out.append(R.QUEUED)
            state.queued(state.client(command))
            return
        reply = self._govern(op, info, command, 0.0)
        if reply is not None:
            if reply[:1] == b"-":
                self._refuse_queued(reply)  # refused: EXEC will abort, as for the node's own
            else:
                self._out.append(R.QUEUED)  # switched: answered in EXEC's array by the gateway
                state.queued(reply)
            return
        if info.name in CONNECTION_STATE and self.pinned is not None:
            self.pinned.reusable = False  # it leaves with a db of its own
        self._queue(command, op)
        state.queued()

    def _refuse_queued(self, reply: bytes) -> None:
        """Refuse a command inside MULTI: the node gets an arity error in its place (so it
        aborts the transaction at EXEC) and the client the gateway's text."""
        self._substitutes[len(self._out)] = reply
        self._batch_raw = None
        failing = Command([b"ECHO"], _QUEUE_TIME_FAILURE)
        self._queue(failing, self.runtime.operation(command_info(b"ECHO")))

    async def _block(self, command: Command, info: CommandInfo) -> None:
        """A command that may block (``BLPOP``, ``XREAD BLOCK``, ``WAIT``): on a dedicated
        connection for its own block time when it blocks, else forwarded like any other."""
        runtime = self.runtime
        assert info.spec is not None
        block = cmdtable.block_timeout(info.spec, command.args)
        node: Node | None = None
        if runtime.shards is not None:
            planned = sharding.plan(
                command.args, runtime.shards.shard_of, len(runtime.shards.shards)
            )
            if isinstance(planned, sharding.RefusedPlan):
                self._out.append(planned.reply)
                return
            if block is not None and not planned.parts:
                node = runtime.shards.shards[planned.shard]
            else:
                block = None
        if block is None:
            read = cmdtable.is_idempotent_read(info.spec, command.args)
            op = runtime.read_operation(info.operation) if read else runtime.operation(info)
            self._forward(command, info, op)
            return
        op = runtime.operation(info)
        decision = self._switch(op, info)
        if decision is not None:
            if decision.action in _EMPTY_ACTIONS:
                # Nothing to take: wait the block time, as the node would, then time out.
                await self._flush()
                if await self._wait_blocked(block):
                    self._out.append(degrade.timed_out(info.name, self.state.resp))
            else:
                self._out.append(self._degraded(decision, info, command))
            return
        await self._flush()
        rejection = self._limit(op)
        if rejection is not None:
            self._out.append(R.gateway_error(rejection))
            return
        admitted, self._admitted = self._admitted, []
        command.op = op
        try:
            reply = await self._run_blocking(command, block, node)
        finally:
            self._done(admitted)  # a blocked call is in flight until it returns
        if reply is not None:
            self._out.append(reply)

    async def _run_blocking(
        self, command: Command, block_seconds: float, node: Node | None
    ) -> bytes | None:
        """Run a blocking command on a dedicated connection, honouring its own block time.

        While it waits, the client is watched: a disconnect cancels the wait (and closes the
        connection, whose reply is still owed), and pipelined commands are buffered. Returns
        the reply, or ``None`` if the client left.
        """
        temporary = self.pinned is None
        if temporary:
            failure = await self._pin(node)
            if failure is not None:
                return R.unavailable(failure.node, failure.reason)
        conn = self.pinned
        assert conn is not None
        timeout = block_seconds + self._timeout
        reply: bytes | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client_while_blocked, nursery.cancel_scope)
                try:
                    replies = await self._pinned_request(
                        command.raw,
                        1,
                        timeout if math.isfinite(timeout) else math.inf,
                        calls=(command,),
                        timed=False,
                    )
                    reply = replies[0]
                except Unavailable as exc:
                    reply = R.unavailable(exc.node, exc.reason)
                    if not temporary:
                        self._lost_pinned(exc)
                nursery.cancel_scope.cancel()
        finally:
            if temporary or conn.closed:
                self._release_pinned()
        return reply

    async def _wait_blocked(self, block_seconds: float) -> bool:
        """Wait ``block_seconds`` (0: for ever) as a blocked client, watching the client;
        whether the wait ran its course (``False``: the client left)."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_client_while_blocked, nursery.cancel_scope)
            if block_seconds > 0:
                await trio.sleep(block_seconds)
            else:
                await trio.sleep_forever()
            nursery.cancel_scope.cancel()
        return not self.state.closing

    async def _watch_client_while_blocked(self, cancel: trio.CancelScope) -> None:
        while True:
            try:
                data = await self.transport.recv()
            except OSError:
                data = b""
            if not data:
                self.state.closing = True
                cancel.cancel()
                return
            try:
                self.parser.feed(data)
            except ProtocolError as exc:
                self._out.append(R.error(exc.reply_hint))
                self.state.closing = True
                cancel.cancel()
                return

    async def _subscribe(self, info: CommandInfo) -> bool:
        """SUBSCRIBE (or PSUBSCRIBE, SSUBSCRIBE): governed, then onto a dedicated connection.
        Whether the session is now a relay (else the refusal is in its reply slot and the
        batch goes on). Under a ``miss`` switch a subscription is served (it reads nothing
        from the cache); ``error`` and ``fallback`` refuse it."""
        op = self.runtime.operation(info)
        decision = self._switch(op, info)
        if decision is not None and decision.action in _REFUSING_SUBSCRIPTIONS:
            self._out.append(R.gateway_error(decision.message))
            return False
        await self._flush()
        rejection = self._limit(op)
        if rejection is not None:
            self._out.append(R.gateway_error(rejection))
            return False
        # A subscription lasts: its concurrency slot is given back once it is set up.
        admitted, self._admitted = self._admitted, []
        try:
            failure = await self._pin()
        finally:
            self._done(admitted)
        if failure is not None:
            self._out.append(R.unavailable(failure.node, failure.reason))
            return False
        self.state.subscribed()
        return True

    def left_subscribed_mode(self) -> None:
        """The pub/sub relay ended with the node's ``+RESET``: the dedicated connection is
        closed (the RESET logged it in as the node's default user) and the session starts
        afresh, as RESET makes it."""
        self._release_pinned()
        self.state.reset()
        self.parser.authenticated = self.state.authenticated

    def relay_refusal(self, command: Command, info: CommandInfo) -> str | None:
        """Governance on the pub/sub relay: a switched or limited command is refused there
        (its reply cannot be slotted in), but a subscription under ``miss`` is served as
        anywhere; a limit's slot is given back at once (replies on the relay are not
        paired)."""
        op = self.runtime.operation(info)
        decision = self._switch(op, info)
        if decision is not None and (
            info.kind is not Kind.SUBSCRIBE or decision.action in _REFUSING_SUBSCRIPTIONS
        ):
            return f"ERR resmesh: {decision.message}"
        rejection = self._limit(op)
        admitted, self._admitted = self._admitted, []
        self._done(admitted)
        if rejection is not None:
            return f"ERR resmesh: {rejection}"
        metrics = self.runtime.policies.metrics
        if metrics is not None:
            command.op = op
            metrics.untimed(command, self.pinned_node, self._request_id())
        return None

    # ----------------------------------------------------------------------------------------
    # Commands the gateway answers itself

    async def _local(self, command: Command, info: CommandInfo) -> None:
        metrics = self.runtime.policies.metrics
        if metrics is not None:
            command.op = self.runtime.operation(info)
            metrics.untimed(command, None, self._request_id())
        name = info.name
        state = self.state
        out = self._out
        if name == b"PING":
            out.append(state.ping(command))
        elif name == b"ECHO":
            out.append(state.echo(command))
        elif name == b"CLIENT":
            out.append(state.client(command))
        elif name == b"AUTH":
            out.append(state.auth(command))
        elif name == b"HELLO":
            await self._hello(command)
        elif name == b"SELECT":
            await self._select_command(command)
        elif name == b"QUIT":
            await self._flush()
            out.append(R.OK)
            state.closing = True
        elif name == b"RESET":
            # What was queued before it is answered first, as redis-server would; then a
            # pinned connection (its transaction or watches discarded) is closed, not pooled.
            await self._flush()
            self._release_pinned()
            out.append(state.reset())
        else:  # pragma: no cover - LOCAL_COMMANDS are all handled above
            raise AssertionError(name)
        self.parser.authenticated = state.authenticated

    async def _hello(self, command: Command) -> None:
        state = self.state
        reply, switch_to = state.hello(command)
        if switch_to is None:
            self._out.append(reply)
            return
        await self._flush()  # queued commands go out under the protocol they were sent in
        state.switch_protocol(switch_to)
        if self.pinned is not None:
            # WATCH is active: the pinned connection must speak the new protocol too (the
            # node's own HELLO reply is replaced with the gateway's), and is not pooled after.
            self.pinned.reusable = False
            self._substitutes[len(self._out)] = reply
            self._batch_raw = None
            hello = [b"HELLO", command.args[1]]
            self._queue(Command(hello), self.runtime.operation(command_info(b"HELLO")))
        else:
            self._out.append(reply)

    async def _select_command(self, command: Command) -> None:
        target = self.state.select_target(command)
        if isinstance(target, bytes):
            self._out.append(target)
            return
        if self.pinned is not None:
            # WATCH is active: the node's own SELECT applies to the pinned connection, and
            # the session follows it once the node has said +OK (see _flush).
            self.pinned.reusable = False
            self._pinned_selects.append((len(self._out), target))
            self._queue(command, self.runtime.operation(command_info(b"SELECT")))
            return
        await self._flush()
        try:
            # Opening the shared connection for that db validates it against the node.
            await self.runtime.pool(self.runtime.home).shared(target, self.state.resp)
        except BackendError as exc:
            if "DB index is out of range" in exc.reason:
                self.runtime.pool(self.runtime.home).forget(target, self.state.resp)
                self._out.append(R.DB_OUT_OF_RANGE)
            else:
                self._out.append(R.unavailable(exc.node, exc.reason))
            return
        self.state.selected(target)
        self._out.append(R.OK)


def _run_key(calls: list[Command]) -> bytes | None:
    """The first key of a read run, which ``balance: hash`` places on a node by."""
    keys = calls[0].keys
    return keys[0] if keys else None
