"""The whole file: its top-level sections, and the two ways in (a path, or loaded data)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final

from . import values
from .cluster import ClusterConfig, parse_clusters
from .errors import Context, describe
from .gateway import GatewayConfig, parse_gateway
from .loader import read_text, read_yaml
from .metrics import MetricsConfig, parse_metrics
from .motan2 import Motan2AgentConfig, parse_agent
from .presets import Presets
from .registry import RegistryConfig, parse_registry
from .users import UserConfig, parse_users

__all__ = ["Config", "load_config", "parse_config"]


@dataclass(frozen=True, slots=True)
class Config:
    """A whole, validated configuration.

    ``users`` empty means the gateway asks no AUTH. Both mappings are read-only and keep file
    order.
    """

    source: Path
    gateway: GatewayConfig
    users: Mapping[str, UserConfig]
    clusters: Mapping[str, ClusterConfig]
    motan2: Motan2AgentConfig | None = None
    """The Motan2 agent (``motan2:``), or ``None`` when the file has none."""
    registry: RegistryConfig = field(default_factory=RegistryConfig)
    """Where the clusters' live state is kept (``registry:``)."""
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    """Counting calls, and the Graphite push and access log (``metrics:``)."""


_TOP_KEYS: Final = ("gateway", "users", "clusters", "motan2", "registry", "metrics")
_LATER_TOP_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "policies": (
            "presets are files, policies/NAME.yaml next to this config, that a cluster names "
            "with 'policy: NAME' (and changes under its 'governance:'); remove this section"
        ),
    }
)


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a YAML config file.

    Errors carry the line of the offending key when it can be found, so an editor can jump
    there.

    Raises:
        ConfigError: for every problem, including a missing or unreadable file and YAML syntax
            errors; nothing else escapes, so the CLI can print ``str(error)`` and exit.
    """
    source = Path(path)
    text = read_text(source, "config file not found", "check the path, or pass -c FILE")
    data, lines = read_yaml(text, source)
    return _parse(data, Context(source, lines))


def parse_config(data: object, source: Path) -> Config:
    """Validate already-loaded YAML data (what ``yaml.safe_load`` returns).

    ``source`` is only used in error messages and stored in :attr:`Config.source`.

    Raises:
        ConfigError: for every problem; errors carry no line numbers here.
    """
    return _parse(data, Context(source, {}))


def _parse(data: object, ctx: Context) -> Config:
    if data is None:
        raise ctx.error(
            (),
            "the file is empty",
            "define at least one cluster; see examples/quickstart.yaml",
        )
    if not isinstance(data, dict):
        raise ctx.error(
            (),
            f"the top level must be a mapping, got {describe(data)}",
            "start the file with keys such as 'gateway:' and 'clusters:'",
        )
    for key in data:
        if isinstance(key, str) and key in _LATER_TOP_KEYS:
            raise ctx.error((key,), f"unknown key {key!r}", _LATER_TOP_KEYS[key])
    top = values.mapping(
        ctx, data, (), _TOP_KEYS, example="clusters: {...}", required=("clusters",)
    )
    gateway = parse_gateway(ctx, top.get("gateway"), ("gateway",))
    presets = Presets.beside(ctx.source)
    motan2 = None
    if top.get("motan2") is not None:
        motan2 = parse_agent(ctx, top["motan2"], ("motan2",))
    clusters = parse_clusters(ctx, top["clusters"], ("clusters",), gateway, presets, motan2)
    users = parse_users(ctx, top.get("users"), ("users",), clusters)
    registry = parse_registry(ctx, top.get("registry"), ("registry",))
    metrics = parse_metrics(ctx, top.get("metrics"), ("metrics",))
    return Config(
        source=ctx.source,
        gateway=gateway,
        users=MappingProxyType(users),
        clusters=MappingProxyType(clusters),
        motan2=motan2,
        registry=registry,
        metrics=metrics,
    )
