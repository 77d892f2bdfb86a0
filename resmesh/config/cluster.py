"""Clusters: where apps connect, the nodes behind (:mod:`.groups`), how to reach them.

Cross-references are checked before anything binds a socket: no two listeners share a
socket, and no node is one of the gateway's own listen addresses.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from ..call import Protocol
from ..knobs import Kind, knob, knobs
from . import values
from .address import Address
from .errors import Context, KeyPath, dotted
from .fields import parse_section
from .gateway import GatewayConfig
from .governance import GovernanceConfig, parse_governance
from .groups import NodeConfig, NodeRole, parse_groups, parse_route, with_primary
from .motan2 import Motan2AgentConfig, Motan2Settings
from .mysql import MySQLSettings
from .presets import Presets
from .protocols import PROTOCOLS, ProtocolSection
from .redis import RedisSettings

__all__ = [
    "BackendConfig",
    "ClientLimits",
    "ClusterConfig",
    "Mode",
    "parse_clusters",
]


class Mode(enum.StrEnum):
    """How a cluster's nodes share the data.

    ``replicated``: every node holds every key, so any node may answer reads (they can be
    balanced, hedged and failed over) and the primary takes the writes. ``sharded``: keys are
    spread over the nodes of a group by consistent hashing (ketama), and multi-key commands
    are split and merged.
    """

    REPLICATED = "replicated"
    SHARDED = "sharded"


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How the gateway connects to a cluster's nodes.

    The credentials here are the gateway's own login to the backend, deliberately separate from
    :class:`~resmesh.config.users.UserConfig` (who may log in to the gateway): apps never learn
    backend passwords.

    Attributes:
        username, password: the backend login (``AUTH [username] password`` for Redis; a
            MySQL account, whose password may be empty).
        connect_timeout: seconds allowed to open (and authenticate) one backend connection.
        command_timeout: seconds allowed for one command's reply, unless it blocks by design.
        connections: multiplexed (shared) connections per node per (db, protocol version);
            default 1: one connection carries every client's commands, many per write and
            per read, which is what makes multiplexing cheap; a second one splits those
            batches (more syscalls per command) and measured no gain with the gateway on one
            core (``bench/README.md``). Raise it for a link where one connection's bandwidth
            or latency is the bottleneck.
        max_dedicated: cap on pinned connections (MULTI, blocking pops, pub/sub) per node.
    """

    username: str | None = knob(None, Kind.STRING, low=1, example="gateway")
    password: str | None = knob(None, Kind.STRING, low=0, example="secret")
    connect_timeout: float = knob(2.0, Kind.DURATION, low_open=True, example="2s")
    command_timeout: float = knob(5.0, Kind.DURATION, low_open=True, example="5s")
    connections: int = knob(1, Kind.INT, low=1, high=64)
    max_dedicated: int = knob(256, Kind.INT, low=1, high=65536)


@dataclass(frozen=True, slots=True)
class ClientLimits:
    """What the clients of one cluster may hold, whatever its protocol (redis-server's
    ``maxclients`` 10000 and ``timeout`` 0 by default).

    Attributes:
        max_clients: client connections on this listen address at most.
        client_idle_timeout: seconds of client silence before the gateway closes it; 0 means
            never.
    """

    max_clients: int = knob(10000, Kind.INT, low=1, high=1_000_000)
    client_idle_timeout: float = knob(0.0, Kind.DURATION, example="300s (0 means never)")


@dataclass(frozen=True, slots=True)
class ClusterConfig:
    """One logical backend service that apps reach through one listen address.

    ``groups`` maps a data center (group) name to its nodes, in file order. ``route`` holds a
    weight 0..100 for *every* group (groups the file leaves out of ``route`` get 0), so that
    routing code never has to guess a default.
    """

    name: str
    protocol: Protocol
    listen: Address
    groups: Mapping[str, tuple[NodeConfig, ...]]
    route: Mapping[str, int]
    mode: Mode = field(default=Mode.REPLICATED, kw_only=True)
    backend: BackendConfig = field(default_factory=BackendConfig, kw_only=True)
    limits: ClientLimits = field(default_factory=ClientLimits, kw_only=True)
    redis: RedisSettings | None = field(default=None, kw_only=True)
    """The Redis request bounds (``clusters.X.redis``); set for a Redis cluster only."""
    mysql: MySQLSettings | None = field(default=None, kw_only=True)
    """The MySQL client bounds (``clusters.X.mysql``); set for a MySQL cluster only."""
    motan2: Motan2Settings | None = field(default=None, kw_only=True)
    """The service a Motan2 cluster is (``clusters.X.motan2``); set for a Motan2 cluster
    only. Its ``listen`` is the agent's client side (``motan2.client``), shared by every
    Motan2 cluster."""
    policy: str | None = field(default=None, kw_only=True)
    """The preset the file names with ``policy: NAME`` (``policies/NAME.yaml``); ``None`` when
    it names none, and then ``governance`` comes from the ``default`` preset."""
    governance: GovernanceConfig = field(default_factory=GovernanceConfig, kw_only=True)
    """Every policy of the cluster: the preset, deep-merged with the cluster's ``governance:``."""

    @property
    def primary(self) -> NodeConfig | None:
        """The node that takes writes (``role: primary``, or the node of a one-node replicated
        cluster); ``None`` in a sharded cluster, where every node owns a slice of the keys."""
        for nodes in self.groups.values():
            for node in nodes:
                if node.role is NodeRole.PRIMARY:
                    return node
        return None


_CLUSTER_KEYS: Final = (
    "protocol",
    "listen",
    "mode",
    "policy",
    "governance",
    "groups",
    "route",
    "backend",
    "limits",
)


def parse_clusters(
    ctx: Context,
    value: object,
    path: KeyPath,
    gateway: GatewayConfig,
    presets: Presets,
    motan2: Motan2AgentConfig | None = None,
) -> dict[str, ClusterConfig]:
    section = values.mapping(ctx, value, path, None, example="{feed-cache: {protocol: redis, ...}}")
    if not section:
        raise ctx.error(
            path,
            "no clusters defined",
            "add one, e.g. feed-cache: {protocol: redis, listen: 127.0.0.1:6380, "
            "groups: {dc-a: [127.0.0.1:6379]}}",
        )
    clusters: dict[str, ClusterConfig] = {}
    # Where each bound address came from, by port (only the same port can clash, and
    # checking every pair is quadratic: minutes for a config of thousands of clusters), to
    # refuse two listeners on one socket.
    bound: dict[int, list[tuple[Address, KeyPath]]] = {}
    if gateway.admin is not None:
        bound[gateway.admin.port] = [(gateway.admin, ("gateway", "admin"))]
    if motan2 is not None:
        for address, key in ((motan2.client, "client"), (motan2.server, "server")):
            if address is None:
                continue
            _check_free(ctx, bound, address, ("motan2", key), gateway)
            bound.setdefault(address.port, []).append((address, ("motan2", key)))
    for name, raw in section.items():
        cluster_path = (*path, name)
        values.name(ctx, name, cluster_path, "cluster")
        cluster = _cluster(ctx, name, raw, cluster_path, presets, motan2)
        if cluster.protocol is Protocol.MOTAN2:
            clusters[name] = cluster  # reached through the agent's port, bound above
            continue
        _check_free(ctx, bound, cluster.listen, (*cluster_path, "listen"), gateway)
        bound.setdefault(cluster.listen.port, []).append(
            (cluster.listen, (*cluster_path, "listen"))
        )
        clusters[name] = cluster
    # A node that is one of our own listeners would make the gateway call itself forever
    # (a Motan2 cluster may send to the agent's own server side: that one forwards to the
    # local service, not back here).
    for name, cluster in clusters.items():
        for group, nodes in cluster.groups.items():
            for index, node in enumerate(nodes):
                for own, own_path in bound.get(node.address.port, ()):
                    if cluster.protocol is Protocol.MOTAN2 and own_path == ("motan2", "server"):
                        continue
                    if _same_socket(node.address, own):
                        raise ctx.error(
                            ("clusters", name, "groups", group, index),
                            f"node {node.address} is the gateway's own address "
                            f"({dotted(own_path)}); the gateway would forward to itself",
                            "point it at the real server, e.g. 127.0.0.1:6379",
                        )
    if motan2 is not None:
        for service, address in motan2.export.items():
            for own, own_path in bound.get(address.port, ()):
                if _same_socket(address, own):
                    raise ctx.error(
                        ("motan2", "export", service),
                        f"{address} is the gateway's own address ({dotted(own_path)}); the "
                        "agent would forward to itself",
                        "point it at the local service process, e.g. 127.0.0.1:8100",
                    )
    return clusters


def _check_free(
    ctx: Context,
    bound: dict[int, list[tuple[Address, KeyPath]]],
    listen: Address,
    path: KeyPath,
    gateway: GatewayConfig,
) -> None:
    """Refuse a listen address another listener of the file already has."""
    if listen.port == 0 and gateway.workers > 1:
        raise ctx.error(
            path,
            f"port 0 (any free port) with gateway.workers {gateway.workers}: each worker "
            "would listen on a different port",
            "give it a fixed port, e.g. 127.0.0.1:6380",
        )
    for other, other_path in bound.get(listen.port, ()):
        if _same_socket(listen, other):
            raise ctx.error(
                path,
                f"listen address {listen} is already used by {dotted(other_path)}",
                "give each listener its own port",
            )


_WILDCARD_HOSTS: Final = frozenset({"0.0.0.0", "::"})
_HOST_ALIASES: Final[Mapping[str, str]] = MappingProxyType({"localhost": "127.0.0.1"})


def _same_socket(a: Address, b: Address) -> bool:
    """Whether two addresses would clash when bound (or one would reach the other).

    A wildcard host clashes with every host on the same port; ``localhost`` is taken as
    ``127.0.0.1``. Port 0 never clashes: the OS picks a free port.
    """
    if a.port != b.port or a.port == 0:
        return False
    host_a = _HOST_ALIASES.get(a.host.lower(), a.host.lower())
    host_b = _HOST_ALIASES.get(b.host.lower(), b.host.lower())
    return host_a == host_b or host_a in _WILDCARD_HOSTS or host_b in _WILDCARD_HOSTS


def _cluster(
    ctx: Context,
    name: str,
    value: object,
    path: KeyPath,
    presets: Presets,
    motan2: Motan2AgentConfig | None,
) -> ClusterConfig:
    example = "{protocol: redis, listen: 127.0.0.1:6380, groups: {dc-a: [127.0.0.1:6379]}}"
    section = values.mapping(ctx, value, path, None, example=example)
    # Protocol first: a MySQL or Motan2 cluster has keys of its own, and "not implemented
    # yet" is the useful message for it, not "unknown key 'service'".
    if "protocol" not in section:
        raise ctx.error(
            (*path, "protocol"), "missing required key 'protocol'", "add protocol: redis"
        )
    protocol = values.choice(ctx, section["protocol"], (*path, "protocol"), Protocol)
    entry = PROTOCOLS.get(protocol)
    if entry is None:
        raise ctx.error(
            (*path, "protocol"),
            f"protocol {protocol.value!r} is not implemented yet in this version",
            f"use protocol: {', '.join(PROTOCOLS)}, or remove this cluster for now",
        )
    rpc = protocol is Protocol.MOTAN2
    if rpc:
        listen = _agent_client(ctx, section, path, motan2)
    section = values.mapping(
        ctx,
        section,
        path,
        (*_CLUSTER_KEYS, protocol.value),
        example=example,
        required=("groups",) if rpc else ("listen", "groups"),
    )
    if not rpc:
        listen = values.address(
            ctx,
            section["listen"],
            (*path, "listen"),
            example="127.0.0.1:6380",
            allow_port_zero=True,
        )
    mode = Mode.REPLICATED
    if "mode" in section:
        mode = values.choice(ctx, section["mode"], (*path, "mode"), Mode)
        if rpc and mode is Mode.SHARDED:
            raise ctx.error(
                (*path, "mode"),
                "every node of a Motan2 cluster serves every call: it cannot be sharded",
                "remove mode (to keep a caller on one node, use governance: {balance: hash})",
            )
    policy = None
    if section.get("policy") is not None:
        policy = values.name(
            ctx,
            values.string(ctx, section["policy"], (*path, "policy"), example="cache"),
            (*path, "policy"),
            "policy",
        )
    sharded = mode is Mode.SHARDED
    groups = parse_groups(ctx, section["groups"], (*path, "groups"), sharded=sharded)
    route = parse_route(ctx, section.get("route"), (*path, "route"), groups)
    if not sharded and not rpc:
        groups = with_primary(ctx, (*path, "groups"), groups, route)
    backend = parse_section(
        ctx, section.get("backend"), (*path, "backend"), BackendConfig, check=_check_backend
    )
    if protocol is Protocol.MYSQL:
        _check_mysql(ctx, path, mode, backend)
    elif backend.password == "":
        raise ctx.error(
            (*path, "backend", "password"),
            "an empty password cannot log in (AUTH needs one)",
            "give the password, or remove it when the nodes ask none",
        )
    limits = _limits(ctx, section.get("limits"), (*path, "limits"), protocol, entry)
    own: dict[str, Any] = {
        protocol.value: entry.parse(ctx, section.get(protocol.value), (*path, protocol.value))
    }
    governance = parse_governance(
        ctx,
        presets,
        policy,
        section.get("governance"),
        path,
        sharded=sharded,
        groups=list(groups),
        protocol=entry,
    )
    return ClusterConfig(
        name=name,
        protocol=protocol,
        listen=listen,
        mode=mode,
        groups=MappingProxyType(groups),
        route=MappingProxyType(route),
        backend=backend,
        limits=limits,
        policy=policy,
        governance=governance,
        **own,
    )


def _agent_client(
    ctx: Context, section: Mapping[str, object], path: KeyPath, motan2: Motan2AgentConfig | None
) -> Address:
    """A Motan2 cluster is reached through the agent's client side, shared by all of them."""
    if "listen" in section:
        raise ctx.error(
            (*path, "listen"),
            "a Motan2 cluster has no listen address of its own: apps call every Motan2 "
            "service through the agent's port (motan2.client), which routes by service",
            "remove listen, and set motan2: {client: 127.0.0.1:9981} at the top level",
        )
    if motan2 is None:
        raise ctx.error(
            (*path, "protocol"),
            "a Motan2 cluster is served by the Motan2 agent, and the file has no 'motan2' section",
            "add at the top level: motan2: {client: 127.0.0.1:9981, server: 127.0.0.1:9982}",
        )
    return motan2.client


def _check_mysql(ctx: Context, path: KeyPath, mode: Mode, backend: BackendConfig) -> None:
    """A MySQL session holds one node's connection: no sharding, and a backend login."""
    if mode is Mode.SHARDED:
        raise ctx.error(
            (*path, "mode"),
            "a MySQL cluster cannot be sharded: every session runs on the primary",
            "remove mode",
        )
    if backend.username is None:
        raise ctx.error(
            (*path, "backend", "username"),
            "a MySQL cluster needs the gateway's own login to its nodes",
            "add backend: {username: gateway, password: secret}",
        )


def _check_backend(ctx: Context, path: KeyPath, backend: Mapping[str, Any]) -> None:
    if backend["username"] is not None and backend["password"] is None:
        raise ctx.error(
            (*path, "password"),
            "a backend username needs a password (AUTH username password)",
            "add password: ..., or remove username",
        )


def _limits(
    ctx: Context, value: object, path: KeyPath, protocol: Protocol, entry: ProtocolSection
) -> ClientLimits:
    """``limits:``: what every protocol's clients may hold. Keys that moved to the protocol's
    own section say where they went."""
    if isinstance(value, dict):
        for key in value:
            if key in knobs(entry.settings):
                cluster = dotted(path[:-1])
                raise ctx.error(
                    (*path, key),
                    f"limits.{key} has moved: request bounds of one protocol have their own "
                    f"section, {cluster}.{protocol.value}",
                    f"moved: write it as {cluster}.{protocol.value}.{key}",
                )
    return parse_section(ctx, value, path, ClientLimits)
