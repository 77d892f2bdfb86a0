"""Configuration: YAML in, frozen typed objects out, and errors a person can act on.

Why this module is strict: a gateway that half-understands its config fails at 3 a.m. under
load, far from the typo that caused it. So every key is known or rejected (with a "did you
mean" when one is close), every number is range-checked, and cross-references (routes to
groups, users to clusters, listen addresses to each other) are checked before anything binds
a socket. Every failure is one :class:`ConfigError` that names the file, the dotted key path
and a fix, and, when the file was read from disk, the line.

The shape is DESIGN.md §8, with one obvious way to say each thing::

    gateway: {app: demo-app, admin: 127.0.0.1:8002, drain_timeout: 5s, workers: 1}
    users:
      app: {password: app, clusters: [feed-cache]}
    clusters:
      feed-cache:
        protocol: redis
        listen: 127.0.0.1:6380
        mode: replicated
        groups: {dc-a: [127.0.0.1:6379]}     # a node is host:port or {address: ..., weight: 50}
        route: {dc-a: 100}
        backend: {password: null, connect_timeout: 2s, command_timeout: 5s}
        limits: {max_bulk_len: 512MiB, client_idle_timeout: 0}
        policy: cache                        # governance preset: policies/cache.yaml
        governance:                          # what this cluster changes in it
          limit: {rate: 50000, concurrency: 1024}
          operations: {KEYS: {limit: {concurrency: 1}}}

Governance (DESIGN.md §4: limits, breaker, outlier ejection, balance, failover, hedge, switch)
comes from a *preset*, a YAML file of the same shape as ``governance:``: ``policy: NAME``
picks ``policies/NAME.yaml`` next to the config file or, failing that, the one bundled with
resmesh (``default`` when the cluster names none). The cluster's ``governance:`` section is
deep-merged over it: mappings merge key by key, anything else replaces, and ``null`` puts a
value back to its built-in default (for a limit: no limit). Errors in a preset name the preset
file, its key path, and the cluster using it.

Everything here is plain data: the result is immutable (frozen dataclasses, read-only
mappings) so a config snapshot can be shared between tasks and swapped atomically later, the
way DESIGN.md §6 wants registry state to be.
"""

from __future__ import annotations

import difflib
import enum
import ipaddress
import math
import re
import reprlib
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

import yaml

__all__ = [
    "Address",
    "BackendConfig",
    "BalanceName",
    "BreakerSettings",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "FailoverSettings",
    "GatewayConfig",
    "GovernanceConfig",
    "HedgeSettings",
    "LimitSettings",
    "Mode",
    "NodeConfig",
    "OperationSettings",
    "OutlierSettings",
    "Protocol",
    "RedisLimits",
    "SwitchModeName",
    "SwitchSettings",
    "UserConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]


# --------------------------------------------------------------------------------------------
# Typed configuration objects
# --------------------------------------------------------------------------------------------


class Protocol(enum.StrEnum):
    """The wire protocol a cluster speaks.

    A ``StrEnum`` so that ``cluster.protocol == "redis"`` and f-strings keep working while the
    type checker still sees a closed set.
    """

    REDIS = "redis"
    MYSQL = "mysql"
    MOTAN2 = "motan2"


class Mode(enum.StrEnum):
    """How a cluster's nodes share the data.

    ``replicated``: every node holds every key, so any node may answer (reads can be balanced,
    hedged and failed over). ``sharded``: keys are spread over the nodes of a group by
    consistent hashing (ketama), and multi-key commands are split and merged.
    """

    REPLICATED = "replicated"
    SHARDED = "sharded"


_HOSTNAME_RE: Final = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_.])?$")
_PORT_RE: Final = re.compile(r"^[0-9]{1,5}$")


@dataclass(frozen=True, slots=True)
class Address:
    """A TCP endpoint, ``host:port``.

    IPv6 hosts are stored without brackets and written with them (``[::1]:6380``), because
    that is the only spelling that is not ambiguous about where the port starts. Port 0 is
    allowed here (it means "any free port" when listening, which tests use); the config
    loader rejects it for backend nodes, where it means nothing.

    Raises:
        ValueError: on construction, if the host is empty or the port is outside 0..65535,
            so that code building addresses by hand cannot create one that cannot be bound.
    """

    host: str
    port: int

    def __post_init__(self) -> None:
        if not self.host:
            raise ValueError("empty host")
        if isinstance(self.port, bool) or not 0 <= self.port <= 65535:
            raise ValueError(f"port {self.port!r} is outside 0..65535")

    @classmethod
    def parse(cls, text: str) -> Address:
        """Parse ``"127.0.0.1:6380"``, ``"[::1]:6380"`` or ``"localhost:6379"``.

        Raises:
            ValueError: with a short reason (no port, bad port, bare IPv6, bad host name); the
                config loader wraps it into a :class:`ConfigError` that says where.
        """
        if text.startswith("["):
            end = text.find("]")
            if end < 0:
                raise ValueError("missing ']' after the IPv6 address")
            host, rest = text[1:end], text[end + 1 :]
            if not rest.startswith(":"):
                raise ValueError("missing ':port' after ']'")
            port_text = rest[1:]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise ValueError(f"{host!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep:
                raise ValueError("missing ':port'")
            if ":" in host:
                raise ValueError("an IPv6 address needs brackets, like [::1]:6380")
            if not host:
                raise ValueError("missing host")
            if not _HOSTNAME_RE.match(host):
                raise ValueError(f"{host!r} is not a host name or IP address")
            if any(not 0 < len(label) < 64 for label in host.split(".")):
                # The resolver refuses these (an empty label, or one over 63 characters).
                raise ValueError(f"{host!r} has an empty label or one over 63 characters")
            if all(label.isdigit() for label in host.split(".")):
                try:
                    ipaddress.IPv4Address(host)
                except ValueError:
                    raise ValueError(f"{host!r} is not an IPv4 address") from None
        if not _PORT_RE.match(port_text) or int(port_text) > 65535:
            raise ValueError(f"port {port_text!r} is not a number in 0..65535")
        return cls(host, int(port_text))

    def __str__(self) -> str:
        if ":" in self.host:
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """One backend server inside a group.

    ``weight`` (0..100) is the node's share within its group; 0 keeps a node configured but
    sends it no traffic (drained), which is how an operator takes one out without deleting it.
    """

    address: Address
    weight: int = 100


@dataclass(frozen=True, slots=True)
class BackendConfig:
    """How the gateway connects to a cluster's nodes.

    The credentials here are the gateway's own login to the backend, deliberately separate from
    :class:`UserConfig` (who may log in to the gateway): apps never learn backend passwords.
    """

    username: str | None = None
    password: str | None = None
    connect_timeout: float = 2.0
    """Seconds allowed to open (and authenticate) one backend connection."""
    command_timeout: float = 5.0
    """Seconds allowed for one command's reply, unless the command blocks by design."""
    connections: int = 2
    """Multiplexed (shared) connections per node per (db, protocol version)."""
    max_dedicated: int = 256
    """Cap on pinned connections (MULTI, blocking pops, pub/sub) per node."""


@dataclass(frozen=True, slots=True)
class RedisLimits:
    """Bounds on what one Redis client may make the gateway hold in memory.

    Defaults match redis-server's own (``proto-max-bulk-len`` 512 MiB, 1024*1024 multibulk
    elements, ``client-query-buffer-limit`` 1 GiB, ``maxclients`` 10000, ``timeout`` 0), so a
    client that works against Redis works against the gateway.
    """

    max_bulk_len: int = 512 * 1024 * 1024
    max_multibulk_len: int = 1024 * 1024
    max_request_buffer: int = 1024 * 1024 * 1024
    max_clients: int = 10000
    client_idle_timeout: float = 0.0
    """Seconds of client silence before the gateway closes it; 0 means never."""


# --------------------------------------------------------------------------------------------
# Governance (DESIGN.md §4): what each policy of a cluster does, from a preset plus overrides
# --------------------------------------------------------------------------------------------


class BalanceName(enum.StrEnum):
    """How a node is picked inside a group (:mod:`resmesh.policies.balance`).

    ``least_loaded`` is power-of-two-choices on in-flight calls: it steers around a slow node
    without any tuning, which is why it is the default for replicated clusters. ``hash`` is
    consistent hashing (ketama) on the call's key; a sharded cluster always uses it, and a
    replicated one may (each key then sticks to one node, which keeps node-local caches warm).
    """

    RANDOM = "random"
    ROUND_ROBIN = "round_robin"
    WEIGHTED = "weighted"
    LEAST_LOADED = "least_loaded"
    HASH = "hash"


class SwitchModeName(enum.StrEnum):
    """A degrade switch's mode as config spells it (:class:`resmesh.policies.switch.SwitchMode`
    plus ``off``, so a preset can state "no switch" and an override can clear one)."""

    OFF = "off"
    MISS = "miss"
    ERROR = "error"
    READONLY = "readonly"
    FALLBACK = "fallback"


@dataclass(frozen=True, slots=True)
class LimitSettings:
    """Admission limits of one scope: a cluster, or one operation of it (DESIGN.md §4 limit).

    Over a limit a call is rejected at once, never queued (:mod:`resmesh.policies.limit`). An
    operation's limits apply *in addition to* its cluster's.

    Attributes:
        rate: calls per second (token bucket refill); ``None`` for no rate limit.
        burst: bucket size; ``None`` means 2 x ``rate`` (motan-go, DESIGN.md §4), which the
            user of this config applies (:class:`~resmesh.policies.limit.TokenBucket`).
        concurrency: calls in flight at most; ``None`` for no cap (new limits default to off:
            Envoy's "0 % enforced, for safety").
    """

    rate: float | None = None
    burst: float | None = None
    concurrency: int | None = None


@dataclass(frozen=True, slots=True)
class BreakerSettings:
    """The per-node circuit breaker (:class:`resmesh.policies.breaker.BreakerConfig`).

    Attributes:
        enabled: whether nodes have breakers at all.
        error_ratio: trip when node failures / calls in the window reach this (0.5: Hystrix
            ``errorThresholdPercentage`` 50, resilience4j ``failureRateThreshold`` 50 %).
        slow_call: seconds after which a call counts as slow; ``None`` turns the slow-call rule
            off (resmesh default).
        slow_ratio: trip when slow calls / calls reach this (1.0: resilience4j, Sentinel).
        min_calls: the ratio rules apply once the window holds this many calls (20: Hystrix
            ``requestVolumeThreshold``).
        window: rolling window in seconds (10: Hystrix ``rollingStats``).
        consecutive_failures: trip after this many node failures in a row, whatever the
            volume (10: motan-go ``failfast``); 0 turns the rule off.
        open_for: seconds open before probing (5: Hystrix ``sleepWindowInMilliseconds``).
        half_open_probes: probes at once while half-open (1: Sentinel, Hystrix).
    """

    enabled: bool = True
    error_ratio: float = 0.5
    slow_call: float | None = None
    slow_ratio: float = 1.0
    min_calls: int = 20
    window: float = 10.0
    consecutive_failures: int = 10
    open_for: float = 5.0
    half_open_probes: int = 1


@dataclass(frozen=True, slots=True)
class OutlierSettings:
    """Outlier ejection per group (:class:`resmesh.policies.outlier.OutlierConfig`, Envoy).

    Attributes:
        enabled: whether failing nodes are ejected.
        consecutive_failures: node failures in a row that eject a node (5: Envoy
            ``consecutive_5xx``).
        base_ejection: seconds per ejection, times the node's ejection count (30: Envoy
            ``base_ejection_time``).
        max_ejection: cap on one ejection in seconds (300: Envoy ``max_ejection_time``).
        max_ejection_percent: share of a group ejected at once, but at least one node of a
            group of two or more (10: Envoy; "at least one": gRPC A50).
        panic_threshold: below this percentage of healthy nodes, use them all (50: Envoy
            ``healthy_panic_threshold``); 0 turns panic mode off.
    """

    enabled: bool = True
    consecutive_failures: int = 5
    base_ejection: float = 30.0
    max_ejection: float = 300.0
    max_ejection_percent: int = 10
    panic_threshold: int = 50


@dataclass(frozen=True, slots=True)
class FailoverSettings:
    """Retrying an idempotent call on a *different* node (:mod:`resmesh.policies.failover`).

    Attributes:
        enabled: whether node failures of idempotent calls are retried.
        max_attempts: attempts in all, the first included (2: one retry; Envoy
            ``num_retries`` 1).
        budget_ratio: retries in flight at most this share of calls in flight (0.2: Envoy
            ``retry_budget.budget_percent`` 20 %).
        budget_min: ...but always allow this many (3: Envoy ``min_retry_concurrency``).
    """

    enabled: bool = True
    max_attempts: int = 2
    budget_ratio: float = 0.2
    budget_min: int = 3


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """Backup requests for idempotent calls (:class:`resmesh.policies.hedge.HedgeConfig`).

    Off by default: a hedge is extra load by design, so a cluster opts in (the ``cache``
    preset does).

    Attributes:
        enabled: whether slow idempotent calls are hedged.
        percentile: hedge after this latency percentile of the operation (90: motan-go
            ``backupRequestDelayRatio``; The Tail at Scale).
        floor: never hedge sooner than this many seconds (0.010: motan-go's 10 ms floor).
        budget: hedges per call at most, as a token-bucket earn rate (0.15: motan-go
            ``backupRequestMaxRetryRatio`` 15 per 100).
    """

    enabled: bool = False
    percentile: float = 90.0
    floor: float = 0.010
    budget: float = 0.15


@dataclass(frozen=True, slots=True)
class SwitchSettings:
    """A degrade switch set in config (:mod:`resmesh.policies.switch`; the registry can set
    and clear switches at run time too).

    Attributes:
        mode: ``off`` (serve normally), ``miss``, ``error``, ``readonly`` or ``fallback``:
            see :class:`SwitchModeName` and DESIGN.md §4 switch.
        value: the reply for ``fallback`` (required there, refused with any other mode).
    """

    mode: SwitchModeName = SwitchModeName.OFF
    value: str | None = None


@dataclass(frozen=True, slots=True)
class OperationSettings:
    """What one operation (a Redis command such as ``GET``) does differently from its cluster.

    Attributes:
        limit: limits of this operation, *in addition to* the cluster's.
        hedge: this operation's hedging; ``None`` follows the cluster's. Fields the file leaves
            out are the cluster's (``GET: {hedge: {percentile: 99}}`` keeps the cluster's floor
            and budget).
        switch: this operation's switch; ``None`` follows the cluster's (a more specific
            switch wins: :class:`resmesh.policies.switch.Switchboard`).
        idempotent: whether retry and hedge are allowed; ``None`` takes it from the protocol
            (the Redis command table's readonly flag).
    """

    limit: LimitSettings = field(default_factory=LimitSettings)
    hedge: HedgeSettings | None = None
    switch: SwitchSettings | None = None
    idempotent: bool | None = None


@dataclass(frozen=True, slots=True)
class GovernanceConfig:
    """Every policy of one cluster (DESIGN.md §4), resolved from its preset and overrides.

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
    limit: LimitSettings = field(default_factory=LimitSettings)
    breaker: BreakerSettings = field(default_factory=BreakerSettings)
    outlier: OutlierSettings = field(default_factory=OutlierSettings)
    balance: BalanceName = BalanceName.LEAST_LOADED
    failover: FailoverSettings = field(default_factory=FailoverSettings)
    hedge: HedgeSettings = field(default_factory=HedgeSettings)
    switch: SwitchSettings = field(default_factory=SwitchSettings)
    local_group: str | None = None
    operations: Mapping[str, OperationSettings] = field(
        default_factory=lambda: MappingProxyType({})
    )


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
    limits: RedisLimits = field(default_factory=RedisLimits, kw_only=True)
    policy: str | None = field(default=None, kw_only=True)
    """The preset the file names with ``policy: NAME`` (``policies/NAME.yaml``); ``None`` when
    it names none, and then ``governance`` comes from the ``default`` preset."""
    governance: GovernanceConfig = field(default_factory=GovernanceConfig, kw_only=True)
    """Every policy of the cluster: the preset, deep-merged with the cluster's ``governance:``."""


@dataclass(frozen=True, slots=True)
class UserConfig:
    """A gateway login (Redis ``AUTH user pass``) and the clusters it may use."""

    name: str
    password: str
    clusters: frozenset[str]


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """Process-wide settings."""

    app: str = "resmesh"
    """This application's name, for logs and metrics."""
    admin: Address | None = None
    """Admin HTTP address (status, /metrics, switches); ``None`` means no admin port."""
    drain_timeout: float = 5.0
    """Seconds in-flight calls may take to finish after SIGTERM/SIGINT."""
    workers: int = 1


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


class ConfigError(Exception):
    """The configuration cannot be used, and here is where and how to fix it.

    ``str(error)`` is one line, meant to be printed as is::

        examples/bad.yaml:7: clusters.feed-cache.listen: expected host:port, got 'nonsense'
        (missing ':port') — fix: write it as host:port, e.g. 127.0.0.1:6380

    The ``:7`` (line) appears only when the file was read from disk; ``key`` is ``None`` for
    problems with the file as a whole (missing, not YAML, not a mapping).
    """

    file: str
    key: str | None
    problem: str
    fix: str
    line: int | None

    def __init__(
        self,
        file: str | Path,
        key: str | None,
        problem: str,
        fix: str,
        line: int | None = None,
    ) -> None:
        super().__init__(str(file), key, problem, fix, line)
        self.file = str(file)
        self.key = key
        self.problem = problem
        self.fix = fix
        self.line = line

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        if self.key:
            where = f"{where}: {self.key}"
        message = f"{where}: {self.problem} — fix: {self.fix}"
        if message.isprintable():
            return message
        # Keys and YAML messages can carry newlines or control characters; escape them so the
        # message stays the one line the CLI promises.
        return "".join(
            char if char.isprintable() else char.encode("unicode_escape").decode("ascii")
            for char in message
        )


# --------------------------------------------------------------------------------------------
# Value parsers (public: the ctl client will want the same spellings)
# --------------------------------------------------------------------------------------------

_DURATION_RE: Final = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)$")
_DURATION_UNITS: Final[Mapping[str, float]] = MappingProxyType(
    {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
)
_SIZE_RE: Final = re.compile(r"^([0-9]+)(B|kB|KB|MB|GB|TB|KiB|MiB|GiB|TiB)$")
_SIZE_UNITS: Final[Mapping[str, int]] = MappingProxyType(
    {
        "B": 1,
        "kB": 1000,
        "KB": 1000,
        "MB": 1000**2,
        "GB": 1000**3,
        "TB": 1000**4,
        "KiB": 1024,
        "MiB": 1024**2,
        "GiB": 1024**3,
        "TiB": 1024**4,
    }
)
_MAX_DURATION: Final = 7 * 24 * 3600.0
"""A week: longer than any sane timeout, short enough that arithmetic on deadlines is safe."""
_MAX_SIZE: Final = 1 << 50


def parse_duration(value: object) -> float:
    """Seconds from a number (seconds) or a string with a unit: ``250ms``, ``5s``, ``2m``, ``1h``.

    A bare string like ``"5"`` is refused: a unit-less string is usually a quoting accident,
    and guessing seconds vs milliseconds is how timeouts end up 1000x off.

    Raises:
        ValueError: not a finite, non-negative duration in one of those spellings.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a duration")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        if value > _MAX_DURATION:
            raise ValueError(f"{value} seconds is more than a week")
        return float(value)
    if isinstance(value, float):
        if not math.isfinite(value) or value < 0:
            raise ValueError("a duration must be a finite, non-negative number")
        if value > _MAX_DURATION:
            raise ValueError(f"{value} seconds is more than a week")
        return value
    if isinstance(value, str):
        match = _DURATION_RE.match(value.strip())
        if match is None:
            raise ValueError("not a duration")
        seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        if seconds > _MAX_DURATION:
            raise ValueError(f"{value} is more than a week")
        return seconds
    raise ValueError("not a duration")


def parse_size(value: object) -> int:
    """Bytes from an int or a string with a unit: ``64KiB``, ``512MiB``, ``1GiB``, ``10MB``.

    Units are case-sensitive on purpose: ``KB``/``MB``/``GB`` are powers of 1000 and
    ``KiB``/``MiB``/``GiB`` powers of 1024. redis.conf reads ``1mb`` as 1024*1024 but ``1m``
    as 1000000; rather than inherit that trap, lowercase ``mb`` is refused with a hint.

    Raises:
        ValueError: not a non-negative whole number of bytes in one of those spellings.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not a size")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        if value > _MAX_SIZE:
            raise ValueError("size is too large")
        return value
    if isinstance(value, str):
        match = _SIZE_RE.match(value.strip())
        if match is None:
            raise ValueError("not a size")
        digits = match.group(1)
        if len(digits) > 20:
            raise ValueError("size is too large")
        size = int(digits) * _SIZE_UNITS[match.group(2)]
        if size > _MAX_SIZE:
            raise ValueError("size is too large")
        return size
    raise ValueError("not a size")


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

_KeyPath = tuple[str | int, ...]

_NAME_RE: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_NAME_FIX: Final = "use letters, digits, '-' and '_' (up to 64, starting with a letter or digit)"

_TOP_KEYS: Final = ("gateway", "users", "clusters")
_LATER_TOP_KEYS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "registry": "this version has no registry yet; remove the 'registry' section",
        "metrics": "this version exports no metrics yet; remove the 'metrics' section",
        "motan2": "Motan2 is not implemented yet in this version; remove the 'motan2' section",
        "policies": (
            "presets are files, policies/NAME.yaml next to this config, that a cluster names "
            "with 'policy: NAME' (and changes under its 'governance:'); remove this section"
        ),
    }
)
_GATEWAY_KEYS: Final = ("app", "admin", "drain_timeout", "workers")
_USER_KEYS: Final = ("password", "clusters")
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
_NODE_KEYS: Final = ("address", "weight")
_BACKEND_KEYS: Final = (
    "username",
    "password",
    "connect_timeout",
    "command_timeout",
    "connections",
    "max_dedicated",
)
_LIMIT_KEYS: Final = (
    "max_bulk_len",
    "max_multibulk_len",
    "max_request_buffer",
    "max_clients",
    "client_idle_timeout",
)

_short_repr: Final = reprlib.Repr()
_short_repr.maxstring = 40
_short_repr.maxother = 40
_short_repr.maxlevel = 2


def load_config(path: str | Path) -> Config:
    """Read, parse and validate a YAML config file.

    Errors carry the line of the offending key when it can be found, so an editor can jump
    there.

    Raises:
        ConfigError: for every problem, including a missing or unreadable file and YAML syntax
            errors; nothing else escapes, so the CLI can print ``str(error)`` and exit.
    """
    source = Path(path)
    text = _read_text(source, "config file not found", "check the path, or pass -c FILE")
    data, lines = _read_yaml(text, source)
    return _parse(data, _Context(source, lines))


#: Far above any real config (thousands of clusters fit in a few MB).
_MAX_CONFIG_BYTES: Final = 64 << 20


def _read_text(source: Path, missing: str, missing_fix: str) -> str:
    """The file's text, or a :class:`ConfigError` naming it (a config or a preset file)."""
    try:
        with source.open("rb") as file:
            raw = file.read(_MAX_CONFIG_BYTES + 1)  # bounded: -c /dev/zero must not hang
        if len(raw) > _MAX_CONFIG_BYTES:
            raise ConfigError(
                source,
                None,
                f"larger than {_MAX_CONFIG_BYTES >> 20} MiB: not a config file",
                "pass the YAML config file itself",
            )
        # Newlines as text mode reads them (\r\n and \r become \n), for line numbers.
        return raw.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise ConfigError(source, None, missing, missing_fix) from None
    except IsADirectoryError:
        raise ConfigError(
            source, None, "is a directory, not a config file", "pass the YAML file itself"
        ) from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, None, f"not UTF-8 text ({exc.reason})", "save the file as UTF-8"
        ) from None
    except OSError as exc:
        raise ConfigError(
            source,
            None,
            f"cannot read the file ({exc.strerror or exc})",
            "check that the file exists and is readable",
        ) from None


def parse_config(data: object, source: Path) -> Config:
    """Validate already-loaded YAML data (what ``yaml.safe_load`` returns).

    ``source`` is only used in error messages and stored in :attr:`Config.source`.

    Raises:
        ConfigError: for every problem; errors carry no line numbers here.
    """
    return _parse(data, _Context(source, {}))


class _Loader(yaml.SafeLoader):
    """YAML as SafeLoader reads it, except that nothing is read as a date: no config value
    is one, and ``password: 2024-13-45`` either became a date (then refused as "not a
    string") or failed in PyYAML's constructor with no key or line to point at."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:timestamp"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _read_yaml(text: str, source: Path) -> tuple[object, dict[_KeyPath, int]]:
    """Parse YAML into plain data plus a map from key path to line number.

    Why compose-then-construct instead of ``yaml.safe_load``: the node tree still has marks,
    which gives line numbers for later validation errors and lets us refuse duplicate keys,
    which PyYAML otherwise resolves silently by keeping the last one (two clusters with the
    same name would quietly become one).
    """
    loader: yaml.SafeLoader | None = None
    try:
        loader = _Loader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
        if node is None:
            return None, {}
        lines: dict[_KeyPath, int] = {}
        _index_lines(node, (), lines, set(), source)
        data: object = loader.construct_document(node)
        return data, lines
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = exc.problem or exc.context or "invalid YAML"
        where = f" at column {mark.column + 1}" if mark is not None else ""
        raise ConfigError(
            source,
            None,
            f"YAML syntax error: {problem}{where}",
            _yaml_fix(problem),
            None if mark is None else mark.line + 1,
        ) from None
    except yaml.YAMLError as exc:
        raise ConfigError(
            source,
            None,
            f"not valid YAML ({' '.join(str(exc).split())})",
            "remove control characters and check the file is YAML text",
        ) from None
    except RecursionError:
        raise ConfigError(source, None, "YAML nested too deeply", "flatten the structure") from None
    except (ValueError, TypeError, OverflowError) as exc:
        # PyYAML's constructors let these through, e.g. a timestamp-looking 2024-13-45.
        raise ConfigError(
            source,
            None,
            f"a value could not be read ({exc})",
            "quote values that look like dates or numbers but are not",
        ) from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_fix(problem: str) -> str:
    if "'\\t'" in problem:
        return "indent with spaces, not tabs"
    if "mapping values are not allowed" in problem:
        return "quote values that contain ': ', or fix the indentation on that line"
    return "check indentation and quoting on that line (quote values with ':' or '#')"


def _index_lines(
    node: yaml.Node,
    path: _KeyPath,
    lines: dict[_KeyPath, int],
    seen: set[int],
    source: Path,
) -> None:
    """Record the line of every key and list item, and refuse duplicate keys.

    ``seen`` guards against alias cycles (``&a [*a]`` is legal YAML) and shared anchors.
    """
    if id(node) in seen:
        return
    seen.add(id(node))
    if isinstance(node, yaml.MappingNode):
        keys_here: set[str] = set()
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = str(key_node.value)
            line = key_node.start_mark.line + 1
            if key in keys_here:
                raise ConfigError(
                    source,
                    _dotted((*path, key)),
                    f"key {key!r} appears twice in the same mapping",
                    "keep one of them (YAML would silently use the last)",
                    line,
                )
            keys_here.add(key)
            lines.setdefault((*path, key), line)
            _index_lines(value_node, (*path, key), lines, seen, source)
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            lines.setdefault((*path, index), item.start_mark.line + 1)
            _index_lines(item, (*path, index), lines, seen, source)


class _Errors(typing.Protocol):
    """Anything that turns a key path into a :class:`ConfigError` pointing at the right file.

    :class:`_Context` for one file; :class:`_Merged` for governance, whose values come from a
    preset file and the config file layered on it.
    """

    def error(self, path: _KeyPath, problem: str, fix: str) -> ConfigError: ...


@dataclass(frozen=True, slots=True)
class _Context:
    """Where errors point: the file, and (when read from disk) the line of each key."""

    source: Path
    lines: Mapping[_KeyPath, int]

    def error(self, path: _KeyPath, problem: str, fix: str) -> ConfigError:
        line = None
        for depth in range(len(path), 0, -1):
            line = self.lines.get(path[:depth])
            if line is not None:
                break
        return ConfigError(self.source, _dotted(path) or None, problem, fix, line)


def _dotted(path: _KeyPath) -> str:
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out


def _describe(value: object) -> str:
    """Show a value briefly with its YAML kind, e.g. ``6380 (a number)``."""
    if value is None:
        return "nothing (null)"
    kind = {
        bool: "a boolean",
        int: "a number",
        float: "a number",
        str: "a string",
        list: "a list",
        dict: "a mapping",
    }.get(type(value), f"a {type(value).__name__}")
    try:
        shown = _short_repr.repr(value)
    except ValueError:  # int too large to print (sys.set_int_max_str_digits)
        shown = "<huge>"
    return f"{shown} ({kind})"


def _reason(exc: ValueError) -> str:
    """``"; <why>"`` when the parser said more than "not a duration/size"."""
    text = str(exc)
    return "" if text.startswith("not a ") else f"; {text}"


def _suggest(word: str, known: Iterable[str]) -> str | None:
    matches = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _mapping(
    ctx: _Errors,
    value: object,
    path: _KeyPath,
    known: tuple[str, ...] | None,
    *,
    example: str,
    required: tuple[str, ...] = (),
    allow_null: bool = False,
) -> dict[str, object]:
    """Check that ``value`` is a mapping with string keys; with ``known``, only those keys.

    ``allow_null`` lets an emptied section (``users:`` with nothing under it, which YAML reads
    as null) mean "defaults" rather than being an error.
    """
    if value is None and allow_null:
        return {}
    if not isinstance(value, dict):
        raise ctx.error(
            path,
            f"expected a mapping, got {_describe(value)}",
            f"write it as a mapping, e.g. {example}",
        )
    for key in value:
        if not isinstance(key, str):
            hint = " (YAML reads yes/no/on/off as booleans)" if isinstance(key, bool) else ""
            raise ctx.error(
                path,
                f"keys must be strings, got {_describe(key)}{hint}",
                f"quote the key, e.g. '{key}':",
            )
        if known is not None and key not in known:
            raise ctx.error((*path, key), f"unknown key {key!r}", _unknown_fix(key, known))
    for key in required:
        if key not in value:
            raise ctx.error(
                (*path, key), f"missing required key {key!r}", f"add it, e.g. {example}"
            )
    return value


def _unknown_fix(key: str, known: Iterable[str]) -> str:
    known = list(known)
    suggestion = _suggest(key, known)
    if suggestion is not None:
        return f"did you mean {suggestion!r}?"
    return f"remove it; known keys here: {', '.join(known)}"


def _name(ctx: _Errors, name: str, path: _KeyPath, what: str) -> str:
    if not _NAME_RE.match(name):
        raise ctx.error(path, f"{name!r} is not a valid {what} name", _NAME_FIX)
    return name


def _string(ctx: _Errors, value: object, path: _KeyPath, *, example: str) -> str:
    if isinstance(value, str):
        if not value:
            raise ctx.error(path, "empty string", f"give a value, e.g. {example}")
        _check_encodable(ctx, value, path, example)
        return value
    if isinstance(value, bool | int | float):
        fix = f"quote it: '{value}'"
    else:
        fix = f"write a string, e.g. {example}"
    raise ctx.error(path, f"expected a string, got {_describe(value)}", fix)


def _check_encodable(ctx: _Errors, value: str, path: _KeyPath, example: str) -> None:
    """Strings go on the wire as UTF-8: YAML's ``"\\ud800"`` escape makes one that cannot."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise ctx.error(
            path,
            "contains a lone surrogate (an escape such as \\ud800), which is not text",
            f"write plain text, e.g. {example}",
        ) from None


def _int(ctx: _Errors, value: object, path: _KeyPath, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, str) and value.strip().isdigit():
            fix = f"remove the quotes: {value.strip()}"
        elif isinstance(value, float) and value.is_integer():
            fix = f"write a whole number: {int(value)}"
        else:
            fix = f"write a whole number from {low} to {high}"
        raise ctx.error(path, f"expected a whole number, got {_describe(value)}", fix)
    if not low <= value <= high:
        raise ctx.error(
            path,
            f"{_describe(value)} is out of range {low}..{high}",
            f"use a number from {low} to {high}",
        )
    return value


def _duration(
    ctx: _Errors, value: object, path: _KeyPath, *, positive: bool, example: str
) -> float:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ctx.error(
            path,
            f"expected a duration, got {_describe(value)}{_reason(exc)}",
            f"write seconds or a number with a unit (ms, s, m, h), e.g. {example}",
        ) from None
    if positive and seconds <= 0:
        raise ctx.error(path, "must be more than zero", f"give a positive duration, e.g. {example}")
    return seconds


def _size(ctx: _Errors, value: object, path: _KeyPath, *, example: str) -> int:
    try:
        size = parse_size(value)
    except ValueError as exc:
        raise ctx.error(
            path,
            f"expected a size, got {_describe(value)}{_reason(exc)}",
            "write bytes or a number with a unit: B, KB, MB, GB (powers of 1000) or "
            f"KiB, MiB, GiB (powers of 1024), e.g. {example}",
        ) from None
    if size < 1:
        raise ctx.error(path, "must be at least 1 byte", f"use a size such as {example}")
    return size


def _address(
    ctx: _Errors, value: object, path: _KeyPath, *, example: str, allow_port_zero: bool
) -> Address:
    fix = f"write it as host:port, e.g. {example}"
    if not isinstance(value, str):
        raise ctx.error(path, f"expected host:port, got {_describe(value)}", fix)
    try:
        address = Address.parse(value)
    except ValueError as exc:
        raise ctx.error(path, f"expected host:port, got {value!r} ({exc})", fix) from None
    if address.port == 0 and not allow_port_zero:
        raise ctx.error(path, "port 0 is not a real port", fix)
    return address


_E = TypeVar("_E", bound=enum.StrEnum)


def _choice(ctx: _Errors, value: object, path: _KeyPath, kind: type[_E]) -> _E:
    options = [member.value for member in kind]
    if isinstance(value, str):
        try:
            return kind(value)
        except ValueError:
            pass
        suggestion = _suggest(value, options)
        fix = f"did you mean {suggestion!r}?" if suggestion else f"use one of {', '.join(options)}"
    else:
        fix = f"use one of {', '.join(options)}"
    raise ctx.error(path, f"expected one of {', '.join(options)}, got {_describe(value)}", fix)


def _parse(data: object, ctx: _Context) -> Config:
    if data is None:
        raise ctx.error(
            (),
            "the file is empty",
            "define at least one cluster; see examples/quickstart.yaml",
        )
    if not isinstance(data, dict):
        raise ctx.error(
            (),
            f"the top level must be a mapping, got {_describe(data)}",
            "start the file with keys such as 'gateway:' and 'clusters:'",
        )
    for key in data:
        if isinstance(key, str) and key in _LATER_TOP_KEYS:
            raise ctx.error((key,), f"unknown key {key!r}", _LATER_TOP_KEYS[key])
    top = _mapping(ctx, data, (), _TOP_KEYS, example="clusters: {...}", required=("clusters",))

    gateway = _gateway(ctx, top.get("gateway"), ("gateway",))
    presets = _Presets.beside(ctx.source)
    clusters = _clusters(ctx, top["clusters"], ("clusters",), gateway, presets)
    users = _users(ctx, top.get("users"), ("users",), clusters)
    return Config(
        source=ctx.source,
        gateway=gateway,
        users=MappingProxyType(users),
        clusters=MappingProxyType(clusters),
    )


def _gateway(ctx: _Context, value: object, path: _KeyPath) -> GatewayConfig:
    section = _mapping(
        ctx, value, path, _GATEWAY_KEYS, example="{app: demo-app, workers: 1}", allow_null=True
    )
    defaults = GatewayConfig()
    app = defaults.app
    if "app" in section:
        app = _string(ctx, section["app"], (*path, "app"), example="demo-app")
        if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$", app):
            raise ctx.error((*path, "app"), f"{app!r} is not a valid app name", _NAME_FIX)
    admin = None
    if section.get("admin") is not None:
        admin = _address(
            ctx,
            section["admin"],
            (*path, "admin"),
            example="127.0.0.1:8002",
            allow_port_zero=True,
        )
    drain_timeout = defaults.drain_timeout
    if "drain_timeout" in section:
        drain_timeout = _duration(
            ctx, section["drain_timeout"], (*path, "drain_timeout"), positive=False, example="5s"
        )
    workers = defaults.workers
    if "workers" in section:
        workers = _int(ctx, section["workers"], (*path, "workers"), 1, 256)
    return GatewayConfig(app=app, admin=admin, drain_timeout=drain_timeout, workers=workers)


def _clusters(
    ctx: _Context, value: object, path: _KeyPath, gateway: GatewayConfig, presets: _Presets
) -> dict[str, ClusterConfig]:
    section = _mapping(ctx, value, path, None, example="{feed-cache: {protocol: redis, ...}}")
    if not section:
        raise ctx.error(
            path,
            "no clusters defined",
            "add one, e.g. feed-cache: {protocol: redis, listen: 127.0.0.1:6380, "
            "groups: {dc-a: [127.0.0.1:6379]}}",
        )
    clusters: dict[str, ClusterConfig] = {}
    # Where each bound address came from, by port (only the same port can clash: checking
    # every pair made a config of thousands of clusters take minutes), to refuse two
    # listeners on one socket.
    bound: dict[int, list[tuple[Address, _KeyPath]]] = {}
    if gateway.admin is not None:
        bound[gateway.admin.port] = [(gateway.admin, ("gateway", "admin"))]
    for name, raw in section.items():
        cluster_path = (*path, name)
        _name(ctx, name, cluster_path, "cluster")
        cluster = _cluster(ctx, name, raw, cluster_path, presets)
        if cluster.listen.port == 0 and gateway.workers > 1:
            raise ctx.error(
                (*cluster_path, "listen"),
                f"port 0 (any free port) with gateway.workers {gateway.workers}: each worker "
                "would listen on a different port",
                "give the cluster a fixed port, e.g. 127.0.0.1:6380",
            )
        for other, other_path in bound.get(cluster.listen.port, ()):
            if _same_socket(cluster.listen, other):
                raise ctx.error(
                    (*cluster_path, "listen"),
                    f"listen address {cluster.listen} is already used by {_dotted(other_path)}",
                    "give each cluster its own port",
                )
        bound.setdefault(cluster.listen.port, []).append(
            (cluster.listen, (*cluster_path, "listen"))
        )
        clusters[name] = cluster
    # A node that is one of our own listeners would make the gateway call itself forever.
    for name, cluster in clusters.items():
        for group, nodes in cluster.groups.items():
            for index, node in enumerate(nodes):
                for own, own_path in bound.get(node.address.port, ()):
                    if _same_socket(node.address, own):
                        raise ctx.error(
                            ("clusters", name, "groups", group, index),
                            f"node {node.address} is the gateway's own address "
                            f"({_dotted(own_path)}); the gateway would forward to itself",
                            "point it at the real server, e.g. 127.0.0.1:6379",
                        )
    return clusters


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
    ctx: _Context, name: str, value: object, path: _KeyPath, presets: _Presets
) -> ClusterConfig:
    example = "{protocol: redis, listen: 127.0.0.1:6380, groups: {dc-a: [127.0.0.1:6379]}}"
    section = _mapping(ctx, value, path, None, example=example)
    # Protocol first: a MySQL or Motan2 cluster has keys of its own, and "not implemented
    # yet" is the useful message for it, not "unknown key 'service'".
    if "protocol" not in section:
        raise ctx.error(
            (*path, "protocol"), "missing required key 'protocol'", "add protocol: redis"
        )
    protocol = _choice(ctx, section["protocol"], (*path, "protocol"), Protocol)
    if protocol is not Protocol.REDIS:
        raise ctx.error(
            (*path, "protocol"),
            f"protocol {protocol.value!r} is not implemented yet in this version",
            "use protocol: redis, or remove this cluster for now",
        )
    section = _mapping(
        ctx, section, path, _CLUSTER_KEYS, example=example, required=("listen", "groups")
    )
    listen = _address(
        ctx,
        section["listen"],
        (*path, "listen"),
        example="127.0.0.1:6380",
        allow_port_zero=True,
    )
    mode = Mode.REPLICATED
    if "mode" in section:
        mode = _choice(ctx, section["mode"], (*path, "mode"), Mode)
    policy = None
    if section.get("policy") is not None:
        policy = _name(
            ctx,
            _string(ctx, section["policy"], (*path, "policy"), example="cache"),
            (*path, "policy"),
            "policy",
        )
    groups = _groups(ctx, section["groups"], (*path, "groups"))
    route = _route(ctx, section.get("route"), (*path, "route"), groups)
    backend = _backend(ctx, section.get("backend"), (*path, "backend"))
    limits = _limits(ctx, section.get("limits"), (*path, "limits"))
    governance = _governance(
        ctx,
        presets,
        policy,
        section.get("governance"),
        path,
        mode=mode,
        groups=list(groups),
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
    )


def _groups(ctx: _Context, value: object, path: _KeyPath) -> dict[str, tuple[NodeConfig, ...]]:
    section = _mapping(ctx, value, path, None, example="{dc-a: [127.0.0.1:6379]}")
    if not section:
        raise ctx.error(
            path, "no groups defined", "add a group with its nodes, e.g. dc-a: [127.0.0.1:6379]"
        )
    groups: dict[str, tuple[NodeConfig, ...]] = {}
    first_seen: dict[Address, _KeyPath] = {}
    for group, raw_nodes in section.items():
        group_path = (*path, group)
        _name(ctx, group, group_path, "group")
        if not isinstance(raw_nodes, list):
            raise ctx.error(
                group_path,
                f"expected a list of nodes, got {_describe(raw_nodes)}",
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
            node = _node(ctx, raw, (*group_path, index))
            if node.address in first_seen:
                raise ctx.error(
                    (*group_path, index),
                    f"node {node.address} is listed twice "
                    f"(also at {_dotted(first_seen[node.address])})",
                    "list each node once",
                )
            first_seen[node.address] = (*group_path, index)
            nodes.append(node)
        groups[group] = tuple(nodes)
    return groups


def _node(ctx: _Context, value: object, path: _KeyPath) -> NodeConfig:
    example = "127.0.0.1:6379"
    if isinstance(value, dict):
        section = _mapping(
            ctx,
            value,
            path,
            _NODE_KEYS,
            example="{address: 127.0.0.1:6379, weight: 50}",
            required=("address",),
        )
        address = _address(
            ctx, section["address"], (*path, "address"), example=example, allow_port_zero=False
        )
        weight = 100
        if "weight" in section:
            weight = _int(ctx, section["weight"], (*path, "weight"), 0, 100)
        return NodeConfig(address, weight)
    if not isinstance(value, str):
        raise ctx.error(
            path,
            f"expected a node, got {_describe(value)}",
            "write host:port, e.g. 127.0.0.1:6379, or {address: 127.0.0.1:6379, weight: 50}",
        )
    return NodeConfig(_address(ctx, value, path, example=example, allow_port_zero=False))


def _route(
    ctx: _Context,
    value: object,
    path: _KeyPath,
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
    section = _mapping(ctx, value, path, None, example=f"{{{names[0]}: 100}}")
    for group in section:
        if group not in groups:
            suggestion = _suggest(group, names)
            fix = (
                f"did you mean {suggestion!r}?"
                if suggestion
                else f"route only to groups defined under groups: {', '.join(names)}"
            )
            raise ctx.error((*path, group), f"unknown group {group!r}", fix)
    route = {
        group: _int(ctx, section[group], (*path, group), 0, 100) if group in section else 0
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


def _backend(ctx: _Context, value: object, path: _KeyPath) -> BackendConfig:
    section = _mapping(
        ctx,
        value,
        path,
        _BACKEND_KEYS,
        example="{password: secret, command_timeout: 5s}",
        allow_null=True,
    )
    defaults = BackendConfig()
    username = None
    if section.get("username") is not None:
        username = _string(ctx, section["username"], (*path, "username"), example="gateway")
    password = None
    if section.get("password") is not None:
        password = _string(ctx, section["password"], (*path, "password"), example="secret")
    if username is not None and password is None:
        raise ctx.error(
            (*path, "password"),
            "a backend username needs a password (AUTH username password)",
            "add password: ..., or remove username",
        )
    connect_timeout = defaults.connect_timeout
    if "connect_timeout" in section:
        connect_timeout = _duration(
            ctx, section["connect_timeout"], (*path, "connect_timeout"), positive=True, example="2s"
        )
    command_timeout = defaults.command_timeout
    if "command_timeout" in section:
        command_timeout = _duration(
            ctx, section["command_timeout"], (*path, "command_timeout"), positive=True, example="5s"
        )
    connections = defaults.connections
    if "connections" in section:
        connections = _int(ctx, section["connections"], (*path, "connections"), 1, 64)
    max_dedicated = defaults.max_dedicated
    if "max_dedicated" in section:
        max_dedicated = _int(ctx, section["max_dedicated"], (*path, "max_dedicated"), 1, 65536)
    return BackendConfig(
        username=username,
        password=password,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        connections=connections,
        max_dedicated=max_dedicated,
    )


def _limits(ctx: _Context, value: object, path: _KeyPath) -> RedisLimits:
    section = _mapping(
        ctx, value, path, _LIMIT_KEYS, example="{max_bulk_len: 512MiB}", allow_null=True
    )
    defaults = RedisLimits()
    max_bulk_len = defaults.max_bulk_len
    if "max_bulk_len" in section:
        max_bulk_len = _size(
            ctx, section["max_bulk_len"], (*path, "max_bulk_len"), example="512MiB"
        )
    max_multibulk_len = defaults.max_multibulk_len
    if "max_multibulk_len" in section:
        max_multibulk_len = _int(
            ctx, section["max_multibulk_len"], (*path, "max_multibulk_len"), 1, 2**31 - 1
        )
    max_request_buffer = defaults.max_request_buffer
    if "max_request_buffer" in section:
        max_request_buffer = _size(
            ctx, section["max_request_buffer"], (*path, "max_request_buffer"), example="1GiB"
        )
    if max_bulk_len > max_request_buffer:
        raise ctx.error(
            (*path, "max_bulk_len"),
            f"max_bulk_len ({max_bulk_len} bytes) is larger than max_request_buffer "
            f"({max_request_buffer} bytes), so the largest allowed value could never arrive",
            "lower max_bulk_len or raise max_request_buffer",
        )
    max_clients = defaults.max_clients
    if "max_clients" in section:
        max_clients = _int(ctx, section["max_clients"], (*path, "max_clients"), 1, 1_000_000)
    client_idle_timeout = defaults.client_idle_timeout
    if "client_idle_timeout" in section:
        client_idle_timeout = _duration(
            ctx,
            section["client_idle_timeout"],
            (*path, "client_idle_timeout"),
            positive=False,
            example="300s (0 means never)",
        )
    return RedisLimits(
        max_bulk_len=max_bulk_len,
        max_multibulk_len=max_multibulk_len,
        max_request_buffer=max_request_buffer,
        max_clients=max_clients,
        client_idle_timeout=client_idle_timeout,
    )


# --------------------------------------------------------------------------------------------
# Governance: presets, the deep merge, validation
# --------------------------------------------------------------------------------------------

_PRESET_FOLDER: Final = "policies"
_BUNDLED_PRESETS: Final = Path(__file__).resolve().parent / "presets"
"""The presets that come with resmesh. Package data, so an installed wheel has them too; the
project's top-level ``policies/`` is a link to this folder, where operators look for them."""
_DEFAULT_PRESET: Final = "default"
"""What a cluster that names no ``policy:`` gets; built in, so it works without any file."""

_GOVERNANCE_KEYS: Final = (
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
_GOV_LIMIT_KEYS: Final = ("rate", "burst", "concurrency")
_BREAKER_KEYS: Final = (
    "enabled",
    "error_ratio",
    "slow_call",
    "slow_ratio",
    "min_calls",
    "window",
    "consecutive_failures",
    "open_for",
    "half_open_probes",
)
_OUTLIER_KEYS: Final = (
    "enabled",
    "consecutive_failures",
    "base_ejection",
    "max_ejection",
    "max_ejection_percent",
    "panic_threshold",
)
_FAILOVER_KEYS: Final = ("enabled", "max_attempts", "budget_ratio", "budget_min")
_HEDGE_KEYS: Final = ("enabled", "percentile", "floor", "budget")
_SWITCH_KEYS: Final = ("mode", "value")
_OPERATION_KEYS: Final = ("limit", "hedge", "switch", "idempotent")

_OPERATION_RE: Final = re.compile(r"^[!-~](?:[ -~]{0,126}[!-~])?$")
"""Printable ASCII, no spaces at either end, up to 128 characters: command names, methods."""
_MAX_RATE: Final = 1e9
"""Calls per second: far above what one gateway can pass, low enough to be clearly a typo."""
_MAX_COUNT: Final = 1_000_000

_PRESET_LAYER: Final = 0
_CLUSTER_LAYER: Final = 1


@dataclass(slots=True)
class _Presets:
    """Finds and reads preset files, each at most once per config parse.

    Search order: ``policies/`` next to the config file (the operator's own presets, which may
    also replace a bundled one), then the presets bundled with resmesh.
    """

    folders: tuple[Path, ...]
    loaded: dict[str, tuple[_Context, object] | None] = field(default_factory=dict)

    @classmethod
    def beside(cls, source: Path) -> _Presets:
        local = source.parent / _PRESET_FOLDER
        if _same_folder(local, _BUNDLED_PRESETS):
            return cls((local,))
        return cls((local, _BUNDLED_PRESETS))

    def names(self) -> list[str]:
        """Every preset name on the search path (``default`` always exists)."""
        names = {_DEFAULT_PRESET}
        for folder in self.folders:
            try:
                names.update(
                    candidate.stem
                    for candidate in folder.glob("*.yaml")
                    if _NAME_RE.match(candidate.stem) and candidate.is_file()
                )
            except OSError:
                continue
        return sorted(names)

    def read(self, name: str) -> tuple[_Context, object] | None:
        """The preset's context (file and lines) and YAML data; ``None`` if no file has it.

        Raises:
            ConfigError: the file exists but cannot be read or is not YAML (naming the file).
        """
        if name not in self.loaded:
            self.loaded[name] = None
            for folder in self.folders:
                candidate = folder / f"{name}.yaml"
                if candidate.is_file():
                    text = _read_text(
                        candidate, "preset file disappeared while reading", "run again"
                    )
                    data, lines = _read_yaml(text, candidate)
                    self.loaded[name] = (_Context(candidate, lines), data)
                    break
        return self.loaded[name]


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        return False


@dataclass(frozen=True, slots=True)
class _Layer:
    """One source of governance settings: a preset file, or a cluster's ``governance:``.

    Paths given to :meth:`error` are relative to the governance root, with operation names
    upper-cased; ``prefix`` puts them where they are in the file, ``spellings`` turns each
    operation name back into what the file wrote (so the line is found), and ``note`` says
    which cluster uses the preset.
    """

    ctx: _Context
    prefix: _KeyPath
    note: str
    spellings: dict[str, str]

    def error(self, path: _KeyPath, problem: str, fix: str) -> ConfigError:
        if len(path) >= 2 and path[0] == "operations" and isinstance(path[1], str):
            path = (path[0], self.spellings.get(path[1], path[1]), *path[2:])
        return self.error_as_written(path, problem, fix)

    def error_as_written(self, path: _KeyPath, problem: str, fix: str) -> ConfigError:
        return self.ctx.error((*self.prefix, *path), problem + self.note, fix)


@dataclass(frozen=True, slots=True)
class _Merged:
    """The error sink for merged governance data: blames the layer a value came from.

    ``origin`` maps a key path to the layer that set it; a path not in it came, with its
    nearest recorded parent, from that parent's layer.
    """

    layers: tuple[_Layer, ...]
    origin: Mapping[_KeyPath, int]

    def came_from(self, path: _KeyPath) -> int:
        for depth in range(len(path), -1, -1):
            index = self.origin.get(path[:depth])
            if index is not None:
                return index
        return len(self.layers) - 1

    def error(self, path: _KeyPath, problem: str, fix: str) -> ConfigError:
        return self.layers[self.came_from(path)].error(path, problem, fix)


def _governance(
    ctx: _Context,
    presets: _Presets,
    policy: str | None,
    override: object,
    cluster_path: _KeyPath,
    *,
    mode: Mode,
    groups: list[str],
) -> GovernanceConfig:
    """The cluster's preset deep-merged with its ``governance:`` section, then validated."""
    name = policy or _DEFAULT_PRESET
    found = presets.read(name)
    if found is None:
        if name != _DEFAULT_PRESET:
            available = presets.names()
            suggestion = _suggest(name, available)
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
        found = (_Context(Path(f"<built-in {_DEFAULT_PRESET} preset>"), {}), None)
    preset_ctx, preset_data = found
    note = f" (preset {name!r}, used by {_dotted(cluster_path)})"
    base_layer, base = _governance_layer(preset_ctx, (), note, preset_data)
    top_layer, top = _governance_layer(ctx, (*cluster_path, "governance"), "", override)
    layers = (base_layer, top_layer)
    origin: dict[_KeyPath, int] = {(): _PRESET_LAYER}
    merged = _deep_merge(base, top, (), layers, origin)
    assert isinstance(merged, dict)  # both roots are mappings, checked above
    return _governance_settings(
        _Merged(layers, origin), merged, preset=name, mode=mode, groups=groups
    )


def _governance_layer(
    ctx: _Context, prefix: _KeyPath, note: str, value: object
) -> tuple[_Layer, dict[str, object]]:
    """Check one layer's shape and upper-case its operation names, before merging.

    Operation names are normalised per layer so that ``get`` in a cluster's ``governance:``
    merges with ``GET`` in its preset.
    """
    layer = _Layer(ctx, prefix, note, {})
    section = _mapping(
        layer,
        value,
        (),
        _GOVERNANCE_KEYS,
        example="{limit: {rate: 1000}, hedge: {enabled: true}}",
        allow_null=True,
    )
    data = dict(section)
    if data.get("operations") is not None:
        raw = _mapping(
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
            _check_command_name(layer, path, written, name)
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


def _check_command_name(layer: _Layer, path: _KeyPath, written: str, name: str) -> None:
    """An operation of a Redis cluster is a command name: a misspelt one would never match
    a call, and its limit or switch would silently do nothing. Names with a dot are module
    commands (``JSON.GET``), which the command table cannot know. (Clusters speak Redis only
    for now; other protocols will name their own operations.)"""
    from .protocols.resp.commands import COMMANDS  # the table is large: load it only here

    if "." in name or name.encode() in COMMANDS:
        return
    known = sorted(c.decode() for c in COMMANDS if b"|" not in c)
    # Swapped letters first (GTE is GET), which difflib's ratio ranks below GETEX.
    anagrams = [command for command in known if sorted(command) == sorted(name)]
    suggestion = anagrams[0] if anagrams else _suggest(name, known)
    raise layer.error_as_written(
        path,
        f"{written!r} is not a Redis command",
        f"did you mean {suggestion!r}?"
        if suggestion
        else "name a command, e.g. GET (a module command is written with its dot, JSON.GET)",
    )


def _deep_merge(
    base: object,
    top: object,
    path: _KeyPath,
    layers: tuple[_Layer, ...],
    origin: dict[_KeyPath, int],
) -> object:
    """``top`` over ``base``: mappings merge key by key, anything else (null too) replaces.

    ``base`` is all from the preset layer and ``top`` all from the cluster layer, which
    ``origin`` records for every path where they meet, so errors can blame the right file.
    """
    if isinstance(base, dict) and isinstance(top, dict):
        # Non-string keys would be blamed on the merged mapping; blame their own file now.
        _mapping(layers[_PRESET_LAYER], base, path, None, example="{key: value}")
        _mapping(layers[_CLUSTER_LAYER], top, path, None, example="{key: value}")
        merged = dict(base)
        for key in base:
            if key not in top:
                origin[(*path, key)] = _PRESET_LAYER
        for key, value in top.items():
            key_path = (*path, key)
            if key in merged:
                merged[key] = _deep_merge(merged[key], value, key_path, layers, origin)
            else:
                merged[key] = value
                origin[key_path] = _CLUSTER_LAYER
        origin[path] = _CLUSTER_LAYER
        return merged
    for stale in [known for known in origin if known[: len(path)] == path and known != path]:
        del origin[stale]
    origin[path] = _CLUSTER_LAYER
    return top


def _governance_settings(
    where: _Merged,
    data: Mapping[str, object],
    *,
    preset: str,
    mode: Mode,
    groups: list[str],
) -> GovernanceConfig:
    # In the order of _GOVERNANCE_KEYS, so that the first error reported is the first in
    # the file.
    limit = _limit_settings(where, data.get("limit"), ("limit",))
    breaker = _breaker_settings(where, data.get("breaker"), ("breaker",))
    outlier = _outlier_settings(where, data.get("outlier"), ("outlier",))
    balance = BalanceName.LEAST_LOADED
    if data.get("balance") is not None:
        balance = _choice(where, data["balance"], ("balance",), BalanceName)
    if mode is Mode.SHARDED and balance is not BalanceName.HASH:
        # A preset serves clusters of both modes, so its balance yields to sharding; a
        # cluster that asks for another balance in its own section is told why it cannot.
        if data.get("balance") is not None and where.came_from(("balance",)) == _CLUSTER_LAYER:
            raise where.error(
                ("balance",),
                f"balance {balance.value!r} cannot apply to a sharded cluster: each key lives "
                "on one node of the group, so the key's consistent hash must pick the node",
                "remove balance (sharded clusters always use hash), or set mode: replicated",
            )
        balance = BalanceName.HASH
    failover = _failover_settings(where, data.get("failover"), ("failover",))
    hedge = _hedge_settings(where, data.get("hedge"), ("hedge",), HedgeSettings())
    switch = _switch_settings(where, data.get("switch"), ("switch",))
    local_group = None
    if data.get("local_group") is not None:
        local_group = _string(where, data["local_group"], ("local_group",), example=groups[0])
        if local_group not in groups:
            suggestion = _suggest(local_group, groups)
            if where.came_from(("local_group",)) == _PRESET_LAYER:
                # A preset serves many clusters, and group names are each cluster's own.
                fix = (
                    f"set it per cluster instead, under {_dotted(where.layers[-1].prefix)}, "
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
    section = _mapping(
        where,
        data.get("operations"),
        ("operations",),
        None,
        example="{GET: {hedge: {enabled: true}}}",
        allow_null=True,
    )
    operations = {
        name: _operation(where, raw, ("operations", name), hedge) for name, raw in section.items()
    }
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


def _operation(
    where: _Merged, value: object, path: _KeyPath, hedge: HedgeSettings
) -> OperationSettings:
    section = _mapping(
        where,
        value,
        path,
        _OPERATION_KEYS,
        example="{limit: {rate: 1000}, hedge: {percentile: 99}, idempotent: true}",
        allow_null=True,
    )
    return OperationSettings(
        limit=_limit_settings(where, section.get("limit"), (*path, "limit")),
        hedge=None
        if section.get("hedge") is None
        else _hedge_settings(where, section["hedge"], (*path, "hedge"), hedge),
        switch=None
        if section.get("switch") is None
        else _switch_settings(where, section["switch"], (*path, "switch")),
        idempotent=None
        if section.get("idempotent") is None
        else _bool(where, section["idempotent"], (*path, "idempotent")),
    )


def _section(
    where: _Errors, value: object, path: _KeyPath, known: tuple[str, ...], *, example: str
) -> dict[str, object]:
    """A policy's mapping; null means all defaults. ``breaker: false`` gets a pointed fix."""
    if isinstance(value, bool) and "enabled" in known:
        raise where.error(
            path,
            f"expected a mapping, got {_describe(value)}",
            f"write {{enabled: {'true' if value else 'false'}}}",
        )
    return _mapping(where, value, path, known, example=example, allow_null=True)


def _limit_settings(where: _Errors, value: object, path: _KeyPath) -> LimitSettings:
    section = _section(
        where, value, path, _GOV_LIMIT_KEYS, example="{rate: 1000, concurrency: 256}"
    )
    rate = None
    if section.get("rate") is not None:
        if section["rate"] == 0 and not isinstance(section["rate"], bool):
            raise where.error(
                (*path, "rate"),
                "a rate of 0 would refuse every call",
                "write rate: null for no limit; to refuse calls on purpose, use "
                "switch: {mode: error}",
            )
        rate = _number(
            where, section["rate"], (*path, "rate"), 0, _MAX_RATE, low_open=True, example="1000"
        )
    burst = None
    if section.get("burst") is not None:
        burst = _number(where, section["burst"], (*path, "burst"), 1, _MAX_RATE, example="2000")
        if rate is None:
            raise where.error(
                (*path, "burst"),
                "burst without rate limits nothing (burst is the size of the token bucket "
                "that rate refills)",
                "add rate: calls per second, or remove burst (burst: null drops one set "
                "in the preset)",
            )
    concurrency = None
    if section.get("concurrency") is not None:
        concurrency = _int(where, section["concurrency"], (*path, "concurrency"), 1, _MAX_COUNT)
    return LimitSettings(rate=rate, burst=burst, concurrency=concurrency)


def _breaker_settings(where: _Merged, value: object, path: _KeyPath) -> BreakerSettings:
    section = _section(
        where, value, path, _BREAKER_KEYS, example="{enabled: true, error_ratio: 0.5}"
    )
    defaults = BreakerSettings()

    def given(key: str) -> bool:
        return section.get(key) is not None

    return BreakerSettings(
        enabled=_bool(where, section["enabled"], (*path, "enabled"))
        if given("enabled")
        else defaults.enabled,
        error_ratio=_number(
            where,
            section["error_ratio"],
            (*path, "error_ratio"),
            0,
            1,
            low_open=True,
            ratio=True,
            example="0.5",
        )
        if given("error_ratio")
        else defaults.error_ratio,
        slow_call=_duration(
            where, section["slow_call"], (*path, "slow_call"), positive=True, example="500ms"
        )
        if given("slow_call")
        else defaults.slow_call,
        slow_ratio=_number(
            where,
            section["slow_ratio"],
            (*path, "slow_ratio"),
            0,
            1,
            low_open=True,
            ratio=True,
            example="0.8",
        )
        if given("slow_ratio")
        else defaults.slow_ratio,
        min_calls=_int(where, section["min_calls"], (*path, "min_calls"), 1, _MAX_COUNT)
        if given("min_calls")
        else defaults.min_calls,
        window=_duration(where, section["window"], (*path, "window"), positive=True, example="10s")
        if given("window")
        else defaults.window,
        consecutive_failures=_int(
            where,
            section["consecutive_failures"],
            (*path, "consecutive_failures"),
            0,
            _MAX_COUNT,
        )
        if given("consecutive_failures")
        else defaults.consecutive_failures,
        open_for=_duration(
            where, section["open_for"], (*path, "open_for"), positive=True, example="5s"
        )
        if given("open_for")
        else defaults.open_for,
        half_open_probes=_int(
            where, section["half_open_probes"], (*path, "half_open_probes"), 1, 1000
        )
        if given("half_open_probes")
        else defaults.half_open_probes,
    )


def _outlier_settings(where: _Merged, value: object, path: _KeyPath) -> OutlierSettings:
    section = _section(
        where, value, path, _OUTLIER_KEYS, example="{enabled: true, consecutive_failures: 5}"
    )
    defaults = OutlierSettings()

    def given(key: str) -> bool:
        return section.get(key) is not None

    base_ejection = (
        _duration(
            where,
            section["base_ejection"],
            (*path, "base_ejection"),
            positive=True,
            example="30s",
        )
        if given("base_ejection")
        else defaults.base_ejection
    )
    max_ejection = (
        _duration(
            where, section["max_ejection"], (*path, "max_ejection"), positive=True, example="5m"
        )
        if given("max_ejection")
        else defaults.max_ejection
    )
    if max_ejection < base_ejection:
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
    return OutlierSettings(
        enabled=_bool(where, section["enabled"], (*path, "enabled"))
        if given("enabled")
        else defaults.enabled,
        consecutive_failures=_int(
            where,
            section["consecutive_failures"],
            (*path, "consecutive_failures"),
            1,
            _MAX_COUNT,
        )
        if given("consecutive_failures")
        else defaults.consecutive_failures,
        base_ejection=base_ejection,
        max_ejection=max_ejection,
        max_ejection_percent=_int(
            where, section["max_ejection_percent"], (*path, "max_ejection_percent"), 0, 100
        )
        if given("max_ejection_percent")
        else defaults.max_ejection_percent,
        panic_threshold=_int(where, section["panic_threshold"], (*path, "panic_threshold"), 0, 100)
        if given("panic_threshold")
        else defaults.panic_threshold,
    )


def _failover_settings(where: _Merged, value: object, path: _KeyPath) -> FailoverSettings:
    section = _section(
        where, value, path, _FAILOVER_KEYS, example="{enabled: true, max_attempts: 2}"
    )
    defaults = FailoverSettings()

    def given(key: str) -> bool:
        return section.get(key) is not None

    return FailoverSettings(
        enabled=_bool(where, section["enabled"], (*path, "enabled"))
        if given("enabled")
        else defaults.enabled,
        max_attempts=_int(where, section["max_attempts"], (*path, "max_attempts"), 1, 10)
        if given("max_attempts")
        else defaults.max_attempts,
        budget_ratio=_number(
            where,
            section["budget_ratio"],
            (*path, "budget_ratio"),
            0,
            1,
            ratio=True,
            example="0.2",
        )
        if given("budget_ratio")
        else defaults.budget_ratio,
        budget_min=_int(where, section["budget_min"], (*path, "budget_min"), 0, 1000)
        if given("budget_min")
        else defaults.budget_min,
    )


def _hedge_settings(
    where: _Merged, value: object, path: _KeyPath, defaults: HedgeSettings
) -> HedgeSettings:
    """``defaults`` fills what the file leaves out: built-in for a cluster, the cluster's
    hedge for an operation."""
    section = _section(
        where, value, path, _HEDGE_KEYS, example="{enabled: true, percentile: 90, floor: 10ms}"
    )

    def given(key: str) -> bool:
        return section.get(key) is not None

    return HedgeSettings(
        enabled=_bool(where, section["enabled"], (*path, "enabled"))
        if given("enabled")
        else defaults.enabled,
        percentile=_number(
            where, section["percentile"], (*path, "percentile"), 0, 100, example="90"
        )
        if given("percentile")
        else defaults.percentile,
        floor=_duration(where, section["floor"], (*path, "floor"), positive=False, example="10ms")
        if given("floor")
        else defaults.floor,
        budget=_number(
            where, section["budget"], (*path, "budget"), 0, 1, ratio=True, example="0.15"
        )
        if given("budget")
        else defaults.budget,
    )


def _switch_settings(where: _Merged, value: object, path: _KeyPath) -> SwitchSettings:
    section = _section(where, value, path, _SWITCH_KEYS, example="{mode: miss}")
    mode = SwitchModeName.OFF
    raw_mode = section.get("mode")
    # YAML 1.1 reads a bare `off` as false; accept it, since `mode: off` is what people write.
    if raw_mode is not None and raw_mode is not False:
        mode = _choice(where, raw_mode, (*path, "mode"), SwitchModeName)
    reply = None
    if section.get("value") is not None:
        raw_value = section["value"]
        if not isinstance(raw_value, str):
            raise where.error(
                (*path, "value"),
                f"expected a string (the fallback reply), got {_describe(raw_value)}",
                f"quote it: value: '{raw_value}'"
                if isinstance(raw_value, bool | int | float)
                else "write the reply as a string, e.g. value: 'n/a'",
            )
        _check_encodable(where, raw_value, (*path, "value"), "value: 'n/a'")
        reply = raw_value
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
    return SwitchSettings(mode=mode, value=reply)


def _bool(where: _Errors, value: object, path: _KeyPath) -> bool:
    if isinstance(value, bool):
        return value
    raise where.error(
        path,
        f"expected true or false, got {_describe(value)}",
        "write true or false, without quotes",
    )


def _number(
    where: _Errors,
    value: object,
    path: _KeyPath,
    low: float,
    high: float,
    *,
    example: str,
    low_open: bool = False,
    ratio: bool = False,
) -> float:
    """A finite number in ``low..high`` (``low`` excluded with ``low_open``).

    ``ratio`` marks a 0..1 share, so that ``50%`` gets the fix "write 0.5".
    """
    span = f"{'above ' if low_open else ''}{_plain(low)} to {_plain(high)}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        fix = f"write a number from {span}, e.g. {example}"
        if isinstance(value, str):
            text = value.strip()
            if ratio and text.endswith("%") and _finite(text[:-1]):
                fix = (
                    f"write the share as a ratio from 0 to 1: {text} is {float(text[:-1]) / 100:g}"
                )
            elif text.endswith("%"):
                fix = f"write the number without '%', e.g. {example}"
            elif _finite(text):
                fix = f"remove the quotes: {text}"
        raise where.error(path, f"expected a number, got {_describe(value)}", fix)
    if isinstance(value, float) and not math.isfinite(value):
        raise where.error(
            path, f"expected a finite number, got {_describe(value)}", f"use e.g. {example}"
        )
    if value < low or value > high or (low_open and value == low):
        raise where.error(
            path,
            f"{_describe(value)} is out of range {span}",
            f"use a number from {span}, e.g. {example}",
        )
    return float(value)


def _plain(number: float) -> str:
    return str(int(number)) if float(number).is_integer() else str(number)


def _finite(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _users(
    ctx: _Context, value: object, path: _KeyPath, clusters: Mapping[str, ClusterConfig]
) -> dict[str, UserConfig]:
    section = _mapping(
        ctx,
        value,
        path,
        None,
        example="{app: {password: secret, clusters: [feed-cache]}}",
        allow_null=True,
    )
    users: dict[str, UserConfig] = {}
    for name, raw in section.items():
        user_path = (*path, name)
        _name(ctx, name, user_path, "user")
        entry = _mapping(
            ctx,
            raw,
            user_path,
            _USER_KEYS,
            example="{password: secret, clusters: [feed-cache]}",
            required=_USER_KEYS,
        )
        password = _string(ctx, entry["password"], (*user_path, "password"), example="secret")
        raw_clusters = entry["clusters"]
        clusters_path = (*user_path, "clusters")
        example = f"[{next(iter(clusters))}]"
        if not isinstance(raw_clusters, list):
            raise ctx.error(
                clusters_path,
                f"expected a list of cluster names, got {_describe(raw_clusters)}",
                f"write it as a list, e.g. clusters: {example}",
            )
        if not raw_clusters:
            raise ctx.error(
                clusters_path,
                "the user may use no cluster at all",
                f"list the clusters this user may use, e.g. clusters: {example}",
            )
        allowed: set[str] = set()
        for index, item in enumerate(raw_clusters):
            cluster = _string(ctx, item, (*clusters_path, index), example="feed-cache")
            if cluster not in clusters:
                suggestion = _suggest(cluster, clusters)
                fix = (
                    f"did you mean {suggestion!r}?"
                    if suggestion
                    else f"name a cluster defined under clusters: {', '.join(clusters)}"
                )
                raise ctx.error((*clusters_path, index), f"unknown cluster {cluster!r}", fix)
            allowed.add(cluster)
        users[name] = UserConfig(name=name, password=password, clusters=frozenset(allowed))
    return users
