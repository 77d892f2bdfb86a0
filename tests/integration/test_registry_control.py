"""``resmesh ctl`` and the admin API against gateway processes on the file registry (the
quickstart's): a change is obeyed within a second, a hand edit too, the admin API shows the
state and asks for its token, and a gateway of several workers shows as one."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pymysql
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.servers import (
    Gateway,
    RawRedis,
    RedisServer,
    free_port,
    redis_cluster_config,
    resmesh,
    wait_for,
)

#: How soon every gateway must obey a change (the issue's bar).
OBEY_WITHIN = 1.0
TOKEN = "0123456789abcdef-test-token"


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return resmesh("ctl", "-c", str(config), *args)


def obeyed_within(condition: Any, what: str, started: float) -> float:
    """Wait for ``condition`` (at most 5 s) and return how long after ``started`` it held."""
    wait_for(condition, 5, what)
    return time.monotonic() - started


def _with_admin(config: dict[str, Any], token: str | None = None) -> int:
    port = free_port()
    config["gateway"]["admin"] = f"127.0.0.1:{port}"
    if token is not None:
        config["gateway"]["admin_token"] = token
    return port


@pytest.fixture
def cache(redis_node: RedisServer, tmp_path: Path) -> Any:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    admin = _with_admin(config)
    gateway = Gateway(config, tmp_path)
    yield gateway, admin
    assert gateway.terminate() == 0, gateway.log()


def test_degrade_and_restore_are_obeyed_within_a_second(
    cache: Any, redis_node: RedisServer
) -> None:
    gateway, _ = cache
    redis.Redis(port=redis_node.port).set("ctl:key", "value")
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    assert client.get("ctl:key") == b"value"

    done = ctl(gateway.config_path, "degrade", "feed-cache", "--mode", "miss")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    assert "registry version 1" in done.stdout
    took = obeyed_within(lambda: client.get("ctl:key") is None, "the miss switch", started)
    assert took < OBEY_WITHIN
    assert client.set("ctl:key", "other") is True  # acknowledged, without effect
    assert redis.Redis(port=redis_node.port).get("ctl:key") == b"value"

    done = ctl(gateway.config_path, "restore", "feed-cache")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    took = obeyed_within(lambda: client.get("ctl:key") == b"value", "the restore", started)
    assert took < OBEY_WITHIN
    assert "registry version 2" in done.stdout


def test_one_operation_is_degraded_and_bad_names_list_the_valid_ones(cache: Any) -> None:
    gateway, _ = cache
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    done = ctl(gateway.config_path, "degrade", "feed-cache", "--mode", "error", "--op", "get")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: _fails(client.get, "k"), 5, "GET to fail")
    assert client.set("k", "v") is True  # other operations are served

    bad = ctl(gateway.config_path, "degrade", "no-such-cache")
    assert bad.returncode == 2
    assert "clusters: feed-cache" in bad.stderr
    bad = ctl(gateway.config_path, "shift", "feed-cache", "dc-z=100")
    assert bad.returncode == 2
    assert "groups: dc-a" in bad.stderr
    bad = ctl(gateway.config_path, "node", "remove", "feed-cache", "10.9.9.9:1")
    assert bad.returncode == 2
    assert "nodes: 127.0.0.1:" in bad.stderr
    bad = ctl(gateway.config_path, "restore", "feed-cache", "--op", "SET")
    assert bad.returncode == 2
    assert "switches on: GET" in bad.stderr


def _fails(call: Any, *args: Any) -> bool:
    try:
        call(*args)
    except redis.ResponseError:
        return True
    return False


def test_a_hand_edit_of_the_registry_file_is_picked_up(cache: Any, redis_node: RedisServer) -> None:
    gateway, _ = cache
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    registry = gateway.config_path.parent / "registry.yaml"
    document = {
        "version": 7,
        "clusters": {
            "feed-cache": {
                "groups": {"dc-a": [f"127.0.0.1:{redis_node.port}"]},
                "route": {"dc-a": 100},
                "switches": {"*": {"mode": "fallback", "value": "from-the-file"}},
            }
        },
    }
    temp = registry.with_suffix(".tmp")
    temp.write_text(yaml.safe_dump(document))
    temp.rename(registry)
    wait_for(lambda: client.get("anything") == b"from-the-file", 5, "the hand edit")
    status = ctl(gateway.config_path, "status", "--json")
    assert status.returncode == 0, status.stderr
    shown = json.loads(status.stdout)
    assert shown["registry"]["version"] == 7
    assert shown["gateway"]["registry"]["version"] == 7
    assert shown["gateway"]["clusters"]["feed-cache"]["switches"]["*"]["mode"] == "fallback"

    registry.write_text("version: [broken")  # a bad edit: the last good state stays
    wait_for(
        lambda: (
            httpx.get(f"http://127.0.0.1:{cache[1]}/status").json()["registry"]["error"] is not None
        ),
        5,
        "the gateway to report the broken file",
    )
    assert client.get("anything") == b"from-the-file"
    health = httpx.get(f"http://127.0.0.1:{cache[1]}/health").json()
    assert health["ready"] is True
    assert "unreachable" in health["why"]


def test_status_shows_clusters_nodes_breakers_and_versions(
    cache: Any, redis_node: RedisServer
) -> None:
    gateway, admin = cache
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    client.ping()
    done = ctl(gateway.config_path, "status")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "registry: file" in out and "version 0" in out
    assert "feed-cache" in out
    assert f"127.0.0.1:{redis_node.port}" in out
    assert "primary" in out and "up" in out and "closed" in out
    assert "1 clients" in out

    live = httpx.get(f"http://127.0.0.1:{admin}/status").json()
    node = live["clusters"]["feed-cache"]["groups"]["dc-a"][0]
    assert node == {
        "address": f"127.0.0.1:{redis_node.port}",
        "role": "primary",
        "weight": 100,
        "enabled": True,
        "health": "up",
        "breaker": "closed",
    }
    config = httpx.get(f"http://127.0.0.1:{admin}/config").json()
    assert config["version"] == 0
    assert config["clusters"]["feed-cache"]["route"] == {"dc-a": 100}


def test_admin_api_asks_for_its_token(redis_node: RedisServer, tmp_path: Path) -> None:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    admin = _with_admin(config, TOKEN)
    gateway = Gateway(config, tmp_path)
    try:
        base = f"http://127.0.0.1:{admin}"
        refused = httpx.get(f"{base}/status")
        assert refused.status_code == 401
        assert refused.headers["www-authenticate"].startswith("Bearer")
        wrong = httpx.get(f"{base}/status", headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        good = {"authorization": f"Bearer {TOKEN}"}
        assert httpx.get(f"{base}/status", headers=good).status_code == 200
        assert httpx.get(f"{base}/health", headers=good).json()["ready"] is True
        assert httpx.post(f"{base}/status", headers=good).status_code == 405
        assert httpx.get(f"{base}/nope", headers=good).status_code == 404
        done = ctl(gateway.config_path, "status", "--json")  # ctl sends the config's token
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["gateway"]["clusters"]["feed-cache"]
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_admin_on_a_public_address_needs_a_token(redis_node: RedisServer, tmp_path: Path) -> None:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["gateway"]["admin"] = f"0.0.0.0:{free_port()}"
    path = tmp_path / "public.yaml"
    path.write_text(yaml.safe_dump(config))
    done = resmesh("check", "-c", str(path))
    assert done.returncode == 2
    assert "gateway.admin" in done.stderr and "admin_token" in done.stderr


def test_a_gateway_of_two_workers_shows_as_one(redis_node: RedisServer, tmp_path: Path) -> None:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["gateway"]["workers"] = 2
    admin = _with_admin(config)
    gateway = Gateway(config, tmp_path)
    clients = []
    try:
        wait_for(
            lambda: (
                _status(admin).get("gateway", {}).get("workers") == 2
                and all(w["clusters"] for w in _status(admin)["workers"])
            ),
            15,
            "both workers in the admin status",
        )
        for _ in range(12):
            client = redis.Redis(port=gateway.port, socket_timeout=5)
            client.ping()
            clients.append(client)
        status = _status(admin)
        per_worker = [w["clusters"]["feed-cache"]["clients"] for w in status["workers"]]
        assert sum(per_worker) == 12
        assert status["clusters"]["feed-cache"]["clients"] == 12
        assert len({w["gateway"]["pid"] for w in status["workers"]}) == 2
        assert all(per_worker)  # the kernel gave both some clients: the merge is tested

        for client in clients:
            for _ in range(5):
                client.get("k")
        metrics = httpx.get(f"http://127.0.0.1:{admin}/metrics").text
        families = {f.name: f for f in text_string_to_metric_families(metrics)}
        gets = sum(
            sample.value
            for sample in families["resmesh_calls"].samples
            if sample.labels["operation"] == "GET"
        )
        assert gets == 60  # one scrape counts both workers' calls
        assert families["resmesh_workers"].samples[0].value == 2

        done = ctl(gateway.config_path, "degrade", "feed-cache", "--mode", "error")
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: all(_fails(c.get, "k") for c in clients), 5, "every worker to obey the switch"
        )
    finally:
        for client in clients:
            client.close()
        assert gateway.terminate() == 0, gateway.log()


def _status(admin: int) -> dict[str, Any]:
    try:
        document: dict[str, Any] = httpx.get(f"http://127.0.0.1:{admin}/status").json()
    except httpx.HTTPError:
        return {}
    return document


def test_mysql_readonly_switch_refuses_writes_and_serves_reads(tmp_path: Path) -> None:
    config: dict[str, Any] = {
        "gateway": {"drain_timeout": "5s"},
        "users": {"app": {"password": "app", "clusters": ["user-db"]}},
        "clusters": {
            "user-db": {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {"dc-a": ["127.0.0.1:3306"]},
                "backend": {"username": "root", "password": ""},
            }
        },
    }
    gateway = Gateway(config, tmp_path)
    try:
        connection = pymysql.connect(
            host="127.0.0.1", port=gateway.port, user="app", password="app", database="test"
        )
        with connection.cursor() as cursor:
            cursor.execute("CREATE TABLE IF NOT EXISTS registry_ro (id INT)")
        done = ctl(gateway.config_path, "degrade", "user-db")  # MySQL's default: readonly
        assert done.returncode == 0, done.stderr
        assert "mode readonly" in done.stdout

        def refused() -> bool:
            try:
                with connection.cursor() as cursor:
                    cursor.execute("INSERT INTO registry_ro VALUES (1)")
            except pymysql.err.OperationalError as exc:
                return exc.args[0] == 1290
            return False

        wait_for(refused, 5, "writes to be refused")
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            assert cursor.fetchone() == (1,)
        connection.close()
    finally:
        assert gateway.terminate() == 0, gateway.log()


@pytest.fixture
def pair() -> Any:
    nodes = (RedisServer(), RedisServer())
    yield nodes
    for node in nodes:
        node.stop()


def test_pinned_sessions_finish_where_they_are_and_new_work_moves(
    pair: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    """A MULTI open on the old primary and a subscriber there stay; writes after the EXEC,
    and new subscribers, go to the new primary; a removed node drains."""
    a, b = pair
    config = redis_cluster_config("feed-cache", {"dc-a": [a.port, b.port]}, policy="passthrough")
    gateway = Gateway(config, tmp_path)
    try:
        client = redis.Redis(port=gateway.port, socket_timeout=5)
        subscriber = client.pubsub()
        subscriber.subscribe("news")
        assert subscriber.get_message(timeout=5)["type"] == "subscribe"
        raw = RawRedis(gateway.port)
        assert raw.call(("MULTI",), ("SET", "tx", "in-multi")) == [b"+OK\r\n", b"+QUEUED\r\n"]

        done = ctl(gateway.config_path, "primary", "feed-cache", f"127.0.0.1:{b.port}")
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: (client.set("probe", "x"), redis.Redis(port=b.port).get("probe"))[1] == b"x",
            5,
            "writes to move to the new primary",
        )
        assert raw.call(("EXEC",)) == [b"*1\r\n+OK\r\n"]  # ends where it began
        assert redis.Redis(port=a.port).get("tx") == b"in-multi"
        assert raw.call(("SET", "after", "exec")) == [b"+OK\r\n"]  # the next write moves
        assert redis.Redis(port=b.port).get("after") == b"exec"

        redis.Redis(port=a.port).publish("news", "from-a")  # the subscriber stayed on a
        message = subscriber.get_message(timeout=5)
        assert message is not None and message["data"] == b"from-a"
        subscriber.close()
        raw.close()

        done = ctl(gateway.config_path, "node", "remove", "feed-cache", f"127.0.0.1:{a.port}")
        assert done.returncode == 0, done.stderr
        wait_for(
            lambda: all(
                c["name"] == "probe"
                for c in redis.Redis(port=a.port, client_name="probe").client_list()
            ),
            10,
            "the removed node's connections to close",
        )
        assert client.get("after") == b"exec"
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_limits_set_and_reset_with_ctl(cache: Any) -> None:
    gateway, admin = cache
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    done = ctl(
        gateway.config_path, "limit", "feed-cache", "--op", "get", "--rate", "1", "--burst", "1"
    )
    assert done.returncode == 0, done.stderr
    assert "limits GET=rate:1,burst:1" in done.stdout

    def limited() -> bool:
        try:
            client.get("a")
            client.get("a")
        except redis.ResponseError as exc:
            return "rate limit of feed-cache GET" in str(exc)
        return False

    wait_for(limited, 5, "GET to be rate limited")
    assert client.set("a", "b") is True  # other operations keep the config's limits (none)
    shown = httpx.get(f"http://127.0.0.1:{admin}/status").json()
    assert shown["clusters"]["feed-cache"]["limits"] == {"GET": {"rate": 1.0, "burst": 1.0}}

    done = ctl(gateway.config_path, "limit", "feed-cache", "--op", "GET", "--reset")
    assert done.returncode == 0, done.stderr
    wait_for(lambda: not limited(), 5, "the limit to be lifted")
    for _ in range(20):
        assert client.get("a") == b"b"
    bad = ctl(gateway.config_path, "limit", "feed-cache", "--reset")
    assert bad.returncode == 2 and "no limit override for *" in bad.stderr
