"""The changes ``resmesh ctl`` makes to a cluster's entry, as pure functions.

Each takes the entry as the registry holds it now and returns the new one, or raises
:class:`EditRefused` with a message that says what is valid (the groups a cluster has, the
nodes it lists), so a typo never writes anything. They run inside the registry's
compare-and-swap loop (:meth:`~resmesh.registry.base.Registry.update`), so they may run more
than once and must not do anything else.

The rules are the gateway's own: a replicated cluster keeps exactly one enabled primary (the
node writes go to); a cluster keeps at least one enabled node and sends reads somewhere; a
new group joins at route weight 0 until a ``shift`` gives it traffic (Envoy's and motan-go's
way of bringing a data center in: present, then weighted).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from types import MappingProxyType

from ..config import Address, NodeRole
from ..policies.limit import LimitConfig
from ..policies.switch import SwitchMode
from .state import WHOLE_CLUSTER, ClusterEntry, NodeEntry, SwitchEntry

__all__ = [
    "EditRefused",
    "degrade",
    "limit",
    "node_add",
    "node_enable",
    "node_remove",
    "primary",
    "restore",
    "shift",
]


class EditRefused(ValueError):
    """A change that would make the entry invalid, or that names something it does not
    have; the message says what is valid."""


def degrade(
    entry: ClusterEntry,
    mode: SwitchMode,
    operation: str | None = None,
    value: str | None = None,
    reason: str = "",
) -> ClusterEntry:
    """Turn on a degrade switch for the cluster (``operation`` ``None``) or one operation."""
    if mode is SwitchMode.FALLBACK and value is None:
        raise EditRefused("mode fallback answers every call with a value: give it with --value")
    if mode is not SwitchMode.FALLBACK and value is not None:
        raise EditRefused(f"--value is for mode fallback only, not {mode}")
    op = operation.upper() if operation else None
    switches = [s for s in entry.switches if s.operation != op]
    switches.append(SwitchEntry(mode, op, value, reason))
    return dataclasses.replace(entry, switches=tuple(switches))


def restore(entry: ClusterEntry, operation: str | None = None) -> ClusterEntry:
    """Turn off every switch of the cluster, or the one of ``operation``."""
    if operation is None:
        return dataclasses.replace(entry, switches=())
    op = operation.upper()
    if all(s.operation != op for s in entry.switches):
        on = ", ".join(s.operation or "the whole cluster" for s in entry.switches) or "none"
        raise EditRefused(f"no switch is on for operation {op} (switches on: {on})")
    return dataclasses.replace(
        entry, switches=tuple(s for s in entry.switches if s.operation != op)
    )


def limit(entry: ClusterEntry, operation: str | None, settings: LimitConfig | None) -> ClusterEntry:
    """Replace the configuration's rate and concurrency limits for the cluster (``operation``
    ``None``) or one operation; ``settings`` ``None`` gives the scope its configured limits
    back."""
    scope = operation.upper() if operation else WHOLE_CLUSTER
    limits = {s: lim for s, lim in entry.limits.items() if s != scope}
    if settings is not None:
        if (settings.rate, settings.burst, settings.concurrency) == (None, None, None):
            raise EditRefused("give --rate, --burst or --concurrency (or --reset)")
        if settings.burst is not None and settings.rate is None:
            raise EditRefused("--burst sizes a rate limit: give --rate too")
        limits[scope] = settings
    elif scope not in entry.limits:
        shown = ", ".join(entry.limits) or "none"
        raise EditRefused(f"no limit override for {scope} (overrides: {shown})")
    return dataclasses.replace(entry, limits=MappingProxyType(limits))


def shift(entry: ClusterEntry, weights: Mapping[str, int]) -> ClusterEntry:
    """Set the route weight of each named group (0..100); the others keep theirs."""
    groups = entry.groups
    for group, weight in weights.items():
        if group not in groups:
            raise EditRefused(f"no group {group!r} (groups: {', '.join(groups)})")
        if not 0 <= weight <= 100:
            raise EditRefused(f"weight {weight} for {group} is outside 0..100")
    route = {group: entry.route.get(group, 0) for group in groups}
    route.update(weights)
    if not any(weight > 0 and _serving(groups[g]) for g, weight in route.items()):
        raise EditRefused(
            "every group with an enabled node would get weight 0: give one a weight above 0"
        )
    return dataclasses.replace(entry, route=MappingProxyType(route))


def node_add(
    entry: ClusterEntry,
    address: str,
    *,
    has_primary: bool,
    group: str | None = None,
    weight: int = 100,
) -> ClusterEntry:
    """Add a node to ``group`` (default: the first group): a replica in a replicated cluster,
    a shard owner in a sharded one, an instance of a service. A new group starts at route
    weight 0."""
    address = _address(address)
    existing = entry.node(address)
    if existing is not None:
        raise EditRefused(f"node {address} is already in the cluster (group {existing.group})")
    if not 0 <= weight <= 100:
        raise EditRefused(f"weight {weight} is outside 0..100")
    groups = entry.groups
    group = group or next(iter(groups))
    role = NodeRole.REPLICA if has_primary else None
    node = NodeEntry(address, group, role, weight)
    positions = [i for i, n in enumerate(entry.nodes) if n.group == group]
    index = positions[-1] + 1 if positions else len(entry.nodes)  # after its group's last
    nodes = (*entry.nodes[:index], node, *entry.nodes[index:])
    route = entry.route if group in entry.route else MappingProxyType({**entry.route, group: 0})
    return dataclasses.replace(entry, nodes=nodes, route=route)


def node_remove(entry: ClusterEntry, address: str) -> ClusterEntry:
    """Take a node out of the cluster: it gets no new calls, its calls in flight finish."""
    node = _find(entry, address)
    if node.role is NodeRole.PRIMARY:
        raise EditRefused(
            f"node {node.address} is the primary: move writes first with "
            "'resmesh ctl primary CLUSTER ADDR'"
        )
    changed = dataclasses.replace(
        entry, nodes=tuple(n for n in entry.nodes if n.address != node.address)
    )
    _check_serving(changed, node.address)
    return changed


def node_enable(entry: ClusterEntry, address: str, enabled: bool) -> ClusterEntry:
    """Send a node calls again (``enabled``), or none while keeping it listed."""
    node = _find(entry, address)
    if not enabled and node.role is NodeRole.PRIMARY:
        raise EditRefused(
            f"node {node.address} is the primary: move writes first with "
            "'resmesh ctl primary CLUSTER ADDR'"
        )
    changed = entry.replace_node(node.address, enabled=enabled)
    if not enabled:
        _check_serving(changed, node.address)
    return changed


def primary(entry: ClusterEntry, address: str, *, has_primary: bool) -> ClusterEntry:
    """Make the node at ``address`` the primary; the old primary becomes a replica."""
    if not has_primary:
        raise EditRefused("this cluster has no primary (it is sharded, or a service's instances)")
    node = _find(entry, address)
    if not node.enabled:
        raise EditRefused(f"node {node.address} is disabled: enable it first")
    nodes = tuple(
        dataclasses.replace(
            n, role=NodeRole.PRIMARY if n.address == node.address else NodeRole.REPLICA
        )
        for n in entry.nodes
    )
    return dataclasses.replace(entry, nodes=nodes)


# ----------------------------------------------------------------------------------------------


def _address(text: str) -> str:
    try:
        return str(Address.parse(text))
    except ValueError as exc:
        raise EditRefused(f"{text!r} is not host:port: {exc}") from None


def _find(entry: ClusterEntry, address: str) -> NodeEntry:
    node = entry.node(_address(address))
    if node is None:
        known = ", ".join(n.address for n in entry.nodes)
        raise EditRefused(f"no node {address} (nodes: {known})")
    return node


def _serving(nodes: list[NodeEntry]) -> bool:
    return any(n.enabled for n in nodes)


def _check_serving(entry: ClusterEntry, address: str) -> None:
    """Refuse a change that leaves no enabled node, or reads nowhere to go."""
    if not any(n.enabled for n in entry.nodes):
        raise EditRefused(f"node {address} is the last enabled node: the cluster would have none")
    groups = entry.groups
    if not any(w > 0 and _serving(groups.get(g, [])) for g, w in entry.route.items()):
        raise EditRefused(
            f"node {address} is the last enabled node of every group with a route weight above "
            "0: reads would go nowhere; shift weight to another group first"
        )
