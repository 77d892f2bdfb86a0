"""Every backend connection to one Redis node: shared (multiplexed) and dedicated (pinned).

Connections are kept per *session shape* ``(db, resp)``: a shared connection only ever carries
commands of clients that selected the same database and negotiated the same protocol version,
so no ``SELECT``/``HELLO`` is ever interleaved on it.

The pool owns a nursery for the reader tasks of its shared connections (structured concurrency:
the pool's owner, the cluster runtime, outlives them). Dedicated connections have no tasks: the
client session that holds one drives it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import trio

from ...config import BackendConfig
from ...policies.waiting import Waiter
from ..poller import Poller
from .errors import BackendError
from .redis_conn import RedisConnection, connect
from .redis_mux import MuxConnection, Pending

__all__ = ["NodePool", "PoolStatistics"]

SessionShape = tuple[int, int]  # (db, resp)


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """What the pool holds now (for ``resmesh ctl status`` and tests that check for leaks)."""

    node: str
    shared: int
    shared_outstanding: int
    dedicated_in_use: int
    dedicated_idle: int


class NodePool:
    """Connections to one node, created lazily, replaced when they break."""

    def __init__(
        self,
        host: str,
        port: int,
        backend: BackendConfig,
        nursery: trio.Nursery,
        poller: Poller | None = None,
    ):
        self.host = host
        #: The poller of the cluster's sessions, for the shared connections (MuxConnection).
        self._poller = poller
        self.port = port
        self.node = f"{host}:{port}"
        self._backend = backend
        self._nursery = nursery
        self._shared: dict[SessionShape, list[MuxConnection | None]] = {}
        self._shared_locks: dict[SessionShape, trio.Lock] = {}
        #: The last failed connect per shape: (when it failed, why).
        self._connect_failures: dict[SessionShape, tuple[float, str]] = {}
        self._turn = itertools.count()
        self._idle: dict[SessionShape, list[RedisConnection]] = {}
        self._dedicated = trio.CapacityLimiter(backend.max_dedicated)
        #: Dedicated connections handed out, each with the borrower of its slot.
        self._in_use: dict[RedisConnection, object] = {}
        #: Set once the node left the cluster: nothing new is handed out.
        self.retired = False
        #: Shared connections being opened in the background: (shape, slot).
        self._opening: set[tuple[SessionShape, int]] = set()

    def shared_nowait(self, db: int, resp: int) -> MuxConnection | None:
        """A live shared connection for ``(db, resp)``, round-robin, if one is open already.

        The hot path: no coroutine, no await. When the connection in turn is not open but
        another is, that one serves and the missing one is opened in the background, so a
        run (a hedge's backup, above all) never waits for a connect while the node has a
        connection ready. ``None``: none is open; :meth:`shared` opens one.
        """
        shape = (db, resp)
        slots = self._shared.get(shape)
        if slots is None or self.retired:
            return None
        index = next(self._turn) % len(slots) if len(slots) > 1 else 0
        mux = slots[index]
        if mux is not None and not mux.conn.closed:
            return mux
        if (shape, index) not in self._opening:
            self._opening.add((shape, index))
            self._nursery.start_soon(self._open_quietly, shape, index)
        for other in slots:
            if other is not None and not other.closed:
                return other
        return None

    async def shared(self, db: int, resp: int) -> MuxConnection:
        """A live shared connection for ``(db, resp)``, picked round-robin, opened if need be.

        Raises:
            BackendError: no connection could be opened.
        """
        if self.retired:
            raise BackendError(self.node, "node removed from the cluster")
        shape = (db, resp)
        slots = self._shared.get(shape)
        if slots is None:
            slots = self._shared[shape] = [None] * self._backend.connections
            self._shared_locks[shape] = trio.Lock()
        index = next(self._turn) % len(slots)
        mux = slots[index]
        if mux is not None and not mux.closed:
            return mux
        return await self._open(shape, index)

    async def _open(self, shape: SessionShape, index: int) -> MuxConnection:
        """Open the shared connection of ``shape`` in slot ``index`` (unless someone just did).

        Raises:
            BackendError: it could not be opened.
        """
        slots = self._shared[shape]
        arrived = trio.current_time()
        async with self._shared_locks[shape]:
            mux = slots[index]
            if mux is None or mux.closed:
                failed = self._connect_failures.get(shape)
                if failed is not None and failed[0] >= arrived:
                    # An attempt made while this caller queued has just failed: share its
                    # answer. Each trying again in turn would make the last caller wait
                    # callers x connect_timeout (and leave a half-open socket per try).
                    raise BackendError(self.node, failed[1])
                try:
                    conn = await self._connect(*shape)
                except BackendError as exc:
                    self._connect_failures[shape] = (trio.current_time(), exc.reason)
                    raise
                mux = MuxConnection(conn, self._poller)
                slots[index] = mux
                self._nursery.start_soon(mux.run)
                if self.retired:  # the node left the cluster during the connect
                    mux.retire()
        return mux

    async def _open_quietly(self, shape: SessionShape, index: int) -> None:
        """:meth:`_open` in the background: a failure is the next caller's to see."""
        try:
            await self._open(shape, index)
        except BackendError:
            pass
        finally:
            self._opening.discard((shape, index))

    def submit(
        self, db: int, resp: int, payload: bytes, count: int, deadline: float, waiter: Waiter
    ) -> Pending:
        """Send ``count`` commands on a shared connection for ``(db, resp)`` without waiting:
        at once if one is open, else once one is (a task of the pool's opens it). A connect
        that fails, or does not finish by ``deadline``, fails the submission.

        Raises:
            BackendError: the node left the cluster, or its open connection cannot take more.
        """
        pending = Pending(count, deadline, waiter)
        mux = self.shared_nowait(db, resp)
        if mux is not None:
            mux.enqueue(pending, payload)
            return pending
        if self.retired:
            raise BackendError(self.node, "node removed from the cluster")
        self._nursery.start_soon(self._submit_when_open, db, resp, pending, payload)
        return pending

    async def _submit_when_open(self, db: int, resp: int, pending: Pending, payload: bytes) -> None:
        try:
            with trio.move_on_at(pending.deadline) as scope:
                mux = await self.shared(db, resp)
            if scope.cancelled_caught or trio.current_time() >= pending.deadline:
                # Sent now, it would only fail the connection (every run on it) at once.
                raise BackendError(self.node, "no connection in time (backend.command_timeout)")
            mux.enqueue(pending, payload)
        except BackendError as exc:
            pending.error = exc
            pending.finish()

    async def acquire_dedicated(self, db: int, resp: int) -> RedisConnection:
        """A connection for one session's exclusive use; give it back with :meth:`release`.

        Raises:
            BackendError: the pinned-connection cap is reached for longer than the connect
                timeout, or no connection could be opened.
        """
        if self.retired:
            raise BackendError(self.node, "node removed from the cluster")
        # The borrower is a token of this acquisition, kept until release: handing the slot
        # from a temporary borrower to the connection would free it for an instant, and a
        # waiting task would take it (trio hands a freed token straight to a waiter).
        borrower = object()
        with trio.move_on_after(self._backend.connect_timeout) as scope:
            await self._dedicated.acquire_on_behalf_of(borrower)
        if scope.cancelled_caught:
            raise BackendError(
                self.node,
                f"all {self._backend.max_dedicated} pinned connections are in use "
                "(backend.max_dedicated)",
            )
        try:
            idle = self._idle.get((db, resp))
            while idle:
                conn = idle.pop()
                if conn.looks_alive():
                    break
            else:
                conn = await self._connect(db, resp)
        except BaseException:
            self._dedicated.release_on_behalf_of(borrower)
            raise
        self._in_use[conn] = borrower
        return conn

    def release(self, conn: RedisConnection) -> None:
        """Return a dedicated connection: pooled if clean, closed otherwise."""
        borrower = self._in_use.pop(conn, None)
        if borrower is None:
            return
        self._dedicated.release_on_behalf_of(borrower)
        if conn.reusable and not conn.closed and conn.replies.empty and not self.retired:
            self._idle.setdefault((conn.db, conn.resp), []).append(conn)
        else:
            conn.close()

    def forget(self, db: int, resp: int) -> None:
        """Drop what is kept for a session shape that has no live shared connection (a
        ``SELECT`` of a database the node does not have): a client must not grow the pool
        with every number it tries."""
        shape = (db, resp)
        slots = self._shared.get(shape)
        lock = self._shared_locks.get(shape)
        if slots is None or (lock is not None and lock.locked()):
            return
        if all(mux is None or mux.closed for mux in slots):
            del self._shared[shape]
            self._shared_locks.pop(shape, None)
            self._connect_failures.pop(shape, None)

    def retire(self) -> None:
        """The node left the cluster: hand out nothing more, close idle connections now and
        busy ones once their work is done (shared ones when answered, dedicated ones when
        their session gives them back)."""
        self.retired = True
        for slots in self._shared.values():
            for mux in slots:
                if mux is not None:
                    mux.retire()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()

    def close(self) -> None:
        """Close every connection (shutdown)."""
        for slots in self._shared.values():
            for mux in slots:
                if mux is not None:
                    mux.close()
        for idle in self._idle.values():
            for conn in idle:
                conn.close()
        self._idle.clear()
        for conn in list(self._in_use):
            conn.close()

    def statistics(self) -> PoolStatistics:
        live = [m for slots in self._shared.values() for m in slots if m and not m.closed]
        return PoolStatistics(
            node=self.node,
            shared=len(live),
            shared_outstanding=sum(m.outstanding for m in live),
            dedicated_in_use=len(self._in_use),
            dedicated_idle=sum(len(v) for v in self._idle.values()),
        )

    async def _connect(self, db: int, resp: int) -> RedisConnection:
        backend = self._backend
        return await connect(
            self.host,
            self.port,
            db=db,
            resp=resp,
            username=backend.username,
            password=backend.password,
            timeout=backend.connect_timeout,
        )
