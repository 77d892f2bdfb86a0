"""Degrade switches: modes, precedence, atomic snapshots."""

from __future__ import annotations

import pytest

from resmesh.policies.switch import (
    Switch,
    SwitchAction,
    Switchboard,
    SwitchMode,
)


def test_nothing_switched() -> None:
    board = Switchboard()
    assert board.decide("feed-cache", "GET", is_write=False) is None
    assert board.statistics().version == 1


def test_miss_answers_reads_empty_and_acknowledges_writes() -> None:
    board = Switchboard([Switch("feed-cache", SwitchMode.MISS)])
    read = board.decide("feed-cache", "GET", is_write=False)
    write = board.decide("feed-cache", "SET", is_write=True)
    assert read is not None and read.action is SwitchAction.EMPTY
    assert write is not None and write.action is SwitchAction.ACKNOWLEDGE
    assert read.mode is SwitchMode.MISS
    assert read.message == "degraded by switch feed-cache (mode miss)"
    assert board.decide("other", "GET", is_write=False) is None


def test_error_names_the_switch_and_reason() -> None:
    board = Switchboard()
    board.set(Switch("feed-cache", SwitchMode.ERROR, operation="KEYS", reason="ops ticket 42"))
    decision = board.decide("feed-cache", "KEYS", is_write=False)
    assert decision is not None and decision.action is SwitchAction.ERROR
    assert decision.message == "degraded by switch feed-cache KEYS (mode error): ops ticket 42"
    assert board.decide("feed-cache", "GET", is_write=False) is None


def test_readonly_refuses_writes_only() -> None:
    board = Switchboard([Switch("user-db", SwitchMode.READONLY)])
    assert board.decide("user-db", "SELECT", is_write=False) is None
    write = board.decide("user-db", "UPDATE", is_write=True)
    assert write is not None and write.action is SwitchAction.ERROR
    assert write.message == "read-only by switch user-db: writes are refused"


def test_fallback_answers_the_configured_value() -> None:
    board = Switchboard([Switch("echo", SwitchMode.FALLBACK, "svc.hello", value=b"\x01mock")])
    for is_write in (False, True):
        decision = board.decide("echo", "svc.hello", is_write)
        assert decision is not None
        assert (decision.action, decision.value) == (SwitchAction.FALLBACK, b"\x01mock")
    with pytest.raises(ValueError, match="fallback needs a value"):
        Switch("echo", SwitchMode.FALLBACK)


def test_an_operation_switch_overrides_its_cluster_switch() -> None:
    board = Switchboard(
        [
            Switch("feed-cache", SwitchMode.MISS),
            Switch("feed-cache", SwitchMode.ERROR, operation="GET"),
        ]
    )
    get = board.decide("feed-cache", "GET", is_write=False)
    mget = board.decide("feed-cache", "MGET", is_write=False)
    assert get is not None and get.action is SwitchAction.ERROR
    assert mget is not None and mget.action is SwitchAction.EMPTY
    board.clear("feed-cache")  # the cluster switch only
    assert board.decide("feed-cache", "MGET", is_write=False) is None
    assert board.decide("feed-cache", "GET", is_write=False) == get


def test_set_clear_restore_replace() -> None:
    board = Switchboard()
    board.set(Switch("a", SwitchMode.MISS))
    board.set(Switch("a", SwitchMode.ERROR))  # replaces
    board.set(Switch("a", SwitchMode.MISS, operation="GET"))
    board.set(Switch("b", SwitchMode.ERROR))
    decision = board.decide("a", "SET", is_write=True)
    assert decision is not None and decision.mode is SwitchMode.ERROR
    assert [s.name for s in board.switches()] == ["a", "a GET", "b"]
    board.clear("a", "nope")  # unknown: no new version
    version = board.version
    board.restore("a")
    assert board.version == version + 1
    assert board.decide("a", "GET", is_write=False) is None
    assert board.decide("b", "GET", is_write=False) is not None
    board.replace([Switch("c", SwitchMode.READONLY)])
    assert [s.name for s in board.switches()] == ["c"]
    assert board.decide("b", "GET", is_write=False) is None


def test_active_says_whether_any_switch_is_on() -> None:
    board = Switchboard()
    assert not board.active
    board.set(Switch("a", SwitchMode.MISS, operation="GET"))
    assert board.active
    board.clear("a", "GET")
    assert not board.active
    board.replace([Switch("b", SwitchMode.ERROR)])
    assert board.active
    board.restore("b")
    assert not board.active


def test_snapshots_are_swapped_not_mutated() -> None:
    board = Switchboard([Switch("a", SwitchMode.MISS)])
    before = board._snapshot
    board.set(Switch("a", SwitchMode.ERROR, operation="GET"))
    assert before["a"].operations == {}  # a reader holding the old snapshot sees it whole
    assert board._snapshot is not before


def test_statistics_count_hits() -> None:
    board = Switchboard([Switch("a", SwitchMode.READONLY)])
    board.decide("a", "GET", is_write=False)  # served: not a hit
    board.decide("a", "SET", is_write=True)
    stats = board.statistics()
    assert stats.hits == 1
    assert stats.switches == (Switch("a", SwitchMode.READONLY),)
