"""The retry budget (Envoy: 20 % of active requests, floor 3) and back-off."""

from __future__ import annotations

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from resmesh.policies.retry import RetryBudget


def test_the_floor_allows_three_retries_at_low_traffic() -> None:
    budget = RetryBudget()
    budget.request_started()
    assert [budget.try_start_retry() for _ in range(4)] == [True, True, True, False]
    budget.finish_retry()
    assert budget.try_start_retry()
    stats = budget.statistics()
    assert (stats.active_retries, stats.allowed, stats.retries, stats.denied) == (3, 3, 4, 1)


def test_twenty_percent_of_active_requests() -> None:
    budget = RetryBudget()
    for _ in range(100):
        budget.request_started()
    assert sum(budget.try_start_retry() for _ in range(30)) == 20
    for _ in range(100):
        budget.request_finished()
    budget.request_finished()  # never below zero
    assert budget.allowed() == 3
    for _ in range(20):
        budget.finish_retry()
    assert budget.statistics().active_retries == 0


def test_validation() -> None:
    with pytest.raises(ValueError, match="ratio"):
        RetryBudget(budget_ratio=1.5)
    with pytest.raises(ValueError, match="budget_min"):
        RetryBudget(budget_min=-1)


class RetryBudgetModel(RuleBasedStateMachine):
    """Retries in flight never exceed max(floor, ratio x active) at the moment they start,
    and the budget refuses exactly when they would."""

    def __init__(self) -> None:
        super().__init__()
        self.budget = RetryBudget(budget_ratio=0.2, budget_min=3)
        self.requests = 0
        self.retries = 0

    @rule(n=st.integers(1, 20))
    def start_requests(self, n: int) -> None:
        for _ in range(n):
            self.budget.request_started()
        self.requests += n

    @precondition(lambda self: self.requests)
    @rule(n=st.integers(1, 20))
    def finish_requests(self, n: int) -> None:
        n = min(n, self.requests)
        for _ in range(n):
            self.budget.request_finished()
        self.requests -= n

    @rule()
    def retry(self) -> None:
        allowed = max(3, int(0.2 * self.requests))
        started = self.budget.try_start_retry()
        assert started == (self.retries < allowed)
        if started:
            self.retries += 1
            assert self.retries <= allowed

    @precondition(lambda self: self.retries)
    @rule()
    def finish_retry(self) -> None:
        self.budget.finish_retry()
        self.retries -= 1

    @invariant()
    def counts_agree(self) -> None:
        stats = self.budget.statistics()
        assert (stats.active_requests, stats.active_retries) == (self.requests, self.retries)


TestRetryBudgetModel = RetryBudgetModel.TestCase
TestRetryBudgetModel.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
