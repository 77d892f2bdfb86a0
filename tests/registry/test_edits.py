"""resmesh.registry.edits: every change ``resmesh ctl`` makes, and every refusal."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from resmesh.config import NodeRole
from resmesh.policies.limit import LimitConfig
from resmesh.policies.switch import SwitchMode
from resmesh.registry.edits import (
    EditRefused,
    degrade,
    limit,
    node_add,
    node_enable,
    node_remove,
    primary,
    restore,
    shift,
)
from resmesh.registry.state import ClusterEntry, NodeEntry, SwitchEntry

P = "127.0.0.1:6379"
R1 = "127.0.0.1:6389"
R2 = "127.0.0.1:6399"


def replicated(**changes: object) -> ClusterEntry:
    """dc-a: primary P and replica R1; dc-b: replica R2; route dc-a 100, dc-b 0."""
    entry = ClusterEntry(
        (
            NodeEntry(P, "dc-a", NodeRole.PRIMARY),
            NodeEntry(R1, "dc-a", NodeRole.REPLICA, 50),
            NodeEntry(R2, "dc-b", NodeRole.REPLICA),
        ),
        MappingProxyType({"dc-a": 100, "dc-b": 0}),
    )
    return ClusterEntry(**{"nodes": entry.nodes, "route": entry.route, **changes})  # type: ignore[arg-type]


def sharded() -> ClusterEntry:
    return ClusterEntry(
        (NodeEntry("127.0.0.1:7001", "dc-a"), NodeEntry("127.0.0.1:7002", "dc-a")),
        MappingProxyType({"dc-a": 100}),
    )


# ----------------------------------------------------------------------------------------------
# degrade / restore


def test_degrade_the_whole_cluster() -> None:
    entry = degrade(replicated(), SwitchMode.MISS, reason="sick")
    assert entry.switches == (SwitchEntry(SwitchMode.MISS, None, None, "sick"),)
    assert entry.nodes == replicated().nodes


def test_degrade_one_operation_upper_cases_it() -> None:
    entry = degrade(replicated(), SwitchMode.FALLBACK, "get", "n/a")
    assert entry.switches == (SwitchEntry(SwitchMode.FALLBACK, "GET", "n/a", ""),)


def test_degrade_replaces_the_switch_of_the_same_operation() -> None:
    entry = degrade(replicated(), SwitchMode.MISS, "GET")
    entry = degrade(entry, SwitchMode.ERROR)
    entry = degrade(entry, SwitchMode.READONLY, "get", reason="again")
    assert entry.switches == (
        SwitchEntry(SwitchMode.ERROR, None),
        SwitchEntry(SwitchMode.READONLY, "GET", None, "again"),
    )
    entry = degrade(entry, SwitchMode.MISS)
    assert entry.switches == (
        SwitchEntry(SwitchMode.READONLY, "GET", None, "again"),
        SwitchEntry(SwitchMode.MISS, None),
    )


def test_degrade_fallback_needs_a_value() -> None:
    with pytest.raises(EditRefused, match="--value"):
        degrade(replicated(), SwitchMode.FALLBACK, "GET")


@pytest.mark.parametrize("mode", [SwitchMode.MISS, SwitchMode.ERROR, SwitchMode.READONLY])
def test_degrade_value_is_for_fallback_only(mode: SwitchMode) -> None:
    with pytest.raises(EditRefused, match=f"fallback only, not {mode}"):
        degrade(replicated(), mode, value="x")


def test_restore_all() -> None:
    entry = degrade(degrade(replicated(), SwitchMode.MISS), SwitchMode.ERROR, "SET")
    assert restore(entry).switches == ()


def test_restore_one_operation() -> None:
    entry = degrade(degrade(replicated(), SwitchMode.MISS), SwitchMode.ERROR, "SET")
    assert restore(entry, "set").switches == (SwitchEntry(SwitchMode.MISS, None),)


def test_restore_a_missing_operation_is_refused_and_lists_the_switches() -> None:
    entry = degrade(degrade(replicated(), SwitchMode.MISS), SwitchMode.ERROR, "SET")
    with pytest.raises(EditRefused) as info:
        restore(entry, "get")
    assert "no switch is on for operation GET" in str(info.value)
    assert "switches on: the whole cluster, SET" in str(info.value)
    with pytest.raises(EditRefused, match=r"switches on: none"):
        restore(replicated(), "GET")


# ----------------------------------------------------------------------------------------------
# shift


def test_shift_sets_the_named_groups_and_keeps_the_others() -> None:
    entry = replicated(route=MappingProxyType({"dc-a": 70}))
    shifted = shift(entry, {"dc-b": 30})
    assert dict(shifted.route) == {"dc-a": 70, "dc-b": 30}
    assert dict(shift(shifted, {"dc-a": 0}).route) == {"dc-a": 0, "dc-b": 30}


def test_shift_an_unknown_group_lists_the_groups() -> None:
    with pytest.raises(EditRefused) as info:
        shift(replicated(), {"dc-z": 10})
    assert str(info.value) == "no group 'dc-z' (groups: dc-a, dc-b)"


@pytest.mark.parametrize("weight", [-1, 101])
def test_shift_weight_out_of_range(weight: int) -> None:
    with pytest.raises(EditRefused, match=f"weight {weight} for dc-b is outside 0..100"):
        shift(replicated(), {"dc-b": weight})


def test_shift_refuses_all_zero() -> None:
    with pytest.raises(EditRefused, match="weight 0"):
        shift(replicated(), {"dc-a": 0})


def test_shift_refuses_weight_only_on_groups_without_enabled_nodes() -> None:
    entry = node_enable(replicated(), R2, False)
    with pytest.raises(EditRefused, match="weight 0"):
        shift(entry, {"dc-a": 0, "dc-b": 100})


# ----------------------------------------------------------------------------------------------
# node add / remove / enable


def test_node_add_defaults_to_the_first_group_after_its_last_node() -> None:
    entry = node_add(replicated(), "127.0.0.1:6400", has_primary=True)
    assert [(n.address, n.group) for n in entry.nodes] == [
        (P, "dc-a"),
        (R1, "dc-a"),
        ("127.0.0.1:6400", "dc-a"),
        (R2, "dc-b"),
    ]
    assert entry.node("127.0.0.1:6400") == NodeEntry(
        "127.0.0.1:6400", "dc-a", NodeRole.REPLICA, 100, True
    )
    assert dict(entry.route) == {"dc-a": 100, "dc-b": 0}


def test_node_add_to_a_named_group_with_weight() -> None:
    entry = node_add(replicated(), "localhost:6400", has_primary=True, group="dc-b", weight=20)
    assert entry.nodes[-1] == NodeEntry("localhost:6400", "dc-b", NodeRole.REPLICA, 20)


def test_node_add_to_a_new_group_gets_route_zero() -> None:
    entry = node_add(sharded(), "127.0.0.1:7003", has_primary=False, group="dc-new")
    assert entry.nodes[-1] == NodeEntry("127.0.0.1:7003", "dc-new", None, 100, True)
    assert dict(entry.route) == {"dc-a": 100, "dc-new": 0}


def test_node_add_to_a_group_keeps_its_route_weight() -> None:
    entry = node_add(replicated(), "127.0.0.1:6400", has_primary=True, group="dc-a")
    assert dict(entry.route) == {"dc-a": 100, "dc-b": 0}


def test_node_add_without_primary_has_no_role() -> None:
    entry = node_add(sharded(), "127.0.0.1:7003", has_primary=False)
    assert entry.nodes[-1] == NodeEntry("127.0.0.1:7003", "dc-a", None)


def test_node_add_refuses_a_duplicate() -> None:
    with pytest.raises(
        EditRefused, match=r"node 127.0.0.1:6399 is already in the cluster \(group dc-b\)"
    ):
        node_add(replicated(), R2, has_primary=True, group="dc-a")


@pytest.mark.parametrize("address", ["nohost", "127.0.0.1:0x", "::1:80"])
def test_node_add_refuses_a_bad_address(address: str) -> None:
    with pytest.raises(EditRefused, match="is not host:port"):
        node_add(replicated(), address, has_primary=True)


@pytest.mark.parametrize("weight", [-1, 101])
def test_node_add_refuses_a_bad_weight(weight: int) -> None:
    with pytest.raises(EditRefused, match=r"outside 0\.\.100"):
        node_add(replicated(), "127.0.0.1:6400", has_primary=True, weight=weight)


def test_node_remove() -> None:
    entry = node_remove(replicated(), R1)
    assert [n.address for n in entry.nodes] == [P, R2]
    assert entry.route == replicated().route


def test_node_remove_refuses_the_primary() -> None:
    with pytest.raises(EditRefused, match="is the primary"):
        node_remove(replicated(), P)


def test_node_remove_refuses_the_last_enabled_node() -> None:
    entry = node_enable(sharded(), "127.0.0.1:7001", False)
    with pytest.raises(EditRefused, match=r"127\.0\.0\.1:7002 is the last enabled node"):
        node_remove(entry, "127.0.0.1:7002")
    # A disabled node may go: another stays enabled.
    assert [n.address for n in node_remove(entry, "127.0.0.1:7001").nodes] == ["127.0.0.1:7002"]


def test_node_remove_an_unknown_node_lists_the_nodes() -> None:
    with pytest.raises(EditRefused) as info:
        node_remove(replicated(), "127.0.0.1:1")
    assert str(info.value) == f"no node 127.0.0.1:1 (nodes: {P}, {R1}, {R2})"


def test_node_enable_and_disable() -> None:
    entry = node_enable(replicated(), R1, False)
    assert entry.node(R1) == NodeEntry(R1, "dc-a", NodeRole.REPLICA, 50, False)
    assert [n.address for n in entry.nodes] == [P, R1, R2]
    assert node_enable(entry, R1, True) == replicated()


def test_node_disable_refuses_the_primary() -> None:
    with pytest.raises(EditRefused, match="is the primary"):
        node_enable(replicated(), P, False)


def test_node_disable_refuses_the_last_enabled_node() -> None:
    entry = node_enable(sharded(), "127.0.0.1:7001", False)
    with pytest.raises(EditRefused, match="last enabled node"):
        node_enable(entry, "127.0.0.1:7002", False)


def test_node_enable_an_unknown_node_lists_the_nodes() -> None:
    with pytest.raises(EditRefused, match=r"no node 127.0.0.1:1 \(nodes: 127.0.0.1:7001, 127"):
        node_enable(sharded(), "127.0.0.1:1", True)


# ----------------------------------------------------------------------------------------------
# primary


def test_primary_swaps_the_roles() -> None:
    entry = primary(replicated(), R2, has_primary=True)
    assert [(n.address, n.role) for n in entry.nodes] == [
        (P, NodeRole.REPLICA),
        (R1, NodeRole.REPLICA),
        (R2, NodeRole.PRIMARY),
    ]
    assert entry.node(R1) == NodeEntry(R1, "dc-a", NodeRole.REPLICA, 50)


def test_primary_refused_without_a_primary() -> None:
    with pytest.raises(EditRefused, match="no primary"):
        primary(sharded(), "127.0.0.1:7001", has_primary=False)


def test_primary_refuses_a_disabled_node() -> None:
    entry = node_enable(replicated(), R1, False)
    with pytest.raises(EditRefused, match="is disabled: enable it first"):
        primary(entry, R1, has_primary=True)


def test_primary_refuses_an_unknown_node() -> None:
    with pytest.raises(EditRefused, match=r"no node 127.0.0.1:1 \(nodes: "):
        primary(replicated(), "127.0.0.1:1", has_primary=True)


# ----------------------------------------------------------------------------------------------
# Reads must go somewhere: the rule shift enforces holds for node edits too


def reads_on_dc_b() -> ClusterEntry:
    """dc-a: the primary at route 0; dc-b: one replica with every read."""
    return ClusterEntry(
        (NodeEntry(P, "dc-a", NodeRole.PRIMARY), NodeEntry(R2, "dc-b", NodeRole.REPLICA)),
        MappingProxyType({"dc-a": 0, "dc-b": 100}),
    )


def test_shift_refuses_to_leave_reads_nowhere() -> None:
    with pytest.raises(EditRefused, match="weight 0"):
        shift(reads_on_dc_b(), {"dc-b": 0})


def test_node_disable_refuses_to_leave_reads_nowhere() -> None:
    """Disabling dc-b's only node leaves every group with an enabled node at weight 0: the
    router then drains the cluster (GroupRouter.choose returns None), which shift refuses."""
    with pytest.raises(EditRefused, match="weight"):
        node_enable(reads_on_dc_b(), R2, False)


def test_node_remove_refuses_to_leave_reads_nowhere() -> None:
    with pytest.raises(EditRefused, match="weight"):
        node_remove(reads_on_dc_b(), R2)


def test_limit_sets_replaces_and_resets_one_scope() -> None:
    entry = limit(replicated(), "get", LimitConfig(rate=5.0))
    entry = limit(entry, None, LimitConfig(concurrency=9))
    entry = limit(entry, "GET", LimitConfig(concurrency=2))
    assert dict(entry.limits) == {
        "GET": LimitConfig(concurrency=2),
        "*": LimitConfig(concurrency=9),
    }
    entry = limit(entry, "get", None)
    assert dict(entry.limits) == {"*": LimitConfig(concurrency=9)}


def test_limit_refusals_say_what_is_valid() -> None:
    with pytest.raises(EditRefused, match="give --rate, --burst or --concurrency"):
        limit(replicated(), None, LimitConfig())
    with pytest.raises(EditRefused, match="give --rate too"):
        limit(replicated(), None, LimitConfig(burst=5.0))
    entry = limit(replicated(), "KEYS", LimitConfig(concurrency=1))
    with pytest.raises(EditRefused, match=r"no limit override for GET \(overrides: KEYS\)"):
        limit(entry, "GET", None)
