"""A cluster's groups (data centers) of nodes, the route between them, and its primary.

Routes must name existing groups and send traffic somewhere; a replicated cluster of more
than one node names its primary, the node that takes writes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from . import values
from .address import Address
from .errors import Context, KeyPath, describe, dotted, unknown_fix

__all__ = ["NodeConfig", "NodeRole", "parse_groups", "parse_route", "with_primary"]

_NODE_KEYS: Final = ("address", "weight", "role")


class NodeRole(enum.StrEnum):
    """A node's part in a replicated cluster: the ``primary`` takes every write, ``replica``
    nodes serve reads beside it."""

    PRIMARY = "primary"
    REPLICA = "replica"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One backend server inside a group.

    ``weight`` (0..100) is the node's share of its group's reads; 0 keeps a node configured
    but sends it no reads (drained), which is how an operator takes one out without deleting
    it. ``role`` is set for every node of a replicated cluster and ``None`` in a sharded one.
    """

    address: Address
    weight: int = 100
    role: NodeRole | None = None


def parse_groups(
    ctx: Context, value: object, path: KeyPath, *, sharded: bool
) -> dict[str, tuple[NodeConfig, ...]]:
    section = values.mapping(ctx, value, path, None, example="{dc-a: [127.0.0.1:6379]}")
    if not section:
        raise ctx.error(
            path, "no groups defined", "add a group with its nodes, e.g. dc-a: [127.0.0.1:6379]"
        )
    groups: dict[str, tuple[NodeConfig, ...]] = {}
    first_seen: dict[Address, KeyPath] = {}
    for group, raw_nodes in section.items():
        group_path = (*path, group)
        values.name(ctx, group, group_path, "group")
        if not isinstance(raw_nodes, list):
            raise ctx.error(
                group_path,
                f"expected a list of nodes, got {describe(raw_nodes)}",
                f"write it as a list, e.g. {group}: [127.0.0.1:6379]",
            )
        if not raw_nodes:
            raise ctx.error(
                group_path,
                f"group {group!r} has no nodes",
                f"list at least one node, e.g. {group}: [127.0.0.1:6379]",
            )
        nodes: list[NodeConfig] = []
        for index, raw in enumerate(raw_nodes):
            node = _node(ctx, raw, (*group_path, index), sharded)
            if node.address in first_seen:
                raise ctx.error(
                    (*group_path, index),
                    f"node {node.address} is listed twice "
                    f"(also at {dotted(first_seen[node.address])})",
                    "list each node once",
                )
            first_seen[node.address] = (*group_path, index)
            nodes.append(node)
        groups[group] = tuple(nodes)
    return groups


def _node(ctx: Context, value: object, path: KeyPath, sharded: bool) -> NodeConfig:
    example = "127.0.0.1:6379"
    if not isinstance(value, dict):
        if not isinstance(value, str):
            raise ctx.error(
                path,
                f"expected a node, got {describe(value)}",
                "write host:port, e.g. 127.0.0.1:6379, or {address: 127.0.0.1:6379, weight: 50}",
            )
        return NodeConfig(values.address(ctx, value, path, example=example, allow_port_zero=False))
    section = values.mapping(
        ctx,
        value,
        path,
        _NODE_KEYS,
        example="{address: 127.0.0.1:6379, weight: 50}",
        required=("address",),
    )
    address = values.address(
        ctx, section["address"], (*path, "address"), example=example, allow_port_zero=False
    )
    weight = 100
    if "weight" in section:
        weight = values.whole(ctx, section["weight"], (*path, "weight"), 0, 100)
    role = None
    if section.get("role") is not None:
        if sharded:
            raise ctx.error(
                (*path, "role"),
                "a sharded cluster has no primary or replicas: every node owns a slice of the "
                "keys and takes its writes",
                "remove role, or set mode: replicated if every node holds every key",
            )
        role = values.choice(ctx, section["role"], (*path, "role"), NodeRole)
    return NodeConfig(address, weight, role)


def with_primary(
    ctx: Context,
    path: KeyPath,
    groups: dict[str, tuple[NodeConfig, ...]],
    route: Mapping[str, int],
) -> dict[str, tuple[NodeConfig, ...]]:
    """The groups with every node's role set: one primary, the others replicas.

    A cluster of one node needs no ``role``: it is the primary. With more, the file names the
    primary: a gateway that guesses which node takes writes sends them to a replica the day
    the file's order changes.
    """
    placed = [
        (group, index, node) for group, nodes in groups.items() for index, node in enumerate(nodes)
    ]
    primaries = [(group, index) for group, index, node in placed if node.role is NodeRole.PRIMARY]
    if len(placed) == 1:
        group, index, node = placed[0]
        if node.role is NodeRole.REPLICA:
            raise ctx.error(
                (*path, group, index, "role"),
                "the only node of a replicated cluster takes its writes, so it is the primary",
                "remove role (a one-node cluster's node is its primary)",
            )
        primaries = [(group, index)]
    if len(primaries) > 1:
        group, index = primaries[1]
        first = dotted((*path, *primaries[0]))
        raise ctx.error(
            (*path, group, index, "role"),
            f"a second node with role: primary (the first is {first}); a replicated cluster "
            "has one primary, which takes every write",
            "keep role: primary on one node, and write role: replica (or no role) on the others",
        )
    if not primaries:
        group, index, node = _implicit_primary(groups, route)
        raise ctx.error(
            path,
            f"a replicated cluster of {len(placed)} nodes names no primary (the node that "
            "takes writes)",
            f"mark it, e.g. {{address: {node.address}, role: primary}}; until now the first "
            f"node of the heaviest-routed group was the primary implicitly: here "
            f"{dotted((*path, group, index))}, {node.address}",
        )
    chosen = primaries[0]
    return {
        group: tuple(
            replace(node, role=NodeRole.PRIMARY if (group, index) == chosen else NodeRole.REPLICA)
            for index, node in enumerate(nodes)
        )
        for group, nodes in groups.items()
    }


def _implicit_primary(
    groups: Mapping[str, tuple[NodeConfig, ...]], route: Mapping[str, int]
) -> tuple[str, int, NodeConfig]:
    """The node the error suggests as the primary when a replicated cluster names none: the
    first node with a weight above 0 in the heaviest-routed group (else that group's first
    node), which resmesh took as the primary before ``role`` had to be written, so that a
    config written then keeps sending its writes where they went."""
    heaviest = max(route.items(), key=lambda item: item[1])[0]
    nodes = groups[heaviest]
    index = next((i for i, node in enumerate(nodes) if node.weight > 0), 0)
    return heaviest, index, nodes[index]


def parse_route(
    ctx: Context,
    value: object,
    path: KeyPath,
    groups: Mapping[str, tuple[NodeConfig, ...]],
) -> dict[str, int]:
    names = list(groups)
    if value is None:
        if not any(node.weight > 0 for node in groups[names[0]]):
            others = [g for g in names[1:] if any(n.weight > 0 for n in groups[g])]
            raise ctx.error(
                path,
                f"no route is given, so group {names[0]!r} (the first) gets all traffic, but "
                "every node in it has weight 0",
                f"add route: {{{others[0]}: 100}}" if others else "give a node a weight above 0",
            )
        return {group: 100 if index == 0 else 0 for index, group in enumerate(names)}
    section = values.mapping(ctx, value, path, None, example=f"{{{names[0]}: 100}}")
    for group in section:
        if group not in groups:
            otherwise = f"route only to groups defined under groups: {', '.join(names)}"
            fix = unknown_fix(group, names, otherwise)
            raise ctx.error((*path, group), f"unknown group {group!r}", fix)
    route = {
        group: values.whole(ctx, section[group], (*path, group), 0, 100) if group in section else 0
        for group in names
    }
    if not any(route.values()):
        raise ctx.error(
            path,
            "every route weight is 0, so no traffic could be sent anywhere",
            f"give at least one group a weight above 0, e.g. {names[0]}: 100",
        )
    for group, weight in route.items():
        if weight > 0 and not any(node.weight > 0 for node in groups[group]):
            raise ctx.error(
                (*path, group),
                f"group {group!r} gets traffic but every node in it has weight 0",
                f"set {group}: 0 here, or give one of its nodes a weight above 0",
            )
    return route
