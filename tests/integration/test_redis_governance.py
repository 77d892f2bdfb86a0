"""Governance on the Redis path with real nodes: a primary and replicas in two data centers.

Reads spread over every enabled node by route weight; a replica killed mid-run costs the
client nothing (failover to another node, then the breaker and outlier detector keep traffic
off it) and takes traffic again once restarted.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.support.servers import (
    Gateway,
    RedisServer,
    encode_command,
    redis_cluster_config,
    start_replica,
    wait_for,
)


@pytest.fixture(scope="module")
def nodes() -> Iterator[tuple[RedisServer, RedisServer, RedisServer]]:
    primary = RedisServer()
    replica_a = start_replica(primary)
    replica_b = start_replica(primary)
    yield primary, replica_a, replica_b
    for server in (replica_b, replica_a, primary):
        server.stop()


def _gets(port: int) -> int:
    stats = redis.Redis(port=port).info("commandstats")
    return int(stats.get("cmdstat_get", {}).get("calls", 0))


def _reset_stats(*servers: RedisServer) -> None:
    for server in servers:
        redis.Redis(port=server.port).config_resetstat()


def test_reads_follow_route_weights(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """dc-a 80 / dc-b 20: the observed split of 2,000 reads is within ±5 points."""
    primary, replica_a, replica_b = nodes
    gw: Gateway = start_gateway(
        redis_cluster_config(
            "feed-cache",
            {"dc-a": [primary.port, replica_a.port], "dc-b": [replica_b.port]},
            route={"dc-a": 80, "dc-b": 20},
        )
    )
    redis.Redis(port=gw.port).set("route:k", "v")  # another session: this one never wrote
    client = redis.Redis(port=gw.port)
    wait_for(lambda: redis.Redis(port=replica_b.port).get("route:k") == b"v", 5, "replication")
    _reset_stats(primary, replica_a, replica_b)
    for _ in range(2000):
        assert client.get("route:k") == b"v"
    in_a = _gets(primary.port) + _gets(replica_a.port)
    in_b = _gets(replica_b.port)
    assert in_a + in_b == 2000
    assert abs(in_b / 2000 - 0.20) <= 0.05, (in_a, in_b)
    assert _gets(primary.port) > 0 and _gets(replica_a.port) > 0  # spread inside dc-a too


def test_hash_balance_keeps_each_key_on_one_node(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """``balance: hash`` in a replicated cluster: every read of a key goes to the same node
    (its caches stay warm), and different keys still spread over all three."""
    servers = nodes
    gw: Gateway = start_gateway(
        redis_cluster_config(
            "feed-cache",
            {"dc-a": [s.port for s in servers]},
            governance={"balance": "hash", "hedge": {"enabled": False}},
        )
    )
    client = redis.Redis(port=gw.port)
    keys = [f"sticky:{i}" for i in range(30)]
    homes: dict[str, int] = {}
    for key in keys:
        _reset_stats(*servers)
        for _ in range(20):
            client.get(key)
        counts = [_gets(s.port) for s in servers]
        assert sorted(counts) == [0, 0, 20], (key, counts)  # all 20 reads on one node
        homes[key] = counts.index(20)
    assert len(set(homes.values())) == 3, homes  # and the keys spread over every node
    _reset_stats(*servers)
    pipe = client.pipeline(transaction=False)
    for _ in range(10):
        pipe.get(keys[0])
    pipe.execute()
    assert _gets(servers[homes[keys[0]]].port) == 10  # a pipelined run goes to its key's node


def test_writes_go_to_the_primary_and_a_pipeline_reads_its_own_writes(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    primary, replica_a, replica_b = nodes
    gw: Gateway = start_gateway(
        redis_cluster_config(
            "feed-cache",
            {"dc-a": [primary.port, replica_a.port, replica_b.port]},
        )
    )
    client = redis.Redis(port=gw.port)
    for i in range(200):
        pipe = client.pipeline(transaction=False)
        pipe.set(f"own:{i}", i)
        pipe.get(f"own:{i}")
        assert pipe.execute() == [True, str(i).encode()]
    assert redis.Redis(port=primary.port).get("own:199") == b"199"


def test_a_pipeline_reads_its_own_writes_across_several_reads_of_the_socket(
    start_gateway,
) -> None:
    """A pipeline longer than one read of the client socket (256 KiB) is run in several
    batches, and redis-py sends a large value in a write of its own, so the socket may be
    empty mid-pipeline: a read after the write still goes where the write went. The second
    node never sees the write (a replica lagging forever), so a read sent there misses."""
    primary, elsewhere = RedisServer(), RedisServer()
    try:
        gw: Gateway = start_gateway(
            redis_cluster_config("feed-cache", {"dc-a": [primary.port, elsewhere.port]})
        )
        client = redis.Redis(port=gw.port)
        padding = "x" * 300_000
        for i in range(40):
            pipe = client.pipeline(transaction=False)
            pipe.set(f"split:{i}", i)
            pipe.echo(padding)  # the GET arrives in a later read than the SET
            pipe.get(f"split:{i}")
            assert pipe.execute()[2] == str(i).encode()
        for i in range(40):  # not pipelined: a read right after the write's reply
            assert client.set(f"seq:{i}", i) and client.get(f"seq:{i}") == str(i).encode()
        assert _gets(elsewhere.port) == 0
        # A session that did not write spreads its reads.
        reader = redis.Redis(port=gw.port)
        for _ in range(40):
            reader.get("split:0")
        assert _gets(elsewhere.port) > 0
    finally:
        primary.stop()
        elsewhere.stop()


def test_killed_replica_costs_no_client_errors_and_comes_back(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """kill -9 a replica during 2,000 reads: zero errors; after restart it serves again."""
    primary, replica_a, replica_b = nodes
    gw: Gateway = start_gateway(
        redis_cluster_config(
            "feed-cache",
            {"dc-a": [primary.port, replica_a.port, replica_b.port]},
            backend={"connect_timeout": "500ms", "command_timeout": "2s"},
            governance={"outlier": {"base_ejection": "2s"}},
        )
    )
    seeder = redis.Redis(port=gw.port)
    seeder.set("kill:k", "v")
    wait_for(
        lambda: all(redis.Redis(port=s.port).get("kill:k") == b"v" for s in nodes),
        5,
        "replication of the key",
    )
    errors: list[BaseException] = []
    done = 0
    killed = threading.Event()

    def reader() -> None:
        nonlocal done
        client = redis.Redis(port=gw.port, socket_timeout=10)
        for _ in range(1000):
            try:
                assert client.get("kill:k") == b"v"
            except BaseException as exc:  # every failure is what this test is about
                errors.append(exc)
            done += 1
            if done == 400:
                killed.set()

    threads = [threading.Thread(target=reader) for _ in range(2)]
    for thread in threads:
        thread.start()
    assert killed.wait(30), "readers made no progress"
    replica_b.kill()
    for thread in threads:
        thread.join(60)
    assert done == 2000
    assert errors == [], errors[:3]

    replica_b.start()
    wait_for(
        lambda: (
            redis.Redis(port=replica_b.port).info("replication").get("master_link_status") == "up"
        ),
        10,
        "the restarted replica to sync",
    )
    client = redis.Redis(port=gw.port)

    def serves_again() -> bool:
        before = _gets(replica_b.port)
        for _ in range(50):
            assert client.get("kill:k") == b"v"
        return _gets(replica_b.port) > before

    # Ejection lasts base_ejection (2 s here) the first time; the breaker probes after 5 s.
    wait_for(serves_again, 30, "the restarted replica to take reads again")


def _single_node_gateway(node: RedisServer, start_gateway, governance: dict) -> redis.Redis:
    gw: Gateway = start_gateway(
        redis_cluster_config("feed-cache", {"dc-a": [node.port]}, governance=governance)
    )
    return redis.Redis(port=gw.port, socket_timeout=5)


def test_miss_degrade_answers_empty_reads_and_acknowledges_writes(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    primary = nodes[0]
    direct = redis.Redis(port=primary.port)
    direct.set("miss:there", "v")
    direct.hset("miss:h", "f", "v")
    client = _single_node_gateway(primary, start_gateway, {"switch": {"mode": "miss"}})
    assert client.get("miss:there") is None
    assert client.mget("miss:there", "miss:other", "x") == [None, None, None]
    assert client.hgetall("miss:h") == {}
    assert client.exists("miss:there") == 0
    assert client.set("miss:new", "v") is True
    assert client.delete("miss:there") == 0
    assert client.scan(0) == (0, [])  # a finished scan, so iterators end
    assert client.hscan("miss:h") == (0, {})
    assert client.type("miss:there") == b"none"
    assert client.info("server")["redis_version"]  # about the server, not data: answered
    assert direct.get("miss:new") is None  # acknowledged, not stored
    assert direct.get("miss:there") == b"v"  # and nothing deleted


def test_error_degrade_names_the_switch(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    client = _single_node_gateway(
        nodes[0], start_gateway, {"operations": {"GET": {"switch": {"mode": "error"}}}}
    )
    with pytest.raises(redis.ResponseError, match="degraded by switch feed-cache GET"):
        client.get("err:k")
    everything = _single_node_gateway(nodes[0], start_gateway, {"switch": {"mode": "error"}})
    with pytest.raises(redis.ResponseError, match="degraded by switch feed-cache"):
        everything.scan(0)
    assert everything.info("server")["redis_version"]  # INFO is not a call on the data
    assert client.set("err:k", "v") is True  # only GET is switched


def test_rate_limit_refuses_with_the_limit_named_and_admits_rate_times_time_plus_burst(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    client = _single_node_gateway(nodes[0], start_gateway, {"limit": {"rate": 200, "burst": 50}})
    started = time.monotonic()
    pipe = client.pipeline(transaction=False)
    for _ in range(400):
        pipe.get("limited:k")
    results = pipe.execute(raise_on_error=False)
    elapsed = time.monotonic() - started
    refused = [r for r in results if isinstance(r, redis.ResponseError)]
    admitted = len(results) - len(refused)
    assert refused, "nothing was limited"
    assert "rate limit of cluster feed-cache (200/s) exceeded" in str(refused[0])
    # A token bucket admits at most rate x t + burst in any window; at least the burst.
    assert 50 <= admitted <= 200 * elapsed + 50 + 1, (admitted, elapsed)


def test_mixed_pipelines_are_limited_per_operation(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """A pipeline of several commands under per-command limits: admitted whole while every
    limit has room for it; once GET's bucket runs dry only the GETs are refused, in place,
    and the other commands of the same pipeline still run."""
    client = _single_node_gateway(
        nodes[0],
        start_gateway,
        {
            "limit": {"concurrency": 1000},
            "operations": {"GET": {"limit": {"rate": 0.001, "burst": 6}}},
        },
    )
    client.delete("mixed:n")

    def pipeline(*, ping: bool = False) -> list[object]:
        pipe = client.pipeline(transaction=False)
        for _ in range(2):
            pipe.incr("mixed:n")
            pipe.get("mixed:k")
            pipe.set("mixed:k", "v")
            if ping:
                pipe.ping()  # answered by the gateway: the batch is admitted command by command
        return pipe.execute(raise_on_error=False)

    assert pipeline() == [1, None, True, 2, b"v", True]  # 2 GETs of 6 tokens
    assert pipeline(ping=True) == [3, b"v", True, True, 4, b"v", True, True]
    assert pipeline() == [5, b"v", True, 6, b"v", True]  # the last 2 tokens
    fourth = pipeline()  # the bucket is dry (a token every 1,000 s): GETs refused in place
    refused = [fourth[1], fourth[4]]
    assert all(isinstance(r, redis.ResponseError) for r in refused), fourth
    assert "rate limit of feed-cache GET (0.001/s) exceeded" in str(refused[0])
    assert [fourth[0], fourth[2], fourth[3], fourth[5]] == [7, True, 8, True]  # the rest ran


def test_a_client_slow_to_read_holds_no_concurrency_slot(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """A pipeline's slots are given back when the node has answered, not when the client
    has read the replies: one client not reading must not refuse every other client."""
    node = nodes[0]
    redis.Redis(port=node.port).set("slow-reader:big", b"x" * (32 << 20))
    client = _single_node_gateway(node, start_gateway, {"limit": {"concurrency": 2}})
    client.set("slow-reader:small", "v")
    assert client.mget("slow-reader:small", "x") == [b"v", None]
    assert client.get("slow-reader:small") == b"v"  # GET is known: its batches go whole
    port = client.connection_pool.connection_kwargs["port"]
    with socket.create_connection(("127.0.0.1", port)) as stuck:
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Two GETs in one batch, admitted whole; 64 MB of replies the client never reads.
        gets = _gets(node.port)
        stuck.sendall(encode_command("GET", "slow-reader:big") * 2)
        # At the node, so admitted: from here on, a GET served means the slots came back.
        wait_for(lambda: _gets(node.port) >= gets + 2, 10, "the stuck batch to reach the node")

        def served() -> bool:
            try:
                return client.get("slow-reader:small") == b"v"
            except redis.ResponseError as exc:
                assert "concurrency limit of cluster feed-cache (2)" in str(exc)
                return False  # the stuck batch's replies are still coming from the node

        wait_for(served, 10, "the stuck client's slots to be given back")
        for _ in range(20):
            assert client.get("slow-reader:small") == b"v"


def _ride_out_a_stalled_replica(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway, **cluster: object
) -> None:
    """SIGSTOP a replica: the reads sent to it are backed up on a live node, which answers;
    the copies sent stay within the hedge budget (15 % of reads).

    No latency is compared: the backend's command timeout is 60 s and the client gives up
    after 20 s, so a read left waiting on the stopped replica fails the test outright, while
    a backed-up read is answered within the hedge delay (milliseconds)."""
    primary, replica_a, replica_b = nodes
    gw: Gateway = start_gateway(
        redis_cluster_config(
            "feed-cache",
            {"dc-a": [primary.port, replica_a.port, replica_b.port]},
            backend={"command_timeout": "60s"},
            **cluster,
        )
    )
    redis.Redis(port=gw.port).set("hedge:k", "v")  # another session: this one never wrote
    # No client-side retry: redis-py retries a timed-out read on a new connection by default,
    # which would hide a read the gateway left waiting.
    client = redis.Redis(port=gw.port, socket_timeout=20, retry=Retry(NoBackoff(), 0))
    wait_for(
        lambda: all(redis.Redis(port=s.port).get("hedge:k") == b"v" for s in nodes),
        5,
        "replication of the key",
    )
    for _ in range(400):  # teaches the gateway the p90 and fills the hedge budget
        assert client.get("hedge:k") == b"v"
    _reset_stats(*nodes)
    os.kill(replica_b.proc.pid, signal.SIGSTOP)
    try:
        for _ in range(600):
            assert client.get("hedge:k") == b"v"  # a read stuck on replica_b times out here
        answered = _gets(primary.port) + _gets(replica_a.port)
    finally:
        os.kill(replica_b.proc.pid, signal.SIGCONT)
    # The stopped replica was sent reads (least-loaded balancing tries it until its stuck
    # reads count against it): it runs them once resumed, long after live nodes answered.
    wait_for(lambda: _gets(replica_b.port) >= 1, 10, "the stopped replica's reads")
    sent_to_stopped = _gets(replica_b.port)
    assert answered >= 600  # every read was answered by a live node
    extra_copies = answered + sent_to_stopped - 600
    assert extra_copies <= 0.15 * 600 + 10, (answered, sent_to_stopped)


def test_hedged_reads_ride_out_a_stalled_replica(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    _ride_out_a_stalled_replica(
        nodes, start_gateway, policy="cache", governance={"hedge": {"floor": "2ms"}}
    )


def test_an_operation_can_hedge_when_its_cluster_does_not(
    nodes: tuple[RedisServer, RedisServer, RedisServer], start_gateway
) -> None:
    """Hedging off for the cluster, on for GET only: GETs still ride out a stalled replica
    (without a backup request, a GET sent to it would wait for the command timeout)."""
    _ride_out_a_stalled_replica(
        nodes,
        start_gateway,
        policy="default",
        governance={"operations": {"GET": {"hedge": {"enabled": True, "floor": "2ms"}}}},
    )
