"""The hedge delays' clock: one timer task waking parked waiters at their deadlines."""

from __future__ import annotations

import math

import pytest
import trio
import trio.testing

from resmesh.policies.waiting import TICK, Alarms, Waiter, wait_first


async def test_a_parked_wait_ends_at_its_deadline_and_earlier_deadlines_move_the_timer(
    autojump_clock: trio.testing.MockClock,
) -> None:
    alarms = Alarms()
    woke: dict[str, float] = {}

    async def wait(name: str, delay: float) -> None:
        waiter = Waiter()
        started = trio.current_time()
        assert await wait_first([], waiter, alarms, started + delay) is None
        woke[name] = trio.current_time() - started

    async with trio.open_nursery() as nursery:
        nursery.start_soon(alarms.run)
        await trio.testing.wait_all_tasks_blocked()
        async with trio.open_nursery() as waits:
            waits.start_soon(wait, "late", 5.0)
            await trio.testing.wait_all_tasks_blocked()
            waits.start_soon(wait, "early", 1.0)  # earlier than the timer's current sleep
        nursery.cancel_scope.cancel()
    assert woke == {"late": 5.0, "early": 1.0}
    assert len(alarms) == 0


async def test_an_alarm_never_wakes_a_later_wait_of_the_same_waiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The first wait ends early (its deadline passes while nothing waits); the second wait,
    with no deadline, must stay parked through the stale alarm until it is woken for real."""
    alarms = Alarms()
    waiter = Waiter()
    ended: list[float] = []

    async def two_waits() -> None:
        with trio.move_on_after(0.5):
            await wait_first([], waiter, alarms, trio.current_time() + 1.0)
        assert waiter.alarm == math.inf  # cleared when the wait ended
        await wait_first([], waiter)  # no deadline
        ended.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(alarms.run)
        nursery.start_soon(two_waits)
        await trio.sleep(3.0)  # the stale alarm (at 1.0) came due meanwhile
        assert ended == []
        waiter.wake()
        await trio.testing.wait_all_tasks_blocked()
        assert ended == [3.0]
        nursery.cancel_scope.cancel()


async def test_the_timer_wakes_at_most_once_a_tick(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Deadlines closer together than a tick are fired together, up to one tick late."""
    alarms = Alarms()
    woke: list[float] = []

    async def wait(deadline: float) -> None:
        await wait_first([], Waiter(), alarms, deadline)
        woke.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        nursery.start_soon(alarms.run)
        async with trio.open_nursery() as waits:
            for deadline in (1.0, 1.0002, 1.0004, 1.5):
                waits.start_soon(wait, deadline)
        nursery.cancel_scope.cancel()
    assert woke == pytest.approx([1.0, 1.0 + TICK, 1.0 + TICK, 1.5])
