"""The runtime of one configured Redis cluster: its listener, sessions and backend pools."""

from __future__ import annotations

import contextlib
import itertools
import logging
import socket
from collections.abc import Mapping
from types import MappingProxyType

import trio

from ..config import ClusterConfig, RedisSettings, UserConfig
from ..protocols.resp.requests import RequestLimits
from .frontend.redis import RedisSession
from .frontend.redis_replies import error
from .listen import serve_listener
from .redis_upstream import RedisUpstream
from .sockio import close_quietly

__all__ = ["RedisClusterRuntime"]

log = logging.getLogger(__name__)

#: Client ids are unique across every cluster of this process, as redis-server's are.
_client_ids = itertools.count(1)


class RedisClusterRuntime:
    """Owns what serves one cluster; lives inside the gateway's nursery.

    ``upstream`` chooses the node of each forwarded run (reads spread over the cluster, writes
    to the primary); sessions pin dedicated connections on ``primary``.
    """

    def __init__(
        self,
        config: ClusterConfig,
        users: Mapping[str, UserConfig],
        backend_nursery: trio.Nursery,
    ) -> None:
        self.config = config
        self.name = config.name
        self.listen = str(config.listen)
        self.users: Mapping[str, UserConfig] = MappingProxyType(
            {name: user for name, user in users.items() if config.name in user.clusters}
        )
        self.auth_required = bool(self.users)
        limits = config.redis or RedisSettings()
        self.request_limits = RequestLimits(
            max_bulk_len=limits.max_bulk_len,
            max_multibulk_len=limits.max_multibulk_len,
            max_buffer=limits.max_request_buffer,
        )
        #: What HELLO reports as the server version (that of the Redis line we speak).
        self.server_version = "7.0.0"
        self.sessions: dict[int, RedisSession] = {}
        self.draining = False
        self.upstream = RedisUpstream(config, backend_nursery)
        policies = self.upstream.policies
        #: Rate and concurrency limits, or ``None`` when none is configured (no cost at all).
        self.limiter = policies.limiter
        #: Degrade switches (``active`` false: the session's fast path skips them).
        self.switchboard = policies.switchboard
        #: Where writes, transactions, blocking commands and pub/sub go.
        self.primary = self.upstream.primary

    async def serve(self, listener: socket.socket, connections: trio.Nursery) -> None:
        """Accept clients on ``listener`` into ``connections`` until cancelled."""
        await serve_listener(listener, self._handle_client, connections)

    async def _handle_client(self, sock: socket.socket, peer: str) -> None:
        if len(self.sessions) >= self.config.limits.max_clients:
            # redis-server's own words, then close (its maxclients behaviour).
            with contextlib.suppress(OSError):
                sock.send(error("ERR max number of clients reached"))
            close_quietly(sock)
            return
        session = RedisSession(self, sock, peer, next(_client_ids))
        self.sessions[session.id] = session
        try:
            await session.serve()
        except Exception:
            # A bug met by one client ends that client's connection (the session's own
            # cleanup closed it), never the gateway and every other client with it.
            log.exception("client %s: unexpected error; its connection is closed", peer)
        finally:
            del self.sessions[session.id]

    def start_drain(self) -> None:
        """Stop taking new requests: idle sessions close now, busy ones after their batch."""
        self.draining = True
        for session in list(self.sessions.values()):
            if session.idle_scope is not None:
                session.idle_scope.cancel()

    def close(self) -> None:
        self.upstream.close()
