"""Pinned traffic goes through the same pipeline: transactions, watches, blocking commands and
subscriptions pass the degrade switch, the limits and the node's breaker, against real
redis-server and real clients (raw RESP and redis-py).

Each switch mode's meaning for a pinned session is in ``resmesh/net/redis/session.py``'s
docstring and the README; these tests hold the gateway to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.support.servers import Gateway, RawRedis, RedisServer, redis_cluster_config

EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


@pytest.fixture
def node() -> Iterator[RedisServer]:
    server = RedisServer()
    yield server
    server.stop()


def _gateway(
    start_gateway: Callable[[dict[str, Any]], Gateway], node: RedisServer, **governance: Any
) -> Gateway:
    config = redis_cluster_config(
        "pinned", {"dc-a": [node.port]}, policy="passthrough", governance=governance
    )
    return start_gateway(config)


@pytest.mark.parametrize("mode", ["readonly", "error"])
def test_a_transaction_of_writes_under_a_switch_stores_nothing(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway], mode: str
) -> None:
    gw = _gateway(start_gateway, node, switch={"mode": mode})
    with RawRedis(gw.port) as conn:
        replies = conn.call(("MULTI",), ("SET", "tx:a", "1"), ("INCR", "tx:n"), ("EXEC",))
    assert replies[0] == b"+OK\r\n"
    assert all(r.startswith(b"-ERR resmesh: ") for r in replies[1:3]), replies
    assert f"mode {mode}".encode() in replies[1] or b"read-only" in replies[1]
    assert replies[3] == EXECABORT
    direct = redis.Redis(port=node.port)
    assert (direct.get("tx:a"), direct.get("tx:n")) == (None, None)
    assert direct.info("commandstats").get("cmdstat_set") is None  # never reached the node


def test_readonly_serves_the_reads_of_a_transaction(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    redis.Redis(port=node.port).set("tx:r", "v")
    gw = _gateway(start_gateway, node, switch={"mode": "readonly"})
    with RawRedis(gw.port) as conn:
        replies = conn.call(("MULTI",), ("GET", "tx:r"), ("EXEC",))
    assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n$1\r\nv\r\n"]


def test_a_miss_switch_answers_inside_a_transaction_without_the_node(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """Under ``miss`` the switched commands are answered +QUEUED by the gateway and their
    empty or acknowledged replies take their places in EXEC's array; commands the switch
    leaves alone (PING) still run on the node."""
    direct = redis.Redis(port=node.port)
    direct.set("tx:m", "stored")
    gw = _gateway(start_gateway, node, switch={"mode": "miss"})
    client = redis.Redis(port=gw.port)
    pipe = client.pipeline(transaction=True)
    pipe.get("tx:m").set("tx:m", "new").ping().incr("tx:count").mget("tx:m", "tx:x")
    assert pipe.execute() == [None, True, True, 0, [None, None]]
    assert direct.get("tx:m") == b"stored" and direct.get("tx:count") is None


def test_watch_under_a_miss_switch_holds_and_the_transaction_runs(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = _gateway(start_gateway, node, switch={"mode": "miss"})
    with RawRedis(gw.port) as conn:
        replies = conn.call(("WATCH", "w"), ("MULTI",), ("SET", "w", "1"), ("EXEC",))
    assert replies == [b"+OK\r\n", b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n"]
    assert redis.Redis(port=node.port).get("w") is None


def test_blocking_commands_and_subscriptions_obey_an_error_switch(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = _gateway(start_gateway, node, switch={"mode": "error"})
    with RawRedis(gw.port) as conn:
        blpop, subscribe, ping = conn.call(("BLPOP", "q", "0"), ("SUBSCRIBE", "ch"), ("PING",))
    assert blpop.startswith(b"-ERR resmesh: degraded by switch pinned (mode error)")
    assert subscribe.startswith(b"-ERR resmesh: degraded by switch pinned (mode error)")
    assert ping == b"+PONG\r\n"  # about the connection, not data: answered
    stats = redis.Redis(port=node.port).info("commandstats")
    assert "cmdstat_blpop" not in stats and "cmdstat_subscribe" not in stats


def test_a_blocking_pop_under_miss_waits_its_block_time_and_finds_nothing(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    redis.Redis(port=node.port).rpush("q:m", "job")
    gw = _gateway(start_gateway, node, switch={"mode": "miss"})
    client = redis.Redis(port=gw.port)
    assert client.blpop(["q:m"], timeout=0.2) is None  # the list looks empty: a timeout
    assert client.publish("ch", "m") == 0  # nobody heard it
    assert redis.Redis(port=node.port).llen("q:m") == 1  # the job is still there


def test_commands_inside_a_transaction_count_against_the_rate_limit(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """A burst of 3 at 1/s: MULTI and two SETs take it; the third SET is refused at queue
    time, so the transaction aborts and stores nothing."""
    gw = _gateway(start_gateway, node, limit={"rate": 1, "burst": 3})
    with RawRedis(gw.port) as conn:
        replies = conn.call(
            ("MULTI",), ("SET", "rl:a", "1"), ("SET", "rl:b", "2"), ("SET", "rl:c", "3"), ("EXEC",)
        )
    assert replies[:3] == [b"+OK\r\n", b"+QUEUED\r\n", b"+QUEUED\r\n"]
    assert replies[3].startswith(b"-ERR resmesh: rate limit of cluster pinned")
    assert replies[4] == EXECABORT
    assert redis.Redis(port=node.port).get("rl:a") is None


def test_a_refused_multi_refuses_its_commands_until_exec(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    gw = _gateway(start_gateway, node, operations={"MULTI": {"limit": {"rate": 1, "burst": 1}}})
    with RawRedis(gw.port) as conn:
        first = conn.call(("MULTI",), ("SET", "m:a", "1"), ("EXEC",))
        second = conn.call(("MULTI",), ("SET", "m:b", "1"), ("EXEC",), ("GET", "m:a"))
    assert first == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n"]
    assert second[0].startswith(b"-ERR resmesh: rate limit of pinned MULTI")
    assert second[1].startswith(b"-ERR resmesh: not run: its MULTI was refused")
    assert second[2:] == [EXECABORT, b"$1\r\n1\r\n"]
    assert redis.Redis(port=node.port).get("m:b") is None


def test_an_open_breaker_refuses_a_new_transaction_and_pinned_calls_count_for_it(
    node: RedisServer, start_gateway: Callable[[dict[str, Any]], Gateway]
) -> None:
    """Writes the node refuses (NOREPLICAS: the node's fault) trip its breaker, from inside a
    transaction too; then a new MULTI, WATCH or BLPOP is refused without reaching the node."""
    direct = redis.Redis(port=node.port)
    direct.config_set("min-replicas-to-write", 1)  # every write: -NOREPLICAS
    try:
        gw = _gateway(
            start_gateway,
            node,
            breaker={"enabled": True, "consecutive_failures": 2, "open_for": "60s"},
        )
        with RawRedis(gw.port) as conn:
            # Two exchanges with the node's error, both pinned: EXEC answers -EXECABORT with
            # the queued write's NOREPLICAS (the node's fault), twice.
            for _ in range(2):
                replies = conn.call(("MULTI",), ("SET", "b:k", "1"), ("EXEC",))
                assert replies[1].startswith(b"-NOREPLICAS"), replies
            multi, exec_, watch, blpop = conn.call(
                ("MULTI",), ("EXEC",), ("WATCH", "b:k"), ("BLPOP", "b:q", "0")
            )
        for refused in (multi, watch, blpop):
            assert b"circuit breaker open" in refused, refused
        assert exec_ == EXECABORT
    finally:
        direct.config_set("min-replicas-to-write", 0)
