"""Failover: retry an idempotent call on a *different* node when its node failed.

Only a node failure (``UPSTREAM_ERROR``, ``LOCAL_ERROR``: :attr:`Outcome.node_failure`) is
retried; an ``APP_ERROR`` is the caller's and returns at once (motan-go returns Biz exceptions
at once too). Writes (``idempotent`` false) and pinned calls (MULTI, a transaction, a blocking
pop...) are never retried: a retry could apply a write twice or run a command outside its
session. Each retry must fit the :class:`~resmesh.policies.retry.RetryBudget` (Envoy's 20 % of
in-flight, floor 3), must leave time before the call's deadline, and goes to a node not tried
yet: the attempts share a ``tried`` set (Envoy's ``previous_hosts``; motan-go's failover may
pick the same node again, anchors gap 1).

Default 2 attempts (one retry): Istio's mesh default is 2 retries after the first try; Envoy's
``num_retries`` is 1. For a gateway in front of a 2-3 node group, one retry on another node
covers a node dying; more mostly adds load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import TypeVar, final

import trio

from resmesh.call import Call, Outcome, Reply
from resmesh.knobs import Kind, knob
from resmesh.policies.hedge import Attempt
from resmesh.policies.retry import RetryBudget, backoff

__all__ = ["FailoverConfig", "with_failover"]

T = TypeVar("T")


@final
@dataclass(frozen=True, slots=True)
class FailoverConfig:
    """Whether and how often a node failure is retried on another node; the configuration's
    ``failover:``.

    Attributes:
        enabled: whether node failures of idempotent calls are retried.
        max_attempts: attempts in all, the first included (2: one retry; Envoy
            ``num_retries`` 1).
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


async def with_failover(
    call: Call,
    attempt: Attempt[T],
    budget: RetryBudget,
    max_attempts: int = 2,
    *,
    backoff_base: float = 0.0,
    rng: random.Random | None = None,
) -> Reply:
    """Run ``call`` through ``attempt``; on a node failure retry on another node, within budget.

    ``attempt`` is as for :func:`~resmesh.policies.hedge.hedged`: it picks a node not in the
    shared ``tried`` set and adds the one it uses. If a retry comes back ``REJECTED`` (no
    untried node left, or that node's breaker is open) the previous, real failure is returned,
    so the client hears what actually went wrong.

    ``backoff_base`` > 0 waits Envoy's jittered back-off (see
    :func:`~resmesh.policies.retry.backoff`) before each retry; the default 0 retries at once,
    which is right when the retry goes to a different node.

    Every call through here counts as an active request of ``budget`` while it runs.

    Raises:
        ValueError: ``max_attempts`` is below 1.
    """
    if max_attempts < 1:
        raise ValueError(f"max_attempts must be >= 1, got {max_attempts!r}")
    tried: set[T] = set()
    budget.request_started()
    try:
        reply = await attempt(tried)
        if not call.idempotent or call.pinned:
            return reply
        attempts = 1
        while reply.outcome.node_failure and attempts < max_attempts:
            if backoff_base > 0.0:
                pause = backoff(attempts, backoff_base, rng=rng)
                if trio.current_time() + pause >= call.deadline:
                    break
                await trio.sleep(pause)
            elif trio.current_time() >= call.deadline:
                break
            if not budget.try_start_retry():
                break
            try:
                retry = await attempt(tried)
            finally:
                budget.finish_retry()
            attempts += 1
            if retry.outcome is Outcome.REJECTED:
                break
            reply = retry
        return reply
    finally:
        budget.request_finished()
