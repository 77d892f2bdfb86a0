"""Where a Redis cluster's forwarded commands go: node choice, health and failover.

The session hands over a *run* (commands it forwards together in one write) and whether every
command in it is an idempotent read. Writes, and any run with a write in it, go to the primary.
Read runs in a replicated cluster are spread over every enabled node: a group (data center) is
chosen by route weights and health, then a node by the balancer among those the outlier
detector and the breakers leave available. A read run that fails on its node (connection
lost, timeout, or an error that is the node's fault such as ``LOADING``) is retried once on a
different node while the retry budget allows, so a replica dying under load costs the client
nothing.

Governance sees runs as calls and outcomes only (``resmesh/policies``); this module is the
bridge that knows what a Redis reply means for a node's health.
"""

from __future__ import annotations

import math
from typing import Final

import trio

from ..call import Outcome, classify_redis_error
from ..cluster.topology import Node, Topology, topology_from_config
from ..config import ClusterConfig, Mode
from ..policies.balance import Balancer, ConsistentHashBalancer
from ..policies.breaker import BreakerState, CircuitBreaker
from ..policies.hedge import HedgeBudget, HedgeDelay
from ..policies.outlier import OutlierDetector
from ..policies.retry import RetryBudget
from ..policies.route import GroupRouter
from ..policies.settings import balancer_for, breaker_config, hedge_config, outlier_config
from ..protocols.resp.framing import scan_reply
from .backend.errors import BackendError
from .backend.redis_mux import Pending, Waiter, wait_first
from .backend.redis_pool import NodePool

__all__ = ["RedisUpstream"]

#: How often group health is recomputed for the router at most (seconds).
_HEALTH_REFRESH: Final = 0.1


class RedisUpstream:
    """The nodes of one Redis cluster and the policies that choose among them."""

    def __init__(self, config: ClusterConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.topology: Topology = topology_from_config(config)
        self.sharded = config.mode is Mode.SHARDED
        nodes = self.topology.nodes
        self.pools: dict[Node, NodePool] = {
            node: NodePool(node.host, node.port, config.backend, nursery) for node in nodes
        }
        governance = config.governance
        self.governance = governance
        breaker = breaker_config(governance.breaker)
        self.breakers: dict[Node, CircuitBreaker | _NoBreaker] = {
            node: CircuitBreaker(breaker) if governance.breaker.enabled else _NoBreaker()
            for node in nodes
        }
        self.outlier = OutlierDetector(nodes, outlier_config(governance.outlier))
        self._outlier_on = governance.outlier.enabled
        self.router = GroupRouter(dict(self.topology.route), governance.local_group)
        self.balancer: Balancer[Node] = balancer_for(governance.balance)
        failover = governance.failover
        self.retry_budget = RetryBudget(failover.budget_ratio, failover.budget_min)
        self._max_attempts = failover.max_attempts if failover.enabled else 1
        #: Hedge delay trackers: the cluster's (key ``None``) and each operation with its own
        #: hedge settings; ``None`` where hedging is off.
        self._hedges: dict[str | None, HedgeDelay | None] = {
            None: HedgeDelay(hedge_config(governance.hedge)) if governance.hedge.enabled else None
        }
        for name, op in governance.operations.items():
            if op.hedge is not None:
                self._hedges[name] = (
                    HedgeDelay(hedge_config(op.hedge)) if op.hedge.enabled else None
                )
        #: Whether any operation hedges differently from the cluster (then the session names
        #: the operation of each read run).
        self.operation_hedges = len(self._hedges) > 1
        self.hedge_budget = HedgeBudget(governance.hedge.budget)
        #: Nodes reads may use: configured weight above zero.
        self._readable = {
            group: tuple(n for n in members if n.weight > 0)
            for group, members in self.topology.groups.items()
        }
        self._spread_reads = len([n for g in self._readable.values() for n in g]) > 1
        #: Backup requests need another node holding the same keys.
        self._can_hedge = self._spread_reads and not self.sharded
        #: Sharded mode: the nodes of the heaviest-routed group, each holding a slice of the
        #: keys (ketama over their addresses, as twemproxy places them).
        heaviest = max(self.topology.route.items(), key=lambda item: item[1])[0]
        self.shards: tuple[Node, ...] = self._readable[heaviest] or self.topology.groups[heaviest]
        self._ring: ConsistentHashBalancer[Node] = ConsistentHashBalancer(
            name=lambda node: node.address
        )
        self._shard_index = {node: index for index, node in enumerate(self.shards)}
        self._health_at = -math.inf

    @property
    def primary(self) -> NodePool:
        return self.pools[self.topology.primary]

    async def forward(
        self,
        payload: bytes,
        count: int,
        db: int,
        resp: int,
        *,
        read: bool,
        joined: bool,
        operation: str | None = None,
    ) -> list[bytes]:
        """Send a run of ``count`` commands and return their raw replies (see MuxConnection).

        ``operation``: the run's command when all of its commands are the same one, so that
        command's own hedge settings apply.

        Raises:
            BackendError: no node could answer (the text says why); for a write, the primary's
                failure as it happened.
        """
        timeout = self.config.backend.command_timeout
        now = trio.current_time()
        node: Node | None = None
        if read and self._spread_reads:
            node = self._pick_read(now, ())
        if node is None:
            node = self.topology.primary
        hedger = None
        if read and self._can_hedge:
            hedger = self._hedges.get(operation, self._hedges[None])
        tried: list[Node] = []
        #: What the last attempt produced: the node's own error replies, or a failure.
        answer: list[bytes] | BackendError
        budget = self.retry_budget
        budget.request_started()
        try:
            while True:
                tried.append(node)
                answer, outcome = await self._attempt(
                    node, payload, count, db, resp, timeout, joined, hedger
                )
                if outcome is Outcome.OK or not read:
                    break
                if len(tried) >= self._max_attempts or not budget.try_start_retry():
                    break
                budget.finish_retry()
                other = self._pick_read(trio.current_time(), tried)
                if other is None:
                    break
                node = other
        finally:
            budget.request_finished()
        if isinstance(answer, BackendError):
            raise answer
        return answer  # replies, possibly the node's own errors (LOADING...) if no retry helped

    async def _attempt(
        self,
        node: Node,
        payload: bytes,
        count: int,
        db: int,
        resp: int,
        timeout: float,
        joined: bool,
        hedger: HedgeDelay | None,
    ) -> tuple[list[bytes] | BackendError, Outcome]:
        """One try, recorded for the nodes' breakers and the outlier detector.

        A read may be hedged (a backup request, Tail at Scale): if ``node`` has not answered
        after the measured p90 of read runs, the same run also goes to another node and the
        first good answer wins; the other is left to finish unobserved. Hedges are capped by
        a token bucket (15 % of read runs: motan-go).
        """
        started = trio.current_time()
        delay = hedger.delay(started) if hedger is not None else None
        if delay is not None:
            self.hedge_budget.record_call()
        waiter = Waiter()
        first = await self._submit(node, payload, count, db, resp, timeout, joined, waiter)
        if not isinstance(first, Pending):
            return first, Outcome.REJECTED if "breaker" in first.reason else Outcome.LOCAL_ERROR
        racing: list[tuple[Node, Pending]] = [(node, first)]
        try:
            winner = await wait_first([first], waiter, started + delay if delay else math.inf)
            if winner is None:
                backup = self._pick_read(trio.current_time(), [node])
                if backup is not None and self.hedge_budget.try_hedge():
                    second = await self._submit(
                        backup, payload, count, db, resp, timeout, joined, waiter
                    )
                    if isinstance(second, Pending):
                        racing.append((backup, second))
                winner = await wait_first([p for _, p in racing], waiter, math.inf)
                if winner is not None and winner.error is not None and len(racing) > 1:
                    # A node failure does not win the race: wait for the other attempt.
                    loser = racing[0][1] if winner is racing[1][1] else racing[1][1]
                    winner = await wait_first([loser], waiter, math.inf) or winner
        except BaseException:
            for racer, _ in racing:
                self.breakers[racer].release()
                self.balancer.finish(racer)
            raise
        assert winner is not None
        now = trio.current_time()
        answer: list[bytes] | BackendError = winner.error or winner.replies
        outcome = Outcome.OK
        for racer, pending in racing:
            if pending.done:
                settled = self._settle(racer, pending, started, now)
                if pending is winner:
                    outcome = settled
            else:
                # Still running: no verdict yet. It stays in flight on its node until it ends,
                # so a stalled node's load keeps the least-loaded balancer away from it.
                self.breakers[racer].release()
                pending.on_done = lambda done, node=racer: self._loser_done(node, done)
        if outcome is Outcome.OK and hedger is not None:
            hedger.record(now - started, now)
        return answer, outcome

    async def _submit(
        self,
        node: Node,
        payload: bytes,
        count: int,
        db: int,
        resp: int,
        timeout: float,
        joined: bool,
        waiter: Waiter,
    ) -> Pending | BackendError:
        """Queue the run on ``node`` if its breaker allows; a refusal or failure is returned."""
        breaker = self.breakers[node]
        now = trio.current_time()
        if not breaker.allow(now):
            return BackendError(node.address, f"circuit breaker open ({breaker.reason})")
        try:
            pool = self.pools[node]
            mux = pool.shared_nowait(db, resp) or await pool.shared(db, resp)
            pending = mux.submit(payload, count, timeout, joined, waiter)
        except BackendError as exc:
            later = trio.current_time()
            breaker.record(Outcome.LOCAL_ERROR, later - now, later)
            self._record_outlier(node, Outcome.LOCAL_ERROR, later)
            return exc
        except BaseException:
            breaker.release()
            raise
        self.balancer.start(node)
        return pending

    def shard_of(self, key: bytes) -> int:
        """The index in ``shards`` of the node holding ``key`` (already reduced to its tag)."""
        node = self._ring.pick(self.shards, key)
        assert node is not None
        return self._shard_index[node]

    async def forward_to_shards(
        self, runs: dict[int, tuple[bytes, int]], db: int, resp: int
    ) -> dict[int, list[bytes] | BackendError]:
        """Send each shard its run concurrently (no task per shard: one shared waiter) and
        return every shard's replies, or why it could not answer. No failover: a key lives on
        one node only."""
        timeout = self.config.backend.command_timeout
        waiter = Waiter()
        results: dict[int, list[bytes] | BackendError] = {}
        waiting: dict[int, Pending] = {}
        started = trio.current_time()
        for index, (payload, count) in runs.items():
            node = self.shards[index]
            submitted = await self._submit(node, payload, count, db, resp, timeout, False, waiter)
            if isinstance(submitted, Pending):
                waiting[index] = submitted
            else:
                results[index] = submitted
        try:
            while waiting:
                done = await wait_first(list(waiting.values()), waiter, math.inf)
                assert done is not None
                index = next(i for i, p in waiting.items() if p is done)
                del waiting[index]
                self._settle(self.shards[index], done, started, trio.current_time())
                results[index] = done.error or done.replies
        except BaseException:
            for index in waiting:
                node = self.shards[index]
                self.breakers[node].release()
                self.balancer.finish(node)
            raise
        return results

    def _settle(self, node: Node, pending: Pending, started: float, now: float) -> Outcome:
        """A finished submission leaves its node's load and counts for its health."""
        self.balancer.finish(node)
        outcome = Outcome.LOCAL_ERROR if pending.error else _outcome(pending.replies)
        self.breakers[node].record(outcome, now - started, now)
        self._record_outlier(node, outcome, now)
        return outcome

    def _loser_done(self, node: Node, pending: Pending) -> None:
        """A hedge's losing attempt ended: it leaves the node's load, and counts if it failed."""
        self.balancer.finish(node)
        if pending.error is not None:
            self._record_outlier(node, Outcome.LOCAL_ERROR, trio.current_time())

    def _record_outlier(self, node: Node, outcome: Outcome, now: float) -> None:
        if self._outlier_on:
            self.outlier.record(node, outcome, now)

    def _pick_read(self, now: float, exclude: list[Node] | tuple[()]) -> Node | None:
        """A node for a read run: group by route and health, node by load among the healthy."""
        if now - self._health_at > _HEALTH_REFRESH:
            self._health_at = now
            self.router.set_health(
                {group: self._health(members, now) for group, members in self._readable.items()}
            )
        group = self.router.choose()
        candidates = self._available(self._readable.get(group or "", ()), now)
        node = self.balancer.pick(candidates, exclude=exclude) if candidates else None
        if node is None:
            # The chosen group has nothing left: any healthy node anywhere, then anything.
            everything = [n for members in self._readable.values() for n in members]
            node = self.balancer.pick(self._available(everything, now), exclude=exclude)
            if node is None:
                node = self.balancer.pick(everything, exclude=exclude)
        return node

    def _available(self, nodes: tuple[Node, ...] | list[Node], now: float) -> list[Node]:
        return [
            n
            for n in self.outlier.available(nodes, now)
            if self.breakers[n].state_at(now) is not BreakerState.OPEN
        ]

    def _health(self, members: tuple[Node, ...], now: float) -> float:
        if not members:
            return 0.0
        return len(self._available(members, now)) / len(members)

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class _NoBreaker:
    """Stands in for a node's breaker when the cluster's governance turns breakers off."""

    __slots__ = ()
    reason = ""

    def allow(self, now: float) -> bool:
        return True

    def record(self, outcome: Outcome, latency: float, now: float) -> None:
        pass

    def release(self) -> None:
        pass

    def state_at(self, now: float) -> BreakerState:
        return BreakerState.CLOSED


def _outcome(replies: list[bytes]) -> Outcome:
    """The run's outcome for the node's health: an error that is the node's fault wins."""
    for blob in replies:
        if blob[:1] != b"-" and b"\r\n-" not in blob:
            continue
        pos = 0
        while pos < len(blob):
            end = scan_reply(blob, pos)
            if end < 0:
                break
            if blob[pos] == 0x2D and classify_redis_error(blob[pos + 1 : end - 2]) is (
                Outcome.UPSTREAM_ERROR
            ):
                return Outcome.UPSTREAM_ERROR
            pos = end
    return Outcome.OK
