"""resmesh.registry.state: entries, their documents, and the cluster states they give."""

from __future__ import annotations

from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.config import ClusterConfig, NodeRole, parse_config
from resmesh.policies.limit import LimitConfig, LimiterConfig
from resmesh.policies.switch import Switch, SwitchMode
from resmesh.registry.state import (
    WHOLE_CLUSTER,
    ClusterEntry,
    NodeEntry,
    RegistryDataError,
    SwitchEntry,
    cluster_state,
    entry_document,
    entry_from_config,
    limits_of,
    parse_entry,
    switches_of,
)

# ----------------------------------------------------------------------------------------------
# Configs

AGENT = {"client": "127.0.0.1:9981", "server": "127.0.0.1:9982"}


def replicated_cluster(**extra: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "protocol": "redis",
        "listen": "127.0.0.1:6380",
        "mode": "replicated",
        "groups": {
            "dc-a": [{"address": "127.0.0.1:6379", "role": "primary"}],
            "dc-b": [{"address": "127.0.0.1:6389", "weight": 50}],
        },
        "route": {"dc-a": 100},
    }
    cluster.update(extra)
    return cluster


def sharded_cluster() -> dict[str, Any]:
    return {
        "protocol": "redis",
        "listen": "127.0.0.1:6381",
        "mode": "sharded",
        "groups": {"dc-a": ["127.0.0.1:7001", "127.0.0.1:7002"]},
        "route": {"dc-a": 100},
    }


def motan2_cluster(**extra: Any) -> dict[str, Any]:
    cluster: dict[str, Any] = {
        "protocol": "motan2",
        "groups": {"dc-a": ["127.0.0.1:8100", "127.0.0.1:8101"], "dc-b": ["127.0.0.1:8200"]},
        "route": {"dc-a": 100, "dc-b": 0},
        "motan2": {"service": "com.example.Echo", "group": "g1"},
    }
    cluster.update(extra)
    return cluster


def config_of(name: str, cluster: dict[str, Any]) -> ClusterConfig:
    data: dict[str, Any] = {"clusters": {name: cluster}}
    if cluster["protocol"] == "motan2":
        data["motan2"] = AGENT
    return parse_config(data, Path("x.yaml")).clusters[name]


# ----------------------------------------------------------------------------------------------
# Round trip

_GROUP_NAMES = st.sampled_from(["dc-a", "dc-b", "dc-c", "east", "west"])
_TEXT = st.text(st.characters(categories=("L", "N", "P", "Zs")), max_size=12)


@st.composite
def entries(draw: st.DrawFn) -> ClusterEntry:
    groups = draw(st.lists(_GROUP_NAMES, min_size=1, max_size=3, unique=True))
    sizes = draw(st.lists(st.integers(0, 3), min_size=len(groups), max_size=len(groups)))
    if sum(sizes) == 0:
        sizes[0] = 1
    ports = draw(
        st.lists(st.integers(1, 65535), min_size=sum(sizes), max_size=sum(sizes), unique=True)
    )
    roles = st.sampled_from([None, NodeRole.PRIMARY, NodeRole.REPLICA])
    nodes = []
    for group, size in zip(groups, sizes, strict=True):
        for _ in range(size):
            nodes.append(
                NodeEntry(
                    f"127.0.0.1:{ports[len(nodes)]}",
                    group,
                    draw(roles),
                    draw(st.integers(0, 100)),
                    draw(st.booleans()),
                )
            )
    # Route: any subset of the groups, plus groups with no node yet.
    route_groups = draw(st.lists(_GROUP_NAMES, max_size=4, unique=True))
    route = {g: draw(st.integers(0, 100)) for g in route_groups}
    operations = draw(
        st.lists(
            st.one_of(st.none(), st.sampled_from(["GET", "SET", "SELECT", "ECHO.HELLO"])),
            max_size=4,
            unique=True,
        )
    )
    switches = []
    for operation in operations:
        mode = draw(st.sampled_from(list(SwitchMode)))
        value = draw(_TEXT) if mode is SwitchMode.FALLBACK else None
        switches.append(SwitchEntry(mode, operation, value, draw(_TEXT)))
    scopes = draw(st.lists(st.sampled_from(["*", "GET", "KEYS"]), max_size=3, unique=True))
    limits = {}
    for scope in scopes:
        rate = draw(st.one_of(st.none(), st.floats(1, 1e9)))
        limits[scope] = LimitConfig(
            rate=rate,
            burst=draw(st.floats(1, 1e9)) if rate is not None else None,
            concurrency=draw(st.integers(1, 1_000_000)) if rate is None else None,
        )
    return ClusterEntry(
        tuple(nodes), MappingProxyType(route), tuple(switches), MappingProxyType(limits)
    )


@settings(max_examples=150, deadline=None)
@given(entries())
def test_an_entry_survives_its_document(entry: ClusterEntry) -> None:
    assert parse_entry("c", entry_document(entry)) == entry


@settings(max_examples=60, deadline=None)
@given(entries())
def test_an_entry_survives_its_document_as_yaml(entry: ClusterEntry) -> None:
    text = yaml.safe_dump(entry_document(entry), sort_keys=False)
    assert parse_entry("c", yaml.safe_load(text)) == entry


def test_a_document_has_the_config_shape() -> None:
    entry = ClusterEntry(
        (
            NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY),
            NodeEntry("127.0.0.1:6389", "dc-b", None, 30, enabled=False),
        ),
        MappingProxyType({"dc-a": 100, "dc-c": 0}),
        (
            SwitchEntry(SwitchMode.MISS, None, None, "sick"),
            SwitchEntry(SwitchMode.FALLBACK, "GET", "n/a"),
        ),
    )
    assert entry_document(entry) == {
        "groups": {
            "dc-a": [
                {"address": "127.0.0.1:6379", "role": "primary", "weight": 100, "enabled": True}
            ],
            "dc-b": [{"address": "127.0.0.1:6389", "weight": 30, "enabled": False}],
            "dc-c": [],
        },
        "route": {"dc-a": 100, "dc-c": 0},
        "switches": {
            "*": {"mode": "miss", "reason": "sick"},
            "GET": {"mode": "fallback", "value": "n/a"},
        },
        "limits": {},
    }


def test_parse_fills_defaults_and_normalizes() -> None:
    entry = parse_entry(
        "c",
        {
            "groups": {
                "dc-a": ["localhost:6379", {"address": "127.0.0.1:6380", "role": "replica"}]
            },
            "switches": {
                "get": {"mode": "readonly"},
                WHOLE_CLUSTER: {"mode": "error", "reason": None},
            },
        },
    )
    assert entry.nodes == (
        NodeEntry("localhost:6379", "dc-a", None, 100, True),
        NodeEntry("127.0.0.1:6380", "dc-a", NodeRole.REPLICA, 100, True),
    )
    assert dict(entry.route) == {}
    assert entry.switches == (
        SwitchEntry(SwitchMode.READONLY, "GET", None, ""),
        SwitchEntry(SwitchMode.ERROR, None, None, ""),
    )
    assert parse_entry("c", {"groups": {"a": ["127.0.0.1:1"]}, "switches": None}).switches == ()


# ----------------------------------------------------------------------------------------------
# Errors name the key


def good() -> dict[str, Any]:
    return {
        "groups": {
            "dc-a": [{"address": "127.0.0.1:6379", "role": "primary"}],
            "dc-b": [{"address": "127.0.0.1:6389"}],
        },
        "route": {"dc-a": 100},
        "switches": {"GET": {"mode": "fallback", "value": "x"}},
    }


def _set(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = good()
    target: Any = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return doc


@pytest.mark.parametrize(
    ("doc", "key", "words"),
    [
        ({**good(), "colour": "red"}, "", "unknown key 'colour'"),
        (_set(("groups", "dc-a", 0, "colour"), "red"), "groups.dc-a.0", "unknown key 'colour'"),
        (_set(("switches", "GET", "colour"), "red"), "switches.GET", "unknown key 'colour'"),
        (_set(("groups", "dc-a", 0, "weight"), 101), "groups.dc-a.0.weight", "101 is not a weight"),
        (_set(("groups", "dc-a", 0, "weight"), -1), "groups.dc-a.0.weight", "not a weight"),
        (_set(("groups", "dc-a", 0, "weight"), True), "groups.dc-a.0.weight", "not a weight"),
        (_set(("groups", "dc-a", 0, "weight"), "50"), "groups.dc-a.0.weight", "not a weight"),
        (_set(("route", "dc-b"), 200), "route.dc-b", "200 is not a weight"),
        (_set(("groups", "dc-a", 0, "address"), "nohost"), "groups.dc-a.0.address", "'nohost'"),
        (_set(("groups", "dc-a", 0, "address"), "h:99999"), "groups.dc-a.0.address", "h:99999"),
        (_set(("groups", "dc-b", 0), {"role": "replica"}), "groups.dc-b.0.address", "None"),
        (
            _set(("groups", "dc-b", 0, "address"), "127.0.0.1:6379"),
            "groups.dc-b.0",
            "127.0.0.1:6379 is listed twice",
        ),
        (_set(("switches", "GET", "mode"), "sleep"), "switches.GET.mode", "'sleep' is not a mode"),
        (_set(("switches", "GET"), {"mode": "fallback"}), "switches.GET.value", "needs a value"),
        (_set(("switches", "GET", "value"), 7), "switches.GET.value", "expected a string"),
        (
            _set(("groups", "dc-a", 0, "role"), "leader"),
            "groups.dc-a.0.role",
            "'leader' is not a role",
        ),
        (_set(("groups", "dc-a", 0, "enabled"), "yes"), "groups.dc-a.0.enabled", "true or false"),
        (_set(("groups",), {}), "groups", "no node is listed"),
        (_set(("groups",), {"dc-a": []}), "groups", "no node is listed"),
        (_set(("groups",), ["127.0.0.1:1"]), "groups", "expected a mapping"),
        (_set(("groups",), {"dc-a": "127.0.0.1:1"}), "groups.dc-a", "expected a list"),
        (_set(("groups",), {7: ["127.0.0.1:1"]}), "groups", "7 is not a name"),
        (_set(("route",), [1]), "route", "expected a mapping"),
        (_set(("switches",), ["GET"]), "switches", "expected a mapping"),
        (_set(("switches", "GET"), "miss"), "switches.GET", "expected a mapping"),
        (["not", "a", "mapping"], "", "expected a mapping, got list"),
        (_set(("limits",), {"get": {}}), "limits.get", "set rate, burst or concurrency"),
        (_set(("limits",), {"*": {"rate": 0}}), "limits.*.rate", "0 is not a number in 1..1e9"),
        (_set(("limits",), {"*": {"concurrency": 1.5}}), "limits.*.concurrency", "whole"),
        (_set(("limits",), {"*": {"queue": 5}}), "limits.*", "unknown key 'queue'"),
        (
            _set(("limits",), {"get": {"rate": 1}, "GET": {"rate": 2}}),
            "limits.GET",
            "a second limit for GET",
        ),
    ],
)
def test_every_data_error_names_the_key(doc: object, key: str, words: str) -> None:
    with pytest.raises(RegistryDataError) as info:
        parse_entry("feed", doc)
    error = info.value
    assert (error.cluster, error.key) == ("feed", key)
    assert words in error.problem
    where = "clusters.feed" + (f".{key}" if key else "")
    assert str(error).startswith(f"registry entry {where}: ")


def test_the_good_document_parses() -> None:
    """The base of the error cases is valid: each error comes from its one change."""
    entry = parse_entry("feed", good())
    assert [n.address for n in entry.nodes] == ["127.0.0.1:6379", "127.0.0.1:6389"]


# ----------------------------------------------------------------------------------------------
# From config


def test_entry_from_a_replicated_config() -> None:
    config = config_of(
        "feed",
        replicated_cluster(
            governance={
                "switch": {"mode": "miss"},
                "operations": {
                    "get": {"switch": {"mode": "fallback", "value": "n/a"}},
                    "set": {"switch": {"mode": "off"}},
                },
            }
        ),
    )
    entry = entry_from_config(config)
    assert entry.nodes == (
        NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY, 100, True),
        NodeEntry("127.0.0.1:6389", "dc-b", NodeRole.REPLICA, 50, True),
    )
    assert dict(entry.route) == {"dc-a": 100, "dc-b": 0}
    assert entry.switches == (
        SwitchEntry(SwitchMode.MISS, None, None, "set in config"),
        SwitchEntry(SwitchMode.FALLBACK, "GET", "n/a", "set in config"),
    )
    assert parse_entry("feed", entry_document(entry)) == entry


def test_entry_from_a_config_without_switches_has_none() -> None:
    assert entry_from_config(config_of("feed", replicated_cluster())).switches == ()


def test_entry_from_a_one_node_config_makes_it_primary() -> None:
    cluster = replicated_cluster(groups={"dc-a": ["127.0.0.1:6379"]}, route={"dc-a": 100})
    entry = entry_from_config(config_of("feed", cluster))
    assert entry.nodes == (NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY),)


def test_entry_from_a_sharded_config_has_no_roles() -> None:
    entry = entry_from_config(config_of("shards", sharded_cluster()))
    assert entry.nodes == (
        NodeEntry("127.0.0.1:7001", "dc-a", None),
        NodeEntry("127.0.0.1:7002", "dc-a", None),
    )
    assert dict(entry.route) == {"dc-a": 100}


def test_entry_from_a_motan2_config_has_no_roles() -> None:
    cluster = motan2_cluster(governance={"operations": {"echo": {"switch": {"mode": "error"}}}})
    entry = entry_from_config(config_of("echo", cluster))
    assert [(n.address, n.group, n.role) for n in entry.nodes] == [
        ("127.0.0.1:8100", "dc-a", None),
        ("127.0.0.1:8101", "dc-a", None),
        ("127.0.0.1:8200", "dc-b", None),
    ]
    assert dict(entry.route) == {"dc-a": 100, "dc-b": 0}
    assert entry.switches == (SwitchEntry(SwitchMode.ERROR, "ECHO", None, "set in config"),)


# ----------------------------------------------------------------------------------------------
# Cluster state


def test_cluster_state_leaves_disabled_nodes_out() -> None:
    config = config_of("feed", replicated_cluster())
    entry = ClusterEntry(
        (
            NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY, 100),
            NodeEntry("127.0.0.1:6389", "dc-b", NodeRole.REPLICA, 40),
            NodeEntry("127.0.0.1:6399", "dc-b", NodeRole.REPLICA, enabled=False),
        ),
        MappingProxyType({"dc-a": 10, "dc-b": 90}),
    )
    state = cluster_state("feed", entry, config, 7)
    assert state.version == 7
    assert [(n.address, n.group, n.weight, n.primary) for n in state.nodes] == [
        ("127.0.0.1:6379", "dc-a", 100, True),
        ("127.0.0.1:6389", "dc-b", 40, False),
    ]
    assert dict(state.route) == {"dc-a": 10, "dc-b": 90}
    assert (state.sharded, state.peers) == (False, False)


@pytest.mark.parametrize(
    ("roles", "words"),
    [
        ((NodeRole.REPLICA, NodeRole.REPLICA), "0 enabled primaries (none)"),
        (
            (NodeRole.PRIMARY, NodeRole.PRIMARY),
            "2 enabled primaries (127.0.0.1:6379, 127.0.0.1:6389)",
        ),
    ],
)
def test_cluster_state_needs_exactly_one_primary(
    roles: tuple[NodeRole, NodeRole], words: str
) -> None:
    config = config_of("feed", replicated_cluster())
    entry = ClusterEntry(
        (
            NodeEntry("127.0.0.1:6379", "dc-a", roles[0]),
            NodeEntry("127.0.0.1:6389", "dc-b", roles[1]),
        ),
        MappingProxyType({"dc-a": 100}),
    )
    with pytest.raises(RegistryDataError) as info:
        cluster_state("feed", entry, config, 1)
    assert info.value.key == "groups"
    assert words in info.value.problem


def test_cluster_state_counts_a_disabled_primary_as_none() -> None:
    config = config_of("feed", replicated_cluster())
    entry = ClusterEntry(
        (
            NodeEntry("127.0.0.1:6379", "dc-a", NodeRole.PRIMARY, enabled=False),
            NodeEntry("127.0.0.1:6389", "dc-b", NodeRole.REPLICA),
            NodeEntry("127.0.0.1:6399", "dc-b", NodeRole.REPLICA),
        ),
        MappingProxyType({"dc-a": 100}),
    )
    with pytest.raises(RegistryDataError, match="0 enabled primaries"):
        cluster_state("feed", entry, config, 1)


def test_cluster_state_takes_a_lone_node_as_the_primary() -> None:
    config = config_of("feed", replicated_cluster())
    entry = ClusterEntry((NodeEntry("127.0.0.1:6379", "dc-a"),), MappingProxyType({"dc-a": 100}))
    state = cluster_state("feed", entry, config, 1)
    assert [(n.address, n.primary) for n in state.nodes] == [("127.0.0.1:6379", True)]


def test_cluster_state_needs_an_enabled_node() -> None:
    config = config_of("shards", sharded_cluster())
    entry = ClusterEntry(
        (NodeEntry("127.0.0.1:7001", "dc-a", enabled=False),), MappingProxyType({"dc-a": 100})
    )
    with pytest.raises(RegistryDataError) as info:
        cluster_state("shards", entry, config, 1)
    assert (info.value.key, info.value.problem) == ("groups", "no node is enabled")


def test_cluster_state_of_a_sharded_cluster() -> None:
    config = config_of("shards", sharded_cluster())
    entry = entry_from_config(config)
    state = cluster_state("shards", entry, config, 3)
    assert (state.sharded, state.peers) == (True, False)
    assert [n.address for n in state.nodes] == ["127.0.0.1:7001", "127.0.0.1:7002"]
    assert not any(n.primary for n in state.nodes)


def test_cluster_state_of_a_motan2_cluster() -> None:
    config = config_of("echo", motan2_cluster())
    state = cluster_state("echo", entry_from_config(config), config, 4)
    assert (state.sharded, state.peers) == (False, True)
    assert len(state.nodes) == 3
    assert not any(n.primary for n in state.nodes)


def test_switches_of() -> None:
    entry = ClusterEntry(
        (NodeEntry("127.0.0.1:1", "a"),),
        MappingProxyType({}),
        (
            SwitchEntry(SwitchMode.MISS, None, None, "sick"),
            SwitchEntry(SwitchMode.FALLBACK, "GET", "n/a", ""),
        ),
    )
    assert switches_of("feed", entry) == [
        Switch("feed", SwitchMode.MISS, None, None, "sick"),
        Switch("feed", SwitchMode.FALLBACK, "GET", b"n/a", ""),
    ]
    assert switches_of("feed", ClusterEntry(entry.nodes, entry.route)) == []


def test_limit_overrides_replace_the_configured_scopes_only() -> None:
    configured = LimiterConfig(
        LimitConfig(rate=100.0),
        {"GET": LimitConfig(concurrency=5), "SET": LimitConfig(rate=10.0)},
    )
    entry = parse_entry(
        "c",
        {
            "groups": {"dc-a": ["127.0.0.1:1"]},
            "limits": {"*": {"concurrency": 7}, "get": {"rate": 3}, "KEYS": {"concurrency": 1}},
        },
    )
    assert limits_of(entry, configured) == LimiterConfig(
        LimitConfig(concurrency=7),
        {
            "GET": LimitConfig(rate=3.0),
            "SET": LimitConfig(rate=10.0),
            "KEYS": LimitConfig(concurrency=1),
        },
    )
    none = parse_entry("c", {"groups": {"dc-a": ["127.0.0.1:1"]}})
    assert limits_of(none, configured) == configured
