"""The per-client driver of the Redis frontend: one task per client connection.

Each read from the client is parsed into every complete command it holds; the commands are
handled in order and their replies written back together in one write (pipelining preserved
and batched, perf-baselines recommendation 1). Runs of ordinary commands go to the backend as
one write on a shared, multiplexed connection; the session answers connection-level commands
itself (``HELLO``, ``AUTH``, ``SELECT``, ``CLIENT ...``, ``PING``), because the backend
connection is not the client's own.

A session leaves the shared connection for a *dedicated* one (``pinned``) while its state lives
on the server: ``MULTI``..``EXEC``, ``WATCH``, a blocking command, and pub/sub. Pub/sub turns the
session into a relay for the rest of its life, because RESP2 subscribers get unsolicited
messages that cannot be paired with requests.
"""

from __future__ import annotations

import contextlib
import logging
import math
import socket
from typing import TYPE_CHECKING, Final

import trio

from ...protocols._errors import ProtocolError
from ...protocols.resp import commands as cmdtable
from ...protocols.resp import sharding
from ...protocols.resp.framing import scan_reply
from ...protocols.resp.requests import Command, RequestParser, encode_command
from ...protocols.resp.sharding import Plan
from ..backend.errors import BackendError
from ..backend.redis_conn import RedisConnection
from ..backend.redis_pool import NodePool
from ..sockio import RECV_SIZE, close_quietly, recv, send_all
from . import redis_replies as R
from .redis_degrade import limit_reply, switch_reply

if TYPE_CHECKING:
    from ..redis_cluster import RedisClusterRuntime

__all__ = ["RedisSession"]

log = logging.getLogger(__name__)

#: A client that does not take its replies within this long is dropped (redis-server's
#: ``client-output-buffer-limit`` plays this role there): a stuck reader must not pin memory
#: and a backend connection forever.
CLIENT_WRITE_TIMEOUT: Final = 60.0
#: Batches handled without parking before the session yields to others (fairness).
_YIELD_EVERY: Final = 32

_MULTI: Final = b"MULTI"
_EXEC: Final = b"EXEC"
_DISCARD: Final = b"DISCARD"
_WATCH: Final = b"WATCH"
_UNWATCH: Final = b"UNWATCH"
_QUIT: Final = b"QUIT"
_RESET: Final = b"RESET"
_AUTH: Final = b"AUTH"
_HELLO: Final = b"HELLO"

#: Commands that turn the connection into a subscriber (the rest of pub/sub is ordinary).
_SUBSCRIBE: Final = frozenset({b"SUBSCRIBE", b"PSUBSCRIBE", b"SSUBSCRIBE"})
#: Commands that would pin a connection: in sharded mode, planned per key instead.
_SHARDED_PINNING: Final = frozenset(
    {
        b"MULTI",
        b"EXEC",
        b"DISCARD",
        b"WATCH",
        b"UNWATCH",
        b"BLPOP",
        b"BRPOP",
        b"BLMOVE",
        b"BRPOPLPUSH",
        b"BLMPOP",
        b"BZPOPMIN",
        b"BZPOPMAX",
        b"BZMPOP",
        b"XREAD",
        b"XREADGROUP",
        b"WAIT",
        b"WAITAOF",
    }
)
#: What a subscribed connection may run in a sharded cluster (it is pinned to one node).
_RELAY_SHARDED: Final = _SUBSCRIBE | {
    b"UNSUBSCRIBE",
    b"PUNSUBSCRIBE",
    b"SUNSUBSCRIBE",
    b"PING",
    b"ECHO",
    _QUIT,
    _RESET,
    _AUTH,
    _HELLO,
}
#: Refused inside MULTI: their effect on the connection outlives the transaction.
_NOT_IN_MULTI: Final = _SUBSCRIBE | {_AUTH, _HELLO}
#: Commands that leave state on the connection that runs them (it is not pooled after).
_CONNECTION_STATE: Final = frozenset({b"SELECT", b"CLIENT"})
#: What an unauthenticated client may still send (redis-server's rule).
_PRE_AUTH: Final = frozenset({_AUTH, _HELLO, _QUIT, _RESET})
#: Inside MULTI, a refused command is sent to the node as this arity error instead, so the node
#: marks the transaction failed (EXECABORT), as it would for any rejected command; the reply in
#: that slot is then replaced with the gateway's own error text.
_QUEUE_TIME_FAILURE: Final = encode_command([b"ECHO"])


def _eval_reply(kind: bytes, text: str) -> bytes:
    """A command that makes the node itself answer ``text`` as a status or error reply.

    Used on the pub/sub relay, where replies cannot be slotted in by the gateway: the node
    emits it in its place in the stream, so order is kept.
    """
    script = b"return redis.%s(ARGV[1])" % kind
    return encode_command([b"EVAL", script, b"0", text.encode()])


class RedisSession:
    """State and driver of one client connection."""

    def __init__(
        self, runtime: RedisClusterRuntime, sock: socket.socket, peer: str, client_id: int
    ) -> None:
        self.runtime = runtime
        self.sock = sock
        self.peer = peer
        self.id = client_id
        self.db = 0
        self.resp = 2
        self.name = b""
        self.lib_name = b""
        self.lib_ver = b""
        self.user: str | None = None
        self.authenticated = not runtime.auth_required
        self.parser = RequestParser(runtime.request_limits, authenticated=self.authenticated)
        #: Dedicated backend connection while the session's state lives on the node.
        self.pinned: RedisConnection | None = None
        self.in_multi = False
        self.watching = False
        #: Why the client's MULTI was refused, until its EXEC or DISCARD: the commands in
        #: between must not run outside the transaction the client believes it has.
        self.multi_refused: str | None = None
        #: SELECTs queued inside MULTI: (position in the transaction, db). Each takes effect
        #: only if EXEC runs and its own reply in EXEC's array is +OK.
        self._multi_selects: list[tuple[int, int]] = []
        #: Commands queued since MULTI (a SELECT's position in EXEC's reply).
        self._multi_queued = 0
        #: A SELECT sent on the pinned connection while WATCH is active: (reply slot, db).
        self._pinned_select: tuple[int, int] | None = None
        self.closing = False
        self.last_command = b""
        #: Cancelled by a drain to interrupt the wait for the next request (never a batch).
        self.idle_scope: trio.CancelScope | None = None
        # Per-batch scratch: encoded replies in order, and the run of commands to forward.
        self._out: list[bytes] = []
        self._fwd: list[Command | bytes] = []
        #: The client's own bytes for the whole current batch, when the parser kept them:
        #: forwarded as they are when every command of the batch goes to the node unchanged.
        self._batch_raw: bytes | None = None
        self._batch_len = 0
        #: Whether every command queued since the last flush is an idempotent read.
        self._fwd_reads = True
        #: Operations admitted by the limiter whose run has not returned yet.
        self._admitted: list[str] = []
        #: Until when this session's reads go to the primary: ``_READ_YOUR_WRITES`` after its
        #: last write (0.0: it never wrote).
        self._reads_on_primary_until = 0.0
        self._fwd_slots: list[int] = []
        self._substitutes: dict[int, bytes] = {}
        #: Trio's clock, held to read the time for limits without trio.current_time()'s
        #: extra call (it runs once per batch).
        self._clock = trio.lowlevel.current_clock()

    # ----------------------------------------------------------------------------------------
    # Connection loop

    async def serve(self) -> None:
        """Serve the client until it quits, breaks the protocol, or the gateway drains."""
        idle_timeout = self.runtime.config.limits.client_idle_timeout
        batches = 0
        try:
            sock = self.sock
            while not self.closing and not self.runtime.draining:
                try:
                    data = sock.recv(RECV_SIZE)
                except BlockingIOError:
                    # Nothing to read: park, interruptible by a drain or the idle timeout.
                    # (The scope is only paid for here, not on the pipelined fast path.)
                    with trio.CancelScope() as scope:
                        self.idle_scope = scope
                        if idle_timeout > 0:
                            scope.deadline = trio.current_time() + idle_timeout
                        data = await recv(sock)
                    self.idle_scope = None
                    if scope.cancelled_caught:
                        break
                if not data:
                    break
                await self._handle_input(data)
                batches += 1
                if batches % _YIELD_EVERY == 0:
                    await trio.lowlevel.checkpoint()
        except OSError:
            pass  # the client went away; nothing to answer
        finally:
            self._release_pinned()
            close_quietly(self.sock)

    async def _handle_input(self, data: bytes) -> None:
        """Feed ``data`` and run every complete command, including any that arrived while a
        batch waited (a blocking command buffers the client's next commands) and any error
        that followed them."""
        try:
            self.parser.feed(data)
            while not self.closing:
                commands = self.parser.commands()
                if not commands:
                    break
                await self._run_batch(commands)
        except ProtocolError as exc:
            await self._write(R.error(exc.reply_hint))
            self.closing = True

    async def _write(self, data: bytes) -> None:
        try:
            sent = self.sock.send(data)
        except BlockingIOError:
            sent = 0
        if sent == len(data):
            return  # the common case: the socket took it all, no deadline needed
        with trio.move_on_after(CLIENT_WRITE_TIMEOUT) as scope:
            await send_all(self.sock, memoryview(data)[sent:])
        if scope.cancelled_caught:
            log.warning("client %s did not read its replies; closing it", self.peer)
            self.closing = True

    # ----------------------------------------------------------------------------------------
    # One batch: every command of one read, replies written together

    async def _run_batch(self, commands: list[Command]) -> None:
        limiter = self.runtime.limiter
        admitted = None
        if (
            limiter is not None
            and len(commands) > 1
            and self.authenticated
            and not self.in_multi
            and not self.runtime.switchboard.active  # switched commands are never admitted
        ):
            admitted = _batch_operations(commands)
            if admitted is not None and not limiter.admit_batch(
                admitted, len(commands), self._clock.current_time()
            ):
                admitted = None
        try:
            await self._run_commands(commands, admitted is None)
        finally:
            # Given back once the backend has answered, before the replies are written: a
            # client slow to read them must not hold the cluster's concurrency slots.
            if admitted is not None:
                assert limiter is not None
                limiter.done_batch(admitted, len(commands))
        await self._write_out()

    async def _run_commands(self, commands: list[Command], limit_each: bool) -> None:
        """Run a batch, leaving its replies in ``_out``; ``limit_each``: the limiter admits
        each command (the batch was not admitted whole)."""
        out = self._out
        self._batch_raw = self.parser.batch_raw
        self._batch_len = len(commands)
        plain_ok = self.authenticated and not self.in_multi and self.multi_refused is None
        runtime = self.runtime
        governed = runtime.switchboard.active or (runtime.limiter is not None and limit_each)
        now = self._clock.current_time() if governed else 0.0
        for index, command in enumerate(commands):
            if self.closing:
                break
            first = command.args[0]
            if plain_ok:
                plain = _PLAIN.get(first)
                if plain is None:
                    plain = _classify_plain(first)
                if plain:
                    self.last_command = first
                    if governed:
                        reply = self._govern(
                            first, plain == _PLAIN_READ, command.args, now, limit_each
                        )
                        if reply is not None:
                            out.append(reply)
                            continue
                    self._queue(command, plain == _PLAIN_READ)
                    continue
            name = first.upper()
            self.last_command = name
            if self.in_multi:
                await self._queue_in_multi(name, command)
            elif self.multi_refused is not None:
                await self._in_refused_multi(name, command)
            elif not self.authenticated and name not in _PRE_AUTH:
                out.append(R.NOAUTH)
            else:
                spec = cmdtable.lookup(command.args)
                refusal = cmdtable.refusal(spec, command.args) if spec is not None else None
                if refusal is not None:
                    out.append(R.error(refusal))
                    continue
                local = _LOCAL.get(name)
                if self.runtime.upstream.sharded and name in _SHARDED_PINNING:
                    # One dedicated connection cannot follow keys across nodes.
                    await self._sharded_pinned(command)
                    if name == _MULTI:
                        self.multi_refused = "transactions are not supported in sharded mode"
                elif local is not None:
                    await local(self, command)
                elif spec is None:
                    self._queue(command, False)  # unknown here: the node answers (modules)
                elif name in _SUBSCRIBE:
                    await self._begin_pinned()
                    if self.pinned is None:
                        continue  # refused (the error is in its slot): the batch goes on
                    await self._write_out()
                    await self._relay(commands[index:])
                    return
                elif name == _MULTI:
                    await self._begin_pinned()
                    if self.pinned is not None:
                        self.in_multi = True
                        self._multi_queued = 0
                        self._queue(command, False)
                    else:
                        self.multi_refused = "no dedicated backend connection"
                elif name == _WATCH:
                    await self._begin_pinned()
                    if self.pinned is not None:
                        self.watching = True
                        self._queue(command, False)
                else:
                    block = cmdtable.block_timeout(spec, command.args)
                    if block is not None:
                        await self._flush()
                        await self._blocking(command, block)
                    else:
                        read = cmdtable.is_idempotent_read(spec, command.args)
                        if governed:
                            reply = self._govern(first, read, command.args, now, limit_each)
                            if reply is not None:
                                out.append(reply)
                                continue
                        self._queue(command, read)
            # AUTH, RESET, MULTI, EXEC... may have changed what the fast path may assume.
            plain_ok = self.authenticated and not self.in_multi and self.multi_refused is None
        await self._flush()

    def _govern(
        self, first: bytes, read: bool, args: list[bytes], now: float, limit: bool
    ) -> bytes | None:
        """Per-command governance: a degrade switch's answer, or a limit's refusal, or
        ``None`` to forward (then the limiter counts the command until its run returns).
        ``limit`` is false when the whole batch was admitted at once."""
        runtime = self.runtime
        operation = _OPERATIONS.get(first)
        if operation is None:
            operation = _operation_name(first)
        if runtime.switchboard.active and _switchable(first, args):
            decision = runtime.switchboard.decide(runtime.name, operation, not read)
            if decision is not None:
                return switch_reply(decision, first.upper(), args, self.resp)
        limiter = runtime.limiter
        if limiter is not None and limit:
            rejection = limiter.admit(operation, now)
            if rejection is not None:
                return limit_reply(rejection)
            self._admitted.append(operation)
        return None

    def _queue(self, command: Command | bytes, read: bool = False) -> None:
        """Add a command to the run forwarded in the next flush; reserve its reply slot.

        ``read``: an idempotent read, which the upstream may send to any node of the cluster
        (and retry elsewhere) as long as its whole run is reads.
        """
        self._fwd_reads = self._fwd_reads and read
        self._fwd.append(command)
        self._fwd_slots.append(len(self._out))
        self._out.append(b"")

    async def _flush(self) -> None:
        """Forward the queued run in one write and put each reply in its slot."""
        if not self._fwd:
            return
        count = len(self._fwd)
        if count == self._batch_len and self._batch_raw is not None:
            payload = self._batch_raw
        else:
            payload = b"".join(c.raw if isinstance(c, Command) else c for c in self._fwd)
        slots = self._fwd_slots
        commands = self._fwd
        self._fwd = []
        self._fwd_slots = []
        read = self._fwd_reads
        self._fwd_reads = True
        upstream = self.runtime.upstream
        # Reads soon after this session's write go where the write went, so a client reads
        # its own writes even when reads are spread over replicas that lag.
        wrote = not read and upstream.policies.spreads_reads
        if read and self._reads_on_primary_until:
            read = self._clock.current_time() >= self._reads_on_primary_until
        admitted, self._admitted = self._admitted, []
        timeout = self.runtime.config.backend.command_timeout
        hedges_by_operation = upstream.policies.operation_hedges
        operation = _run_operation(commands) if read and hedges_by_operation else None
        key = _run_key(commands) if read and upstream.hash_reads else None
        try:
            if self.pinned is not None:
                replies = await self.pinned.request(payload, count, timeout)
            elif self.runtime.upstream.sharded:
                fwd = [c if isinstance(c, Command) else Command([b""], c) for c in commands]
                await self._flush_sharded(fwd, slots)
                return
            else:
                if slots[-1] - slots[0] == count - 1 and not self._substitutes:
                    # The replies fill adjacent slots: take them as one run of bytes.
                    runs = await upstream.forward(
                        payload,
                        count,
                        self.db,
                        self.resp,
                        read=read,
                        joined=True,
                        operation=operation,
                        key=key,
                    )
                    self._out[slots[0]] = runs[0] if len(runs) == 1 else b"".join(runs)
                    return
                replies = await upstream.forward(
                    payload,
                    count,
                    self.db,
                    self.resp,
                    read=read,
                    joined=False,
                    operation=operation,
                    key=key,
                )
        except BackendError as exc:
            failure = R.error(exc.reply_text)
            replies = [failure] * count
            if self.pinned is not None:
                # The session's server-side state (transaction, watches) is gone with it.
                self._release_pinned()
        finally:
            if wrote:  # counted from when the write was answered (or failed)
                self._reads_on_primary_until = self._clock.current_time() + _READ_YOUR_WRITES
            if admitted:
                limiter = self.runtime.limiter
                assert limiter is not None
                for operation in admitted:
                    limiter.done(operation)
        out = self._out
        substitutes = self._substitutes
        for slot, reply in zip(slots, replies, strict=True):
            out[slot] = substitutes.pop(slot, reply) if substitutes else reply
        if self._pinned_select is not None:
            slot, db = self._pinned_select
            self._pinned_select = None
            if out[slot] == R.OK:
                self.db = db
        if not self.in_multi and not self.watching and self.pinned is not None:
            self._release_pinned()

    async def _sharded_pinned(self, command: Command) -> None:
        """MULTI/WATCH are refused in sharded mode; a blocking command runs on its key's node."""
        upstream = self.runtime.upstream
        planned = sharding.plan(command.args, upstream.shard_of, len(upstream.shards))
        if isinstance(planned, sharding.RefusedPlan):
            self._out.append(planned.reply)
            return
        spec = cmdtable.lookup(command.args)
        block = cmdtable.block_timeout(spec, command.args) if spec is not None else None
        if block is None or planned.parts:
            self._queue(command)
            return
        await self._flush()
        await self._blocking(command, block, upstream.pools[upstream.shards[planned.shard]])

    async def _flush_sharded(self, commands: list[Command], slots: list[int]) -> None:
        """Sharded mode: each command to the node of its keys; multi-key commands split
        across nodes and their replies merged (``protocols/resp/sharding``). Every node's
        share of the run goes out in one write, all nodes at once."""
        upstream = self.runtime.upstream
        shard_of = upstream.shard_of
        shard_count = len(upstream.shards)
        out = self._out
        per_shard: dict[int, list[bytes]] = {}
        # Where each node's replies go: a slot, or (slot, part index) of a split command.
        routes: dict[int, list[int | tuple[int, int]]] = {}
        splits: dict[int, tuple[Plan, list[bytes]]] = {}
        for slot, command in zip(slots, commands, strict=True):
            planned = sharding.plan(command.args, shard_of, shard_count)
            if isinstance(planned, sharding.RefusedPlan):
                out[slot] = planned.reply
            elif not planned.parts:
                per_shard.setdefault(planned.shard, []).append(command.raw)
                routes.setdefault(planned.shard, []).append(slot)
            else:
                splits[slot] = (planned, [b""] * len(planned.parts))
                for index, part in enumerate(planned.parts):
                    per_shard.setdefault(part.shard, []).append(encode_command(part.args))
                    routes.setdefault(part.shard, []).append((slot, index))
        runs = {shard: (b"".join(p), len(p)) for shard, p in per_shard.items()}
        results = await upstream.forward_to_shards(runs, self.db, self.resp)
        for shard, result in results.items():
            targets = routes[shard]
            replies = (
                [R.error(result.reply_text)] * len(targets)
                if isinstance(result, BackendError)
                else result
            )
            for target, reply in zip(targets, replies, strict=True):
                if isinstance(target, int):
                    out[target] = reply
                else:
                    splits[target[0]][1][target[1]] = reply
        for slot, (planned, part_replies) in splits.items():
            try:
                out[slot] = sharding.merge(planned, part_replies)
            except ProtocolError as exc:
                out[slot] = R.error(exc.reply_hint)

    async def _write_out(self) -> None:
        if self._out:
            data = b"".join(self._out)
            self._out.clear()
            await self._write(data)

    # ----------------------------------------------------------------------------------------
    # Pinned sessions: MULTI/WATCH, blocking commands, pub/sub

    async def _begin_pinned(self) -> None:
        """Move the session onto a dedicated connection (flushing what is queued first)."""
        if self.pinned is not None:
            return
        await self._flush()
        try:
            self.pinned = await self.runtime.primary.acquire_dedicated(self.db, self.resp)
        except BackendError as exc:
            self._out.append(R.error(exc.reply_text))

    def _release_pinned(self) -> None:
        """Give the dedicated connection back; one still in MULTI or WATCH is closed instead.

        A transaction or watch left open on a pooled connection would be inherited by the next
        session that takes it (its EXEC would run our queued commands), so only a connection
        with no server-side session state goes back to the pool.
        """
        conn, self.pinned = self.pinned, None
        if conn is not None:
            if self.in_multi or self.watching:
                conn.reusable = False
            self.runtime.primary.release(conn)
        self.in_multi = self.watching = False
        self._multi_selects = []
        self._pinned_select = None

    async def _queue_in_multi(self, name: bytes, command: Command) -> None:
        """Inside MULTI every command is queued on the node, with the few exceptions below."""
        if name == _QUIT:
            await self._cmd_quit(command)
        elif name == _RESET:
            await self._cmd_reset(command)
        elif name in (_EXEC, _DISCARD):
            slot = len(self._out)
            self._queue(command)
            self.in_multi = self.watching = False
            selects, self._multi_selects = self._multi_selects, []
            await self._flush()
            if name == _EXEC and _is_exec_success(self._out[slot]):
                for position, db in selects:  # the SELECTs that took effect, in order
                    if _exec_element(self._out[slot], position).startswith(b"+OK"):
                        self.db = db
        else:
            spec = cmdtable.lookup(command.args)
            refusal = cmdtable.refusal(spec, command.args) if spec is not None else None
            if refusal is None and name in _NOT_IN_MULTI:
                # The session could not follow what they do to the connection (a subscriber,
                # another protocol) once EXEC has run them.
                refusal = f"ERR resmesh: {name.decode()} inside MULTI is not supported"
            if refusal is not None:
                self._substitutes[len(self._out)] = R.error(refusal)
                self._batch_raw = None
                self._queue(_QUEUE_TIME_FAILURE)
            else:
                if name in _CONNECTION_STATE and self.pinned is not None:
                    self.pinned.reusable = False  # it leaves with a db or a name of its own
                if name == b"SELECT":
                    with contextlib.suppress(IndexError, ValueError):
                        self._multi_selects.append((self._multi_queued, int(command.args[1])))
                self._queue(command)
            self._multi_queued += 1

    async def _in_refused_multi(self, name: bytes, command: Command) -> None:
        """Between a refused MULTI and its EXEC or DISCARD nothing runs: the client sent those
        commands to run atomically, and EXEC answers that the transaction was discarded."""
        if name == _QUIT:
            await self._cmd_quit(command)
        elif name == _RESET:
            await self._cmd_reset(command)
        elif name in (_EXEC, _DISCARD):
            self.multi_refused = None
            self._out.append(R.EXECABORT if name == _EXEC else R.OK)
        elif name == _MULTI:
            self._out.append(R.error("ERR MULTI calls can not be nested"))
        else:
            self._out.append(
                R.error(f"ERR resmesh: not run: its MULTI was refused ({self.multi_refused})")
            )

    async def _blocking(
        self, command: Command, block_seconds: float, pool: NodePool | None = None
    ) -> None:
        """Run a blocking command on a dedicated connection, honouring its own block time.

        While it waits, the client is watched: a disconnect cancels the wait (and closes the
        connection, whose reply is still owed), and pipelined commands are buffered.
        """
        pool = pool or self.runtime.primary
        conn = self.pinned
        temporary = conn is None
        if conn is None:
            try:
                conn = await pool.acquire_dedicated(self.db, self.resp)
            except BackendError as exc:
                self._out.append(R.error(exc.reply_text))
                return
        timeout = block_seconds + self.runtime.config.backend.command_timeout
        reply: bytes | None = None
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._watch_client_while_blocked, nursery.cancel_scope)
                try:
                    replies = await conn.request(
                        command.raw, 1, timeout if math.isfinite(timeout) else math.inf
                    )
                    reply = replies[0]
                except BackendError as exc:
                    reply = R.error(exc.reply_text)
                nursery.cancel_scope.cancel()
        finally:
            if temporary:
                pool.release(conn)
            elif conn.closed:
                self._release_pinned()
        if reply is not None:
            self._out.append(reply)

    async def _watch_client_while_blocked(self, cancel: trio.CancelScope) -> None:
        while True:
            try:
                data = await recv(self.sock)
            except OSError:
                data = b""
            if not data:
                self.closing = True
                cancel.cancel()
                return
            try:
                self.parser.feed(data)
            except ProtocolError as exc:
                self._out.append(R.error(exc.reply_hint))
                self.closing = True
                cancel.cancel()
                return

    async def _relay(self, commands: list[Command]) -> None:
        """Pub/sub: relay both directions on the pinned connection until either side ends."""
        conn = self.pinned
        assert conn is not None
        conn.reusable = False  # its subscriptions must never reach another client
        try:
            await conn.send(self._relay_payload(commands))
            async with trio.open_nursery() as nursery:
                # A subscriber waits for messages as an idle client waits for input: a drain
                # ends it at once (redis-server closes subscribers on shutdown too).
                self.idle_scope = nursery.cancel_scope
                if self.runtime.draining:
                    nursery.cancel_scope.cancel()
                nursery.start_soon(self._relay_node_to_client, conn, nursery.cancel_scope)
                await self._relay_client_to_node(conn)
                nursery.cancel_scope.cancel()
        except BackendError as exc:
            await self._write(R.error(exc.reply_text))
        finally:
            self.idle_scope = None
            self.closing = True

    async def _relay_node_to_client(self, conn: RedisConnection, cancel: trio.CancelScope) -> None:
        try:
            while True:
                data = await recv(conn.sock)
                if not data:
                    break
                await self._write(data)
                if self.closing:
                    break
        except OSError:
            pass
        cancel.cancel()

    async def _relay_client_to_node(self, conn: RedisConnection) -> None:
        while True:
            if self.parser.failed:
                data = b""  # malformed bytes already buffered: report them without waiting
            else:
                data = await recv(self.sock)
                if not data:
                    return
            try:
                self.parser.feed(data)
                commands = self.parser.commands()
            except ProtocolError as exc:
                # The connection is closed after this; replies the node still owes for
                # earlier commands are dropped with it (redis-server would send them first).
                await self._write(R.error(exc.reply_hint))
                return
            if commands:
                await conn.send(self._relay_payload(commands))

    def _relay_payload(self, commands: list[Command]) -> bytes:
        """Translate a relayed run: the node answers everything, the gateway's words included."""
        parts: list[bytes] = []
        sharded = self.runtime.upstream.sharded
        for command in commands:
            name = command.args[0].upper()
            spec = cmdtable.lookup(command.args)
            refusal = cmdtable.refusal(spec, command.args) if spec is not None else None
            if refusal is None and not self.authenticated and name not in _PRE_AUTH:
                refusal = R.NOAUTH[1:-2].decode()
            if refusal is None and sharded and name not in _RELAY_SHARDED:
                # This connection is on one node; the cluster's keys are on all of them.
                refusal = (
                    f"ERR resmesh: {name.decode(errors='replace')} on a connection that "
                    "subscribed in a sharded cluster: it runs pub/sub commands only; use "
                    "another connection"
                )
            if refusal is not None:
                parts.append(_eval_reply(b"error_reply", refusal))
            elif name == _AUTH:
                reply = self._authenticate(command.args[1:])
                kind = b"status_reply" if reply == R.OK else b"error_reply"
                parts.append(_eval_reply(kind, reply[1:-2].decode()))
            elif name == _HELLO:
                parts.append(self._relay_hello(command))
            elif name == _RESET:
                self.db, self.resp, self.name, self.user = 0, 2, b"", None
                self.authenticated = self.parser.authenticated = not self.runtime.auth_required
                parts.append(command.raw)
            else:
                parts.append(command.raw)
        return b"".join(parts)

    def _relay_hello(self, command: Command) -> bytes:
        """HELLO on the relay: check AUTH here, let the node switch protocol and answer."""
        args = command.args
        forwarded = args[:2]
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == _AUTH and i + 2 < len(args):
                reply = self._authenticate(args[i + 1 : i + 3])
                if reply != R.OK:
                    return _eval_reply(b"error_reply", reply[1:-2].decode())
                i += 3
            else:
                forwarded.append(args[i])
                i += 1
        if len(args) > 1 and args[1] in (b"2", b"3"):
            self.resp = int(args[1])
        return encode_command(forwarded)

    # ----------------------------------------------------------------------------------------
    # Commands the gateway answers itself

    def _authenticate(self, credentials: list[bytes]) -> bytes:
        """Check gateway credentials (never the backend's); returns the reply to send."""
        users = self.runtime.users
        if len(credentials) == 1:
            if not users:
                return R.NOPASS_CONFIGURED
            password = credentials[0].decode(errors="replace")
            default = users.get("default")
            candidates = [default] if default is not None else list(users.values())
            match = next((u for u in candidates if u.password == password), None)
        elif len(credentials) == 2:
            name = credentials[0].decode(errors="replace")
            password = credentials[1].decode(errors="replace")
            if name == "default" and "default" not in users:
                # redis-server's ``default`` user is whoever ``AUTH <password>`` logs in as:
                # redis-py sends ``HELLO 3 AUTH default <password>`` for a bare password.
                if not users:
                    return R.OK  # like a passwordless default user: any password is accepted
                return self._authenticate(credentials[1:])
            user = users.get(name)
            match = user if user is not None and user.password == password else None
        else:
            return R.SYNTAX
        if match is None:
            return R.WRONGPASS
        self.user = match.name
        self.authenticated = self.parser.authenticated = True
        return R.OK

    async def _cmd_auth(self, command: Command) -> None:
        if len(command.args) not in (2, 3):
            self._out.append(R.wrong_arity(b"auth"))
            return
        self._out.append(self._authenticate(command.args[1:]))

    async def _cmd_hello(self, command: Command) -> None:
        args = command.args
        resp = self.resp
        if len(args) > 1:
            try:
                resp = int(args[1])
            except ValueError:
                self._out.append(R.error("ERR Protocol version is not an integer or out of range"))
                return
            if resp not in (2, 3):
                self._out.append(R.NOPROTO)
                return
        name: bytes | None = None
        credentials: list[bytes] | None = None
        i = 2
        while i < len(args):
            option = args[i].upper()
            if option == _AUTH and i + 2 < len(args):
                credentials = args[i + 1 : i + 3]
                i += 3
            elif option == b"SETNAME" and i + 1 < len(args):
                name = args[i + 1]
                i += 2
            else:
                text = args[i].decode(errors="replace")
                self._out.append(R.error(f"ERR Syntax error in HELLO option '{text}'"))
                return
        if credentials is not None:
            reply = self._authenticate(credentials)
            if reply != R.OK:
                self._out.append(reply)
                return
        elif not self.authenticated:
            self._out.append(
                R.error(
                    "NOAUTH HELLO must be called with the client already authenticated, "
                    "otherwise the HELLO <proto> AUTH <user> <pass> option can be used to "
                    "authenticate the client and select the RESP protocol version at the same time"
                )
            )
            return
        if name is not None:
            if not _valid_client_name(name):
                self._out.append(R.BAD_CLIENT_NAME)
                return
            self.name = name
        switched = resp != self.resp
        if switched:
            await self._flush()  # queued commands go out under the protocol they were sent in
            self.resp = resp
        reply = R.map_reply(
            [
                (R.bulk(b"server"), R.bulk(b"redis")),
                (R.bulk(b"version"), R.bulk(self.runtime.server_version.encode())),
                (R.bulk(b"proto"), R.integer(self.resp)),
                (R.bulk(b"id"), R.integer(self.id)),
                (R.bulk(b"mode"), R.bulk(b"standalone")),
                (R.bulk(b"role"), R.bulk(b"master")),
                (R.bulk(b"modules"), R.array([])),
            ],
            self.resp,
        )
        if switched and self.pinned is not None:
            # WATCH is active: the pinned connection must speak the new protocol too (the
            # node's own HELLO reply is replaced with the gateway's), and is not pooled after.
            self.pinned.reusable = False
            self._substitutes[len(self._out)] = reply
            self._batch_raw = None
            self._queue(encode_command([_HELLO, args[1]]))
        else:
            self._out.append(reply)

    async def _cmd_select(self, command: Command) -> None:
        if len(command.args) != 2:
            self._out.append(R.wrong_arity(b"select"))
            return
        try:
            db = int(command.args[1])
        except ValueError:
            self._out.append(R.NOT_INTEGER)
            return
        if db < 0:
            self._out.append(R.DB_OUT_OF_RANGE)
            return
        if self.pinned is not None:
            # WATCH is active: the node's own SELECT applies to the pinned connection, and
            # the session follows it once the node has said +OK (see _flush).
            self.pinned.reusable = False
            self._pinned_select = (len(self._out), db)
            self._queue(command)
            return
        await self._flush()
        try:
            # Opening the shared connection for that db validates it against the node.
            await self.runtime.primary.shared(db, self.resp)
        except BackendError as exc:
            if "DB index is out of range" in exc.reason:
                self._out.append(R.DB_OUT_OF_RANGE)
            else:
                self._out.append(R.error(exc.reply_text))
            return
        self.db = db
        self._out.append(R.OK)

    async def _cmd_ping(self, command: Command) -> None:
        args = command.args
        if len(args) == 1:
            self._out.append(R.PONG)
        elif len(args) == 2:
            self._out.append(R.bulk(args[1]))
        else:
            self._out.append(R.wrong_arity(b"ping"))

    async def _cmd_echo(self, command: Command) -> None:
        if len(command.args) != 2:
            self._out.append(R.wrong_arity(b"echo"))
        else:
            self._out.append(R.bulk(command.args[1]))

    async def _cmd_quit(self, command: Command) -> None:
        await self._flush()
        self._out.append(R.OK)
        self.closing = True

    async def _cmd_reset(self, command: Command) -> None:
        """RESET: back to a fresh connection's state (redis-server 6.2 semantics).

        What was queued before it is answered first, as redis-server would; then a pinned
        connection (its transaction or watches discarded) is closed, not pooled.
        """
        await self._flush()
        self._release_pinned()
        self.multi_refused = None
        self.db = 0
        self.resp = 2
        self.name = b""
        self.authenticated = self.parser.authenticated = not self.runtime.auth_required
        self.user = None
        self._out.append(R.RESET)

    async def _cmd_exec_without_multi(self, command: Command) -> None:
        name = command.args[0].upper().decode()
        self._out.append(R.error(f"ERR {name} without MULTI"))

    async def _cmd_unwatch(self, command: Command) -> None:
        if self.pinned is not None:
            self.watching = False
            self._queue(command)
        else:
            self._out.append(R.OK)

    async def _cmd_client(self, command: Command) -> None:
        args = command.args
        if len(args) < 2:
            self._out.append(R.wrong_arity(b"client"))
            return
        sub = args[1].upper()
        if sub == b"ID" and len(args) == 2:
            self._out.append(R.integer(self.id))
        elif sub == b"GETNAME" and len(args) == 2:
            self._out.append(R.bulk(self.name) if self.name else R.null(self.resp))
        elif sub == b"SETNAME" and len(args) == 3:
            if not _valid_client_name(args[2]):
                self._out.append(R.BAD_CLIENT_NAME)
            else:
                self.name = args[2]
                self._out.append(R.OK)
        elif sub == b"SETINFO" and len(args) == 4:
            attribute = args[2].upper()
            if attribute == b"LIB-NAME":
                self.lib_name = args[3]
            elif attribute == b"LIB-VER":
                self.lib_ver = args[3]
            else:
                text = args[2].decode(errors="replace")
                self._out.append(R.error(f"ERR Unrecognized option '{text}'"))
                return
            self._out.append(R.OK)
        elif sub == b"INFO" and len(args) == 2:
            self._out.append(R.verbatim(self.describe() + b"\n", self.resp))
        elif sub == b"LIST":
            lines = b"".join(s.describe() + b"\n" for s in self.runtime.sessions.values())
            self._out.append(R.verbatim(lines, self.resp))
        else:
            text = b" ".join(args[:2]).decode(errors="replace").upper()
            self._out.append(R.error(f"ERR resmesh: '{text}' is not supported through the gateway"))

    def describe(self) -> bytes:
        """One ``CLIENT LIST`` line for this session (redis-server's field names)."""
        multi = -1 if not self.in_multi else 0
        fields = (
            f"id={self.id} addr={self.peer} laddr={self.runtime.listen} "
            f"name={self.name.decode(errors='replace')} db={self.db} multi={multi} "
            f"watch={int(self.watching)} resp={self.resp} "
            f"user={self.user or 'default'} lib-name={self.lib_name.decode(errors='replace')} "
            f"lib-ver={self.lib_ver.decode(errors='replace')} "
            f"cmd={self.last_command.decode(errors='replace').lower()}"
        )
        return fields.encode()


#: Command names, as clients spell them, that need nothing but forwarding in a normal session:
#: known to the table, never refused, not answered here, never pinning or blocking. Filled on
#: first sight (one dict get per command after that); bounded, as names come from clients.
_PLAIN: dict[bytes, int] = {}
_NOT_PLAIN: Final = 0
_PLAIN_WRITE: Final = 1
_PLAIN_READ: Final = 2
_PLAIN_CACHE_MAX: Final = 4096
#: Names longer than this are never remembered (no Redis command name comes close), so the
#: caches keyed by client-sent names hold a bounded number of bytes, not only of entries.
_NAME_CACHE_MAX_LEN: Final = 32


def _batch_operations(commands: list[Command]) -> dict[str, int] | None:
    """How many commands of each operation a batch holds, if every one is plain (forwarded
    as it is): such a batch is admitted by the limiter in one step. ``None`` otherwise.

    Remembered per batch shape (the sequence of command names): apps send the same few
    pipelines over and over, and counting a mixed one afresh cost more than admitting it."""
    shape = tuple([command.args[0] for command in commands])
    counts = _BATCH_SHAPES.get(shape, _UNKNOWN_SHAPE)
    if counts is _UNKNOWN_SHAPE:
        counts = {}
        for name in set(shape):
            plain = _PLAIN.get(name)
            if not plain:
                if plain is None:
                    return None  # not classified yet: decide again next time
                counts = None
                break
            operation = _OPERATIONS.get(name) or _operation_name(name)
            counts[operation] = counts.get(operation, 0) + shape.count(name)
        if len(shape) <= _SHAPE_MAX_LEN and all(name in _NAMES for name in shape):
            # The key holds the cached name objects, not the client's: a shape costs its
            # tuple only, however the names were spelled or sent.
            if len(_BATCH_SHAPES) >= _PLAIN_CACHE_MAX:
                _BATCH_SHAPES.clear()
            _BATCH_SHAPES[tuple([_NAMES[name] for name in shape])] = counts
    return counts


#: The command names ``_PLAIN`` holds, each mapped to the object it holds (for sharing).
_NAMES: dict[bytes, bytes] = {}
#: What :func:`_batch_operations` found per batch shape (bounded: cleared when full).
_BATCH_SHAPES: dict[tuple[bytes, ...], dict[str, int] | None] = {}
_UNKNOWN_SHAPE: Final[dict[str, int]] = {}
#: Batches longer than this are not remembered (a long one pays for counting per command).
_SHAPE_MAX_LEN: Final = 64


#: Seconds a session's reads stay on the primary after its write (replicas lag): long enough
#: for a pipeline however its bytes arrive and for a read right after a write; Rails' primary
#: / replica selector uses 2 s for the same reason.
_READ_YOUR_WRITES: Final = 1.0
#: Keyspace reads that name no key (the command table gives them no key positions).
_KEYSPACE_COMMANDS: Final = frozenset({b"SCAN", b"KEYS", b"RANDOMKEY", b"DBSIZE"})


def _switchable(first: bytes, args: list[bytes]) -> bool:
    """Whether a degrade switch applies: commands on data do; the rest (INFO, TIME, CONFIG
    GET, FUNCTION LIST...) are about the server, and a degraded cache still answers them."""
    spec = cmdtable.lookup(args)
    return spec is None or bool(spec.key_specs) or first.upper() in _KEYSPACE_COMMANDS


def _run_operation(commands: list[Command | bytes]) -> str | None:
    """The operation of a run whose commands are all the same command, else ``None``."""
    first = commands[0]
    if not isinstance(first, Command):
        return None
    name = first.args[0]
    for command in commands:
        if not isinstance(command, Command) or command.args[0] != name:
            return None
    return _OPERATIONS.get(name) or _operation_name(name)


def _run_key(commands: list[Command | bytes]) -> bytes | None:
    """The first key of a read run, which ``balance: hash`` places on a node by."""
    first = commands[0]
    if not isinstance(first, Command):
        return None
    spec = cmdtable.lookup(first.args)
    keys = cmdtable.command_keys(spec, first.args) if spec is not None else []
    return keys[0] if keys else None


#: Operation names (what limits and switches key on) by command name as clients spell it.
_OPERATIONS: dict[bytes, str] = {}


def _operation_name(name: bytes) -> str:
    operation = name.upper().decode("ascii", "replace")
    if len(_OPERATIONS) < _PLAIN_CACHE_MAX and len(name) <= _NAME_CACHE_MAX_LEN:
        _OPERATIONS[name] = operation
    return operation


def _classify_plain(name: bytes) -> int:
    spec = cmdtable.lookup([name])
    upper = name.upper()
    plain = (
        spec is not None
        and not spec.container
        and spec.name not in cmdtable.REFUSALS
        and not spec.flags & cmdtable.CommandFlag.BLOCKING
        and upper not in _LOCAL
        and upper not in _SUBSCRIBE
        and upper not in (_MULTI, _WATCH)
    )
    kind = _NOT_PLAIN
    if plain and spec is not None:
        kind = _PLAIN_READ if cmdtable.is_idempotent_read(spec) else _PLAIN_WRITE
    if len(_PLAIN) < _PLAIN_CACHE_MAX and len(name) <= _NAME_CACHE_MAX_LEN:
        _PLAIN[name] = kind
        _NAMES[name] = name
    return kind


def _exec_element(reply: bytes, position: int) -> bytes:
    """The reply of the ``position``-th command in EXEC's array reply (``b""`` if absent)."""
    pos = reply.find(b"\r\n") + 2
    for _ in range(position):
        pos = scan_reply(reply, pos)
        if pos < 0:
            return b""
    end = scan_reply(reply, pos)
    return reply[pos:end] if end > 0 else b""


def _is_exec_success(reply: bytes) -> bool:
    """EXEC ran the transaction: an array reply (not a nil for a failed WATCH, not an error)."""
    return reply[:1] == b"*" and reply[:3] != b"*-1"


def _valid_client_name(name: bytes) -> bool:
    """redis-server accepts printable ASCII without spaces (``clientSetName``)."""
    return all(33 <= ch <= 126 for ch in name)


_LOCAL: Final = {
    b"AUTH": RedisSession._cmd_auth,
    b"HELLO": RedisSession._cmd_hello,
    b"SELECT": RedisSession._cmd_select,
    b"PING": RedisSession._cmd_ping,
    b"ECHO": RedisSession._cmd_echo,
    b"QUIT": RedisSession._cmd_quit,
    b"RESET": RedisSession._cmd_reset,
    b"EXEC": RedisSession._cmd_exec_without_multi,
    b"DISCARD": RedisSession._cmd_exec_without_multi,
    b"UNWATCH": RedisSession._cmd_unwatch,
    b"CLIENT": RedisSession._cmd_client,
}
