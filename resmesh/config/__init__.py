"""Configuration: YAML in, frozen typed objects out, and errors a person can act on.

Why strict: every key is known or rejected (with a "did you mean" when one is close), every
number is range-checked, and cross-references (routes to groups, users to clusters, listen
addresses to each other, the primary of a replicated cluster) are checked before anything
binds a socket. Every failure is one :class:`ConfigError` that names the file, the dotted key
path and a fix, and, when the file was read from disk, the line.

The shape, with one obvious way to say each thing::

    gateway: {app: demo-app, admin: 127.0.0.1:8002, drain_timeout: 5s, workers: 1}
    users:
      app: {password: app, clusters: [feed-cache]}
    clusters:
      feed-cache:
        protocol: redis
        listen: 127.0.0.1:6380
        mode: replicated
        groups:                              # a node is host:port or {address, weight, role}
          dc-a: [{address: 127.0.0.1:6379, role: primary}, 127.0.0.1:6389]
        route: {dc-a: 100}
        backend: {password: null, connect_timeout: 2s, command_timeout: 5s}
        limits: {max_clients: 10000, client_idle_timeout: 0}   # every protocol
        redis: {max_bulk_len: 512MiB}                          # this protocol's own section
        policy: cache                        # governance preset: policies/cache.yaml
        governance:                          # what this cluster changes in it
          limit: {rate: 50000, concurrency: 1024}
          operations: {KEYS: {limit: {concurrency: 1}}}

Governance (limits, breaker, outlier ejection, balance, failover, hedge, switch) comes from a
preset deep-merged with the cluster's ``governance:`` (:mod:`resmesh.config.presets`); its
sections are the policies' own config types, so a knob has one name in the file, in the
policies and in the docs.

Everything here is plain data: the result is immutable (frozen dataclasses, read-only
mappings) so a config snapshot can be shared between tasks and swapped atomically later.
"""

from __future__ import annotations

from ..call import Protocol
from ..policies.balance import BalanceName
from ..policies.breaker import BreakerConfig
from ..policies.hedge import HedgeConfig
from ..policies.limit import LimitConfig
from ..policies.outlier import OutlierConfig
from ..policies.retry import FailoverConfig
from .address import Address
from .cluster import BackendConfig, ClientLimits, ClusterConfig, Mode
from .errors import ConfigError
from .gateway import GatewayConfig
from .governance import GovernanceConfig, OperationSettings, SwitchModeName, SwitchSettings
from .groups import NodeConfig, NodeRole
from .protocols import PROTOCOLS, ProtocolSection
from .redis import RedisSettings
from .root import Config, load_config, parse_config
from .units import parse_duration, parse_size
from .users import UserConfig

__all__ = [
    "PROTOCOLS",
    "Address",
    "BackendConfig",
    "BalanceName",
    "BreakerConfig",
    "ClientLimits",
    "ClusterConfig",
    "Config",
    "ConfigError",
    "FailoverConfig",
    "GatewayConfig",
    "GovernanceConfig",
    "HedgeConfig",
    "LimitConfig",
    "Mode",
    "NodeConfig",
    "NodeRole",
    "OperationSettings",
    "OutlierConfig",
    "Protocol",
    "ProtocolSection",
    "RedisSettings",
    "SwitchModeName",
    "SwitchSettings",
    "UserConfig",
    "load_config",
    "parse_config",
    "parse_duration",
    "parse_size",
]
