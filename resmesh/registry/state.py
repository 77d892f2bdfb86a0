"""What the registry holds: one entry per cluster, and the version of the whole.

A cluster's entry is its live layout, its degrade switches and its limit overrides: nodes
(address, group, role, weight, enabled), route weights between groups, the switches in force,
and rate and concurrency limits that replace the configuration's for a scope. Weibo Mesh keeps the
same things in its registry (motan-go's ``RegistryURL`` nodes, its ``CMDTrafficControl`` group
weights and ``CMDDegrade`` switches); here they are one document per cluster, so a change to
one cluster never races a change to another.

A cluster the registry has no entry for runs on its configuration's state; the first change
an operator makes (``resmesh ctl``) copies that state into an entry (:func:`entry_from_config`)
and edits it. From then on the entry is the whole truth for the cluster: a ``restore`` removes
the switches the config set as well.

Entries travel as plain documents (YAML in the file backend, JSON in etcd), in the same shape
the configuration file uses for groups::

    groups:
      dc-a: [{address: 127.0.0.1:6379, role: primary, weight: 100, enabled: true}]
      dc-b: [{address: 127.0.0.1:6389, role: replica}]
    route: {dc-a: 100, dc-b: 0}
    switches:
      "*": {mode: miss, reason: "cache cluster sick"}   # the whole cluster
      GET: {mode: fallback, value: "n/a"}                # one operation
    limits:                                              # replace the config's, per scope
      "*": {rate: 5000, concurrency: 200}
      KEYS: {concurrency: 1}

:func:`parse_entry` validates a document (a hand-edited file, a value written by another
version) and raises :class:`RegistryDataError` naming the key; :func:`entry_document` writes one.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final, final

from ..call import Protocol
from ..cluster.topology import ClusterState, NodeSpec
from ..config import Address, ClusterConfig, Mode, NodeRole, SwitchSettings
from ..policies.limit import LimitConfig, LimiterConfig
from ..policies.switch import Switch, SwitchMode

__all__ = [
    "WHOLE_CLUSTER",
    "ClusterEntry",
    "NodeEntry",
    "RegistryDataError",
    "Snapshot",
    "SwitchEntry",
    "cluster_state",
    "entry_document",
    "entry_from_config",
    "has_primary",
    "limits_of",
    "parse_entry",
    "switches_of",
]

#: The key of a switch that covers every operation of its cluster.
WHOLE_CLUSTER: Final = "*"

_NODE_KEYS: Final = ("address", "role", "weight", "enabled")
_SWITCH_KEYS: Final = ("mode", "value", "reason")
_ENTRY_KEYS: Final = ("groups", "route", "switches", "limits")
_LIMIT_KEYS: Final = ("rate", "burst", "concurrency")


class RegistryDataError(ValueError):
    """A registry document that does not describe a valid cluster entry.

    Attributes:
        cluster: the cluster it was for.
        key: the dotted key at fault, inside the cluster's entry.
        problem: what is wrong, in a sentence.
    """

    def __init__(self, cluster: str, key: str, problem: str) -> None:
        self.cluster = cluster
        self.key = key
        self.problem = problem
        where = f"clusters.{cluster}" + (f".{key}" if key else "")
        super().__init__(f"registry entry {where}: {problem}")


@final
@dataclass(frozen=True, slots=True)
class NodeEntry:
    """One node as the registry lists it.

    Attributes:
        address: ``host:port``.
        group: its data center.
        role: ``primary`` or ``replica`` in a replicated cluster; ``None`` where there is no
            primary (a sharded cluster, a Motan2 service's instances).
        weight: its share of its group's reads (0..100).
        enabled: ``False`` keeps the node listed but sends it nothing (it drains).
    """

    address: str
    group: str
    role: NodeRole | None = None
    weight: int = 100
    enabled: bool = True


@final
@dataclass(frozen=True, slots=True)
class SwitchEntry:
    """One degrade switch: ``mode`` for ``operation`` (``None``: the whole cluster)."""

    mode: SwitchMode
    operation: str | None = None
    value: str | None = None
    reason: str = ""


@final
@dataclass(frozen=True, slots=True)
class ClusterEntry:
    """A cluster's live layout and switches.

    Attributes:
        nodes: every node, a group's nodes in order.
        route: group → share of reads (0..100); groups left out get 0.
        switches: the degrade switches in force.
        limits: limits that replace the configuration's, by scope (:data:`WHOLE_CLUSTER` or
            an operation); a scope not named keeps the configuration's.
    """

    nodes: tuple[NodeEntry, ...]
    route: Mapping[str, int]
    switches: tuple[SwitchEntry, ...] = ()
    limits: Mapping[str, LimitConfig] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def groups(self) -> dict[str, list[NodeEntry]]:
        """Group → its nodes, groups in the order their first node or route weight comes."""
        groups: dict[str, list[NodeEntry]] = {}
        for node in self.nodes:
            groups.setdefault(node.group, []).append(node)
        for group in self.route:
            groups.setdefault(group, [])
        return groups

    def node(self, address: str) -> NodeEntry | None:
        return next((n for n in self.nodes if n.address == address), None)

    def replace_node(self, address: str, **changes: Any) -> ClusterEntry:
        nodes = tuple(
            dataclasses.replace(n, **changes) if n.address == address else n for n in self.nodes
        )
        return dataclasses.replace(self, nodes=nodes)


@final
@dataclass(frozen=True, slots=True)
class Snapshot:
    """The registry at one version: every cluster's entry.

    ``version`` increases with every change (the file backend's counter, etcd's revision);
    0 is an empty registry. ``errors`` holds the entries that did not parse, by cluster: a
    gateway keeps its last good state for those and says so.
    """

    version: int
    clusters: Mapping[str, ClusterEntry] = field(default_factory=lambda: MappingProxyType({}))
    errors: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))


def has_primary(cluster: ClusterConfig) -> bool:
    """Whether the cluster's nodes have roles: one primary takes the writes (a replicated
    cluster; a sharded one and a Motan2 service's instances have none)."""
    return cluster.mode is Mode.REPLICATED and cluster.protocol is not Protocol.MOTAN2


def entry_from_config(cluster: ClusterConfig) -> ClusterEntry:
    """The entry that states what ``cluster``'s configuration does: where the registry starts
    for a cluster it has not seen."""
    replicated = has_primary(cluster)
    primary = cluster.primary
    nodes = tuple(
        NodeEntry(
            str(node.address),
            group,
            (NodeRole.PRIMARY if node == primary else NodeRole.REPLICA) if replicated else None,
            node.weight,
        )
        for group, members in cluster.groups.items()
        for node in members
    )
    governance = cluster.governance
    scopes: list[tuple[str | None, SwitchSettings | None]] = [(None, governance.switch)]
    scopes += [(name, op.switch) for name, op in governance.operations.items()]
    switches = tuple(
        SwitchEntry(SwitchMode(str(s.mode)), operation, s.value, "set in config")
        for operation, s in scopes
        if s is not None and str(s.mode) != "off"
    )
    return ClusterEntry(nodes, MappingProxyType(dict(cluster.route)), switches)


def cluster_state(
    name: str, entry: ClusterEntry, config: ClusterConfig, version: int
) -> ClusterState:
    """The layout ``entry`` gives the cluster ``config`` describes (its mode and protocol
    come from the config), at ``version``: enabled nodes only; a lone enabled node of a
    replicated cluster that states no role is its primary, as in the configuration.

    Raises:
        RegistryDataError: no node is enabled, or a replicated cluster's enabled nodes do not
            have exactly one primary.
    """
    sharded = config.mode is Mode.SHARDED
    peers = config.protocol is Protocol.MOTAN2
    specs = []
    for node in entry.nodes:
        if not node.enabled:
            continue
        address = Address.parse(node.address)
        specs.append(
            NodeSpec(
                address.host, address.port, node.group, node.weight, node.role is NodeRole.PRIMARY
            )
        )
    if not specs:
        raise RegistryDataError(name, "groups", "no node is enabled")
    if not sharded and not peers:
        lone = [n for n in entry.nodes if n.enabled]
        if len(specs) == 1 and lone[0].role is None:  # one node: the primary, unsaid
            specs[0] = dataclasses.replace(specs[0], primary=True)
        primaries = [s.address for s in specs if s.primary]
        if len(primaries) != 1:
            raise RegistryDataError(
                name,
                "groups",
                f"{len(primaries)} enabled primaries ({', '.join(primaries) or 'none'}); a "
                "replicated cluster needs exactly one",
            )
    return ClusterState(version, tuple(specs), MappingProxyType(dict(entry.route)), sharded, peers)


def limits_of(entry: ClusterEntry, configured: LimiterConfig) -> LimiterConfig:
    """The limits in force: ``configured`` (the config's), with the entry's overrides."""
    operations = dict(configured.operations)
    operations.update({op: lim for op, lim in entry.limits.items() if op != WHOLE_CLUSTER})
    return LimiterConfig(entry.limits.get(WHOLE_CLUSTER, configured.cluster), operations)


def switches_of(name: str, entry: ClusterEntry) -> list[Switch]:
    """The entry's switches, as the policies take them."""
    return [
        Switch(
            name,
            s.mode,
            s.operation,
            s.value.encode() if s.value is not None else None,
            s.reason,
        )
        for s in entry.switches
    ]


# ----------------------------------------------------------------------------------------------
# Documents


def entry_document(entry: ClusterEntry) -> dict[str, Any]:
    """``entry`` as a plain document (YAML or JSON)."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for group, members in entry.groups.items():
        groups[group] = []
        for node in members:
            doc: dict[str, Any] = {"address": node.address}
            if node.role is not None:
                doc["role"] = str(node.role)
            doc["weight"] = node.weight
            doc["enabled"] = node.enabled
            groups[group].append(doc)
    switches: dict[str, dict[str, Any]] = {}
    for switch in entry.switches:
        doc = {"mode": str(switch.mode)}
        if switch.value is not None:
            doc["value"] = switch.value
        if switch.reason:
            doc["reason"] = switch.reason
        switches[switch.operation or WHOLE_CLUSTER] = doc
    limits = {
        scope: {key: getattr(limit, key) for key in _LIMIT_KEYS if getattr(limit, key) is not None}
        for scope, limit in entry.limits.items()
    }
    return {"groups": groups, "route": dict(entry.route), "switches": switches, "limits": limits}


def parse_entry(cluster: str, doc: object) -> ClusterEntry:
    """Validate a document into a :class:`ClusterEntry`.

    Raises:
        RegistryDataError: naming the key at fault.
    """
    top = _mapping(cluster, "", doc, _ENTRY_KEYS)
    groups = _mapping(cluster, "groups", top.get("groups"), None)
    nodes: list[NodeEntry] = []
    seen: set[str] = set()
    for group, members in groups.items():
        if not isinstance(group, str) or not group:
            raise RegistryDataError(cluster, "groups", f"group name {group!r} is not a name")
        if not isinstance(members, list):
            raise RegistryDataError(cluster, f"groups.{group}", "expected a list of nodes")
        for index, raw in enumerate(members):
            node = _node(cluster, f"groups.{group}.{index}", group, raw)
            if node.address in seen:
                raise RegistryDataError(
                    cluster, f"groups.{group}.{index}", f"node {node.address} is listed twice"
                )
            seen.add(node.address)
            nodes.append(node)
    if not nodes:
        raise RegistryDataError(cluster, "groups", "no node is listed")
    route: dict[str, int] = {}
    for group, weight in _mapping(cluster, "route", top.get("route") or {}, None).items():
        route[str(group)] = _weight(cluster, f"route.{group}", weight)
    switches: list[SwitchEntry] = []
    raw_switches = _mapping(cluster, "switches", top.get("switches") or {}, None)
    for operation, raw in raw_switches.items():
        key = f"switches.{operation}"
        sw = _mapping(cluster, key, raw, _SWITCH_KEYS)
        try:
            mode = SwitchMode(str(sw.get("mode")))
        except ValueError:
            valid = ", ".join(m.value for m in SwitchMode)
            raise RegistryDataError(
                cluster, f"{key}.mode", f"{sw.get('mode')!r} is not a mode ({valid})"
            ) from None
        value = sw.get("value")
        if value is not None and not isinstance(value, str):
            raise RegistryDataError(cluster, f"{key}.value", "expected a string")
        if mode is SwitchMode.FALLBACK and value is None:
            raise RegistryDataError(cluster, f"{key}.value", "mode fallback needs a value")
        op = None if operation == WHOLE_CLUSTER else str(operation).upper()
        if any(s.operation == op for s in switches):
            raise RegistryDataError(cluster, key, f"a second switch for {op} (keys ignore case)")
        switches.append(SwitchEntry(mode, op, value, str(sw.get("reason") or "")))
    limits: dict[str, LimitConfig] = {}
    for scope, raw in _mapping(cluster, "limits", top.get("limits") or {}, None).items():
        name = WHOLE_CLUSTER if scope == WHOLE_CLUSTER else str(scope).upper()
        if name in limits:
            raise RegistryDataError(cluster, f"limits.{scope}", f"a second limit for {name}")
        limits[name] = _limit(cluster, f"limits.{scope}", raw)
    return ClusterEntry(
        tuple(nodes), MappingProxyType(route), tuple(switches), MappingProxyType(limits)
    )


def _limit(cluster: str, key: str, raw: object) -> LimitConfig:
    doc = _mapping(cluster, key, raw, _LIMIT_KEYS)
    if not doc:
        raise RegistryDataError(cluster, key, "set rate, burst or concurrency")
    numbers: dict[str, float | int] = {}
    for name, value in doc.items():
        whole = name == "concurrency"
        ok = isinstance(value, int) if whole else isinstance(value, int | float)
        if isinstance(value, bool) or not ok or not 1 <= value <= 1e9:
            what = "a whole number" if whole else "a number"
            raise RegistryDataError(cluster, f"{key}.{name}", f"{value!r} is not {what} in 1..1e9")
        numbers[name] = value if whole else float(value)
    return LimitConfig(**numbers)  # type: ignore[arg-type]


def _mapping(cluster: str, key: str, value: object, keys: tuple[str, ...] | None) -> dict[Any, Any]:
    if not isinstance(value, dict):
        raise RegistryDataError(cluster, key, f"expected a mapping, got {type(value).__name__}")
    if keys is not None:
        unknown = [k for k in value if k not in keys]
        if unknown:
            raise RegistryDataError(
                cluster, key, f"unknown key {unknown[0]!r} (known: {', '.join(keys)})"
            )
    return value


def _weight(cluster: str, key: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 100:
        raise RegistryDataError(cluster, key, f"{value!r} is not a weight in 0..100")
    return value


def _node(cluster: str, key: str, group: str, raw: object) -> NodeEntry:
    doc = {"address": raw} if isinstance(raw, str) else _mapping(cluster, key, raw, _NODE_KEYS)
    address = doc.get("address")
    try:
        address = str(Address.parse(str(address)))
    except ValueError as exc:
        raise RegistryDataError(cluster, f"{key}.address", f"{address!r}: {exc}") from None
    role = doc.get("role")
    if role is not None:
        try:
            role = NodeRole(role)
        except ValueError:
            raise RegistryDataError(
                cluster, f"{key}.role", f"{role!r} is not a role (primary, replica)"
            ) from None
    enabled = doc.get("enabled", True)
    if not isinstance(enabled, bool):
        raise RegistryDataError(cluster, f"{key}.enabled", "expected true or false")
    weight = _weight(cluster, f"{key}.weight", doc.get("weight", 100))
    return NodeEntry(address, group, role, weight, enabled)
