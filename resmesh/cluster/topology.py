"""Cluster → groups (data centers) → nodes: the layout a cluster runs on, one version at a time.

A :class:`ClusterState` is a cluster's layout as the configuration (and, later, the registry)
states it: plain data, one record per node. A :class:`Topology` is that state built into the
objects the policies use, one :class:`Node` per address. When a new state is applied at run
time, a node whose address stays keeps its :class:`Node` object (its weight and group updated
in place), so everything kept per node (its breaker, its ejection, its load, its connection
pool) carries over; a new address gets a new node with fresh state; a removed one is drained.

Node objects hash by identity: policies key per-node state on them, and a dataclass hash
computed in Python would cost ~100 ns on every lookup. Identity and address are one to one
within a cluster, so state keyed by node is state keyed by address.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import final

from ..call import Protocol
from ..config import ClusterConfig, Mode

__all__ = ["ClusterState", "Node", "NodeSpec", "Topology", "build_topology", "state_from_config"]


@final
class Node:
    """One backend server of a cluster. ``group`` and ``weight`` follow the state applied
    last; ``host``, ``port`` and ``address`` never change."""

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
class NodeSpec:
    """One node as a cluster state lists it.

    Attributes:
        host, port: where it listens.
        group: its data center.
        weight: its share of its group's reads (0..100; 0 takes none).
        primary: whether it takes the writes (a replicated cluster has exactly one).
    """

    host: str
    port: int
    group: str
    weight: int = 100
    primary: bool = False

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@final
@dataclass(frozen=True, slots=True)
class ClusterState:
    """A cluster's layout, as configuration or registry states it.

    Attributes:
        version: increases with every change (the registry's revision).
        nodes: every node, in order (a group's nodes in the order listed).
        route: group → share of reads (0..100); groups left out get 0.
        sharded: keys are spread over the nodes (no primary).
        peers: every node serves every call (RPC service instances: no primary).
    """

    version: int
    nodes: tuple[NodeSpec, ...]
    route: Mapping[str, int]
    sharded: bool = False
    peers: bool = False


@final
@dataclass(frozen=True, slots=True)
class Topology:
    """One version of a cluster's layout, built into :class:`Node` objects.

    Attributes:
        version: the :class:`ClusterState`'s.
        groups: group name → its nodes, in order.
        route: group name → traffic weight (0..100).
        primary: the node that takes writes. A sharded cluster has none (each node takes the
            writes of its keys); there it is the node sessions pin their dedicated
            connections to: the first node with a weight above 0 in the heaviest-routed group.
    """

    version: int
    groups: Mapping[str, tuple[Node, ...]]
    route: Mapping[str, int]
    primary: Node

    @property
    def nodes(self) -> tuple[Node, ...]:
        return tuple(node for nodes in self.groups.values() for node in nodes)


def build_topology(state: ClusterState, known: Iterable[Node] = ()) -> Topology:
    """Build ``state`` into nodes, reusing the :class:`Node` of every address in ``known``.

    Raises:
        ValueError: the state has no node, or a replicated cluster does not have exactly one
            primary.
    """
    if not state.nodes:
        raise ValueError(f"cluster state {state.version} has no node")
    primaries = sum(spec.primary for spec in state.nodes)
    if not state.sharded and not state.peers and primaries != 1:
        raise ValueError(
            f"cluster state {state.version} has {primaries} primaries; a replicated "
            "cluster needs exactly one"
        )
    # Valid: only now may the nodes in use change (their weight and group).
    reuse = {node.address: node for node in known}
    groups: dict[str, list[Node]] = {}
    primary: Node | None = None
    for spec in state.nodes:
        node = reuse.get(spec.address)
        if node is None:
            node = Node(spec.host, spec.port, spec.group, spec.weight)
        else:
            node.group = spec.group
            node.weight = spec.weight
        groups.setdefault(spec.group, []).append(node)
        if spec.primary:
            primary = node
    route = {group: state.route.get(group, 0) for group in groups}
    if primary is None:  # sharded: the node sessions pin to (peers: unused)
        heaviest = max(route.items(), key=lambda item: item[1])[0]
        members = groups[heaviest]
        primary = next((n for n in members if n.weight > 0), members[0])
    return Topology(
        version=state.version,
        groups=MappingProxyType({g: tuple(nodes) for g, nodes in groups.items()}),
        route=MappingProxyType(route),
        primary=primary,
    )


def state_from_config(cluster: ClusterConfig, version: int = 1) -> ClusterState:
    """The cluster's layout as its configuration states it."""
    primary = cluster.primary
    specs = tuple(
        NodeSpec(
            node.address.host,
            node.address.port,
            group,
            node.weight,
            primary is not None and node == primary,
        )
        for group, nodes in cluster.groups.items()
        for node in nodes
    )
    return ClusterState(
        version,
        specs,
        MappingProxyType(dict(cluster.route)),
        cluster.mode is Mode.SHARDED,
        cluster.protocol is Protocol.MOTAN2,
    )


def topology_from_config(cluster: ClusterConfig, version: int = 1) -> Topology:
    return build_topology(state_from_config(cluster, version))
