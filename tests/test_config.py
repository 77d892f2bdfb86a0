"""Tests for resmesh.config: the quickstart loads, and every bad config says where and how to fix.

The error tests assert on the message text on purpose: the message *is* the feature (an error
names the file, the key path and the fix).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.config import (
    Address,
    BackendConfig,
    ClientLimits,
    ClusterConfig,
    Config,
    ConfigError,
    GatewayConfig,
    GovernanceConfig,
    Mode,
    NodeConfig,
    NodeRole,
    Protocol,
    RedisSettings,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from resmesh.policies.limit import LimitConfig

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
SOURCE = Path("examples/bad.yaml")


def valid() -> dict[str, Any]:
    """A small, complete config as YAML would load it; each test mutates its own copy."""
    return {
        "gateway": {"app": "demo-app", "admin": "127.0.0.1:8002", "drain_timeout": "5s"},
        "users": {"app": {"password": "app", "clusters": ["feed-cache"]}},
        "clusters": {
            "feed-cache": {
                "protocol": "redis",
                "listen": "127.0.0.1:6380",
                "mode": "replicated",
                "groups": {
                    "dc-a": [{"address": "127.0.0.1:6379", "role": "primary"}],
                    "dc-b": [{"address": "10.0.0.2:6379", "weight": 50}],
                },
                "route": {"dc-a": 100, "dc-b": 0},
                "backend": {"password": None, "connect_timeout": "2s", "command_timeout": 5},
                "limits": {"max_clients": 10000, "client_idle_timeout": 0},
                "redis": {"max_bulk_len": "512MiB"},
            }
        },
    }


def error_for(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    return info.value


def mutated(change: Callable[[dict[str, Any]], None]) -> dict[str, Any]:
    data = valid()
    change(data)
    return data


def cluster(data: dict[str, Any]) -> dict[str, Any]:
    result: dict[str, Any] = data["clusters"]["feed-cache"]
    return result


# --- the good path ---------------------------------------------------------------------------


def test_quickstart_loads() -> None:
    config = load_config(QUICKSTART)
    assert config.source == QUICKSTART
    assert config.gateway == GatewayConfig(
        app="demo-app", admin=Address("127.0.0.1", 8002), drain_timeout=5.0, workers=1
    )
    assert {name: user.clusters for name, user in config.users.items()} == {
        "app": frozenset({"user-db"})
    }
    db = config.clusters["user-db"]
    assert (db.protocol, str(db.listen), db.backend.username, db.backend.password) == (
        Protocol.MYSQL,
        "127.0.0.1:3307",
        "root",
        "",
    )
    feed = config.clusters["feed-cache"]
    assert feed.protocol == "redis"  # a StrEnum: compares and formats as its string
    assert feed.protocol is Protocol.REDIS
    assert feed.listen == Address("127.0.0.1", 6380)
    assert str(feed.listen) == "127.0.0.1:6380"
    assert feed.mode is Mode.REPLICATED
    primary = NodeConfig(Address("127.0.0.1", 6379), 100, NodeRole.PRIMARY)
    assert dict(feed.groups) == {"dc-a": (primary,)}
    assert feed.primary == primary  # the one node: the primary without saying so
    assert dict(feed.route) == {"dc-a": 100}
    assert feed.backend == BackendConfig()
    assert feed.limits == ClientLimits()
    assert feed.redis == RedisSettings()
    assert feed.policy == "cache"
    assert feed.governance.preset == "cache"
    assert feed.governance.hedge.enabled


def test_full_config_parses() -> None:
    config = parse_config(valid(), SOURCE)
    feed = config.clusters["feed-cache"]
    assert list(feed.groups) == ["dc-a", "dc-b"]
    assert feed.groups["dc-b"] == (NodeConfig(Address("10.0.0.2", 6379), 50, NodeRole.REPLICA),)
    assert feed.primary == NodeConfig(Address("127.0.0.1", 6379), 100, NodeRole.PRIMARY)
    assert feed.backend.command_timeout == 5.0
    assert config.users["app"].clusters == frozenset({"feed-cache"})
    assert config.users["app"].password == "app"


def test_defaults_fill_in() -> None:
    config = parse_config(
        {
            "clusters": {
                "c": {
                    "protocol": "redis",
                    "listen": "[::1]:0",
                    "groups": {"x": [{"address": "a:1", "role": "primary"}, "b:2"], "y": ["c:3"]},
                }
            }
        },
        SOURCE,
    )
    assert config.gateway == GatewayConfig()
    assert dict(config.users) == {}
    c = config.clusters["c"]
    assert c.mode is Mode.REPLICATED
    assert dict(c.route) == {"x": 100, "y": 0}
    assert c.policy is None
    assert c.governance == GovernanceConfig(preset="default")
    assert c.listen == Address("::1", 0)
    assert str(c.listen) == "[::1]:0"


def test_route_fills_missing_groups_with_zero() -> None:
    data = valid()
    cluster(data)["route"] = {"dc-b": 30}
    assert dict(parse_config(data, SOURCE).clusters["feed-cache"].route) == {"dc-a": 0, "dc-b": 30}


def test_null_sections_mean_defaults() -> None:
    data = valid()
    data["gateway"] = None
    data["users"] = None
    cluster(data)["backend"] = None
    cluster(data)["limits"] = None
    cluster(data)["redis"] = None
    config = parse_config(data, SOURCE)
    assert config.gateway == GatewayConfig()
    assert config.clusters["feed-cache"].limits == ClientLimits()
    assert config.clusters["feed-cache"].redis == RedisSettings()


def test_sharded_and_policy() -> None:
    data = valid()
    cluster(data)["mode"] = "sharded"
    cluster(data)["groups"]["dc-a"] = ["127.0.0.1:6379"]  # no primary: every node owns keys
    cluster(data)["policy"] = "cache"
    c = parse_config(data, SOURCE).clusters["feed-cache"]
    assert c.mode is Mode.SHARDED
    assert c.primary is None
    assert c.policy == "cache"


# --- immutability ------------------------------------------------------------------------------


def test_objects_are_frozen() -> None:
    config = parse_config(valid(), SOURCE)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway = GatewayConfig()  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.clusters["feed-cache"].listen = Address("h", 1)  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.clusters["feed-cache"].groups["dc-a"][0].weight = 1  # type: ignore[misc]


def test_objects_are_slotted() -> None:
    for cls in (
        Address,
        NodeConfig,
        BackendConfig,
        ClientLimits,
        RedisSettings,
        ClusterConfig,
        Config,
    ):
        assert "__slots__" in vars(cls), cls


def test_mappings_are_read_only() -> None:
    config = parse_config(valid(), SOURCE)
    feed = config.clusters["feed-cache"]
    for mapping in (config.users, config.clusters, feed.groups, feed.route):
        with pytest.raises(TypeError):
            mapping["x"] = None  # type: ignore[index]
    assert isinstance(feed.groups["dc-a"], tuple)
    assert isinstance(config.users["app"].clusters, frozenset)


def test_address_validates_on_construction() -> None:
    with pytest.raises(ValueError):
        Address("", 1)
    with pytest.raises(ValueError):
        Address("h", 65536)


# --- value parsers -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0.0),
        (5, 5.0),
        (0.25, 0.25),
        ("250ms", 0.25),
        ("5s", 5.0),
        ("1.5s", 1.5),
        ("2m", 120.0),
        ("1h", 3600.0),
    ],
)
def test_durations(text: object, expected: float) -> None:
    assert math.isclose(parse_duration(text), expected)


@pytest.mark.parametrize(
    "text", ["5", "5 sec", "-1s", -1, math.inf, math.nan, True, None, "s", "8d", 10**9, [1]]
)
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (0, 0),
        (1048576, 1048576),
        ("100B", 100),
        ("64KiB", 64 * 1024),
        ("512MiB", 512 * 1024 * 1024),
        ("1GiB", 1024**3),
        ("10MB", 10_000_000),
        ("2KB", 2000),
    ],
)
def test_sizes(text: object, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["512mb", "1.5GiB", "-1", -5, True, 1.0, "GiB", "9" * 30 + "B"])
def test_bad_sizes(text: object) -> None:
    with pytest.raises(ValueError):
        parse_size(text)


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:6380", "127.0.0.1", 6380),
        ("localhost:6379", "localhost", 6379),
        ("[::1]:6380", "::1", 6380),
        ("redis-1.dc-a.example.com:7000", "redis-1.dc-a.example.com", 7000),
        ("0.0.0.0:0", "0.0.0.0", 0),
    ],
)
def test_address_parse(text: str, host: str, port: int) -> None:
    address = Address.parse(text)
    assert (address.host, address.port) == (host, port)
    assert str(address) == text


@pytest.mark.parametrize(
    "text",
    [
        "nonsense",
        "::1:6380",
        ":6380",
        "h:",
        "h:70000",
        "h:-1",
        "[::1]6380",
        "[nothex]:1",
        "a b:1",
        "999.1.1.1:1",
        "h:\uff16\uff13\uff18\uff10",  # full-width digits: int() would accept them
    ],
)
def test_address_parse_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        Address.parse(text)


# --- every validation error names file, key path and fix ---------------------------------------


def _set(path: tuple[str | int, ...], value: object) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        target[path[-1]] = value

    return change


def _delete(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        target: Any = data
        for part in path[:-1]:
            target = target[part]
        del target[path[-1]]

    return change


def _both(*changes: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        for one in changes:
            one(data)

    return change


C = ("clusters", "feed-cache")


def _as_mysql_without_login(data: dict[str, Any]) -> None:
    cluster = data["clusters"]["feed-cache"]
    cluster["protocol"] = "mysql"
    del cluster["redis"]
    cluster["backend"].pop("username", None)


ERROR_CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str, str]] = [
    # (case id, change, key path, words in the problem, words in the fix)
    (
        "unknown key with suggestion",
        _set((*C, "lisen"), "127.0.0.1:6380"),
        "clusters.feed-cache.lisen",
        "unknown key 'lisen'",
        "did you mean 'listen'?",
    ),
    (
        "unknown key without suggestion",
        _set((*C, "zzzzzz"), 1),
        "clusters.feed-cache.zzzzzz",
        "unknown key 'zzzzzz'",
        "known keys here: protocol, listen",
    ),
    (
        "unknown top-level key",
        _set(("gatway",), {}),
        "gatway",
        "unknown key 'gatway'",
        "did you mean 'gateway'?",
    ),
    (
        "etcd registry without endpoints",
        _set(("registry",), {"kind": "etcd"}),
        "registry.endpoints",
        "needs its endpoints",
        "endpoints: [http://127.0.0.1:2379]",
    ),
    (
        "etcd endpoint not a URL",
        _set(("registry",), {"kind": "etcd", "endpoints": ["127.0.0.1:2379"]}),
        "registry.endpoints[0]",
        "is not an etcd client URL",
        "http://HOST:PORT",
    ),
    (
        "file registry with endpoints",
        _set(("registry",), {"kind": "file", "endpoints": ["http://127.0.0.1:2379"]}),
        "registry.endpoints",
        "a file registry has no endpoints",
        "set kind: etcd",
    ),
    (
        "unknown registry kind",
        _set(("registry",), {"kind": "zookeeper"}),
        "registry.kind",
        "zookeeper",
        "etcd",
    ),
    (
        "registry behaviour at start",
        _set(("registry",), {"unreachable_at_start": "wait"}),
        "registry.unreachable_at_start",
        "wait",
        "refuse",
    ),
    (
        "admin on a public address without a token",
        _set(("gateway", "admin"), "0.0.0.0:8002"),
        "gateway.admin",
        "reachable from other hosts",
        "admin_token",
    ),
    (
        "short admin token",
        _set(("gateway", "admin_token"), "short"),
        "gateway.admin_token",
        "shorter than 16 characters",
        "openssl rand",
    ),
    (
        "unknown metrics key",
        _set(("metrics",), {"prometheus": True}),
        "metrics.prometheus",
        "unknown key 'prometheus'",
        "known keys here",
    ),
    (
        "graphite without an address",
        _set(("metrics",), {"graphite": {"interval": "10s"}}),
        "metrics.graphite.address",
        "missing required key 'address'",
        "address",
    ),
    (
        "access log sample out of range",
        _set(("metrics",), {"access_log": {"path": "stdout", "sample": 2}}),
        "metrics.access_log.sample",
        "2",
        "0.1",
    ),
    (
        "bad listen",
        _set((*C, "listen"), "nonsense"),
        "clusters.feed-cache.listen",
        "expected host:port, got 'nonsense'",
        "127.0.0.1:6380",
    ),
    (
        "listen as a number",
        _set((*C, "listen"), 6380),
        "clusters.feed-cache.listen",
        "got 6380 (a number)",
        "host:port",
    ),
    (
        "missing listen",
        _delete((*C, "listen")),
        "clusters.feed-cache.listen",
        "missing required key 'listen'",
        "add it",
    ),
    (
        "missing protocol",
        _delete((*C, "protocol")),
        "clusters.feed-cache.protocol",
        "missing required key 'protocol'",
        "protocol: redis",
    ),
    (
        "mysql cluster with a redis section",
        _set((*C, "protocol"), "mysql"),
        "clusters.feed-cache.redis",
        "unknown key 'redis'",
        "known keys here: protocol, listen",
    ),
    (
        "mysql cluster without a backend login",
        _as_mysql_without_login,
        "clusters.feed-cache.backend.username",
        "a MySQL cluster needs the gateway's own login to its nodes",
        "add backend: {username: gateway, password: secret}",
    ),
    (
        "motan2 cluster with a listen address",
        _set((*C, "protocol"), "motan2"),
        "clusters.feed-cache.listen",
        "a Motan2 cluster has no listen address of its own",
        "motan2: {client: 127.0.0.1:9981}",
    ),
    (
        "unknown protocol",
        _set((*C, "protocol"), "redsi"),
        "clusters.feed-cache.protocol",
        "expected one of redis, mysql, motan2, got 'redsi'",
        "did you mean 'redis'?",
    ),
    (
        "bad mode",
        _set((*C, "mode"), "shard"),
        "clusters.feed-cache.mode",
        "expected one of replicated, sharded",
        "did you mean 'sharded'?",
    ),
    (
        "empty groups",
        _set((*C, "groups"), {}),
        "clusters.feed-cache.groups",
        "no groups defined",
        "dc-a: [127.0.0.1:6379]",
    ),
    (
        "group with no nodes",
        _set((*C, "groups", "dc-a"), []),
        "clusters.feed-cache.groups.dc-a",
        "group 'dc-a' has no nodes",
        "list at least one node",
    ),
    (
        "group not a list",
        _set((*C, "groups", "dc-a"), "127.0.0.1:6379"),
        "clusters.feed-cache.groups.dc-a",
        "expected a list of nodes",
        "dc-a: [127.0.0.1:6379]",
    ),
    (
        "bad node",
        _set((*C, "groups", "dc-a"), ["127.0.0.1"]),
        "clusters.feed-cache.groups.dc-a[0]",
        "missing ':port'",
        "127.0.0.1:6379",
    ),
    (
        "node port zero",
        _set((*C, "groups", "dc-a"), ["127.0.0.1:0"]),
        "clusters.feed-cache.groups.dc-a[0]",
        "port 0",
        "host:port",
    ),
    (
        "node weight out of range",
        _set((*C, "groups", "dc-b", 0, "weight"), 101),
        "clusters.feed-cache.groups.dc-b[0].weight",
        "out of range 0..100",
        "from 0 to 100",
    ),
    (
        "node unknown key",
        _set((*C, "groups", "dc-b", 0, "wieght"), 1),
        "clusters.feed-cache.groups.dc-b[0].wieght",
        "unknown key 'wieght'",
        "did you mean 'weight'?",
    ),
    (
        "duplicate node",
        _set((*C, "groups", "dc-b"), ["127.0.0.1:6379"]),
        "clusters.feed-cache.groups.dc-b[0]",
        "listed twice (also at clusters.feed-cache.groups.dc-a[0])",
        "list each node once",
    ),
    (
        "node is our own listener",
        _set((*C, "groups", "dc-a"), [{"address": "localhost:6380", "role": "primary"}]),
        "clusters.feed-cache.groups.dc-a[0]",
        "would forward to itself",
        "real server",
    ),
    (
        "route to unknown group",
        _set((*C, "route"), {"dc-c": 100}),
        "clusters.feed-cache.route.dc-c",
        "unknown group 'dc-c'",
        "did you mean",
    ),
    (
        "all route weights zero",
        _set((*C, "route"), {"dc-a": 0, "dc-b": 0}),
        "clusters.feed-cache.route",
        "every route weight is 0",
        "weight above 0",
    ),
    (
        "route weight out of range",
        _set((*C, "route", "dc-a"), 150),
        "clusters.feed-cache.route.dc-a",
        "out of range 0..100",
        "from 0 to 100",
    ),
    (
        "route weight as string",
        _set((*C, "route", "dc-a"), "100"),
        "clusters.feed-cache.route.dc-a",
        "expected a whole number, got '100'",
        "remove the quotes: 100",
    ),
    (
        "route to group whose nodes are all drained",
        _both(_set((*C, "groups", "dc-b", 0, "weight"), 0), _set((*C, "route", "dc-b"), 50)),
        "clusters.feed-cache.route.dc-b",
        "every node in it has weight 0",
        "dc-b: 0",
    ),
    (
        "bad duration",
        _set((*C, "backend", "connect_timeout"), "5 sec"),
        "clusters.feed-cache.backend.connect_timeout",
        "expected a duration, got '5 sec'",
        "ms, s, m, h",
    ),
    (
        "zero timeout",
        _set((*C, "backend", "command_timeout"), 0),
        "clusters.feed-cache.backend.command_timeout",
        "more than zero",
        "positive duration",
    ),
    (
        "negative drain",
        _set(("gateway", "drain_timeout"), -1),
        "gateway.drain_timeout",
        "cannot be negative",
        "e.g. 5s",
    ),
    (
        "bad size unit",
        _set((*C, "redis", "max_bulk_len"), "512mb"),
        "clusters.feed-cache.redis.max_bulk_len",
        "expected a size, got '512mb'",
        "MiB",
    ),
    (
        "bulk larger than buffer",
        _set((*C, "redis", "max_request_buffer"), "1MiB"),
        "clusters.feed-cache.redis.max_bulk_len",
        "larger than max_request_buffer",
        "raise max_request_buffer",
    ),
    (
        "max_clients zero",
        _set((*C, "limits", "max_clients"), 0),
        "clusters.feed-cache.limits.max_clients",
        "out of range",
        "from 1 to",
    ),
    (
        "connections a float",
        _set((*C, "backend", "connections"), 2.0),
        "clusters.feed-cache.backend.connections",
        "expected a whole number, got 2.0",
        "write a whole number: 2",
    ),
    (
        "bool is not an int",
        _set(("gateway", "workers"), True),
        "gateway.workers",
        "got True (a boolean)",
        "whole number",
    ),
    (
        "password as a number",
        _set((*C, "backend", "password"), 123),
        "clusters.feed-cache.backend.password",
        "expected a string, got 123",
        "quote it: '123'",
    ),
    (
        "username without password",
        _set((*C, "backend", "username"), "gw"),
        "clusters.feed-cache.backend.password",
        "needs a password",
        "add password",
    ),
    (
        "backend not a mapping",
        _set((*C, "backend"), ["x"]),
        "clusters.feed-cache.backend",
        "expected a mapping, got ['x'] (a list)",
        "write it as a mapping",
    ),
    (
        "no clusters",
        _set(("clusters",), {}),
        "clusters",
        "no clusters defined",
        "add one",
    ),
    (
        "missing clusters",
        _delete(("clusters",)),
        "clusters",
        "missing required key 'clusters'",
        "add it",
    ),
    (
        "bad cluster name",
        _set(("clusters", "feed cache"), cluster(valid())),
        "clusters.feed cache",
        "not a valid cluster name",
        "letters, digits",
    ),
    (
        "boolean key",
        _set((*C, "groups", True), ["1.2.3.4:5"]),
        "clusters.feed-cache.groups",
        "keys must be strings, got True (a boolean)",
        "quote the key",
    ),
    (
        "duplicate listen across clusters",
        _set(("clusters", "other"), {**cluster(valid()), "listen": "0.0.0.0:6380"}),
        "clusters.other.listen",
        "already used by clusters.feed-cache.listen",
        "its own port",
    ),
    (
        "listen on the admin port",
        _set((*C, "listen"), "127.0.0.1:8002"),
        "clusters.feed-cache.listen",
        "already used by gateway.admin",
        "its own port",
    ),
    (
        "bad admin",
        _set(("gateway", "admin"), "8002"),
        "gateway.admin",
        "expected host:port",
        "127.0.0.1:8002",
    ),
    (
        "user names unknown cluster",
        _set(("users", "app", "clusters"), ["feed-cach"]),
        "users.app.clusters[0]",
        "unknown cluster 'feed-cach'",
        "did you mean 'feed-cache'?",
    ),
    (
        "user without password",
        _delete(("users", "app", "password")),
        "users.app.password",
        "missing required key 'password'",
        "add it",
    ),
    (
        "user with no clusters",
        _set(("users", "app", "clusters"), []),
        "users.app.clusters",
        "no cluster at all",
        "clusters: [feed-cache]",
    ),
    (
        "user clusters not a list",
        _set(("users", "app", "clusters"), "feed-cache"),
        "users.app.clusters",
        "expected a list of cluster names",
        "clusters: [feed-cache]",
    ),
    (
        "empty user password",
        _set(("users", "app", "password"), ""),
        "users.app.password",
        "empty string",
        "give a value",
    ),
    (
        "workers out of range",
        _set(("gateway", "workers"), 0),
        "gateway.workers",
        "out of range 1..256",
        "from 1 to 256",
    ),
]


@pytest.mark.parametrize(
    ("change", "key", "problem", "fix"),
    [case[1:] for case in ERROR_CASES],
    ids=[case[0] for case in ERROR_CASES],
)
def test_validation_errors(
    change: Callable[[dict[str, Any]], None], key: str, problem: str, fix: str
) -> None:
    error = error_for(mutated(change))
    assert error.file == str(SOURCE)
    assert error.key == key
    assert problem in error.problem
    assert fix in error.fix
    assert str(error) == f"{SOURCE}: {key}: {error.problem} — fix: {error.fix}"
    assert "\n" not in str(error)


def test_error_message_matches_the_documented_shape() -> None:
    error = error_for(mutated(_set((*C, "listen"), "nonsense")))
    assert str(error).startswith(
        "examples/bad.yaml: clusters.feed-cache.listen: expected host:port, got 'nonsense'"
    )
    assert str(error).endswith("— fix: write it as host:port, e.g. 127.0.0.1:6380")


@pytest.mark.parametrize(
    ("data", "problem"),
    [(None, "the file is empty"), ([1, 2], "top level must be a mapping"), ("x", "mapping")],
)
def test_top_level_not_a_mapping(data: object, problem: str) -> None:
    error = error_for(data)
    assert error.key is None
    assert problem in error.problem
    assert "clusters:" in error.fix or "quickstart" in error.fix


# --- errors from files: missing, syntax, lines -------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: config file not found — fix: ")


def test_directory_is_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="directory"):
        load_config(tmp_path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"gateway: {app: caf\xe9}\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_yaml_syntax_error_has_line(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n  a: {protocol: redis\n  b: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    error = info.value
    assert error.line is not None
    assert str(error).startswith(f"{path}:{error.line}: YAML syntax error")
    assert "fix:" in str(error)


def test_tab_indentation(tmp_path: Path) -> None:
    path = write(tmp_path, "clusters:\n\ta: 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.line == 2
    assert "spaces, not tabs" in info.value.fix


def test_empty_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="the file is empty"):
        load_config(write(tmp_path, "# nothing here\n"))


def test_validation_error_has_line(tmp_path: Path) -> None:
    text = QUICKSTART.read_text(encoding="utf-8").replace(
        "listen: 127.0.0.1:6380", "lisen: 127.0.0.1:6380"
    )
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    expected_line = 1 + text.splitlines().index(
        next(line for line in text.splitlines() if "lisen:" in line)
    )
    assert info.value.line == expected_line
    assert str(info.value) == (
        f"{path}:{expected_line}: clusters.feed-cache.lisen: unknown key 'lisen' "
        "— fix: did you mean 'listen'?"
    )


def test_duplicate_keys_are_refused(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "clusters:\n"
        "  a: {protocol: redis, listen: 127.0.0.1:6380, groups: {x: [h:1]}}\n"
        "  a: {protocol: redis, listen: 127.0.0.1:6381, groups: {x: [h:1]}}\n",
    )
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.key == "clusters.a"
    assert info.value.line == 3
    assert "appears twice" in info.value.problem


@pytest.mark.parametrize("written", ["2024-13-45", "2024-01-31", "2024-01-31T10:00:00"])
def test_nothing_is_read_as_a_date(tmp_path: Path, written: str) -> None:
    """No config value is a date: a password that looks like one is the text written (it
    was a date object, refused as not a string, or a PyYAML error with no key or line)."""
    config = load_config(
        write(
            tmp_path,
            "clusters:\n  c: {protocol: redis, listen: 127.0.0.1:6380, "
            f"groups: {{a: [127.0.0.1:6379]}}, backend: {{password: {written}}}}}\n",
        )
    )
    assert config.clusters["c"].backend.password == written


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "clusters:\n"
        "  a: &base\n"
        "    protocol: redis\n"
        "    listen: 127.0.0.1:7001\n"
        "    groups: {x: ['h:1']}\n"
        "  b:\n"
        "    <<: *base\n"
        "    listen: 127.0.0.1:7002\n",
    )
    config = load_config(path)
    assert [str(c.listen) for c in config.clusters.values()] == ["127.0.0.1:7001", "127.0.0.1:7002"]


def test_recursive_alias_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "clusters:\n  a: {protocol: redis, listen: 127.0.0.1:7001, groups: {x: &l [*l]}}\n",
    )
    with pytest.raises(ConfigError, match=r"groups\.x\[0\]"):
        load_config(path)


# --- hypothesis: junk in, ConfigError (or a Config) out, nothing else --------------------------

_KEYS = [
    "gateway",
    "users",
    "clusters",
    "feed-cache",
    "protocol",
    "listen",
    "mode",
    "groups",
    "route",
    "backend",
    "limits",
    "redis",
    "dc-a",
    "address",
    "weight",
    "role",
    "password",
    "app",
    "admin",
    "policy",
    "governance",
]
_WORDS = [
    "redis",
    "mysql",
    "replicated",
    "sharded",
    "127.0.0.1:6380",
    "127.0.0.1:6379",
    "[::1]:1",
    "5s",
    "250ms",
    "512MiB",
    "dc-a",
    "feed-cache",
    "cache",
    "default",
    "primary",
    "replica",
    "",
]
scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(max_size=12)
    | st.sampled_from(_WORDS)
)
keys = st.sampled_from(_KEYS) | st.text(max_size=8) | st.integers() | st.none() | st.booleans()
junk = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=25,
)


def _check(data: object) -> None:
    try:
        config = parse_config(data, SOURCE)
    except ConfigError as error:
        message = str(error)
        assert message.startswith(f"{SOURCE}")
        assert " — fix: " in message
        assert message.isprintable()  # one line, whatever the keys contained
        assert error.fix
    else:
        assert isinstance(config, Config)


@given(junk)
@settings(max_examples=300, deadline=None)
def test_junk_only_raises_config_error(data: object) -> None:
    _check(data)


def _paths(node: object, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


@given(st.data())
@settings(max_examples=300, deadline=None)
def test_mutated_valid_config_only_raises_config_error(data: st.DataObject) -> None:
    """Junk planted deep inside an otherwise valid config reaches every validator."""
    config: Any = copy.deepcopy(valid())
    for _ in range(data.draw(st.integers(1, 3))):
        paths = list(_paths(config))
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["replace", "delete", "add"]))
        if not path:
            if action == "replace":
                config = data.draw(junk)
            continue
        parent: Any = config
        for part in path[:-1]:
            parent = parent[part]
        if action == "replace":
            parent[path[-1]] = data.draw(junk)
        elif action == "delete":
            del parent[path[-1]]
        elif isinstance(parent[path[-1]], dict):
            parent[path[-1]][data.draw(keys)] = data.draw(junk)
    _check(config)


@given(
    st.text(alphabet=st.sampled_from(list("ab:1 -[]{},#&*!|>'\"\n\t.%@`?")), max_size=80)
    | st.text(max_size=40)
    | junk.map(lambda value: yaml.safe_dump(value, allow_unicode=True))
)
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_any_text_only_raises_config_error(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    path = tmp_path_factory.getbasetemp() / "fuzz.yaml"
    path.write_text(text, encoding="utf-8")
    try:
        load_config(path)
    except ConfigError as error:
        assert str(error).startswith(str(path))
        assert " — fix: " in str(error)
        assert str(error).isprintable()


# --- values the resolver or the wire would refuse at run time ---------------------------------


@pytest.mark.parametrize("host", ["cache..internal", "a" * 64 + ".example"])
@pytest.mark.parametrize("where", ["node", "listen"])
def test_a_host_the_resolver_refuses_is_a_config_error(
    tmp_path: Path, host: str, where: str
) -> None:
    """Accepted, these crashed the gateway at run time (IDNA refuses empty or long labels)."""
    node, listen = ("127.0.0.1:6379", "127.0.0.1:6380")
    if where == "node":
        node = f"{host}:6379"
    else:
        listen = f"{host}:6380"
    path = write(
        tmp_path,
        f"clusters:\n  c: {{protocol: redis, listen: '{listen}', groups: {{a: ['{node}']}}}}\n",
    )
    with pytest.raises(ConfigError, match="empty label or one over 63 characters"):
        load_config(path)


@pytest.mark.parametrize(
    "extra",
    [
        'backend: {password: "\\ud800"}',
        'governance: {switch: {mode: fallback, value: "x\\udfff"}}',
    ],
)
def test_a_string_that_is_not_text_is_a_config_error(tmp_path: Path, extra: str) -> None:
    path = write(
        tmp_path,
        "clusters:\n  c:\n    protocol: redis\n    listen: 127.0.0.1:6380\n"
        f"    groups: {{a: [127.0.0.1:6379]}}\n    {extra}\n",
    )
    with pytest.raises(ConfigError, match="lone surrogate") as info:
        load_config(path)
    assert info.value.line == 6


def test_without_a_route_the_first_group_must_have_a_node_that_takes_traffic(
    tmp_path: Path,
) -> None:
    path = write(
        tmp_path,
        "clusters:\n  c: {protocol: redis, listen: 127.0.0.1:6380, groups: "
        "{a: [{address: 127.0.0.1:6379, weight: 0}], b: [127.0.0.2:6379]}}\n",
    )
    with pytest.raises(ConfigError, match="every node in it has weight 0") as info:
        load_config(path)
    assert "route: {b: 100}" in info.value.fix


def test_an_endless_file_is_refused_not_read_forever() -> None:
    with pytest.raises(ConfigError, match="not a config file"):
        load_config("/dev/zero")


# --- users.NAME.limit ----------------------------------------------------------------------------


def _with_mysql(data: dict[str, Any]) -> None:
    data["clusters"]["orders-db"] = {
        "protocol": "mysql",
        "listen": "127.0.0.1:3307",
        "groups": {"dc-a": ["127.0.0.1:3306"]},
        "backend": {"username": "gateway", "password": "secret"},
    }
    data["users"]["app"]["clusters"] = ["orders-db"]


def test_a_users_limit_is_read_for_its_mysql_clusters() -> None:
    def change(data: dict[str, Any]) -> None:
        _with_mysql(data)
        data["users"]["app"]["limit"] = {"rate": 100, "concurrency": 8}

    config = parse_config(mutated(change), SOURCE)
    assert config.users["app"].limit == LimitConfig(rate=100, concurrency=8)
    assert parse_config(mutated(_with_mysql), SOURCE).users["app"].limit is None


def test_a_users_limit_on_a_redis_cluster_is_refused_with_its_key() -> None:
    def change(data: dict[str, Any]) -> None:
        data["users"]["app"]["limit"] = {"rate": 100}

    error = error_for(mutated(change))
    assert "users.app.limit" in str(error)
    assert "MySQL clusters only" in str(error)


def test_a_users_burst_without_rate_is_refused() -> None:
    def change(data: dict[str, Any]) -> None:
        _with_mysql(data)
        data["users"]["app"]["limit"] = {"burst": 10}

    assert "users.app.limit.burst" in str(error_for(mutated(change)))
