"""Connection state a session must keep right: what survives MULTI, WATCH, SELECT, HELLO,
pub/sub and RESET, and what must never reach another client through a pooled connection.

Where redis-server has an answer, the gateway's is compared with it byte for byte.
"""

from __future__ import annotations

import pytest
import redis

from tests.support.servers import Gateway, RawRedis, RedisServer, redis_cluster_config

HGETALL_RESP3 = b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n"
HGETALL_RESP2 = b"*2\r\n$1\r\nf\r\n$1\r\nv\r\n"
EXECABORT = b"-EXECABORT Transaction discarded because of previous errors.\r\n"


@pytest.fixture
def gw(redis_node: RedisServer, start_gateway) -> Gateway:
    redis.Redis(port=redis_node.port).flushall()
    return start_gateway(redis_cluster_config("c", {"a": [redis_node.port]}))


def _one_dedicated_connection(redis_node: RedisServer, start_gateway) -> Gateway:
    return start_gateway(
        redis_cluster_config(
            "c",
            {"a": [redis_node.port]},
            backend={"max_dedicated": 1, "connect_timeout": "300ms"},
        )
    )


def test_subscribe_inside_multi_is_refused_and_nothing_subscribed_is_pooled(
    redis_node: RedisServer, gw: Gateway
) -> None:
    """The session could not follow a subscription EXEC starts; pooled, the subscribed
    connection would hand its messages to the next client as command replies."""
    with RawRedis(gw.port) as a:
        multi, subscribe, exec_ = a.call(("MULTI",), ("SUBSCRIBE", "secret"), ("EXEC",))
    assert (multi, exec_) == (b"+OK\r\n", EXECABORT)
    assert subscribe.startswith(b"-ERR resmesh: SUBSCRIBE inside MULTI is not supported")
    direct = redis.Redis(port=redis_node.port)
    with RawRedis(gw.port) as b:
        assert b.call(("WATCH", "k")) == [b"+OK\r\n"]
        assert direct.publish("secret", "token") == 0
        assert b.call(("GET", "k")) == [b"$-1\r\n"]


def test_hello_inside_multi_is_refused(gw: Gateway) -> None:
    with RawRedis(gw.port) as a:
        replies = a.call(("MULTI",), ("HELLO", "3"), ("EXEC",), ("HGETALL", "h"))
    assert replies[1].startswith(b"-ERR resmesh: HELLO inside MULTI is not supported")
    assert replies[2:] == [EXECABORT, b"*0\r\n"]  # still RESP2


def test_hello_while_watching_switches_the_pinned_connection_too(
    redis_node: RedisServer, gw: Gateway
) -> None:
    redis.Redis(port=redis_node.port).hset("h", "f", "v")
    steps = [("WATCH", "k"), ("HELLO", "3"), ("HGETALL", "h"), ("UNWATCH",), ("HGETALL", "h")]
    with RawRedis(gw.port) as client:
        got = [client.call(step)[0] for step in steps]
    assert got[2] == got[4] == HGETALL_RESP3
    assert got[1].startswith(b"%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n")  # the gateway's HELLO
    with RawRedis(gw.port) as other:  # the RESP3 connection was not pooled
        assert other.call(("WATCH", "k"), ("HGETALL", "h"))[1] == HGETALL_RESP2


@pytest.mark.parametrize(
    "steps",
    [
        [[("MULTI",), ("SELECT", "99"), ("SET", "a", "1"), ("EXEC",)], [("GET", "a")]],
        [[("SET", "a", "1")], [("WATCH", "k")], [("SELECT", "99")], [("UNWATCH",)], [("GET", "a")]],
        [[("MULTI",), ("SET", "a", "1"), ("SELECT", "1"), ("SET", "a", "2"), ("EXEC",)]],
    ],
    ids=["failed-in-multi", "failed-while-watching", "succeeded-in-multi"],
)
def test_select_takes_effect_only_when_the_node_accepted_it(
    redis_node: RedisServer, gw: Gateway, steps: list[list[tuple[str, ...]]]
) -> None:
    steps = [*steps, [("GET", "a")], [("SELECT", "0")], [("GET", "a")]]
    results = {}
    for name, port in (("direct", redis_node.port), ("gateway", gw.port)):
        redis.Redis(port=redis_node.port).flushall()
        with RawRedis(port) as client:
            results[name] = [client.call(*step) for step in steps]
    assert results["gateway"] == results["direct"]


def test_a_refused_multi_runs_none_of_its_commands(redis_node: RedisServer, start_gateway) -> None:
    """No dedicated connection for MULTI: the client is told, and the commands it meant to
    run atomically are not run one by one instead."""
    direct = redis.Redis(port=redis_node.port)
    direct.delete("balance")
    gw = _one_dedicated_connection(redis_node, start_gateway)
    with RawRedis(gw.port) as holder:
        assert holder.call(("WATCH", "x")) == [b"+OK\r\n"]  # holds the only one
        app = redis.Redis(port=gw.port, socket_timeout=5)
        with pytest.raises(redis.RedisError):
            app.pipeline(transaction=True).incr("balance", 100).execute()
        with RawRedis(gw.port) as raw:
            multi, incr, exec_, after = raw.call(
                ("MULTI",), ("INCR", "balance"), ("EXEC",), ("PING",)
            )
    assert multi.startswith(b"-ERR") and incr.startswith(b"-ERR resmesh: not run")
    assert (exec_, after) == (EXECABORT, b"+PONG\r\n")
    assert direct.get("balance") is None


def test_a_subscribe_that_gets_no_connection_leaves_the_rest_of_the_pipeline_answered(
    redis_node: RedisServer, start_gateway
) -> None:
    gw = _one_dedicated_connection(redis_node, start_gateway)
    with RawRedis(gw.port) as holder:
        assert holder.call(("WATCH", "x")) == [b"+OK\r\n"]
        # The SUBSCRIBE waits connect_timeout (300 ms) for the one pinned connection, then fails.
        with RawRedis(gw.port, timeout=10) as client:
            subscribe, ping = client.call(("SUBSCRIBE", "c"), ("PING",))
    assert subscribe.startswith(b"-ERR") and ping == b"+PONG\r\n"


def test_reset_in_pub_sub_mode_logs_the_client_out(redis_node: RedisServer, start_gateway) -> None:
    gw = start_gateway(
        redis_cluster_config(
            "c", {"a": [redis_node.port]}, users={"app": {"password": "pw", "clusters": ["c"]}}
        )
    )
    redis.Redis(port=redis_node.port).set("a", "secret")
    with RawRedis(gw.port) as client:
        assert client.call(("AUTH", "app", "pw")) == [b"+OK\r\n"]
        client.call(("SUBSCRIBE", "c"))
        assert client.call(("RESET",)) == [b"+RESET\r\n"]
        assert client.call(("GET", "a"))[0].startswith(b"-NOAUTH")
        assert client.call(("AUTH", "app", "pw"), ("GET", "a")) == [b"+OK\r\n", b"$6\r\nsecret\r\n"]


@pytest.fixture
def sharded(shards: list[RedisServer], start_gateway) -> Gateway:
    for server in shards:
        redis.Redis(port=server.port).flushall()
    return start_gateway(redis_cluster_config("s", {"a": [s.port for s in shards]}, mode="sharded"))


def test_a_subscribed_connection_in_a_sharded_cluster_runs_pub_sub_only(
    shards: list[RedisServer], sharded: Gateway
) -> None:
    """It is pinned to one node: a key command there would put keys on the wrong node."""
    keys = [f"user:{i}" for i in range(12)]
    with RawRedis(sharded.port) as client:
        client.call(("SUBSCRIBE", "c"))
        client.call(("UNSUBSCRIBE", "c"))
        replies = client.call(*[("SET", key, "v") for key in keys], ("PING",))
    assert all(
        r.startswith(b"-ERR resmesh: SET on a connection that subscribed") for r in replies[:-1]
    )
    assert replies[-1] == b"+PONG\r\n"
    assert sum(redis.Redis(port=s.port).dbsize() for s in shards) == 0


def test_a_transaction_refused_in_sharded_mode_applies_none_of_its_writes(
    sharded: Gateway,
) -> None:
    client = redis.Redis(port=sharded.port, socket_timeout=5)
    with pytest.raises(redis.ResponseError, match="sharded"):
        client.pipeline(transaction=True).set("t", "written").incr("n").execute()
    assert (client.get("t"), client.get("n")) == (None, None)
