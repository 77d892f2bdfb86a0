"""Cluster → groups (data centers) → nodes, as an immutable snapshot.

Why immutable: the registry (and ``resmesh ctl``) will swap a cluster's topology while calls
are in flight; a call holds the snapshot it started with, so it never sees half a change
(DESIGN §6). Node objects hash by identity: policies key per-node state on them, and a
dataclass hash computed in Python would cost ~100 ns on every lookup.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import final

from ..config import ClusterConfig

__all__ = ["Node", "Topology", "topology_from_config"]


@final
class Node:
    """One backend server of a cluster."""

    __slots__ = ("address", "group", "host", "port", "weight")

    def __init__(self, host: str, port: int, group: str, weight: int) -> None:
        self.host = host
        self.port = port
        self.group = group
        self.weight = weight
        self.address = f"{host}:{port}"

    def __repr__(self) -> str:
        return f"Node({self.address}, group={self.group}, weight={self.weight})"


@final
@dataclass(frozen=True, slots=True)
class Topology:
    """One version of a cluster's layout.

    Attributes:
        version: increases with every change applied.
        groups: group name → its nodes, in configured order.
        route: group name → traffic weight (0..100).
        primary: the node that takes writes: the configuration's primary
            (:attr:`~resmesh.config.ClusterConfig.primary`). A sharded cluster has none (each
            node takes the writes of its keys); there it is the node sessions pin their
            dedicated connections to: the first node with a weight above 0 in the
            heaviest-routed group.
    """

    version: int
    groups: Mapping[str, tuple[Node, ...]]
    route: Mapping[str, int]
    primary: Node

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(node for nodes in self.groups.values() for node in nodes)


def topology_from_config(cluster: ClusterConfig, version: int = 1) -> Topology:
    groups = {
        name: tuple(Node(n.address.host, n.address.port, name, n.weight) for n in nodes)
        for name, nodes in cluster.groups.items()
    }
    return Topology(
        version=version,
        groups=MappingProxyType(groups),
        route=MappingProxyType(dict(cluster.route)),
        primary=_primary(cluster, groups),
    )


def _primary(cluster: ClusterConfig, groups: Mapping[str, tuple[Node, ...]]) -> Node:
    configured = cluster.primary
    if configured is not None:
        for name, nodes in cluster.groups.items():
            for index, node in enumerate(nodes):
                if node == configured:
                    return groups[name][index]
    heaviest = max(cluster.route.items(), key=lambda item: item[1])[0]
    candidates = [n for n in groups[heaviest] if n.weight > 0] or list(groups[heaviest])
    return candidates[0]
