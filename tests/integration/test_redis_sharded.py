"""A sharded Redis cluster through the gateway: keys spread by consistent hash over three
real nodes, multi-key commands split and merged, cross-node commands refused clearly."""

from __future__ import annotations

import threading

import pytest
import redis

from tests.support.servers import Gateway, RedisServer, redis_cluster_config, wait_for


@pytest.fixture
def client(shards: list[RedisServer], start_gateway) -> redis.Redis:
    for server in shards:
        redis.Redis(port=server.port).flushall()
    gw: Gateway = start_gateway(
        redis_cluster_config("sessions", {"dc-a": [s.port for s in shards]}, mode="sharded")
    )
    return redis.Redis(port=gw.port, socket_timeout=5)


def test_keys_spread_over_every_node_and_live_on_exactly_one(
    shards: list[RedisServer], client: redis.Redis
) -> None:
    for i in range(300):
        assert client.set(f"user:{i}", i) is True
    holders = [redis.Redis(port=s.port) for s in shards]
    per_node = [len(h.keys("user:*")) for h in holders]
    assert sum(per_node) == 300
    assert min(per_node) >= 50, per_node  # ketama spreads them
    for i in range(300):
        assert sum(h.exists(f"user:{i}") for h in holders) == 1
        assert client.get(f"user:{i}") == str(i).encode()


def test_multi_key_commands_are_split_and_merged_in_order(client: redis.Redis) -> None:
    keys = [f"k:{i}" for i in range(40)]
    assert client.mset({k: k.upper() for k in keys}) is True
    assert client.mget([*keys, "k:missing"]) == [k.upper().encode() for k in keys] + [None]
    assert client.exists(*keys[:10], "k:missing") == 10
    assert client.delete(*keys[:20]) == 20
    assert client.mget(keys[:2] + keys[-2:]) == [None, None, b"K:38", b"K:39"]
    pipe = client.pipeline(transaction=False)
    pipe.mget(keys[20:25])
    pipe.set("k:solo", "x")
    pipe.get("k:solo")
    assert pipe.execute() == [[k.upper().encode() for k in keys[20:25]], True, b"x"]


def test_cross_node_commands_are_refused_and_hash_tags_keep_keys_together(
    client: redis.Redis,
) -> None:
    with pytest.raises(redis.ResponseError, match="don't hash to the same node"):
        for i in range(20):  # some pair of these lands on two nodes
            client.sunionstore(f"dst:{i}", f"src:{i}", f"other:{i}")
    client.sadd("{u1}:a", "x")
    client.sadd("{u1}:b", "y")
    assert client.sunionstore("{u1}:c", "{u1}:a", "{u1}:b") == 2
    with pytest.raises(redis.ResponseError, match="sharded"):
        client.pipeline(transaction=True).set("t", 1).execute()


def test_blocking_pop_runs_on_the_node_of_its_key(
    shards: list[RedisServer], client: redis.Redis
) -> None:
    result: list[object] = []
    thread = threading.Thread(target=lambda: result.append(client.blpop(["queue:7"], 5)))
    thread.start()
    holders = [redis.Redis(port=s.port) for s in shards]
    wait_for(
        lambda: sum(int(h.info("clients")["blocked_clients"]) for h in holders) == 1,
        5,
        "the BLPOP to block on its node",
    )
    client.rpush("queue:7", "job")  # another pooled connection through the gateway
    thread.join(5)
    assert result == [(b"queue:7", b"job")]
