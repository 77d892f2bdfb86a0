"""A fleet: two gateway processes share one real etcd, and ``resmesh ctl`` drives them both.

Degrade is obeyed by both within a second; a shift from dc-a to dc-b under a continuous read
load costs no client an error, and after it no read reaches dc-a (counted on the node
itself); a node added with ``ctl node add`` takes reads within a second; with etcd stopped
the gateways keep serving their last state and resync when it returns; concurrent ``ctl``
writers never lose a change.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from tests.support.etcd import EtcdServer
from tests.support.servers import Gateway, RedisServer, free_port, resmesh, wait_for

OBEY_WITHIN = 1.0
KEY = "fleet:key"


@pytest.fixture(scope="module")
def etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    server = EtcdServer(tmp_path_factory.mktemp("etcd"))
    yield server
    server.stop()


@pytest.fixture
def dcs() -> Iterator[tuple[RedisServer, RedisServer]]:
    """One independent node per data center, holding the same key."""
    nodes = (RedisServer(), RedisServer())
    for node in nodes:
        redis.Redis(port=node.port).set(KEY, "value")
    yield nodes
    for node in nodes:
        node.stop()


class Fleet:
    """Two gateways on one config (one cluster over dc-a and dc-b), sharing etcd."""

    def __init__(self, etcd: EtcdServer, a: RedisServer, b: RedisServer, workdir: Path) -> None:
        prefix = f"/fleet-{free_port()}"
        self.gateways: list[Gateway] = []
        self.admins: list[int] = []
        self.config_path = Path()
        for index in range(2):
            admin = free_port()
            config = {
                "gateway": {"drain_timeout": "5s", "admin": f"127.0.0.1:{admin}"},
                "registry": {"kind": "etcd", "endpoints": [etcd.url], "prefix": prefix},
                "clusters": {
                    "feed-cache": {
                        "protocol": "redis",
                        "listen": f"127.0.0.1:{free_port()}",
                        "groups": {
                            "dc-a": [{"address": f"127.0.0.1:{a.port}", "role": "primary"}],
                            "dc-b": [f"127.0.0.1:{b.port}"],
                        },
                        "route": {"dc-a": 100, "dc-b": 0},
                        "policy": "cache",
                    }
                },
            }
            directory = workdir / f"gw{index}"
            directory.mkdir()
            gateway = Gateway(config, directory)
            self.gateways.append(gateway)
            self.admins.append(admin)
            self.config_path = gateway.config_path  # ctl may use either: same registry
        self.clients = [redis.Redis(port=g.port, socket_timeout=5) for g in self.gateways]

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return resmesh("ctl", "-c", str(self.config_path), *args)

    def version(self, index: int) -> int:
        answer = httpx.get(f"http://127.0.0.1:{self.admins[index]}/status", timeout=5).json()
        return int(answer["registry"]["version"])

    def status(self, index: int) -> dict[str, Any]:
        document: dict[str, Any] = httpx.get(
            f"http://127.0.0.1:{self.admins[index]}/status", timeout=5
        ).json()
        return document

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for gateway in self.gateways:
            assert gateway.terminate() == 0, gateway.log()


@pytest.fixture
def fleet(
    etcd: EtcdServer, dcs: tuple[RedisServer, RedisServer], tmp_path: Path
) -> Iterator[Fleet]:
    fleet = Fleet(etcd, *dcs, tmp_path)
    yield fleet
    fleet.stop()


def _version_of(output: str) -> int:
    found = re.search(r"registry version (\d+)", output)
    assert found, output
    return int(found.group(1))


def test_degrade_is_obeyed_by_every_gateway_within_a_second(fleet: Fleet) -> None:
    assert all(client.get(KEY) == b"value" for client in fleet.clients)
    done = fleet.ctl("degrade", "feed-cache", "--mode", "miss")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    for client in fleet.clients:
        wait_for(lambda client=client: client.get(KEY) is None, 5, "a gateway to answer misses")
    took = time.monotonic() - started
    assert took < OBEY_WITHIN, f"both gateways obeyed after {took:.3f}s"
    version = _version_of(done.stdout)
    assert fleet.version(0) == fleet.version(1) == version

    done = fleet.ctl("restore", "feed-cache")
    assert done.returncode == 0, done.stderr
    started = time.monotonic()
    for client in fleet.clients:
        wait_for(lambda client=client: client.get(KEY) == b"value", 5, "a gateway to restore")
    assert time.monotonic() - started < OBEY_WITHIN


def _gets(node: RedisServer) -> int:
    stats = redis.Redis(port=node.port).info("commandstats").get("cmdstat_get")
    return int(stats["calls"]) if stats else 0


def test_a_shift_under_load_costs_no_error_and_drains_the_old_dc(
    fleet: Fleet, dcs: tuple[RedisServer, RedisServer]
) -> None:
    a, b = dcs
    stop = threading.Event()
    counts = {"reads": 0, "errors": 0}
    failures: list[str] = []

    def load(client: redis.Redis) -> None:
        while not stop.is_set():
            try:
                value = client.get(KEY)
            except redis.RedisError as exc:
                counts["errors"] += 1
                failures.append(repr(exc))
                continue
            if value != b"value":
                counts["errors"] += 1
                failures.append(repr(value))
            counts["reads"] += 1

    threads = [threading.Thread(target=load, args=(client,)) for client in fleet.clients]
    for thread in threads:
        thread.start()
    try:
        wait_for(lambda: counts["reads"] > 200, 10, "the read load to start")
        assert _gets(a) > 0 and _gets(b) == 0
        done = fleet.ctl("shift", "feed-cache", "dc-a=0", "dc-b=100")
        assert done.returncode == 0, done.stderr
        version = _version_of(done.stdout)
        wait_for(
            lambda: fleet.version(0) >= version and fleet.version(1) >= version,
            5,
            "both gateways to apply the shift",
        )
        on_a = _gets(a)
        reads = counts["reads"]
        wait_for(lambda: counts["reads"] > reads + 500, 10, "more reads after the shift")
    finally:
        stop.set()
        for thread in threads:
            thread.join(10)
    assert counts["errors"] == 0, failures[:5]
    assert _gets(a) == on_a, "reads reached dc-a after the shift"
    assert _gets(b) > 0


def test_a_node_added_with_ctl_takes_reads_within_a_second(
    fleet: Fleet, dcs: tuple[RedisServer, RedisServer]
) -> None:
    new = RedisServer()
    try:
        redis.Redis(port=new.port).set(KEY, "value")
        done = fleet.ctl("node", "add", "feed-cache", f"127.0.0.1:{new.port}")
        assert done.returncode == 0, done.stderr
        started = time.monotonic()

        def reads_reach_it() -> bool:
            for client in fleet.clients:
                assert client.get(KEY) == b"value"
            return _gets(new) > 0

        wait_for(reads_reach_it, 5, "reads on the new node")
        assert time.monotonic() - started < OBEY_WITHIN
        nodes = fleet.status(1)["clusters"]["feed-cache"]["groups"]["dc-a"]
        assert [n["address"] for n in nodes][-1] == f"127.0.0.1:{new.port}"
        assert nodes[-1]["role"] == "replica"
    finally:
        new.stop()


def test_gateways_keep_serving_without_etcd_and_resync_when_it_returns(
    fleet: Fleet, etcd: EtcdServer
) -> None:
    etcd.stop()
    try:
        wait_for(
            lambda: all(not fleet.status(i)["registry"]["reachable"] for i in (0, 1)),
            10,
            "both gateways to notice etcd is gone",
        )
        assert all(client.get(KEY) == b"value" for client in fleet.clients)
        health = httpx.get(f"http://127.0.0.1:{fleet.admins[0]}/health", timeout=5).json()
        assert health["ready"] is True and "unreachable" in health["why"]
        refused = fleet.ctl("degrade", "feed-cache")
        assert refused.returncode == 1
        assert "registry unavailable" in refused.stderr
    finally:
        etcd.start()
    wait_for(
        lambda: all(fleet.status(i)["registry"]["reachable"] for i in (0, 1)),
        10,
        "both gateways to reach etcd again",
    )
    done = fleet.ctl("degrade", "feed-cache", "--mode", "miss")
    assert done.returncode == 0, done.stderr
    for client in fleet.clients:
        wait_for(lambda client=client: client.get(KEY) is None, 5, "the switch after the outage")
    fleet.ctl("restore", "feed-cache")


def test_a_change_made_while_a_gateway_was_cut_off_is_applied_when_it_returns(
    fleet: Fleet, etcd: EtcdServer
) -> None:
    """etcd paused (its sockets open, nothing answering): the gateways' liveness probes give
    up; meanwhile nothing can change. A change written the moment it resumes reaches them
    through the resync, whichever of watch and resync comes first."""
    etcd.pause()
    try:
        wait_for(lambda: not fleet.status(0)["registry"]["reachable"], 15, "the gateway to give up")
    finally:
        etcd.resume()
    done = fleet.ctl("degrade", "feed-cache", "--mode", "error")
    assert done.returncode == 0, done.stderr
    version = _version_of(done.stdout)
    wait_for(lambda: fleet.version(0) >= version and fleet.version(1) >= version, 10, "resync")
    fleet.ctl("restore", "feed-cache")


def test_concurrent_ctl_writers_never_lose_a_change(fleet: Fleet) -> None:
    addresses = [f"10.1.0.{i}:6379" for i in range(1, 9)]
    with ThreadPoolExecutor(len(addresses)) as pool:
        results = list(
            pool.map(
                lambda address: fleet.ctl(
                    "node", "add", "feed-cache", address, "--group", "dc-c", "--weight", "0"
                ),
                addresses,
            )
        )
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    versions = [_version_of(r.stdout) for r in results]
    assert len(set(versions)) == len(versions), versions
    wait_for(lambda: fleet.version(0) >= max(versions), 5, "the last change")
    listed = fleet.status(0)["clusters"]["feed-cache"]["groups"]["dc-c"]
    assert sorted(n["address"] for n in listed) == sorted(addresses)
    assert fleet.status(0)["clusters"]["feed-cache"]["route"]["dc-c"] == 0


def _unreachable_config(policy: str, redis_port: int) -> dict[str, Any]:
    return {
        "gateway": {"drain_timeout": "5s", "admin": f"127.0.0.1:{free_port()}"},
        "registry": {
            "kind": "etcd",
            "endpoints": [f"http://127.0.0.1:{free_port()}"],  # nothing listens there
            "timeout": "500ms",
            "unreachable_at_start": policy,
        },
        "clusters": {
            "feed-cache": {
                "protocol": "redis",
                "listen": f"127.0.0.1:{free_port()}",
                "groups": {"dc-a": [f"127.0.0.1:{redis_port}"]},
            }
        },
    }


def test_an_unreachable_registry_at_start_refuses_or_serves_the_config_as_configured(
    dcs: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    a, _ = dcs
    path = tmp_path / "refuse.yaml"
    path.write_text(yaml.safe_dump(_unreachable_config("refuse", a.port)))
    refused = resmesh("run", "-c", str(path))
    assert refused.returncode == 1
    assert "not starting, as registry.unreachable_at_start says" in refused.stderr

    config = _unreachable_config("config", a.port)
    gateway = Gateway(config, tmp_path)
    try:
        assert redis.Redis(port=gateway.port, socket_timeout=5).get(KEY) == b"value"
        assert "starting on the configuration's state" in gateway.log()
        admin = config["gateway"]["admin"]
        health = httpx.get(f"http://{admin}/health", timeout=5).json()
        assert health["ready"] is True and "unreachable" in health["why"]
    finally:
        assert gateway.terminate() == 0, gateway.log()
