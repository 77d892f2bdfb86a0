"""Fixtures: a real redis-server per test module, and a gateway in front of it.

Every test in this directory is marked ``integration`` (``pytest -m "not integration"`` runs
the fast tier without them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.servers import Gateway, RedisServer, redis_cluster_config

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # A conftest's hook sees every collected item, not only this directory's.
    for item in items:
        if item.path.is_relative_to(_HERE):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="module")
def redis_node() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shards() -> Iterator[list[RedisServer]]:
    """Three independent nodes, for sharded clusters."""
    servers = [RedisServer() for _ in range(3)]
    yield servers
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def gateway(redis_node: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """The gateway in front of ``redis_node``, shared by a module's tests."""
    config = redis_cluster_config("feed-cache", {"dc-a": [redis_node.port]})
    gw = Gateway(config, tmp_path_factory.mktemp("gw"))
    yield gw
    assert gw.terminate() == 0, gw.log()


@pytest.fixture
def start_gateway(tmp_path: Path) -> Iterator[Callable[[dict[str, Any]], Gateway]]:
    """Start gateways on custom configs; each is stopped (and must exit 0) after the test."""
    started: list[Gateway] = []

    def start(config: dict[str, Any]) -> Gateway:
        gw = Gateway(config, tmp_path)
        started.append(gw)
        return gw

    yield start
    for gw in started:
        assert gw.terminate() == 0, gw.log()
