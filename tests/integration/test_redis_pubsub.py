"""Pub/sub through the gateway: every subscriber sees what a direct subscriber sees.

Each scenario runs a subscriber through the gateway and one directly against the node side by
side, drives both with the same calls, and compares the messages they receive (RESP2 arrays and
RESP3 push frames, via redis-py and as raw bytes).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.client import PubSub

from tests.support.servers import Gateway, RawRedis, RedisServer, encode_command, wait_for


@pytest.fixture
def direct(redis_node: RedisServer) -> redis.Redis:
    return redis.Redis(port=redis_node.port, socket_timeout=10)


def numsub(client: redis.Redis, channel: str) -> int:
    return int(dict(client.pubsub_numsub(channel))[channel.encode()])


def read_messages(pubsub: PubSub, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
    """The next ``count`` messages, in order; fails after ``timeout``."""
    messages: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    while len(messages) < count:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"got only {messages!r} of {count} messages"
        message = pubsub.get_message(timeout=min(remaining, 1.0))
        if message is not None:
            messages.append(message)
    return messages


@pytest.mark.parametrize("protocol", [2, 3])
def test_subscribe_psubscribe_unsubscribe_like_direct(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    subscribers = [
        redis.Redis(port=port, protocol=protocol, socket_timeout=10).pubsub()
        for port in (redis_node.port, gateway.port)
    ]
    try:
        _pubsub_scenario(subscribers, direct, redis.Redis(port=gateway.port, protocol=protocol))
    finally:
        for sub in subscribers:
            sub.close()


def _pubsub_scenario(
    subscribers: list[PubSub], direct: redis.Redis, publisher: redis.Redis
) -> None:
    for sub in subscribers:
        sub.subscribe("news", "sport")
        sub.psubscribe("log.*")
    wait_for(lambda: numsub(direct, "news") == 2, 5, "both subscribers on news")
    wait_for(lambda: direct.pubsub_numpat() == 1, 5, "the pattern subscriptions")

    assert publisher.publish("news", "n1") == 2
    assert publisher.publish("log.app", b"line\r\n\x00") == 2
    assert publisher.publish("sport", "s1") == 2
    for sub in subscribers:
        sub.unsubscribe("news")
    wait_for(lambda: numsub(direct, "news") == 0, 5, "news unsubscribed")
    assert publisher.publish("news", "ignored") == 0
    assert publisher.publish("sport", "s2") == 2
    for sub in subscribers:
        sub.punsubscribe()
        sub.unsubscribe()
    wait_for(lambda: numsub(direct, "sport") == 0, 5, "all unsubscribed")

    expected, got = (read_messages(sub, 10) for sub in subscribers)
    assert got == expected
    kinds = [m["type"] for m in got]
    assert kinds.count("message") == 3 and kinds.count("pmessage") == 1
    assert {
        "channel": b"log.app",
        "data": b"line\r\n\x00",
        "pattern": b"log.*",
        "type": "pmessage",
    } in got
    for sub in subscribers:
        assert sub.get_message(timeout=0.05) is None


@pytest.mark.parametrize("protocol", [2, 3])
def test_get_message_timeout_returns_none(protocol: int, gateway: Gateway) -> None:
    """With nothing published, ``get_message`` waits out its timeout and returns None: the
    gateway sends nothing after the confirmation, and nothing that leaves the client stuck.

    The confirmation is waited for and checked first (left to one fixed 1 s read, it could come
    late under load and be taken by the timed read, which would then return at once). Every
    message is returned here (no ``ignore_subscribe_messages``): anything stray fails the None.
    The lower bound (it did wait) cannot be broken by load; the upper one is 10 s away from
    the 0.3 s timeout.
    """
    sub = redis.Redis(port=gateway.port, protocol=protocol).pubsub()
    sub.subscribe("quiet")
    (confirmation,) = read_messages(sub, 1)
    assert (confirmation["type"], confirmation["channel"]) == ("subscribe", b"quiet")
    started = time.monotonic()
    assert sub.get_message(timeout=0.3) is None
    elapsed = time.monotonic() - started
    assert 0.25 <= elapsed < 10, elapsed
    sub.close()


@pytest.mark.parametrize("protocol", [2, 3])
def test_publish_crosses_between_gateway_and_direct(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    via = redis.Redis(port=gateway.port, protocol=protocol).pubsub(ignore_subscribe_messages=True)
    via.subscribe("cross")
    wait_for(lambda: numsub(direct, "cross") == 1, 5, "subscriber through the gateway")
    assert direct.publish("cross", "from-direct") == 1
    (message,) = read_messages(via, 1)
    assert message["data"] == b"from-direct"
    via.close()
    # Closing the subscriber closes its backend connection: nobody listens any more.
    wait_for(lambda: numsub(direct, "cross") == 0, 5, "the relay connection to close")


@pytest.mark.parametrize("protocol", [2, 3])
def test_ping_while_subscribed(protocol: int, redis_node: RedisServer, gateway: Gateway) -> None:
    results = []
    for port in (redis_node.port, gateway.port):
        sub = redis.Redis(port=port, protocol=protocol).pubsub()
        sub.subscribe("p")
        sub.ping("hi")
        results.append(read_messages(sub, 2))
        sub.close()
    assert results[1] == results[0]


def test_sharded_pubsub(direct: redis.Redis, redis_node: RedisServer, gateway: Gateway) -> None:
    subscribers = [
        redis.Redis(port=port, protocol=3).pubsub() for port in (redis_node.port, gateway.port)
    ]
    for sub in subscribers:
        sub.ssubscribe("shard-ch")

    def shardnumsub() -> int:
        reply = direct.execute_command("PUBSUB", "SHARDNUMSUB", "shard-ch")
        return int(dict(zip(reply[::2], reply[1::2], strict=True))[b"shard-ch"])

    wait_for(lambda: shardnumsub() == 2, 5, "both shard subscribers")
    publisher = redis.Redis(port=gateway.port)
    assert publisher.spublish("shard-ch", "sharded") == 2
    for sub in subscribers:
        sub.sunsubscribe("shard-ch")
    expected, got = (read_messages(sub, 3) for sub in subscribers)
    assert got == expected
    assert got[1]["type"] == "smessage" and got[1]["data"] == b"sharded"


@pytest.mark.parametrize("protocol", [2, 3])
def test_raw_subscribed_mode_matches_direct(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """What may and may not be sent while subscribed, byte for byte (RESP3 allows any command)."""
    commands = [
        ("SUBSCRIBE", "a", "b"),
        ("GET", "k"),
        ("PING",),
        ("PSUBSCRIBE", "x*"),
        ("UNSUBSCRIBE", "a"),
        ("PUNSUBSCRIBE",),
        ("UNSUBSCRIBE",),
        ("SET", "k", "after"),
        ("GET", "k"),
    ]
    # SUBSCRIBE answers once per channel; UNSUBSCRIBE without args once per channel left.
    reply_count = 2 + 1 + 1 + 1 + 1 + 1 + 1 + 1 + 1
    outputs = []
    for port in (redis_node.port, gateway.port):
        direct.delete("k")
        with RawRedis(port) as conn:
            if protocol == 3:
                conn.call(("HELLO", "3"))
            conn.send(b"".join(encode_command(*c) for c in commands))
            outputs.append(conn.read_replies(reply_count))
    assert outputs[1] == outputs[0]


def test_reset_leaves_subscribed_mode(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    commands = [("SUBSCRIBE", "r"), ("RESET",), ("SET", "rk", "v"), ("GET", "rk")]
    outputs = []
    for port in (redis_node.port, gateway.port):
        with RawRedis(port) as conn:
            outputs.append(conn.call(*commands))
    assert outputs[0][1:] == [b"+RESET\r\n", b"+OK\r\n", b"$1\r\nv\r\n"]
    assert outputs[1] == outputs[0]
    wait_for(lambda: numsub(direct, "r") == 0, 5, "RESET to unsubscribe")


def test_refused_command_while_subscribed(gateway: Gateway) -> None:
    with RawRedis(gateway.port, timeout=3) as conn:
        conn.call(("HELLO", "3"))
        _, refused, ping = conn.call(("SUBSCRIBE", "z"), ("MONITOR",), ("PING",))
    assert refused.startswith(b"-ERR ") and b"MONITOR" in refused
    assert ping == b"+PONG\r\n"


def test_pubsub_asyncio(direct: redis.Redis, gateway: Gateway) -> None:
    async def main() -> list[dict[str, Any]]:
        client = redis.asyncio.Redis(port=gateway.port, protocol=3)
        publisher = redis.asyncio.Redis(port=gateway.port, protocol=2)
        sub = client.pubsub(ignore_subscribe_messages=True)
        try:
            await sub.subscribe("async-ch")
            await sub.psubscribe("async-*")
            deadline = time.monotonic() + 5
            while numsub(direct, "async-ch") != 1:
                assert time.monotonic() < deadline, "no subscriber"
                await asyncio.sleep(0.01)
            assert await publisher.publish("async-ch", "hello") == 2  # channel + pattern
            messages = []
            while len(messages) < 2:
                assert time.monotonic() < deadline, messages
                message = await sub.get_message(timeout=1.0)
                if message is not None:
                    messages.append(message)
            return messages
        finally:
            await sub.aclose()
            await client.aclose()
            await publisher.aclose()

    messages = asyncio.run(main())
    assert sorted(m["type"] for m in messages) == ["message", "pmessage"]
    assert all(m["data"] == b"hello" for m in messages)
