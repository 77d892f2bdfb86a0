"""The Motan2 agent's configuration: the top-level ``motan2:`` section, clusters of
``protocol: motan2``, and the errors each mistake gets (file, key, fix)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resmesh.call import Protocol
from resmesh.cluster.topology import topology_from_config
from resmesh.config import Address, ConfigError, load_config, parse_config
from resmesh.server import listen_points

SOURCE = Path("examples/agent.yaml")
QUICKSTART = Path(__file__).resolve().parent.parent / "examples" / "quickstart.yaml"


def config(agent: dict[str, Any] | None = None, **cluster: Any) -> dict[str, Any]:
    rpc: dict[str, Any] = {
        "protocol": "motan2",
        "groups": {"dc-a": ["10.0.0.1:8100", "10.0.0.2:8100"], "dc-b": ["10.0.1.1:8100"]},
        "motan2": {"service": "com.example.Echo", "group": "g1"},
    }
    rpc.update(cluster)
    top: dict[str, Any] = {"clusters": {"echo": rpc}}
    if agent is not False:
        top["motan2"] = agent or {"client": "127.0.0.1:9981", "server": "127.0.0.1:9982"}
    return top


def error_for(data: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        parse_config(data, SOURCE)
    return info.value


def test_a_motan2_cluster_is_served_through_the_agents_port() -> None:
    parsed = parse_config(config(), SOURCE)
    cluster = parsed.clusters["echo"]
    assert cluster.protocol is Protocol.MOTAN2
    assert cluster.listen == Address("127.0.0.1", 9981)
    assert cluster.motan2 is not None
    assert (cluster.motan2.service, cluster.motan2.group, cluster.motan2.version) == (
        "com.example.Echo",
        "g1",
        None,
    )
    assert cluster.primary is None  # every node serves every call
    topology = topology_from_config(cluster)
    assert [n.address for n in topology.nodes] == [
        "10.0.0.1:8100",
        "10.0.0.2:8100",
        "10.0.1.1:8100",
    ]
    agent = parsed.motan2
    assert agent is not None and agent.max_frame == 10 * 1024 * 1024
    assert (agent.heartbeats, agent.heartbeat_interval, agent.export_timeout) == (True, 1.0, 5.0)
    assert [(name, str(a), key) for name, a, key in listen_points(parsed)] == [
        ("motan2 client", "127.0.0.1:9981", "motan2.client"),
        ("motan2 server", "127.0.0.1:9982", "motan2.server"),
    ]


def test_the_quickstart_routes_the_echo_service_through_both_sides() -> None:
    parsed = load_config(QUICKSTART)
    agent = parsed.motan2
    assert agent is not None
    assert (str(agent.client), str(agent.server)) == ("127.0.0.1:9981", "127.0.0.1:9982")
    assert {s: str(a) for s, a in agent.export.items()} == {
        "resmesh.demo.EchoService": "127.0.0.1:8100"
    }
    echo = parsed.clusters["echo"]
    assert echo.motan2 is not None and echo.motan2.group == "resmesh-demo"
    assert [str(n.address) for n in echo.groups["dc-a"]] == ["127.0.0.1:9982"]
    assert {name: op.idempotent for name, op in echo.governance.operations.items()} == {
        "ECHO": True,
        "HELLO": True,
    }


def test_agent_knobs_and_exports() -> None:
    agent = {
        "client": "127.0.0.1:9981",
        "server": "0.0.0.0:9982",
        "max_frame": "1MiB",
        "heartbeat_interval": "250ms",
        "heartbeats": False,
        "export": {"com.example.Echo": "127.0.0.1:8100"},
    }
    parsed = parse_config(config(agent), SOURCE).motan2
    assert parsed is not None
    assert (parsed.max_frame, parsed.heartbeat_interval, parsed.heartbeats) == (2**20, 0.25, False)
    assert dict(parsed.export) == {"com.example.Echo": Address("127.0.0.1", 8100)}


@pytest.mark.parametrize(
    ("data", "key", "problem", "fix"),
    [
        (
            config(False),
            "clusters.echo.protocol",
            "has no 'motan2' section",
            "motan2: {client: 127.0.0.1:9981",
        ),
        (
            config(listen="127.0.0.1:9981"),
            "clusters.echo.listen",
            "has no listen address of its own",
            "remove listen",
        ),
        (config(motan2=None), "clusters.echo.motan2", "names the service it is", "service:"),
        (
            config(motan2={"group": "g"}),
            "clusters.echo.motan2.service",
            "missing required key 'service'",
            "M_p",
        ),
        (
            config(motan2={"service": "com.example Echo"}),
            "clusters.echo.motan2.service",
            "holds no spaces",
            "e.g. resmesh.demo.EchoService",
        ),
        (config(mode="sharded"), "clusters.echo.mode", "cannot be sharded", "balance: hash"),
        (
            config(governance={"operations": {"get-user": {"idempotent": True}}}),
            "clusters.echo.governance.operations.get-user",
            "is not a method name",
            "e.g. echo",
        ),
        (config({"server": "127.0.0.1:9982"}), "motan2.client", "missing required key", "add"),
        (
            config({"client": "127.0.0.1:9981", "export": {"com.example.Echo": "h:1"}}),
            "motan2.export",
            "'server' is not set",
            "add server:",
        ),
        (
            config({"client": "127.0.0.1:9981", "server": "127.0.0.1:9981"}),
            "motan2.server",
            "already used by motan2.client",
            "its own port",
        ),
        (
            config(
                {
                    "client": "127.0.0.1:9981",
                    "server": "127.0.0.1:9982",
                    "export": {"com.example.Echo": "127.0.0.1:9981"},
                }
            ),
            "motan2.export.com.example.Echo",
            "the gateway's own address (motan2.client)",
            "local service process",
        ),
        (
            config(groups={"dc-a": ["127.0.0.1:9981"]}),
            "clusters.echo.groups.dc-a[0]",
            "the gateway's own address (motan2.client)",
            "real server",
        ),
        (
            config({"client": "127.0.0.1:9981", "max_frame": "lots"}),
            "motan2.max_frame",
            "",
            "10MiB",
        ),
    ],
)
def test_mistakes_say_where_and_how_to_fix(data: Any, key: str, problem: str, fix: str) -> None:
    error = error_for(data)
    assert error.key == key, error
    assert problem in error.problem, error
    assert fix in error.fix, error


def test_a_node_may_be_the_agents_own_server_side() -> None:
    """The quickstart's shape: the client side calls this host's own server side, which
    forwards to the local process (no loop)."""
    parse_config(config(groups={"dc-a": ["127.0.0.1:9982"]}), SOURCE)


def test_a_redis_cluster_may_not_listen_on_an_agent_port() -> None:
    data = config()
    data["clusters"]["cache"] = {
        "protocol": "redis",
        "listen": "127.0.0.1:9982",
        "groups": {"a": ["h:1"]},
    }
    error = error_for(data)
    assert (error.key, error.fix) == ("clusters.cache.listen", "give each listener its own port")
    assert "already used by motan2.server" in error.problem


def test_an_empty_backend_password_is_for_mysql_only() -> None:
    data = config()
    data["clusters"]["cache"] = {
        "protocol": "redis",
        "listen": "127.0.0.1:6380",
        "groups": {"a": ["h:1"]},
        "backend": {"password": ""},
    }
    error = error_for(data)
    assert (error.key, error.problem) == (
        "clusters.cache.backend.password",
        "an empty password cannot log in (AUTH needs one)",
    )
