"""Policy objects built from the configuration's governance settings.

One place maps the YAML vocabulary (``config.GovernanceConfig``) onto the policy modules' own
config types, so every protocol's wiring builds them the same way.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from .balance import (
    LeastLoadedBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedBalancer,
)
from .breaker import BreakerConfig
from .hedge import HedgeConfig
from .limit import LimitConfig, LimiterConfig
from .outlier import OutlierConfig

if TYPE_CHECKING:
    from ..config import (
        BalanceName,
        BreakerSettings,
        GovernanceConfig,
        HedgeSettings,
        LimitSettings,
        OutlierSettings,
    )

__all__ = [
    "balancer_for",
    "breaker_config",
    "hedge_config",
    "limiter_config",
    "outlier_config",
]


def breaker_config(settings: BreakerSettings) -> BreakerConfig:
    return BreakerConfig(
        failure_ratio=settings.error_ratio,
        slow_call_duration=settings.slow_call,
        slow_call_ratio=settings.slow_ratio,
        minimum_calls=settings.min_calls,
        window=settings.window,
        consecutive_failures=settings.consecutive_failures,
        open_duration=settings.open_for,
        half_open_probes=settings.half_open_probes,
    )


def outlier_config(settings: OutlierSettings) -> OutlierConfig:
    return OutlierConfig(
        consecutive_failures=settings.consecutive_failures,
        base_ejection_time=settings.base_ejection,
        max_ejection_time=settings.max_ejection,
        max_ejection_percent=settings.max_ejection_percent,
        panic_threshold=settings.panic_threshold,
    )


def hedge_config(settings: HedgeSettings) -> HedgeConfig:
    return HedgeConfig(quantile=settings.percentile, floor=settings.floor, ratio=settings.budget)


def _limit(settings: LimitSettings) -> LimitConfig:
    return LimitConfig(settings.rate, settings.burst, settings.concurrency)


def limiter_config(governance: GovernanceConfig) -> LimiterConfig:
    """Cluster-wide limits plus every operation's own."""
    return LimiterConfig(
        cluster=_limit(governance.limit),
        operations={name: _limit(op.limit) for name, op in governance.operations.items()},
    )


def balancer_for(name: BalanceName, rng: random.Random | None = None) -> Any:
    """The balancer a cluster's ``balance`` names (``hash`` needs a key: see the caller)."""
    value = str(name)
    if value == "random":
        return RandomBalancer(rng)
    if value == "round_robin":
        return RoundRobinBalancer()
    if value == "weighted":
        return WeightedBalancer()
    return LeastLoadedBalancer(rng)
