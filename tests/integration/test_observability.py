"""Every call visible: counted in /metrics, one access-log line each with the app's request
id, shown by ``ctl top`` and ``ctl status``, against a gateway process and a real
redis-server; a stalled access-log sink drops lines, never calls."""

from __future__ import annotations

import json
import os
import threading
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
    RedisServer,
    free_port,
    redis_cluster_config,
    resmesh,
    wait_for,
)

CLIENTS = 4
GETS_EACH = 50


def _samples(admin: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _calls(admin: int, node: int, operation: str, outcome: str = "ok") -> float:
    labels = {
        "cluster": "feed-cache",
        "protocol": "redis",
        "node": f"127.0.0.1:{node}",
        "operation": operation,
        "outcome": outcome,
    }
    return _samples(admin).get(("resmesh_calls_total", tuple(sorted(labels.items()))), 0.0)


@pytest.fixture
def observed(redis_node: RedisServer, tmp_path: Path) -> Any:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    admin = free_port()
    log = tmp_path / "access.log"
    config["gateway"]["admin"] = f"127.0.0.1:{admin}"
    config["metrics"] = {"access_log": {"path": str(log)}}
    gateway = Gateway(config, tmp_path)
    yield gateway, admin, log
    assert gateway.terminate() == 0, gateway.log()


def _lines(log: Path) -> list[dict[str, Any]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def test_every_call_is_counted_and_logged_once_with_its_request_id(
    observed: Any, redis_node: RedisServer
) -> None:
    gateway, admin, log = observed
    errors: list[BaseException] = []

    def client(index: int) -> None:
        try:
            connection = redis.Redis(
                port=gateway.port, client_name=f"rid-{index}", socket_timeout=5
            )
            for _ in range(GETS_EACH):
                connection.get("observed")
            pipeline = connection.pipeline(transaction=False)
            for _ in range(10):
                pipeline.get("observed")
            pipeline.execute()
            connection.close()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors
    gets = CLIENTS * (GETS_EACH + 10)
    assert _calls(admin, redis_node.port, "GET") == gets

    wait_for(
        lambda: sum(1 for line in _lines(log) if line["operation"] == "GET") >= gets,
        10,
        "the access log lines",
    )
    lines = [line for line in _lines(log) if line["operation"] == "GET"]
    assert len(lines) == gets  # exactly one line per call, none twice
    by_id: dict[str, int] = {}
    for line in lines:
        assert line["cluster"] == "feed-cache"
        assert line["node"] == f"127.0.0.1:{redis_node.port}"
        assert line["outcome"] == "ok"
        assert line["latency_ms"] > 0
        by_id[line["request_id"]] = by_id.get(line["request_id"], 0) + 1
    assert by_id == {f"rid-{i}": GETS_EACH + 10 for i in range(CLIENTS)}


def test_calls_the_gateway_answers_and_a_subscriber_s_are_counted(
    observed: Any, redis_node: RedisServer
) -> None:
    """PING is answered by the gateway (no node), SUBSCRIBE relayed on a subscriber's own
    connection: both are calls, counted and logged without a latency."""
    gateway, admin, log = observed
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    for _ in range(3):
        assert client.ping() is True
    pubsub = client.pubsub()
    pubsub.subscribe("news")
    message = pubsub.get_message(timeout=5)
    assert message is not None and message["type"] == "subscribe"
    local = {
        "cluster": "feed-cache",
        "protocol": "redis",
        "node": "",
        "operation": "PING",
        "outcome": "ok",
    }
    samples = _samples(admin)
    assert samples[("resmesh_calls_total", tuple(sorted(local.items())))] == 3
    assert _calls(admin, redis_node.port, "SUBSCRIBE") == 1
    pubsub.close()
    wait_for(
        lambda: sum(1 for line in _lines(log) if line["operation"] == "SUBSCRIBE") == 1,
        10,
        "the SUBSCRIBE line",
    )
    pings = [line for line in _lines(log) if line["operation"] == "PING"]
    assert [(line["node"], line["latency_ms"]) for line in pings] == [("-", 0)] * 3


def test_errors_and_refusals_are_counted_by_outcome_and_policy(
    observed: Any, redis_node: RedisServer
) -> None:
    gateway, admin, _ = observed
    client = redis.Redis(port=gateway.port, socket_timeout=5)
    client.lpush("observed:list", "x")
    with pytest.raises(redis.ResponseError):
        client.get("observed:list")  # WRONGTYPE: the caller's error
    assert _calls(admin, redis_node.port, "GET", "app_error") == 1
    done = resmesh(
        "ctl",
        "-c",
        str(gateway.config_path),
        "degrade",
        "feed-cache",
        "--mode",
        "error",
        "--op",
        "GET",
    )
    assert done.returncode == 0, done.stderr

    def refused() -> bool:
        try:
            client.get("observed")
        except redis.ResponseError:
            return True
        return False

    wait_for(refused, 5, "the switch")
    labels = {"cluster": "feed-cache", "protocol": "redis", "operation": "GET", "policy": "switch"}
    assert _samples(admin)[("resmesh_rejected_calls_total", tuple(sorted(labels.items())))] >= 1


def test_ctl_top_and_status_show_rates_and_percentiles(observed: Any) -> None:
    gateway, _, _ = observed
    stop = threading.Event()

    def load() -> None:
        client = redis.Redis(port=gateway.port, socket_timeout=5)
        while not stop.is_set():
            client.get("observed")

    thread = threading.Thread(target=load)
    thread.start()
    try:
        ctl = ("ctl", "-c", str(gateway.config_path))
        top = resmesh(*ctl, "top", "--iterations", "2", "--interval", "0.5")
        status = resmesh(*ctl, "status", "--json")
    finally:
        stop.set()
        thread.join(10)
    assert top.returncode == 0, top.stderr
    assert "feed-cache" in top.stdout and "GET" in top.stdout
    assert " ms" in top.stdout
    assert status.returncode == 0, status.stderr
    operations = json.loads(status.stdout)["gateway"]["clusters"]["feed-cache"]["operations"]
    assert operations["GET"]["calls"] > 0
    assert 0 < operations["GET"]["p50"] <= operations["GET"]["p99"] <= operations["GET"]["p999"]


def test_a_stalled_access_log_drops_lines_and_never_slows_calls(
    redis_node: RedisServer, tmp_path: Path
) -> None:
    fifo = tmp_path / "stalled.log"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # open, and never read
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    admin = free_port()
    config["gateway"]["admin"] = f"127.0.0.1:{admin}"
    config["metrics"] = {"access_log": {"path": str(fifo), "buffer": 100}}
    gateway = Gateway(config, tmp_path)
    try:
        client = redis.Redis(port=gateway.port, socket_timeout=5)
        pipeline = client.pipeline(transaction=False)
        for _ in range(5000):  # ~1 MB of lines: far past the pipe's buffer and the log's
            pipeline.get("observed")
        assert pipeline.execute() == [None] * 5000
        for _ in range(200):
            assert client.get("observed") is None  # calls keep being answered
        dropped = _samples(admin)[("resmesh_access_log_dropped_total", ())]
        assert dropped > 0
        assert _calls(admin, redis_node.port, "GET") == 5200  # counted, logged or not
    finally:
        os.close(reader)
        assert gateway.terminate() == 0, gateway.log()


def test_mysql_queries_are_counted_and_logged_with_the_request_id_of_their_comment(
    tmp_path: Path,
) -> None:
    admin = free_port()
    log = tmp_path / "mysql-access.log"
    config: dict[str, Any] = {
        "gateway": {"drain_timeout": "5s", "admin": f"127.0.0.1:{admin}"},
        "users": {"app": {"password": "app", "clusters": ["user-db"]}},
        "clusters": {
            "user-db": {
                "protocol": "mysql",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {"dc-a": ["127.0.0.1:3306"]},
                "backend": {"username": "root", "password": ""},
            }
        },
        "metrics": {"access_log": {"path": str(log)}},
    }
    gateway = Gateway(config, tmp_path)
    try:
        connection = pymysql.connect(
            host="127.0.0.1", port=gateway.port, user="app", password="app", database="test"
        )
        with connection.cursor() as cursor:
            for i in range(5):
                cursor.execute(f"/* rid=order-{i} */ SELECT {i}")
                assert cursor.fetchone() == (i,)
            with pytest.raises(pymysql.err.ProgrammingError):
                cursor.execute("SELECT * FROM no_such_table_for_metrics")  # 1146
        connection.close()
        labels = {
            "cluster": "user-db",
            "protocol": "mysql",
            "node": "127.0.0.1:3306",
            "operation": "SELECT",
        }
        samples = _samples(admin)
        ok = samples[("resmesh_calls_total", tuple(sorted({**labels, "outcome": "ok"}.items())))]
        failed = samples[
            ("resmesh_calls_total", tuple(sorted({**labels, "outcome": "app_error"}.items())))
        ]
        assert (ok, failed) == (5, 1)
        wait_for(
            lambda: sum(1 for line in _lines(log) if line["operation"] == "SELECT") >= 6,
            10,
            "the access log lines",
        )
        selects = [line for line in _lines(log) if line["operation"] == "SELECT"]
        assert sorted(line["request_id"] for line in selects) == [
            "-",
            *(f"order-{i}" for i in range(5)),
        ]
        assert all(line["bytes_in"] > 0 and line["bytes_out"] > 0 for line in selects)
    finally:
        assert gateway.terminate() == 0, gateway.log()


def test_an_access_log_that_cannot_be_opened_stops_the_start_with_its_key(
    redis_node: RedisServer, tmp_path: Path
) -> None:
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    config["metrics"] = {"access_log": {"path": str(tmp_path / "no-such-dir" / "access.log")}}
    path = tmp_path / "bad-log.yaml"
    path.write_text(yaml.safe_dump(config))
    done = resmesh("run", "-c", str(path))
    assert done.returncode == 1
    assert "no-such-dir" in done.stderr and "metrics.access_log.path" in done.stderr


def test_a_dead_node_shows_as_failed_calls_retries_and_an_ejection(tmp_path: Path) -> None:
    nodes = (RedisServer(), RedisServer())
    try:
        for node in nodes:
            redis.Redis(port=node.port).set("observed", "v")
        config = redis_cluster_config(
            "feed-cache", {"dc-a": [node.port for node in nodes]}, policy="cache"
        )
        admin = free_port()
        config["gateway"]["admin"] = f"127.0.0.1:{admin}"
        gateway = Gateway(config, tmp_path)
        try:
            client = redis.Redis(port=gateway.port, socket_timeout=5)
            for _ in range(20):
                assert client.get("observed") == b"v"
            dead = nodes[1]
            dead.kill()
            for _ in range(60):  # reads fail over to the primary: every one answered
                assert client.get("observed") == b"v"
            families = {
                f.name: f
                for f in text_string_to_metric_families(
                    httpx.get(f"http://127.0.0.1:{admin}/metrics", timeout=5).text
                )
            }

            def total(family: str, **labels: str) -> float:
                return sum(
                    s.value
                    for s in families[family].samples
                    if s.name.endswith("_total")
                    and all(s.labels.get(k) == v for k, v in labels.items())
                )

            address = f"127.0.0.1:{dead.port}"
            assert total("resmesh_attempt_failures", node=address, operation="GET") >= 1
            assert total("resmesh_retries", operation="GET") >= 1
            assert total("resmesh_calls", node=address, outcome="local_error") == 0
            assert total("resmesh_ejections", node=address) >= 1
        finally:
            assert gateway.terminate() == 0, gateway.log()
    finally:
        for node in nodes:
            node.stop()
