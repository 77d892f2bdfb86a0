"""Failover's settings and its retry budget: retries in flight are capped at a share of the
requests in flight.

Envoy's ``retry_budget`` (Envoy docs, "Retry budgets"; Istio's ``RetryBudget``): a retry may
start while the retries already in flight are fewer than ``max(budget_min, budget_ratio x
active requests)``, with ratio 20 % and floor 3. A fixed "retries: 2" triples the load in
exactly the outage where it hurts most (the retry storms of the Google SRE book, "Handling
Overload"); a budget keeps extra work a fraction of live traffic, and the floor keeps retries
possible at low traffic.

"Active requests" counts the original calls in flight (:meth:`RetryBudget.request_started` /
:meth:`RetryBudget.request_finished`), not the retries themselves: Envoy counts every upstream
request, which lets retries inflate their own budget; counting originals is stricter.

The retrying itself (only node failures, on a node no earlier attempt used, at once: a
different node needs no back-off) is the HA engine's (:mod:`~resmesh.policies.engine`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import final

from resmesh.knobs import Kind, knob

__all__ = ["FailoverConfig", "RetryBudget", "RetryBudgetStatistics"]


@final
@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """Whether and how often a node failure is retried on another node; the configuration's
    ``failover:``.

    Default 2 attempts (one retry): Envoy's ``num_retries`` is 1; for a gateway in front of a
    2-3 node group, one retry on another node covers a node dying, and more mostly adds load.

    Attributes:
        enabled: whether node failures of idempotent calls are retried.
        max_attempts: attempts that may fail before a call gives up, the first included (2:
            one retry).
        budget_ratio: retries in flight at most this share of calls in flight (0.2: Envoy
            ``retry_budget.budget_percent`` 20 %); see :class:`RetryBudget`.
        budget_min: ...but always allow this many (3: Envoy ``min_retry_concurrency``).
    """

    enabled: bool = knob(True, Kind.BOOL)
    max_attempts: int = knob(2, Kind.INT, low=1, high=10)
    budget_ratio: float = knob(0.2, Kind.RATIO, high=1.0)
    budget_min: int = knob(3, Kind.INT, high=1000)

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts!r}")
        RetryBudget(self.budget_ratio, self.budget_min)  # raises on a bad budget


@final
@dataclass(frozen=True, slots=True)
class RetryBudgetStatistics:
    budget_ratio: float
    budget_min: int
    active_requests: int
    active_retries: int
    #: The number of concurrent retries allowed right now.
    allowed: int
    retries: int
    denied: int


@final
class RetryBudget:
    """Concurrent retries at most ``max(budget_min, budget_ratio x active requests)``.

    Defaults: ``budget_ratio`` 0.2, ``budget_min`` 3 (Envoy ``budget_percent`` 20 %,
    ``min_retry_concurrency`` 3; Istio the same), the configuration's ``failover:`` keys of
    the same names (:class:`FailoverConfig`).
    """

    __slots__ = (
        "active_requests",
        "active_retries",
        "budget_min",
        "budget_ratio",
        "denied",
        "retries",
    )

    def __init__(self, budget_ratio: float = 0.2, budget_min: int = 3) -> None:
        """Create an idle budget.

        Raises:
            ValueError: ``budget_ratio`` is outside ``[0, 1]`` or ``budget_min`` is negative.
        """
        if not 0.0 <= budget_ratio <= 1.0:
            raise ValueError(f"budget_ratio must be in [0, 1], got {budget_ratio!r}")
        if budget_min < 0:
            raise ValueError(f"budget_min must be >= 0, got {budget_min!r}")
        self.budget_ratio = budget_ratio
        self.budget_min = budget_min
        self.active_requests = 0
        self.active_retries = 0
        self.retries = 0
        self.denied = 0

    def request_started(self) -> None:
        """An original call started (count it whether or not it will ever retry)."""
        self.active_requests += 1

    def request_finished(self) -> None:
        """An original call counted by :meth:`request_started` ended."""
        if self.active_requests > 0:
            self.active_requests -= 1

    def allowed(self) -> int:
        """How many retries may be in flight at once right now."""
        return max(self.budget_min, int(self.budget_ratio * self.active_requests))

    def try_start_retry(self) -> bool:
        """Start a retry if the budget allows; if this returns ``True``, call
        :meth:`finish_retry` when the retry ends (in a ``finally``)."""
        limit = int(self.budget_ratio * self.active_requests)
        if limit < self.budget_min:
            limit = self.budget_min
        if self.active_retries < limit:
            self.active_retries += 1
            self.retries += 1
            return True
        self.denied += 1
        return False

    def finish_retry(self) -> None:
        """A retry started by :meth:`try_start_retry` ended."""
        if self.active_retries > 0:
            self.active_retries -= 1

    def statistics(self) -> RetryBudgetStatistics:
        return RetryBudgetStatistics(
            budget_ratio=self.budget_ratio,
            budget_min=self.budget_min,
            active_requests=self.active_requests,
            active_retries=self.active_retries,
            allowed=self.allowed(),
            retries=self.retries,
            denied=self.denied,
        )
