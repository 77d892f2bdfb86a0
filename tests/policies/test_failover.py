"""Failover to a different node, within the retry budget, on MockClock."""

from __future__ import annotations

import dataclasses
import random

import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.call import Call, Outcome, Reply
from resmesh.policies.failover import with_failover
from resmesh.policies.retry import RetryBudget

from .fakes import PINNED, READ, WRITE, FakeNodes

OK, APP = Outcome.OK, Outcome.APP_ERROR
UPSTREAM, LOCAL = Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR


async def test_a_node_failure_is_retried_on_another_node(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (0.001, LOCAL), "b": (0.001, OK)})
    budget = RetryBudget()
    reply = await with_failover(READ, nodes.attempt, budget)
    assert (reply.node, reply.outcome) == ("b", OK)
    assert nodes.started == ["a", "b"]
    stats = budget.statistics()
    assert (stats.retries, stats.active_requests, stats.active_retries) == (1, 0, 0)


@pytest.mark.parametrize("outcome", [OK, APP, Outcome.REJECTED])
async def test_only_node_failures_are_retried(
    autojump_clock: trio.testing.MockClock, outcome: Outcome
) -> None:
    nodes = FakeNodes({"a": (0.001, outcome), "b": (0.001, OK)})
    reply = await with_failover(READ, nodes.attempt, RetryBudget())
    assert reply.node == "a"
    assert nodes.started == ["a"]


@pytest.mark.parametrize("call", [WRITE, PINNED], ids=["write", "pinned"])
async def test_writes_and_pinned_calls_are_never_retried(
    autojump_clock: trio.testing.MockClock, call: Call
) -> None:
    nodes = FakeNodes({"a": (0.001, UPSTREAM), "b": (0.001, OK)})
    reply = await with_failover(call, nodes.attempt, RetryBudget())
    assert (reply.node, reply.outcome) == ("a", UPSTREAM)


async def test_attempts_are_bounded(autojump_clock: trio.testing.MockClock) -> None:
    script = {n: (0.001, UPSTREAM) for n in "abcd"}
    nodes = FakeNodes(script)
    reply = await with_failover(READ, nodes.attempt, RetryBudget())
    assert reply.node == "b"  # 2 attempts by default
    nodes = FakeNodes(script)
    reply = await with_failover(READ, nodes.attempt, RetryBudget(), max_attempts=3)
    assert nodes.started == ["a", "b", "c"]
    with pytest.raises(ValueError, match="max_attempts"):
        await with_failover(READ, nodes.attempt, RetryBudget(), max_attempts=0)


async def test_running_out_of_nodes_returns_the_real_failure(
    autojump_clock: trio.testing.MockClock,
) -> None:
    nodes = FakeNodes({"a": (0.001, LOCAL)})
    reply = await with_failover(READ, nodes.attempt, RetryBudget(), max_attempts=3)
    assert (reply.node, reply.outcome) == ("a", LOCAL)


async def test_an_exhausted_budget_stops_retries(autojump_clock: trio.testing.MockClock) -> None:
    budget = RetryBudget(budget_ratio=0.0, budget_min=0)
    nodes = FakeNodes({"a": (0.001, LOCAL), "b": (0.001, OK)})
    reply = await with_failover(READ, nodes.attempt, budget)
    assert reply.node == "a"
    assert budget.denied == 1


async def test_no_retry_past_the_deadline(autojump_clock: trio.testing.MockClock) -> None:
    call = dataclasses.replace(READ, deadline=trio.current_time() + 0.5)
    nodes = FakeNodes({"a": (0.6, LOCAL), "b": (0.001, OK)})
    reply = await with_failover(call, nodes.attempt, RetryBudget())
    assert reply.node == "a"


async def test_optional_backoff_waits_on_the_clock(autojump_clock: trio.testing.MockClock) -> None:
    nodes = FakeNodes({"a": (0.0, LOCAL), "b": (0.0, OK)})
    start = trio.current_time()
    reply = await with_failover(
        READ, nodes.attempt, RetryBudget(), backoff_base=0.025, rng=random.Random(1)
    )
    assert reply.node == "b"
    assert 0.0 < trio.current_time() - start <= 0.025
    call = dataclasses.replace(READ, deadline=trio.current_time() + 1e-9)
    nodes = FakeNodes({"a": (0.0, LOCAL), "b": (0.0, OK)})
    assert (await with_failover(call, nodes.attempt, RetryBudget(), backoff_base=0.025)).node == "a"


async def test_cancellation_leaves_the_budget_balanced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    budget = RetryBudget()
    nodes = FakeNodes({"a": (0.001, LOCAL), "b": (10.0, OK)})
    with trio.move_on_after(1.0):
        await with_failover(READ, nodes.attempt, budget)
    assert nodes.cancelled == ["b"]
    stats = budget.statistics()
    assert (stats.active_requests, stats.active_retries) == (0, 0)


@settings(max_examples=40, deadline=None)
@given(
    calls=st.lists(
        st.tuples(st.floats(0.0, 0.02), st.floats(0.0, 0.05), st.booleans()),
        min_size=1,
        max_size=80,
    )
)
def test_retries_in_flight_never_exceed_the_budget(calls: list[tuple[float, float, bool]]) -> None:
    """Many concurrent calls, most failing over: when a retry starts, the retries in flight
    are within max(3, 20 % of the calls in flight)."""
    budget = RetryBudget()
    peak = 0

    async def main() -> None:
        async def one(first: float, second: float, fails: bool) -> None:
            nodes = FakeNodes({"a": (first, LOCAL if fails else OK), "b": (second, OK)})

            async def checked(tried: set[str]) -> Reply:
                nonlocal peak
                if tried:  # a retry, started just now with no checkpoint in between
                    assert budget.active_retries <= budget.allowed()
                    peak = max(peak, budget.active_retries)
                return await nodes.attempt(tried)

            await with_failover(READ, checked, budget)

        async with trio.open_nursery() as nursery:
            for first, second, fails in calls:
                nursery.start_soon(one, first, second, fails)
                await trio.sleep(0.0005)

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    stats = budget.statistics()
    assert (stats.active_requests, stats.active_retries) == (0, 0)
    assert peak <= max(3, int(0.2 * len(calls)))
