"""The runtime of one Redis cluster: its governance pipeline, HA engine, node pools and the
sessions of its clients."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType

import trio

from ...call import Operation, Protocol
from ...cluster.topology import ClusterState, Node, topology_from_config
from ...config import ClusterConfig, Mode, RedisSettings, UserConfig
from ...policies.chain import ClusterPolicies, configured_switches
from ...policies.engine import HAEngine
from ...policies.switch import Switch
from ...protocols.resp import replies as R
from ...protocols.resp import requests
from ...protocols.resp.requests import RequestLimits
from ...protocols.resp.session import CommandInfo, RespSession
from ..backend.redis_mux import Pending
from ..backend.redis_pool import NodePool
from ..runtime import ClusterRuntime
from ..transport import ClientTransport
from .session import RedisSession
from .upstream import RedisTransport, ShardMap

log = logging.getLogger(__name__)

__all__ = ["RedisRuntime"]

#: Operations remembered per cluster at most (command names come from clients).
_CACHE_MAX = 8192
#: Names longer than this are never remembered: no Redis command name comes close.
_NAME_MAX_LEN = 32


class RedisRuntime(ClusterRuntime):
    """Everything that serves one Redis cluster.

    Ordinary commands go through the HA engine (``engine``) to the shared connections of the
    node it picks (``transport``); sessions pinned to a node (transactions, watches, blocking
    commands, pub/sub) hold a dedicated connection of the primary's pool, or, in a sharded
    cluster, of the node holding their key.
    """

    protocol = Protocol.REDIS

    def __init__(
        self,
        config: ClusterConfig,
        users: Mapping[str, UserConfig],
        nursery: trio.Nursery,
        *,
        workers: int = 1,
    ) -> None:
        super().__init__(config.name, str(config.listen), config.limits, workers=workers)
        self.config = config
        self.users: Mapping[str, UserConfig] = MappingProxyType(
            {name: user for name, user in users.items() if config.name in user.clusters}
        )
        if not requests.COMPILED:
            log.warning(
                "cluster %s: the compiled request framer is not installed, so requests are "
                "parsed in pure Python (more CPU per command); install a C compiler and "
                "Python's headers (apt-get install build-essential python3-dev), then "
                "reinstall resmesh",
                config.name,
            )
        #: Gateway logins allowed here (name → password): the sessions check AUTH against it.
        self.passwords: Mapping[str, str] = {name: u.password for name, u in self.users.items()}
        limits = config.redis or RedisSettings()
        self.request_limits = RequestLimits(
            max_bulk_len=limits.max_bulk_len,
            max_multibulk_len=limits.max_multibulk_len,
            max_buffer=limits.max_request_buffer,
        )
        topology = topology_from_config(config)
        self.sharded = config.mode is Mode.SHARDED
        self.transport = RedisTransport(config, topology, nursery, self.poller)
        self.policies = ClusterPolicies(
            config.name,
            topology,
            config.governance,
            trio.current_time(),
            configured_switches(config.name, config.governance),
            sharded=self.sharded,
            workers=workers,
            protocol="redis",
        )
        self.engine: HAEngine[Pending] = HAEngine(self.policies, self.transport)
        self._topology_changed()
        self._operations: dict[CommandInfo, Operation] = {}
        self._read_operations: dict[str, Operation] = {}
        #: The operation of each plain command (forwarded as it is in a normal session) by
        #: its name as clients spell it: the per-command fast path is this one lookup.
        self.plain: dict[bytes, Operation] = {}

    def _topology_changed(self) -> None:
        topology = self.policies.topology
        #: In a sharded cluster, which node holds each key.
        self.shards = ShardMap(topology) if self.sharded else None
        #: Whether read runs are placed by their first key (``balance: hash``).
        self.hash_reads = self.policies.hashing and self.policies.spreads_reads
        #: Whether every run goes to one node, so the poller may serve sessions (a sharded
        #: cluster, and reads spread over replicas, wait in the session's task at every batch:
        #: handing each one back would only cost).
        self.dispatchable = self.shards is None and not self.policies.spreads_reads
        #: The node pinned sessions use (the primary; for a sharded cluster, the first node
        #: of its heaviest group, which also validates SELECT).
        self.home: Node = self.policies.primary or topology.primary

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        """A new layout (and, if given, the degrade switches) in force from now on: new
        sessions and calls use it, sessions pinned to a node keep it until they end, and a
        removed node's connections close once their work is done.

        Raises:
            ValueError: ``state`` is not a valid layout.
        """
        added, removed = self.policies.apply(state, switches)
        self.transport.apply(added, removed)
        self._topology_changed()

    def set_primary(self, address: str) -> None:
        """Writes and new sessions go to the node at ``address`` from now on.

        Raises:
            ValueError: no node has that address, or the cluster is sharded.
        """
        self.policies.set_primary(address)
        self._topology_changed()

    def pool_statistics(self) -> dict[str, dict[str, int]]:
        return self.transport.pool_statistics()

    def open_session(self, transport: ClientTransport, client_id: int) -> RedisSession:
        return RedisSession(self, transport, client_id)

    def too_many_clients(self) -> bytes:
        return R.error("ERR max number of clients reached")  # redis-server's words

    async def run_backend(self) -> None:
        # Always: a cluster that does not spread reads now may after a new layout.
        await self.engine.run()

    def describe_backend(self) -> str:
        return self.home.address

    def close(self) -> None:
        self.transport.close()

    def pool(self, node: Node) -> NodePool:
        return self.transport.pools[node]

    def states(self) -> Iterator[RespSession]:
        """Every session's state (``CLIENT LIST``)."""
        for session in self.sessions.values():
            assert isinstance(session, RedisSession)
            yield session.state

    def operation(self, info: CommandInfo) -> Operation:
        """The :class:`~resmesh.call.Operation` of a command (made once per command here):
        idempotent for an idempotent read unless the cluster's ``operations.NAME.idempotent``
        says ``false``."""
        op = self._operations.get(info)
        if op is None:
            op = self._make_operation(info.operation, read=info.read, write=info.write)
            if len(self._operations) < _CACHE_MAX:  # names come from clients: bounded
                self._operations[info] = op
        return op

    def remember_plain(self, name: bytes, op: Operation) -> None:
        """``name`` (as a client spelled it) is a plain command of operation ``op``."""
        if len(self.plain) < _CACHE_MAX and len(name) <= _NAME_MAX_LEN:
            self.plain[name] = op

    def read_operation(self, name: str) -> Operation:
        """The operation of a command that reads because of its arguments (``XREAD`` without
        ``BLOCK``)."""
        op = self._read_operations.get(name)
        if op is None:
            op = self._make_operation(name, read=True, write=False)
            if len(self._read_operations) < _CACHE_MAX:
                self._read_operations[name] = op
        return op

    def _make_operation(self, name: str, *, read: bool, write: bool) -> Operation:
        settings = self.config.governance.operations.get(name)
        idempotent = read and not (settings is not None and settings.idempotent is False)
        return Operation(name, write=write, idempotent=idempotent)
