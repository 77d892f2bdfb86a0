"""Pipelines, transactions, locks, SCAN iterators, scripts, large and binary values.

Everything that can be compared is compared with a direct connection to the same redis-server:
the gateway must be invisible to an application.
"""

from __future__ import annotations

import asyncio
import os
import random
import threading
from typing import Any

import pytest
import redis
import redis.asyncio
from redis.exceptions import LockError, LockNotOwnedError, NoScriptError, WatchError

from tests.support.servers import Gateway, RawRedis, RedisServer


@pytest.fixture
def direct(redis_node: RedisServer) -> redis.Redis:
    client = redis.Redis(port=redis_node.port, socket_timeout=10)
    client.flushall()
    client.script_flush()
    return client


def _normalize(results: list[Any]) -> list[Any]:
    """Exceptions in pipeline results compare by class and message."""
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in results]


def _pipeline_commands(seed: int, count: int, *, transaction: bool) -> list[tuple[Any, ...]]:
    """A reproducible mix of reads, writes and commands that fail."""
    rnd = random.Random(seed)
    commands: list[tuple[Any, ...]] = []
    for _ in range(count):
        key = f"k{rnd.randrange(25)}"
        roll = rnd.randrange(14)
        if roll == 0:
            commands.append(("SET", key, rnd.choice(["1", "word", "17"])))
        elif roll == 1:
            commands.append(("GET", key))
        elif roll == 2:
            commands.append(("INCR", key))  # fails on "word" and on lists/hashes
        elif roll == 3:
            commands.append(("RPUSH", f"l{rnd.randrange(5)}", rnd.randrange(100)))
        elif roll == 4:
            commands.append(("LRANGE", f"l{rnd.randrange(5)}", 0, -1))
        elif roll == 5:
            commands.append(("LPUSH", key, "x"))  # WRONGTYPE when key holds a string
        elif roll == 6:
            commands.append(("HSET", f"h{rnd.randrange(5)}", f"f{rnd.randrange(9)}", key))
        elif roll == 7:
            commands.append(("HGETALL", f"h{rnd.randrange(5)}"))
        elif roll == 8:
            commands.append(("DEL", key))
        elif roll == 9:
            commands.append(("MGET", key, f"k{rnd.randrange(25)}"))
        elif roll == 10:
            commands.append(("PING",))
        elif roll == 11:
            commands.append(("ECHO", f"echo-{rnd.randrange(1000)}"))
        elif roll == 12:
            commands.append(("EXISTS", key, "l1", "h1"))
        else:
            commands.append(("ZADD", "z", rnd.randrange(50), key))
    if not transaction:
        # Outside a transaction, errors that stop nothing: a typo and a bad arity.
        commands.insert(count // 3, ("NOSUCHCOMMAND", "x"))
        commands.insert(count // 2, ("GET",))
    return commands


def _run_pipeline(client: redis.Redis, commands: list[tuple[Any, ...]], transaction: bool) -> Any:
    pipe = client.pipeline(transaction=transaction)
    for command in commands:
        pipe.execute_command(*command)
    return _normalize(pipe.execute(raise_on_error=False))


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("transaction", [False, True], ids=["pipeline", "multi"])
def test_big_mixed_pipeline_matches_direct(
    transaction: bool, protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    commands = _pipeline_commands(7 + protocol, 600, transaction=transaction)
    expected = _run_pipeline(
        redis.Redis(port=redis_node.port, protocol=protocol), commands, transaction
    )
    direct.flushall()
    got = _run_pipeline(redis.Redis(port=gateway.port, protocol=protocol), commands, transaction)
    assert len(got) == len(commands)
    assert got == expected
    errors = [r for r in got if isinstance(r, tuple) and r and r[0] == "ResponseError"]
    assert errors, "the scenario should contain failing commands"


def test_big_pipeline_asyncio(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    commands = _pipeline_commands(99, 500, transaction=False)

    async def run(port: int) -> list[Any]:
        client = redis.asyncio.Redis(port=port, protocol=3)
        try:
            pipe = client.pipeline(transaction=False)
            for command in commands:
                pipe.execute_command(*command)
            return _normalize(await pipe.execute(raise_on_error=False))
        finally:
            await client.aclose()

    expected = asyncio.run(run(redis_node.port))
    direct.flushall()
    assert asyncio.run(run(gateway.port)) == expected


def test_queue_time_error_aborts_transaction_like_direct(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """An unknown command inside MULTI makes EXEC fail with EXECABORT, nothing applied."""
    outcomes = []
    for port in (redis_node.port, gateway.port):
        with RawRedis(port) as conn:
            outcomes.append(
                conn.call(("MULTI",), ("SET", "a", "1"), ("NOSUCH", "x"), ("EXEC",), ("GET", "a"))
            )
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][3].startswith(b"-EXECABORT")
    assert outcomes[0][4] == b"$-1\r\n"


def test_select_inside_multi_sticks_after_exec(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """redis-server keeps the db a transaction SELECTed; the next command runs there."""
    commands = [("MULTI",), ("SELECT", "4"), ("SET", "t", "in4"), ("EXEC",), ("GET", "t")]
    outcomes = []
    for port in (redis_node.port, gateway.port):
        direct.flushall()
        with RawRedis(port) as conn:
            outcomes.append(conn.call(*commands))
    assert outcomes[0][4] == b"$3\r\nin4\r\n"
    assert outcomes[1] == outcomes[0]


def test_pipeline_with_select_in_the_middle(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """Commands pipelined around a SELECT run in the right databases, in order."""
    commands = [
        ("SET", "p", "db0"),
        ("SELECT", "2"),
        ("GET", "p"),
        ("SET", "p", "db2"),
        ("SELECT", "0"),
        ("GET", "p"),
        ("SELECT", "2"),
        ("GET", "p"),
    ]
    outcomes = []
    for port in (redis_node.port, gateway.port):
        direct.flushall()
        with RawRedis(port) as conn:
            outcomes.append(conn.call(*commands))
    assert outcomes[0][-1] == b"$3\r\ndb2\r\n"
    assert outcomes[1] == outcomes[0]


# --- WATCH -----------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_watch_conflict_raises_watch_error(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    app = redis.Redis(port=gateway.port, protocol=protocol)
    other = redis.Redis(port=gateway.port, protocol=protocol)
    app.set("balance", 100)
    with app.pipeline() as pipe:
        pipe.watch("balance")
        balance = int(pipe.get("balance"))
        other.incrby("balance", 5)  # a concurrent writer
        pipe.multi()
        pipe.set("balance", balance - 30)
        with pytest.raises(WatchError):
            pipe.execute()
    assert direct.get("balance") == b"105"

    # Without interference the same transaction commits.
    with app.pipeline() as pipe:
        pipe.watch("balance")
        balance = int(pipe.get("balance"))
        pipe.multi()
        pipe.set("balance", balance - 30)
        assert pipe.execute() == [True]
    assert direct.get("balance") == b"75"


def test_transaction_helper_retries_after_conflict(direct: redis.Redis, gateway: Gateway) -> None:
    app = redis.Redis(port=gateway.port)
    other = redis.Redis(port=gateway.port)
    app.set("counter", 10)
    calls = 0

    def double(pipe: redis.client.Pipeline) -> None:
        nonlocal calls
        calls += 1
        value = int(pipe.get("counter"))
        if calls == 1:
            other.incr("counter")  # forces one retry
        pipe.multi()
        pipe.set("counter", value * 2)

    assert app.transaction(double, "counter") == [True]
    assert calls == 2
    assert direct.get("counter") == b"22"


def test_watch_conflict_asyncio(direct: redis.Redis, gateway: Gateway) -> None:
    async def main() -> None:
        app = redis.asyncio.Redis(port=gateway.port, protocol=3)
        other = redis.asyncio.Redis(port=gateway.port, protocol=3)
        try:
            await app.set("stock", 3)
            async with app.pipeline() as pipe:
                await pipe.watch("stock")
                stock = int(await pipe.get("stock"))
                await other.decr("stock")
                pipe.multi()
                pipe.set("stock", stock - 1)
                with pytest.raises(WatchError):
                    await pipe.execute()
        finally:
            await app.aclose()
            await other.aclose()

    asyncio.run(main())
    assert direct.get("stock") == b"2"


def test_unwatch_then_commit(direct: redis.Redis, gateway: Gateway) -> None:
    app = redis.Redis(port=gateway.port)
    with RawRedis(gateway.port) as conn:
        replies = conn.call(("WATCH", "w"), ("UNWATCH",))
        assert replies == [b"+OK\r\n", b"+OK\r\n"]
        app.set("w", "changed")
        replies = conn.call(("MULTI",), ("SET", "w", "mine"), ("EXEC",))
        assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n"]
    assert direct.get("w") == b"mine"


# --- Lock -------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_lock_acquire_extend_release_and_contention(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    first = redis.Redis(port=gateway.port, protocol=protocol)
    second = redis.Redis(port=gateway.port, protocol=protocol)
    lock = first.lock("resource", timeout=5, sleep=0.01)
    rival = second.lock("resource", timeout=5, sleep=0.01)

    assert lock.acquire(blocking=False)
    assert lock.owned()
    assert not rival.acquire(blocking=False)
    assert not rival.acquire(blocking_timeout=0.2)
    with pytest.raises(LockError):
        rival.release()  # holds no token: refused locally
    rival.local.token = b"forged"
    with pytest.raises(LockNotOwnedError):
        rival.release()  # the release script runs on the node and refuses
    rival.local.token = b"forged"
    with pytest.raises(LockNotOwnedError):
        rival.extend(10)
    rival.local.token = None

    assert lock.extend(20)
    assert direct.pttl("resource") > 20_000
    assert lock.reacquire()
    assert 4_000 < direct.pttl("resource") <= 5_000

    lock.release()
    assert direct.exists("resource") == 0
    with pytest.raises(LockError):
        lock.release()
    assert rival.acquire(blocking=False)
    assert not lock.acquire(blocking=False)
    rival.release()


def test_lock_serialises_two_clients_read_modify_write(
    direct: redis.Redis, gateway: Gateway
) -> None:
    """Two threads incrementing with GET+SET under a Lock lose no update."""
    rounds = 40
    failures: list[BaseException] = []

    def worker() -> None:
        client = redis.Redis(port=gateway.port, socket_timeout=10)
        try:
            for _ in range(rounds):
                with client.lock("counter-lock", timeout=5, sleep=0.001, blocking_timeout=10):
                    value = int(client.get("shared") or 0)
                    client.set("shared", value + 1)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not failures
    assert direct.get("shared") == str(2 * rounds).encode()


# --- SCAN family ---------------------------------------------------------------------------------

SCAN_SIZE = 3000


@pytest.mark.parametrize("protocol", [2, 3])
def test_scan_iterators_cover_everything(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    pipe = direct.pipeline(transaction=False)
    for start in range(0, SCAN_SIZE, 500):
        chunk = range(start, start + 500)
        pipe.mset({f"scan:{i}": i for i in chunk})
        pipe.hset("hash", mapping={f"f{i}": i for i in chunk})
        pipe.sadd("set", *[f"m{i}" for i in chunk])
        pipe.zadd("zset", {f"z{i}": i for i in chunk})
    pipe.set("other", "not matched")
    pipe.execute()

    client = redis.Redis(port=gateway.port, protocol=protocol)
    keys = set(client.scan_iter(match="scan:*", count=200))
    assert keys == {f"scan:{i}".encode() for i in range(SCAN_SIZE)}
    fields = dict(client.hscan_iter("hash", count=300))
    assert fields == {f"f{i}".encode(): str(i).encode() for i in range(SCAN_SIZE)}
    members = set(client.sscan_iter("set", count=300))
    assert members == {f"m{i}".encode() for i in range(SCAN_SIZE)}
    scored = dict(client.zscan_iter("zset", count=300))
    assert scored == {f"z{i}".encode(): float(i) for i in range(SCAN_SIZE)}
    assert set(client.scan_iter(_type="HASH")) == {b"hash"}


def test_scan_iter_asyncio(direct: redis.Redis, gateway: Gateway) -> None:
    direct.mset({f"a:{i}": i for i in range(SCAN_SIZE)})

    async def main() -> set[bytes]:
        client = redis.asyncio.Redis(port=gateway.port, protocol=3)
        try:
            return {key async for key in client.scan_iter(match="a:*", count=250)}
        finally:
            await client.aclose()

    assert asyncio.run(main()) == {f"a:{i}".encode() for i in range(SCAN_SIZE)}


# --- scripts ------------------------------------------------------------------------------------

INCR_BY_SCRIPT = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@pytest.mark.parametrize("protocol", [2, 3])
def test_eval_evalsha_script_load_exists(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    client = redis.Redis(port=gateway.port, protocol=protocol)
    assert client.eval(INCR_BY_SCRIPT, 1, "n", 5) == 5
    sha = client.script_load(INCR_BY_SCRIPT)
    assert client.script_exists(sha, "0" * 40) == [True, False]
    assert client.evalsha(sha, 1, "n", 2) == 7
    assert client.eval("return {KEYS[1], ARGV[1], 3}", 1, "k", "v") == [b"k", b"v", 3]
    with pytest.raises(NoScriptError) as via_gateway:
        client.evalsha("0" * 40, 0)
    with pytest.raises(NoScriptError) as via_direct:
        direct.evalsha("0" * 40, 0)
    assert str(via_gateway.value) == str(via_direct.value)
    assert direct.get("n") == b"7"


def test_registered_script_reloads_after_noscript(direct: redis.Redis, gateway: Gateway) -> None:
    """redis-py's Script sends EVALSHA, gets NOSCRIPT through the gateway, loads and retries."""
    client = redis.Redis(port=gateway.port)
    script = client.register_script(INCR_BY_SCRIPT)
    assert direct.script_exists(script.sha) == [False]
    assert script(keys=["s"], args=[3]) == 3
    assert direct.script_exists(script.sha) == [True]
    direct.script_flush()
    assert script(keys=["s"], args=[4]) == 7  # NOSCRIPT again, reloaded again

    pipe = client.pipeline()
    direct.script_flush()
    script(keys=["s"], args=[1], client=pipe)
    pipe.get("s")
    assert pipe.execute() == [8, b"8"]


def test_script_error_text_matches_direct(direct: redis.Redis, gateway: Gateway) -> None:
    bad = "return redis.call('NOSUCHCMD')"
    messages = []
    for client in (direct, redis.Redis(port=gateway.port)):
        with pytest.raises(redis.ResponseError) as info:
            client.eval(bad, 0)
        messages.append(str(info.value))
    assert messages[1] == messages[0]


# --- sizes, binary safety, error passthrough -----------------------------------------------------


@pytest.mark.parametrize("protocol", [2, 3])
def test_ten_megabyte_value_round_trips(
    protocol: int, direct: redis.Redis, gateway: Gateway
) -> None:
    value = os.urandom(10 * 1024 * 1024)
    client = redis.Redis(port=gateway.port, protocol=protocol, socket_timeout=30)
    assert client.set("big", value)
    assert client.get("big") == value
    assert direct.strlen("big") == len(value)
    assert direct.get("big") == value
    # And alongside small commands in one pipeline, replies stay paired.
    pipe = client.pipeline(transaction=False)
    pipe.set("small", "s").get("big").get("small").append("big", b"!")
    assert pipe.execute() == [True, value, b"s", len(value) + 1]


def test_ten_megabyte_value_asyncio(direct: redis.Redis, gateway: Gateway) -> None:
    value = os.urandom(10 * 1024 * 1024)

    async def main() -> bytes | None:
        client = redis.asyncio.Redis(port=gateway.port, socket_timeout=30)
        try:
            await client.set("big", value)
            return await client.get("big")
        finally:
            await client.aclose()

    assert asyncio.run(main()) == value
    assert direct.get("big") == value


BINARY_KEYS = [b"k\r\ney", b"\x00", b"a\x00b\r\n*3\r\n$3\r\nSET", b"\xff\xfe\r\n\r\n", b" "]


@pytest.mark.parametrize("protocol", [2, 3])
def test_binary_keys_and_values(protocol: int, direct: redis.Redis, gateway: Gateway) -> None:
    client = redis.Redis(port=gateway.port, protocol=protocol)
    for index, key in enumerate(BINARY_KEYS):
        value = key * 3 + bytes([index]) + b"\r\n\x00"
        assert client.set(key, value)
        assert client.get(key) == value
        assert direct.get(key) == value
    assert set(client.keys("*")) == set(BINARY_KEYS)
    client.hset(b"h\r\n", b"f\x00", b"v\r\n")
    assert client.hgetall(b"h\r\n") == {b"f\x00": b"v\r\n"}
    client.rpush(b"l\x00", b"\r\n", b"", b"\x00\x00")
    assert client.lrange(b"l\x00", 0, -1) == [b"\r\n", b"", b"\x00\x00"]
    assert client.set(b"empty", b"")
    assert client.get(b"empty") == b""


@pytest.mark.parametrize("protocol", [2, 3])
def test_errors_pass_through_unchanged(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    via = redis.Redis(port=gateway.port, protocol=protocol)
    straight = redis.Redis(port=redis_node.port, protocol=protocol)
    direct.set("str", "v")
    attempts = [
        lambda c: c.lpush("str", "x"),  # WRONGTYPE
        lambda c: c.hget("str", "f"),  # WRONGTYPE
        lambda c: c.incr("str"),  # not an integer
        lambda c: c.execute_command("NOSUCHCOMMAND", "a", "b"),
        lambda c: c.execute_command("nosuchcommand"),
        lambda c: c.execute_command("GET"),  # arity
        lambda c: c.execute_command("SET", "k", "v", "EX", "notanumber"),
        lambda c: c.execute_command("OBJECT", "NOSUCHSUB"),
        lambda c: c.execute_command("XADD", "str", "*", "f", "v"),
    ]
    for attempt in attempts:
        with pytest.raises(redis.RedisError) as expected:
            attempt(straight)
        with pytest.raises(redis.RedisError) as got:
            attempt(via)
        assert type(got.value) is type(expected.value)
        assert str(got.value) == str(expected.value)
    assert "WRONGTYPE" in _raw_error(gateway.port, ("LPUSH", "str", "x"))


def _raw_error(port: int, command: tuple[str, ...]) -> str:
    with RawRedis(port) as conn:
        (reply,) = conn.call(command)
    assert reply.startswith(b"-"), reply
    return reply.decode()


# --- session state must not outlive its session -------------------------------------------------


def test_abandoned_multi_does_not_leak_into_another_client(
    direct: redis.Redis, gateway: Gateway
) -> None:
    """A client that leaves inside MULTI: its queued commands never run, nor join another's."""
    with RawRedis(gateway.port) as quitter:
        assert quitter.call(("MULTI",), ("SET", "abandoned", "1")) == [b"+OK\r\n", b"+QUEUED\r\n"]
    for _ in range(3):  # whichever pooled connection the gateway picks
        with RawRedis(gateway.port) as conn:
            replies = conn.call(("MULTI",), ("INCR", "mine"), ("EXEC",))
        assert replies[0] == b"+OK\r\n", replies
        assert replies[2].startswith(b"*1\r\n:"), replies
    assert direct.get("mine") == b"3"
    assert direct.get("abandoned") is None


def test_abandoned_watch_does_not_fail_another_clients_exec(
    direct: redis.Redis, gateway: Gateway
) -> None:
    """A client that leaves while WATCHing: another client's EXEC must not inherit the watch."""
    with RawRedis(gateway.port) as quitter:
        assert quitter.call(("WATCH", "hot"), ("GET", "hot")) == [b"+OK\r\n", b"$-1\r\n"]
    direct.set("hot", "changed")
    for _ in range(3):
        with RawRedis(gateway.port) as conn:
            replies = conn.call(("MULTI",), ("INCR", "hot-count"), ("EXEC",))
        assert replies[2].startswith(b"*1\r\n:"), replies  # not a nil (aborted) EXEC


def test_reset_inside_multi_across_writes(
    direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """RESET discards a transaction whose commands already reached the node."""
    outcomes = []
    for port in (redis_node.port, gateway.port):
        direct.flushall()
        with RawRedis(port) as conn:
            first = conn.call(("MULTI",), ("SET", "dropped", "1"))
            second = conn.call(("RESET",))
            third = conn.call(("MULTI",), ("SET", "kept", "1"), ("EXEC",), ("GET", "dropped"))
        outcomes.append(first + second + third)
    assert outcomes[0] == [
        b"+OK\r\n",
        b"+QUEUED\r\n",
        b"+RESET\r\n",
        b"+OK\r\n",
        b"+QUEUED\r\n",
        b"*1\r\n+OK\r\n",
        b"$-1\r\n",
    ]
    assert outcomes[1] == outcomes[0]


def test_reset_after_watch_clears_the_watch(direct: redis.Redis, gateway: Gateway) -> None:
    with RawRedis(gateway.port) as conn:
        assert conn.call(("WATCH", "rw")) == [b"+OK\r\n"]
        assert conn.call(("RESET",)) == [b"+RESET\r\n"]
        direct.set("rw", "changed")
        replies = conn.call(("MULTI",), ("SET", "rw", "mine"), ("EXEC",))
    assert replies == [b"+OK\r\n", b"+QUEUED\r\n", b"*1\r\n+OK\r\n"]
    assert direct.get("rw") == b"mine"
