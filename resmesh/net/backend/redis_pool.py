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
from .errors import BackendError
from .redis_conn import RedisConnection, connect
from .redis_mux import MuxConnection

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

    def __init__(self, host: str, port: int, backend: BackendConfig, nursery: trio.Nursery):
        self.host = host
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

    def shared_nowait(self, db: int, resp: int) -> MuxConnection | None:
        """The next live shared connection for ``(db, resp)`` if it is open already.

        The hot path: no coroutine, no await. ``None`` means :meth:`shared` must open one.
        """
        slots = self._shared.get((db, resp))
        if slots is None or self.retired:
            return None
        mux = slots[next(self._turn) % len(slots)]
        return mux if mux is not None and not mux.closed else None

    async def shared(self, db: int, resp: int) -> MuxConnection:
        """A live shared connection for ``(db, resp)``, picked round-robin.

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
                    conn = await self._connect(db, resp)
                except BackendError as exc:
                    self._connect_failures[shape] = (trio.current_time(), exc.reason)
                    raise
                mux = MuxConnection(conn)
                slots[index] = mux
                self._nursery.start_soon(mux.run)
        return mux

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
                    mux.conn.close()
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
