"""Run-time changes of a cluster's layout (what the registry will drive), in this process
against real redis-server nodes: nodes join and leave, the primary moves, with no restart and
no dropped client."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from types import MappingProxyType

import pytest
import redis
import trio

from resmesh.cluster.topology import ClusterState, NodeSpec
from resmesh.config import parse_config
from resmesh.net.listen import bind_tcp
from resmesh.net.redis.runtime import RedisRuntime
from tests.support.servers import RedisServer, encode_command, redis_cluster_config, resp_frame_end


@pytest.fixture
def two_nodes() -> Iterator[tuple[RedisServer, RedisServer]]:
    servers = (RedisServer(), RedisServer())
    yield servers
    for server in servers:
        server.stop()


def _state(version: int, *nodes: tuple[RedisServer, bool]) -> ClusterState:
    specs = tuple(NodeSpec("127.0.0.1", n.port, "dc-a", 100, primary) for n, primary in nodes)
    return ClusterState(version, specs, MappingProxyType({"dc-a": 100}))


async def _call(stream: trio.SocketStream, *args: str) -> bytes:
    await stream.send_all(encode_command(*args))
    buffer = b""
    with trio.fail_after(5):
        while (end := resp_frame_end(buffer)) < 0:
            buffer += await stream.receive_some(65536)
    return buffer[:end]


def _calls(node: RedisServer, command: str) -> int:
    stats = redis.Redis(port=node.port).info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


async def test_nodes_join_and_leave_and_the_primary_moves_while_a_client_stays(
    two_nodes: tuple[RedisServer, RedisServer], tmp_path: Path
) -> None:
    a, b = two_nodes
    data = redis_cluster_config("live", {"dc-a": [a.port]}, policy="passthrough")
    cluster = parse_config(data, tmp_path / "live.yaml").clusters["live"]
    listener = bind_tcp("127.0.0.1", 0)
    port = listener.getsockname()[1]
    with trio.fail_after(30):
        async with trio.open_nursery() as backend:
            runtime = RedisRuntime(cluster, {}, backend)
            backend.start_soon(runtime.run)
            async with trio.open_nursery() as connections:
                connections.start_soon(runtime.serve, listener, connections)
                client = await trio.open_tcp_stream("127.0.0.1", port)
                assert await _call(client, "SET", "k", "on-a") == b"+OK\r\n"

                # b joins as the new primary: writes move at once, on the same connection.
                runtime.apply(_state(2, (a, False), (b, True)))
                assert await _call(client, "SET", "k", "on-b") == b"+OK\r\n"
                assert redis.Redis(port=b.port).get("k") == b"on-b"
                assert redis.Redis(port=a.port).get("k") == b"on-a"
                # Another client's reads spread over both (this one's stay on the primary for
                # a second after its write); no replication here: each answers its own value.
                reader = await trio.open_tcp_stream("127.0.0.1", port)
                seen = {await _call(reader, "GET", "k") for _ in range(60)}
                assert seen == {b"$4\r\non-a\r\n", b"$4\r\non-b\r\n"}
                await reader.aclose()

                # The primary moves back on its own, then a leaves the cluster.
                runtime.set_primary(f"127.0.0.1:{a.port}")
                assert await _call(client, "INCR", "n") == b":1\r\n"
                assert redis.Redis(port=a.port).get("n") == b"1"
                runtime.apply(_state(3, (b, True)))
                gets_on_a = _calls(a, "get")
                for _ in range(20):
                    assert await _call(client, "GET", "k") == b"$4\r\non-b\r\n"
                assert _calls(a, "get") == gets_on_a  # a takes nothing any more
                # ...and its connections are closed once idle.
                with trio.fail_after(10):
                    while any(
                        c["name"] != "probe"
                        for c in redis.Redis(port=a.port, client_name="probe").client_list()
                    ):
                        await trio.sleep(0.01)
                await client.aclose()
                connections.cancel_scope.cancel()
            runtime.close()
            backend.cancel_scope.cancel()
