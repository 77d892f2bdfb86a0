"""The runtime of one MySQL cluster: its governance pipeline, HA engine, per-node connection
pools and the sessions of its clients."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Final, NoReturn

import trio

from ...call import Call, Operation, Protocol, Run, Unavailable
from ...cluster.topology import ClusterState, Node, topology_from_config
from ...config import ClusterConfig, UserConfig
from ...config.mysql import READ_VERBS, MySQLSettings
from ...policies.chain import ClusterPolicies, configured_switches
from ...policies.engine import Attempt, HAEngine
from ...policies.limit import Limiter, LimiterConfig
from ...policies.switch import Switch
from ...policies.waiting import Waiter
from ...protocols.mysql.errors import too_many_connections
from ...protocols.mysql.packets import encode_packet
from ...protocols.mysql.results import ErrPacket, encode_err
from ...protocols.mysql.rsa import RSAPrivateKey, generate_private_key
from ..runtime import ClusterRuntime
from ..transport import ClientTransport
from .backend import MySQLPool
from .reads import READ_ANYWHERE_VERBS
from .session import MySQLSession

__all__ = ["MySQLRuntime"]

log = logging.getLogger(__name__)

#: Operations remembered per cluster at most.
_CACHE_MAX: Final = 1024


class _PinnedOnly:
    """The engine's transport: every MySQL exchange runs on a connection its session holds
    (:meth:`HAEngine.execute_pinned`), so nothing is ever submitted."""

    def submit(self, node: Node, run: Run, waiter: Waiter) -> NoReturn:
        raise Unavailable(node.address, "MySQL calls run on their session's connection")


class MySQLRuntime(ClusterRuntime):
    """Everything that serves one MySQL cluster.

    Every session logs its client in (``users:`` that list the cluster), then holds one
    connection of the primary's pool for its life; each command is a call governed here and
    counted for the node through :meth:`HAEngine.execute_pinned`.
    """

    protocol = Protocol.MYSQL

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
        self.settings = config.mysql or MySQLSettings()
        #: Gateway logins allowed here (name → password).
        self.passwords: Mapping[str, str] = MappingProxyType(
            {name: u.password for name, u in users.items() if config.name in u.clusters}
        )
        #: The limits of each user that has some here (``users.NAME.limit``), per operation
        #: as a cluster's (their sessions pass them after the cluster's).
        self.user_limiters: dict[str, Limiter] = {
            name: Limiter(
                config.name,
                LimiterConfig(u.limit),
                trio.current_time(),
                workers=workers,
                scope=f"user {name} on {config.name}",
            )
            for name, u in users.items()
            if config.name in u.clusters and u.limit is not None
        }
        if not self.passwords:
            log.warning(
                "cluster %s: no user lists it under users.NAME.clusters, so nobody can log in",
                config.name,
            )
        topology = topology_from_config(config)
        self.policies = ClusterPolicies(
            config.name,
            topology,
            config.governance,
            trio.current_time(),
            configured_switches(config.name, config.governance),
            workers=workers,
            protocol="mysql",
        )
        self.engine: HAEngine[Attempt] = HAEngine(self.policies, _PinnedOnly())
        self.pools: dict[Node, MySQLPool] = {}
        self._operations: dict[tuple[str, bool], Operation] = {}
        self._calls: dict[Operation, tuple[Call]] = {}
        #: Users who have logged in with caching_sha2_password's full authentication since
        #: start: their next logins take its fast path (a MySQL 8 server's cache).
        self.sha2_verified: set[str] = set()
        self._rsa_key: RSAPrivateKey | None = None
        self._topology_changed()

    def _topology_changed(self) -> None:
        #: The node sessions use: the primary (writes and transactions go there).
        self.home: Node = self.policies.primary or self.policies.topology.primary

    def pool(self, node: Node) -> MySQLPool:
        pool = self.pools.get(node)
        if pool is None:
            pool = self.pools[node] = MySQLPool(node, self.config.backend)
        return pool

    def apply(self, state: ClusterState, switches: Iterable[Switch] | None = None) -> None:
        """A new layout (and, if given, the degrade switches) in force from now on: new
        sessions use it; a session keeps its connection until it ends.

        Raises:
            ValueError: ``state`` is not a valid layout.
        """
        _, removed = self.policies.apply(state, switches)
        for node in removed:
            pool = self.pools.pop(node, None)
            if pool is not None:
                pool.close()
        self._topology_changed()

    def set_primary(self, address: str) -> None:
        """New sessions go to the node at ``address`` from now on.

        Raises:
            ValueError: no node has that address.
        """
        self.policies.set_primary(address)
        self._topology_changed()

    def open_session(self, transport: ClientTransport, client_id: int) -> MySQLSession:
        return MySQLSession(self, transport, client_id)

    def too_many_clients(self) -> bytes:
        # MariaDB sends this ERR in place of its greeting (sequence id 0).
        payload = encode_err(ErrPacket.from_info(too_many_connections()))
        return encode_packet(payload, 0)[0]

    async def run_backend(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._end_stalled_replies)
            await self.engine.run()

    async def _end_stalled_replies(self) -> None:
        """End every relayed reply that has waited ``backend.command_timeout`` for the node,
        within a quarter of it (at most a second) after: one periodic sweep rather than a
        cancel scope on every read of every reply (the idle timeout's way, see
        :meth:`ClusterRuntime._end_idle_sessions`)."""
        timeout = self.config.backend.command_timeout
        interval = min(timeout / 4, 1.0)
        # A read seen parked by n sweeps in a row has waited at least n - 1 intervals.
        sweeps = math.ceil(timeout / interval) + 1
        while True:
            await trio.sleep(interval)
            for session in list(self.sessions.values()):
                if not isinstance(session, MySQLSession):
                    continue
                for conn in (session.lent, session.backend):
                    if conn is not None and conn.check_stalled(sweeps):
                        log.warning(
                            "client %s: no answer from %s within %gs; closing it",
                            session.transport.peer,
                            conn.node.address,
                            timeout,
                        )
                        session.backend_stalled(conn)

    def describe_backend(self) -> str:
        return self.home.address

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()

    async def rsa_key(self) -> RSAPrivateKey:
        """The key clients encrypt their password with in caching_sha2_password's full
        authentication: made on first use (a second in a thread), kept for the process."""
        if self._rsa_key is None:
            key = await trio.to_thread.run_sync(generate_private_key)
            if self._rsa_key is None:
                self._rsa_key = key
        return self._rsa_key

    def calls_of(self, op: Operation) -> tuple[Call]:
        """A query of ``op`` as the metrics count it: one call (made once per operation)."""
        calls = self._calls.get(op)
        if calls is None:
            call = Call()
            call.op = op
            call.batch = 0
            calls = (call,)
            if len(self._calls) < _CACHE_MAX:
                self._calls[op] = calls
        return calls

    def pool_statistics(self) -> dict[str, dict[str, int]]:
        return {
            node.address: {
                "connections": pool.open,
                "idle": sum(map(len, pool.idle.values())),
            }
            for node, pool in self.pools.items()
        }

    def operation(self, name: str, *, write: bool | None = None) -> Operation:
        """The operation of a verb or command name (made once per name here); ``write``
        defaults to whether the verb may change data."""
        if write is None:
            write = name not in READ_VERBS and not name.startswith("COM_")
        key = (name, write)
        op = self._operations.get(key)
        if op is None:
            settings = self.config.governance.operations.get(name)
            idempotent = (
                not write
                and name in READ_ANYWHERE_VERBS
                and not (settings is not None and settings.idempotent is False)
            )
            op = Operation(name, write=write, idempotent=idempotent)
            if len(self._operations) < _CACHE_MAX:
                self._operations[key] = op
        return op
