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

import trio

from ..call import Outcome, classify_redis_error
from ..cluster.topology import Node, Topology, topology_from_config
from ..config import ClusterConfig, Mode
from ..policies.balance import ConsistentHashBalancer
from ..policies.chain import ClusterPolicies, configured_switches
from ..policies.hedge import HedgeDelay
from ..protocols.resp.framing import scan_reply
from .backend.alarms import Alarms
from .backend.errors import BackendError
from .backend.redis_mux import Pending, Waiter, wait_first
from .backend.redis_pool import NodePool

__all__ = ["RedisUpstream"]


class RedisUpstream:
    """The nodes of one Redis cluster and the policies that choose among them."""

    def __init__(self, config: ClusterConfig, nursery: trio.Nursery) -> None:
        self.config = config
        self.topology: Topology = topology_from_config(config)
        self.sharded = config.mode is Mode.SHARDED
        self.pools: dict[Node, NodePool] = {
            node: NodePool(node.host, node.port, config.backend, nursery)
            for node in self.topology.nodes
        }
        #: The cluster's governance pipeline; this module drives its steps per run.
        self.policies = ClusterPolicies(
            config.name,
            self.topology,
            config.governance,
            trio.current_time(),
            configured_switches(config.name, config.governance),
            sharded=self.sharded,
        )
        #: The hedge delays' clock (one timer task, not a cancel scope per read run).
        self.alarms = Alarms()
        if self.policies.spreads_reads:
            nursery.start_soon(self.alarms.run)
        #: Whether read runs are hashed to a node by their first key (``balance: hash``).
        self.hash_reads = self.policies.hashing and self.policies.spreads_reads
        #: Sharded mode: the nodes of the heaviest-routed group, each holding a slice of the
        #: keys (ketama over their addresses, as twemproxy places them).
        heaviest = max(self.topology.route.items(), key=lambda item: item[1])[0]
        members = self.topology.groups[heaviest]
        self.shards: tuple[Node, ...] = tuple(n for n in members if n.weight > 0) or members
        self._ring: ConsistentHashBalancer[Node] = ConsistentHashBalancer(
            name=lambda node: node.address
        )
        self._shard_index = {node: index for index, node in enumerate(self.shards)}

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
        key: bytes | None = None,
    ) -> list[bytes]:
        """Send a run of ``count`` commands and return their raw replies (see MuxConnection).

        ``operation``: the run's command when all of its commands are the same one, so that
        command's own hedge settings apply. ``key``: the run's first key, where read runs are
        hashed to a node (:attr:`hash_reads`).

        Raises:
            BackendError: no node could answer (the text says why); for a write, the primary's
                failure as it happened.
        """
        policies = self.policies
        timeout = self.config.backend.command_timeout
        node: Node | None = None
        hedger = None
        if read and policies.spreads_reads:
            node = policies.pick(trio.current_time(), (), key)
            hedger = policies.hedger(operation)
        if node is None:
            node = self.topology.primary
        #: Every node an attempt went to (hedges' backups too): a retry goes elsewhere.
        tried: list[Node] = []
        budget = policies.retry_budget
        budget.request_started()
        try:
            answer, outcome = await self._attempt(
                node, payload, count, db, resp, timeout, joined, hedger, key, tried
            )
            while read and outcome is not Outcome.OK and len(tried) < policies.max_attempts:
                retry_node = policies.pick(trio.current_time(), tried, key)
                if retry_node is None or not budget.try_start_retry():
                    break
                try:  # the retry holds its budget slot while it runs
                    retried, outcome = await self._attempt(
                        retry_node, payload, count, db, resp, timeout, joined, hedger, key, tried
                    )
                finally:
                    budget.finish_retry()
                if outcome is not Outcome.REJECTED:
                    answer = retried  # a breaker's refusal says less than the first failure
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
        key: bytes | None,
        tried: list[Node],
    ) -> tuple[list[bytes] | BackendError, Outcome]:
        """One try, recorded for the nodes' breakers and the outlier detector; every node it
        sends to is added to ``tried``.

        A read may be hedged (a backup request, Tail at Scale): if ``node`` has not answered
        after the measured p90 of read runs, the same run also goes to another node and the
        first good answer wins; the other is left to finish unobserved. Hedges are capped by
        a token bucket (15 % of read runs: motan-go).

        This is the chain's HA step (:meth:`ClusterPolicies.call` does the same for one call
        with a nursery), done here with one shared waiter and no task, as runs are many.
        """
        policies = self.policies
        started = trio.current_time()
        delay = hedger.delay(started) if hedger is not None else None
        if delay is not None:
            assert hedger is not None
            hedger.budget.record_call()
        waiter = Waiter()
        tried.append(node)
        first = await self._submit(node, payload, count, db, resp, timeout, joined, waiter, started)
        if not isinstance(first, Pending):
            return first, Outcome.REJECTED if "breaker" in first.reason else Outcome.LOCAL_ERROR
        #: Each racer with the time it was sent (its own latency, for its node's health).
        racing: list[tuple[Node, Pending, float]] = [(node, first, started)]
        try:
            winner = await wait_first(
                [first], waiter, self.alarms, started + delay if delay else math.inf
            )
            if winner is None:
                assert hedger is not None
                now = trio.current_time()
                backup = policies.pick(now, tried, key)
                if backup is not None and hedger.budget.try_hedge():
                    tried.append(backup)
                    second = await self._submit(
                        backup, payload, count, db, resp, timeout, joined, waiter, now
                    )
                    if isinstance(second, Pending):
                        racing.append((backup, second, now))
                winner = await wait_first([p for _, p, _ in racing], waiter)
                if winner is not None and winner.error is not None and len(racing) > 1:
                    # A node failure does not win the race: it is counted now, when it
                    # happened, and the other attempt waited for.
                    index = 0 if winner is first else 1
                    failed_node, _, sent = racing.pop(index)
                    self._settle(failed_node, winner, sent, trio.current_time())
                    loser = racing[0][1]
                    winner = await wait_first([loser], waiter) or winner
        except BaseException:
            for racer, pending, _ in racing:
                policies.abandon(racer, pending.probe)
            raise
        assert winner is not None
        now = trio.current_time()
        answer: list[bytes] | BackendError = winner.error or winner.replies
        outcome = Outcome.LOCAL_ERROR if winner.error is not None else Outcome.OK
        for racer, pending, sent in racing:
            if pending.done:
                settled = self._settle(racer, pending, sent, now)
                if pending is winner:
                    outcome = settled
            else:
                # Still running: no verdict yet. It stays in flight on its node until it ends,
                # so a stalled node's load keeps the least-loaded balancer away from it.
                policies.release(racer, pending.probe)
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
        now: float,
    ) -> Pending | BackendError:
        """Queue the run on ``node`` if its breaker allows; a refusal or failure is returned.
        ``now``: the time the caller read just before (one clock read per run, not two)."""
        policies = self.policies
        probe = policies.begin(node, now)
        if isinstance(probe, str):
            return BackendError(node.address, probe)
        try:
            pool = self.pools[node]
            mux = pool.shared_nowait(db, resp) or await pool.shared(db, resp)
            pending = mux.submit(payload, count, timeout, joined, waiter)
        except BackendError as exc:
            later = trio.current_time()
            policies.settle(node, Outcome.LOCAL_ERROR, later - now, later, probe)
            return exc
        except BaseException:
            policies.abandon(node, probe)
            raise
        pending.probe = probe
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
        try:
            for index, (payload, count) in runs.items():
                node = self.shards[index]
                submitted = await self._submit(
                    node, payload, count, db, resp, timeout, False, waiter, started
                )
                if isinstance(submitted, Pending):
                    waiting[index] = submitted
                else:
                    results[index] = submitted
            while waiting:
                done = await wait_first(list(waiting.values()), waiter)
                assert done is not None
                index = next(i for i, p in waiting.items() if p is done)
                del waiting[index]
                self._settle(self.shards[index], done, started, trio.current_time())
                results[index] = done.error or done.replies
        except BaseException:
            for index, pending in waiting.items():
                self.policies.abandon(self.shards[index], pending.probe)
            raise
        return results

    def _settle(self, node: Node, pending: Pending, started: float, now: float) -> Outcome:
        """A finished submission leaves its node's load and counts for its health."""
        outcome = Outcome.LOCAL_ERROR if pending.error else _outcome(pending.replies)
        self.policies.settle(node, outcome, now - started, now, pending.probe)
        return outcome

    def _loser_done(self, node: Node, pending: Pending) -> None:
        """A hedge's losing attempt ended: it leaves the node's load, and counts if it failed."""
        policies = self.policies
        policies.unload(node)
        if pending.error is not None:
            policies.record_outlier(node, Outcome.LOCAL_ERROR, trio.current_time())

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


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
