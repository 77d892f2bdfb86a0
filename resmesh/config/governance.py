"""A cluster's governance: its preset, deep-merged with its ``governance:``, then checked.

The sections are the policies' own config types (``breaker:`` is
:class:`~resmesh.policies.breaker.BreakerConfig`, and so on), parsed by
:func:`~resmesh.config.fields.parse_section`; this module adds what the knobs cannot say on
their own (values that must fit together, which file to blame for a conflict) and the
per-operation settings, whose names the cluster's protocol checks.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final

from ..knobs import Kind, knob
from ..policies.balance import BalanceName
from ..policies.breaker import BreakerConfig
from ..policies.hedge import HedgeConfig
from ..policies.limit import LimitConfig
from ..policies.outlier import OutlierConfig
from ..policies.retry import FailoverConfig
from . import values
from .errors import Context, Errors, KeyPath, dotted, suggest
from .fields import parse_section
from .presets import CLUSTER_LAYER, DEFAULT_PRESET, PRESET_LAYER, Layer, Merged, Presets, deep_merge

if TYPE_CHECKING:
    from .protocols import ProtocolSection

__all__ = [
    "GovernanceConfig",
    "OperationSettings",
    "SwitchModeName",
    "SwitchSettings",
    "check_limit",
    "parse_governance",
]


class SwitchModeName(enum.StrEnum):
    """A degrade switch's mode as config spells it (:class:`resmesh.policies.switch.SwitchMode`
    plus ``off``, so a preset can state "no switch" and an override can clear one)."""

    OFF = "off"
    MISS = "miss"
    ERROR = "error"
    READONLY = "readonly"
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class SwitchSettings:
    """A degrade switch set in config (:mod:`resmesh.policies.switch`; the registry can set
    and clear switches at run time too).

    Attributes:
        mode: ``off`` (serve normally), ``miss`` (reads answer empty, writes as done),
            ``error``, ``readonly`` (writes refused) or ``fallback``.
        value: the reply for ``fallback`` (required there, refused with any other mode).
    """

    mode: SwitchModeName = knob(
        SwitchModeName.OFF, Kind.ENUM, choices=SwitchModeName, example="miss"
    )
    value: str | None = knob(None, Kind.STRING, example="'n/a'")


@dataclass(frozen=True, slots=True)
class OperationSettings:
    """What one operation (a Redis command such as ``GET``) does differently from its cluster.

    Attributes:
        limit: limits of this operation, *in addition to* the cluster's.
        hedge: this operation's hedging; ``None`` follows the cluster's. Keys the file leaves
            out are the cluster's (``GET: {hedge: {percentile: 99}}`` keeps the cluster's floor
            and budget).
        switch: this operation's switch; ``None`` follows the cluster's (a more specific
            switch wins: :class:`resmesh.policies.switch.Switchboard`).
        idempotent: ``False`` keeps calls of a read from being retried, hedged or spread to
            replicas (they go to the primary); ``None`` takes it from the protocol. The
            protocol refuses ``True`` where it cannot hold (for Redis: on a write).
    """

    limit: LimitConfig = field(default_factory=LimitConfig)
    hedge: HedgeConfig | None = None
    switch: SwitchSettings | None = None
    idempotent: bool | None = None


@dataclass(frozen=True, slots=True)
class GovernanceConfig:
    """Every policy of one cluster, resolved from its preset and overrides.

    Attributes:
        preset: the preset it started from (``policies/NAME.yaml``), ``None`` if built by hand.
        limit: the cluster's own limits.
        breaker: per-node circuit breakers.
        outlier: per-group outlier ejection.
        balance: node choice within a group; always ``hash`` for a sharded cluster (the key
            decides the node that holds it).
        failover: retries on another node.
        hedge: backup requests.
        switch: the cluster's degrade switch.
        local_group: the group (data center) to prefer while it is healthy, spilling to the
            others as it is not (:mod:`resmesh.policies.route`); ``None`` splits by weight.
        operations: per-operation settings, keyed by upper-cased operation name (``GET``).
    """

    preset: str | None = None
    limit: LimitConfig = field(default_factory=LimitConfig)
    breaker: BreakerConfig = field(default_factory=BreakerConfig)
    outlier: OutlierConfig = field(default_factory=OutlierConfig)
    balance: BalanceName = BalanceName.LEAST_LOADED
    failover: FailoverConfig = field(default_factory=FailoverConfig)
    hedge: HedgeConfig = field(default_factory=HedgeConfig)
    switch: SwitchSettings = field(default_factory=SwitchSettings)
    local_group: str | None = None
    operations: Mapping[str, OperationSettings] = field(
        default_factory=lambda: MappingProxyType({})
    )


#: The keys of ``governance:`` (and of a preset), in the order errors are looked for.
GOVERNANCE_KEYS: Final = (
    "limit",
    "breaker",
    "outlier",
    "balance",
    "failover",
    "hedge",
    "switch",
    "local_group",
    "operations",
)
_OPERATION_KEYS: Final = ("limit", "hedge", "switch", "idempotent")
_OPERATION_RE: Final = re.compile(r"^[!-~](?:[ -~]{0,126}[!-~])?$")
"""Printable ASCII, no spaces at either end, up to 128 characters: command names, methods."""


def parse_governance(
    ctx: Context,
    presets: Presets,
    policy: str | None,
    override: object,
    cluster_path: KeyPath,
    *,
    sharded: bool,
    groups: list[str],
    protocol: ProtocolSection,
) -> GovernanceConfig:
    """The cluster's preset deep-merged with its ``governance:`` section, then validated."""
    name = policy or DEFAULT_PRESET
    found = presets.read(name)
    if found is None:
        if name != DEFAULT_PRESET:
            available = presets.names()
            suggestion = suggest(name, available)
            where = " or ".join(str(folder) for folder in presets.folders)
            raise ctx.error(
                (*cluster_path, "policy"),
                f"unknown preset {name!r}: no {name}.yaml in {where}",
                (f"did you mean {suggestion!r}? " if suggestion else "")
                + f"presets available: {', '.join(available)}; or write your own as "
                f"{presets.folders[0] / (name + '.yaml')}",
            )
        # No default.yaml anywhere (an installed package without the folder): the built-in
        # defaults are the default preset, so a config that names no preset always works.
        found = (Context(Path(f"<built-in {DEFAULT_PRESET} preset>"), {}), None)
    preset_ctx, preset_data = found
    note = f" (preset {name!r}, used by {dotted(cluster_path)})"
    base_layer, base = _layer(preset_ctx, (), note, preset_data, protocol)
    top_layer, top = _layer(ctx, (*cluster_path, "governance"), "", override, protocol)
    layers = (base_layer, top_layer)
    origin: dict[KeyPath, int] = {(): PRESET_LAYER}
    merged = deep_merge(base, top, (), layers, origin)
    assert isinstance(merged, dict)  # both roots are mappings, checked above
    return _governance(
        Merged(layers, origin),
        merged,
        preset=name,
        sharded=sharded,
        groups=groups,
        protocol=protocol,
    )


def _layer(
    ctx: Context, prefix: KeyPath, note: str, value: object, protocol: ProtocolSection
) -> tuple[Layer, dict[str, object]]:
    """Check one layer's shape and upper-case its operation names, before merging.

    Operation names are normalised per layer so that ``get`` in a cluster's ``governance:``
    merges with ``GET`` in its preset.
    """
    layer = Layer(ctx, prefix, note, {})
    section = values.mapping(
        layer,
        value,
        (),
        GOVERNANCE_KEYS,
        example="{limit: {rate: 1000}, hedge: {enabled: true}}",
        allow_null=True,
    )
    data = dict(section)
    if data.get("operations") is not None:
        raw = values.mapping(
            layer,
            data["operations"],
            ("operations",),
            None,
            example="{GET: {hedge: {enabled: true}}}",
        )
        operations: dict[str, object] = {}
        for written, settings in raw.items():
            path = ("operations", written)
            if not _OPERATION_RE.match(written):
                raise layer.error_as_written(
                    path,
                    f"{written!r} is not a valid operation name",
                    "write the operation as the protocol names it, e.g. GET (printable "
                    "characters, up to 128, no spaces at either end)",
                )
            name = written.upper()
            protocol.check_operation_name(layer, path, written, name)
            if name in operations:
                raise layer.error_as_written(
                    path,
                    f"operation {written!r} is also listed as {layer.spellings[name]!r} "
                    "(operation names ignore case)",
                    "keep one of them",
                )
            layer.spellings[name] = written
            operations[name] = settings
        data["operations"] = operations
    return layer, data


def _governance(
    where: Merged,
    data: Mapping[str, object],
    *,
    preset: str,
    sharded: bool,
    groups: list[str],
    protocol: ProtocolSection,
) -> GovernanceConfig:
    # In the order of GOVERNANCE_KEYS, so that the first error reported is the first in the
    # file.
    limit = parse_section(where, data.get("limit"), ("limit",), LimitConfig, check=check_limit)
    breaker = parse_section(where, data.get("breaker"), ("breaker",), BreakerConfig)
    outlier = parse_section(
        where, data.get("outlier"), ("outlier",), OutlierConfig, check=_check_outlier
    )
    balance = _balance(where, data.get("balance"), sharded=sharded)
    failover = parse_section(where, data.get("failover"), ("failover",), FailoverConfig)
    hedge = parse_section(where, data.get("hedge"), ("hedge",), HedgeConfig)
    switch = parse_section(
        where, data.get("switch"), ("switch",), SwitchSettings, check=_check_switch
    )
    local_group = _local_group(where, data.get("local_group"), groups)
    section = values.mapping(
        where,
        data.get("operations"),
        ("operations",),
        None,
        example="{GET: {hedge: {enabled: true}}}",
        allow_null=True,
    )
    operations = {}
    for name, raw in section.items():
        path = ("operations", name)
        operation = _operation(where, raw, path, hedge)
        protocol.check_operation(where, path, name, operation)
        operations[name] = operation
    return GovernanceConfig(
        preset=preset,
        limit=limit,
        breaker=breaker,
        outlier=outlier,
        balance=balance,
        failover=failover,
        hedge=hedge,
        switch=switch,
        local_group=local_group,
        operations=MappingProxyType(operations),
    )


def _balance(where: Merged, value: object, *, sharded: bool) -> BalanceName:
    balance = BalanceName.LEAST_LOADED
    if value is not None:
        balance = values.choice(where, value, ("balance",), BalanceName)
    if sharded and balance is not BalanceName.HASH:
        # A preset serves clusters of both modes, so its balance yields to sharding; a
        # cluster that asks for another balance in its own section is told why it cannot.
        if value is not None and where.came_from(("balance",)) == CLUSTER_LAYER:
            raise where.error(
                ("balance",),
                f"balance {balance.value!r} cannot apply to a sharded cluster: each key lives "
                "on one node of the group, so the key's consistent hash must pick the node",
                "remove balance (sharded clusters always use hash), or set mode: replicated",
            )
        balance = BalanceName.HASH
    return balance


def _local_group(where: Merged, value: object, groups: list[str]) -> str | None:
    if value is None:
        return None
    local_group = values.string(where, value, ("local_group",), example=groups[0])
    if local_group in groups:
        return local_group
    suggestion = suggest(local_group, groups)
    if where.came_from(("local_group",)) == PRESET_LAYER:
        # A preset serves many clusters, and group names are each cluster's own.
        fix = (
            f"set it per cluster instead, under {dotted(where.layers[-1].prefix)}, "
            f"e.g. local_group: {suggestion or groups[0]} (null there ignores the preset's)"
        )
    elif suggestion:
        fix = f"did you mean {suggestion!r}?"
    else:
        fix = f"name a group of the cluster, e.g. local_group: {groups[0]}"
    raise where.error(
        ("local_group",),
        f"{local_group!r} is not one of the cluster's groups ({', '.join(groups)})",
        fix,
    )


def _operation(
    where: Merged, value: object, path: KeyPath, hedge: HedgeConfig
) -> OperationSettings:
    section = values.mapping(
        where,
        value,
        path,
        _OPERATION_KEYS,
        example="{limit: {rate: 1000}, hedge: {percentile: 99}, idempotent: false}",
        allow_null=True,
    )
    limit = parse_section(
        where, section.get("limit"), (*path, "limit"), LimitConfig, check=check_limit
    )
    own_hedge = None
    if section.get("hedge") is not None:
        own_hedge = parse_section(
            where, section["hedge"], (*path, "hedge"), HedgeConfig, defaults=hedge
        )
    switch = None
    if section.get("switch") is not None:
        switch = parse_section(
            where, section["switch"], (*path, "switch"), SwitchSettings, check=_check_switch
        )
    idempotent = None
    if section.get("idempotent") is not None:
        idempotent = values.boolean(where, section["idempotent"], (*path, "idempotent"))
    return OperationSettings(limit=limit, hedge=own_hedge, switch=switch, idempotent=idempotent)


def check_limit(where: Errors, path: KeyPath, limit: Mapping[str, Any]) -> None:
    """A ``limit:`` section's knobs fit together (a burst needs a rate)."""
    if limit["burst"] is not None and limit["rate"] is None:
        raise where.error(
            (*path, "burst"),
            "burst without rate limits nothing (burst is the size of the token bucket "
            "that rate refills)",
            "add rate: calls per second, or remove burst (burst: null drops one set in the preset)",
        )


def _check_outlier(where: Merged, path: KeyPath, outlier: Mapping[str, Any]) -> None:
    base_ejection, max_ejection = outlier["base_ejection"], outlier["max_ejection"]
    if max_ejection >= base_ejection:
        return
    # Blame whichever of the two the later layer set: that is the edit that broke it.
    base_path, max_path = (*path, "base_ejection"), (*path, "max_ejection")
    blamed = max_path
    if where.came_from(base_path) > where.came_from(max_path):
        blamed = base_path
    raise where.error(
        blamed,
        f"max_ejection ({max_ejection:g}s) is shorter than base_ejection "
        f"({base_ejection:g}s), the length of a first ejection",
        "raise max_ejection or lower base_ejection",
    )


def _check_switch(where: Merged, path: KeyPath, switch: Mapping[str, Any]) -> None:
    mode, reply = switch["mode"], switch["value"]
    if mode is SwitchModeName.FALLBACK and reply is None:
        raise where.error(
            (*path, "mode"),
            "mode fallback needs a value: the reply every switched call gets",
            "add value, e.g. switch: {mode: fallback, value: 'n/a'}",
        )
    if mode is not SwitchModeName.FALLBACK and reply is not None:
        raise where.error(
            (*path, "value"),
            f"a value is only used by mode fallback, and the mode is {mode.value!r}",
            "remove value or set mode: fallback (value: null drops one set in the preset)",
        )
