"""Rules of the config that span keys: the primary of a replicated cluster, what
``idempotent`` may say, keys that moved, and the protocol table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resmesh.call import Protocol
from resmesh.cluster.topology import topology_from_config
from resmesh.config import (
    PROTOCOLS,
    Address,
    ConfigError,
    NodeConfig,
    NodeRole,
    RedisSettings,
    load_config,
    parse_config,
)
from resmesh.knobs import knobs

SOURCE = Path("examples/rules.yaml")


def config(groups: dict[str, list[Any]], **cluster: Any) -> dict[str, Any]:
    return {
        "clusters": {
            "c": {"protocol": "redis", "listen": "127.0.0.1:6380", "groups": groups, **cluster}
        }
    }


def error_for(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    return info.value


def primary(address: str) -> dict[str, str]:
    return {"address": address, "role": "primary"}


# --- the primary -------------------------------------------------------------------------------


def test_the_marked_node_is_the_primary_and_the_others_replicas() -> None:
    data = config({"a": ["h:1", "h:2"], "b": [primary("h:3")]}, route={"a": 100, "b": 0})
    cluster = parse_config(data, SOURCE).clusters["c"]
    assert cluster.primary == NodeConfig(Address("h", 3), 100, NodeRole.PRIMARY)
    assert [n.role for n in cluster.groups["a"]] == [NodeRole.REPLICA, NodeRole.REPLICA]
    # The topology takes the configured primary, not the heaviest group's first node.
    assert topology_from_config(cluster).primary.address == "h:3"


def test_replica_may_be_written_and_a_primary_may_take_no_reads() -> None:
    data = config({"a": [{"address": "h:1", "role": "replica"}, {**primary("h:2"), "weight": 0}]})
    cluster = parse_config(data, SOURCE).clusters["c"]
    assert cluster.primary == NodeConfig(Address("h", 2), 0, NodeRole.PRIMARY)
    assert topology_from_config(cluster).primary.address == "h:2"


def test_one_node_is_the_primary_without_saying_so() -> None:
    cluster = parse_config(config({"a": ["h:1"]}), SOURCE).clusters["c"]
    assert cluster.primary == NodeConfig(Address("h", 1), 100, NodeRole.PRIMARY)
    marked = parse_config(config({"a": [primary("h:1")]}), SOURCE).clusters["c"]
    assert marked.primary == cluster.primary


def test_no_primary_names_the_one_that_was_implicit(tmp_path: Path) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "clusters:\n"
        "  c:\n"
        "    protocol: redis\n"
        "    listen: 127.0.0.1:6380\n"
        "    groups:\n"
        "      a: [10.0.0.1:6379]\n"
        "      b: [{address: 10.0.0.2:6379, weight: 0}, 10.0.0.3:6379]\n"
        "    route: {a: 10, b: 90}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    found = info.value
    assert (found.key, found.line) == ("clusters.c.groups", 5)
    assert "replicated cluster of 3 nodes names no primary" in found.problem
    assert "{address: 10.0.0.3:6379, role: primary}" in found.fix
    assert "until now the first node of the heaviest-routed group was the primary" in found.fix
    assert "clusters.c.groups.b[1]" in found.fix


def test_two_primaries() -> None:
    found = error_for(config({"a": [primary("h:1")], "b": [primary("h:2")]}))
    assert found.key == "clusters.c.groups.b[0].role"
    assert "second node with role: primary (the first is clusters.c.groups.a[0])" in found.problem
    assert "keep role: primary on one node" in found.fix


def test_a_lone_node_cannot_be_a_replica() -> None:
    found = error_for(config({"a": [{"address": "h:1", "role": "replica"}]}))
    assert found.key == "clusters.c.groups.a[0].role"
    assert "remove role" in found.fix


def test_a_sharded_cluster_refuses_role() -> None:
    found = error_for(config({"a": [primary("h:1"), "h:2"]}, mode="sharded"))
    assert found.key == "clusters.c.groups.a[0].role"
    assert "every node owns a slice of the keys" in found.problem
    assert "remove role" in found.fix
    cluster = parse_config(config({"a": ["h:1", "h:2"]}, mode="sharded"), SOURCE).clusters["c"]
    assert cluster.primary is None
    assert {node.role for node in cluster.groups["a"]} == {None}


def test_a_bad_role() -> None:
    found = error_for(config({"a": [{"address": "h:1", "role": "master"}, "h:2"]}))
    assert found.key == "clusters.c.groups.a[0].role"
    assert "expected one of primary, replica" in found.problem


# --- idempotent --------------------------------------------------------------------------------


def operations(**settings: dict[str, Any]) -> dict[str, Any]:
    return config({"a": ["h:1"]}, governance={"operations": settings})


def test_idempotent_false_on_a_read_and_true_on_a_read_are_kept() -> None:
    governance = (
        parse_config(operations(get={"idempotent": False}, mget={"idempotent": True}), SOURCE)
        .clusters["c"]
        .governance
    )
    assert governance.operations["GET"].idempotent is False
    assert governance.operations["MGET"].idempotent is True
    assert parse_config(operations(set={"idempotent": False}), SOURCE)  # a no-op, and true


@pytest.mark.parametrize(
    ("operation", "reason"),
    [
        ("SET", "SET is a write: a Redis write runs on the primary only"),
        ("incr", "INCR is a write"),
        ("BLPOP", "BLPOP is a write"),
        ("subscribe", "SUBSCRIBE blocks or belongs to a session pinned to one connection"),
        ("CLIENT|LIST", "CLIENT LIST is about the node it runs on, not the data"),
        ("JSON.GET", "JSON.GET is a module command"),
    ],
)
def test_idempotent_true_is_refused_where_nothing_could_be_retried(
    operation: str, reason: str
) -> None:
    found = error_for(operations(**{operation: {"idempotent": True}}))
    assert found.key == f"clusters.c.governance.operations.{operation}.idempotent"
    assert reason in found.problem
    assert "so there is no other node to retry or hedge it on" in found.problem
    assert "remove idempotent: true" in found.fix


def test_idempotent_true_from_a_preset_names_the_preset(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    preset = tmp_path / "policies" / "writes.yaml"
    preset.write_text("operations:\n  set: {idempotent: true}\n", encoding="utf-8")
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "clusters:\n  c: {protocol: redis, listen: 127.0.0.1:6380, groups: {a: [h:1]}, "
        "policy: writes}\n",
        encoding="utf-8",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert (info.value.file, info.value.key, info.value.line) == (
        str(preset),
        "operations.set.idempotent",
        2,
    )


# --- keys that moved ---------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["max_bulk_len", "max_multibulk_len", "max_request_buffer"])
def test_redis_bounds_under_limits_say_where_they_moved(key: str) -> None:
    found = error_for(config({"a": ["h:1"]}, limits={key: 1024}))
    assert found.key == f"clusters.c.limits.{key}"
    assert f"limits.{key} has moved" in found.problem
    assert found.fix == f"moved: write it as clusters.c.redis.{key}"


def test_the_redis_section() -> None:
    data = config({"a": ["h:1"]}, redis={"max_bulk_len": "1MiB", "max_multibulk_len": 16})
    cluster = parse_config(data, SOURCE).clusters["c"]
    assert cluster.redis == RedisSettings(max_bulk_len=1 << 20, max_multibulk_len=16)
    assert cluster.limits.max_clients == 10000


# --- the protocol table ------------------------------------------------------------------------


def test_each_implemented_protocol_is_a_table_entry() -> None:
    assert list(PROTOCOLS) == [Protocol.REDIS, Protocol.MYSQL, Protocol.MOTAN2]
    redis = PROTOCOLS[Protocol.REDIS]
    assert redis.settings is RedisSettings
    assert list(knobs(redis.settings)) == [
        "max_bulk_len",
        "max_multibulk_len",
        "max_request_buffer",
    ]


def test_a_protocol_without_an_entry_is_not_implemented_yet(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every protocol has its entry now: take one away to see what a missing entry says.
    remaining = {p: entry for p, entry in PROTOCOLS.items() if p is not Protocol.MYSQL}
    monkeypatch.setattr("resmesh.config.cluster.PROTOCOLS", remaining)
    found = error_for(config({"a": ["h:1"]}, protocol="mysql"))
    assert found.key == "clusters.c.protocol"
    assert "protocol 'mysql' is not implemented yet in this version" in found.problem
    assert found.fix == f"use protocol: {', '.join(remaining)}, or remove this cluster for now"


def test_a_cluster_may_not_have_another_protocols_section() -> None:
    found = error_for(config({"a": ["h:1"]}, mysql={}))
    assert (found.key, found.problem) == ("clusters.c.mysql", "unknown key 'mysql'")
