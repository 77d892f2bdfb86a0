"""The nodes of one Redis cluster as the HA engine sees them: a :class:`RedisTransport` that
sends a run on a node's shared connection, and, in a sharded cluster, where each key lives.

Which node a run goes to, and what happens when it is slow or fails, is the engine's
(:mod:`resmesh.policies.engine`), the same for every protocol; this module only knows how to
put a run of RESP commands on a node's multiplexed connection for the session's database and
protocol version (the run's ``shape``).
"""

from __future__ import annotations

from collections.abc import Iterable

import trio

from ...call import Run
from ...cluster.topology import Node, Topology
from ...config import ClusterConfig
from ...policies.balance import ConsistentHashBalancer
from ...policies.waiting import Waiter
from ..backend.redis_mux import Pending
from ..backend.redis_pool import NodePool
from ..poller import Poller

__all__ = ["RedisTransport", "Shape", "ShardMap"]

#: A run's shape for Redis: the session's selected database and protocol version; a shared
#: connection only ever carries runs of one shape.
Shape = tuple[int, int]


class RedisTransport:
    """One connection pool per node; runs go on the shared connection for their shape."""

    def __init__(
        self,
        config: ClusterConfig,
        topology: Topology,
        nursery: trio.Nursery,
        poller: Poller | None = None,
    ) -> None:
        self._backend = config.backend
        self._nursery = nursery
        self._poller = poller
        self.pools: dict[Node, NodePool] = {}
        self.apply(topology.nodes, ())

    def apply(self, added: Iterable[Node], removed: Iterable[Node]) -> None:
        """Open pools to nodes that joined; drain those of nodes that left."""
        for node in added:
            self.pools[node] = NodePool(
                node.host, node.port, self._backend, self._nursery, self._poller
            )
        for node in removed:
            pool = self.pools.pop(node, None)
            if pool is not None:
                pool.retire()

    def pool_statistics(self) -> dict[str, dict[str, int]]:
        """Per node: its open connections, shared and dedicated, and the dedicated ones in
        use."""
        shown = {}
        for node, pool in self.pools.items():
            counted = pool.statistics()
            shown[node.address] = {
                "connections": counted.shared + counted.dedicated_in_use + counted.dedicated_idle,
                "in_flight": counted.shared_outstanding,
                "dedicated_in_use": counted.dedicated_in_use,
            }
        return shown

    def submit(self, node: Node, run: Run, waiter: Waiter) -> Pending:
        shape: Shape = run.shape  # type: ignore[assignment]  # opaque to the engine
        return self.pools[node].submit(
            shape[0], shape[1], run.payload, len(run.calls), run.deadline, waiter
        )

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()


class ShardMap:
    """Where each key lives in a sharded cluster: ketama over the nodes of the heaviest-routed
    group, as twemproxy places them, so a key keeps its node when others join or leave."""

    def __init__(self, topology: Topology) -> None:
        heaviest = max(topology.route.items(), key=lambda item: item[1])[0]
        members = topology.groups[heaviest]
        self.shards: tuple[Node, ...] = tuple(n for n in members if n.weight > 0) or members
        self._ring: ConsistentHashBalancer[Node] = ConsistentHashBalancer(
            name=lambda node: node.address
        )
        self._index = {node: index for index, node in enumerate(self.shards)}

    def shard_of(self, key: bytes) -> int:
        """The index in ``shards`` of the node holding ``key`` (already reduced to its tag)."""
        node = self._ring.pick(self.shards, key)
        assert node is not None
        return self._index[node]
