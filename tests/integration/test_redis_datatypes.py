"""Every Redis data type through the gateway gives what a direct connection gives.

Each scenario is a list of redis-py calls, run once directly against the redis-server and once
through the gateway (the database flushed in between), with the sync client and with
``redis.asyncio``, in RESP2 and RESP3; the two result lists must be equal. A second set of
tests compares the raw reply *bytes* of RESP2 and RESP3 sessions, so a reply type the gateway
re-encoded (a RESP3 map, double, set, boolean, big number, verbatim string, null) would show.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.support.servers import Gateway, RawRedis, RedisServer

Op = tuple[str, tuple[Any, ...], dict[str, Any]]


def op(method: str, *args: Any, **kwargs: Any) -> Op:
    return (method, args, kwargs)


STRINGS: list[Op] = [
    op("set", "s", "hello"),
    op("get", "s"),
    op("append", "s", " world"),
    op("getrange", "s", 0, 4),
    op("setrange", "s", 6, "WORLD"),
    op("strlen", "s"),
    op("get", "s"),
    op("incr", "n"),
    op("incrby", "n", 41),
    op("decr", "n"),
    op("incrbyfloat", "f", 1.25),
    op("mset", {"m1": "a", "m2": "b"}),
    op("mget", ["m1", "m2", "missing"]),
    op("setnx", "m1", "c"),
    op("getset", "m1", "z"),
    op("getdel", "m2"),
    op("execute_command", "SETEX", "ex", 100, "v"),
    op("ttl", "ex"),
    op("persist", "ex"),
    op("ttl", "ex"),
    op("set", "px", "v", px=100_000, nx=True),
    op("exists", "s", "n", "missing"),
    op("type", "n"),
    op("get", "missing"),
    op("lcs", "s", "m1"),
    op("incr", "s"),  # an error inside the scenario: not an integer
]

LISTS: list[Op] = [
    op("rpush", "l", "a", "b", "c", "d"),
    op("lpush", "l", "z"),
    op("lrange", "l", 0, -1),
    op("lindex", "l", 2),
    op("llen", "l"),
    op("lset", "l", 0, "y"),
    op("linsert", "l", "before", "c", "bb"),
    op("lrem", "l", 1, "a"),
    op("lpos", "l", "c"),
    op("ltrim", "l", 0, 3),
    op("lrange", "l", 0, -1),
    op("lpop", "l"),
    op("rpop", "l", 2),
    op("lmove", "l", "l2", "LEFT", "RIGHT"),
    op("lrange", "l2", 0, -1),
    op("lpushx", "nolist", "x"),
    op("lrange", "missing", 0, -1),
]

HASHES: list[Op] = [
    op("hset", "h", mapping={"a": "1", "b": "2", "c": "3"}),
    op("hget", "h", "a"),
    op("hmget", "h", ["a", "zz", "c"]),
    op("hgetall", "h"),
    op("hkeys", "h"),
    op("hvals", "h"),
    op("hlen", "h"),
    op("hexists", "h", "b"),
    op("hincrby", "h", "a", 10),
    op("hincrbyfloat", "h", "f", 2.5),
    op("hsetnx", "h", "a", "x"),
    op("hdel", "h", "b", "nothere"),
    op("hstrlen", "h", "c"),
    op("hgetall", "h"),
    op("hgetall", "missing"),
]

SETS: list[Op] = [
    op("sadd", "s1", "a", "b", "c", "d"),
    op("sadd", "s2", "c", "d", "e"),
    op("smembers", "s1"),
    op("sismember", "s1", "a"),
    op("smismember", "s1", ["a", "x"]),
    op("scard", "s1"),
    op("sinter", "s1", "s2"),
    op("sunion", "s1", "s2"),
    op("sdiff", "s1", "s2"),
    op("sinterstore", "s3", ["s1", "s2"]),
    op("smembers", "s3"),
    op("sintercard", 2, ["s1", "s2"]),
    op("srem", "s1", "a"),
    op("smove", "s1", "s2", "b"),
    op("smembers", "s2"),
    op("smembers", "missing"),
]

SORTED_SETS: list[Op] = [
    op("zadd", "z", {"a": 1, "b": 2.5, "c": 3, "d": -1.75}),
    op("zscore", "z", "b"),
    op("zscore", "z", "missing"),
    op("zmscore", "z", ["a", "nope"]),
    op("zrange", "z", 0, -1),
    op("zrange", "z", 0, -1, withscores=True),
    op("zrevrange", "z", 0, 1, withscores=True),
    op("zrangebyscore", "z", 0, 3, withscores=True),
    op("zrank", "z", "c"),
    op("zrevrank", "z", "c"),
    op("zincrby", "z", 0.5, "a"),
    op("zcount", "z", "-inf", "+inf"),
    op("zcard", "z"),
    op("zpopmin", "z"),
    op("zpopmax", "z", 2),
    op("zadd", "lex", {"aa": 0, "bb": 0, "cc": 0}),
    op("zrangebylex", "lex", "[b", "+"),
    op("zunionstore", "zu", ["z", "lex"]),
    op("zrange", "zu", 0, -1, withscores=True),
    op("zrem", "z", "a"),
    op("zrange", "z", 0, -1, withscores=True),
]

STREAMS: list[Op] = [
    op("xadd", "st", {"f": "1"}, id="1-1"),
    op("xadd", "st", {"f": "2", "g": "x"}, id="2-1"),
    op("xadd", "st", {"f": "3"}, id="3-1"),
    op("xlen", "st"),
    op("xrange", "st"),
    op("xrevrange", "st", count=2),
    op("xgroup_create", "st", "grp", id="0"),
    op("xreadgroup", "grp", "alice", {"st": ">"}, count=2),
    op("xpending", "st", "grp"),
    op("xack", "st", "grp", "1-1"),
    op("xreadgroup", "grp", "bob", {"st": ">"}),
    op("xread", {"st": "1-1"}),
    op("xdel", "st", "2-1"),
    op("xtrim", "st", maxlen=1),
    op("xrange", "st"),
    op("xadd", "st", {"f": "old"}, id="1-0"),  # an error: the id is not increasing
]

HYPERLOGLOG: list[Op] = [
    op("pfadd", "hll", *[f"item-{i}" for i in range(500)]),
    op("pfadd", "hll", "item-1"),
    op("pfcount", "hll"),
    op("pfadd", "hll2", "x", "y", "item-3"),
    op("pfmerge", "hll3", "hll", "hll2"),
    op("pfcount", "hll3"),
    op("pfcount", "hll", "hll2"),
]

BITMAPS: list[Op] = [
    op("setbit", "b", 7, 1),
    op("setbit", "b", 100, 1),
    op("getbit", "b", 7),
    op("getbit", "b", 8),
    op("bitcount", "b"),
    op("bitpos", "b", 1),
    op("set", "b2", "\xff\x00"),
    op("bitop", "AND", "b3", "b", "b2"),
    op("get", "b3"),
    op("get", "b"),
]

GEO: list[Op] = [
    op("geoadd", "g", [13.361389, 38.115556, "Palermo", 15.087269, 37.502669, "Catania"]),
    op("geodist", "g", "Palermo", "Catania", unit="km"),
    op("geopos", "g", "Palermo", "nowhere"),
    op("geohash", "g", "Palermo"),
    op("geosearch", "g", longitude=15, latitude=37, radius=200, unit="km", withdist=True),
    op("geosearch", "g", member="Palermo", radius=300, unit="km", withcoord=True, sort="ASC"),
]

SCENARIOS = {
    "strings": STRINGS,
    "lists": LISTS,
    "hashes": HASHES,
    "sets": SETS,
    "sorted_sets": SORTED_SETS,
    "streams": STREAMS,
    "hyperloglog": HYPERLOGLOG,
    "bitmaps": BITMAPS,
    "geo": GEO,
}


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except redis.RedisError as exc:
        return (type(exc).__name__, str(exc))


def run_sync(port: int, protocol: int, ops: list[Op]) -> list[Any]:
    client = redis.Redis(port=port, protocol=protocol, socket_timeout=10)
    try:
        return [_outcome(lambda o=o: getattr(client, o[0])(*o[1], **o[2])) for o in ops]
    finally:
        client.close()


def run_async(port: int, protocol: int, ops: list[Op]) -> list[Any]:
    async def main() -> list[Any]:
        client = redis.asyncio.Redis(port=port, protocol=protocol, socket_timeout=10)
        results: list[Any] = []
        try:
            for method, args, kwargs in ops:
                try:
                    results.append(await getattr(client, method)(*args, **kwargs))
                except redis.RedisError as exc:
                    results.append((type(exc).__name__, str(exc)))
        finally:
            await client.aclose()
        return results

    return asyncio.run(main())


@pytest.fixture
def direct(redis_node: RedisServer) -> redis.Redis:
    client = redis.Redis(port=redis_node.port, socket_timeout=10)
    client.flushall()
    return client


@pytest.mark.parametrize("protocol", [2, 3])
@pytest.mark.parametrize("runner", [run_sync, run_async], ids=["sync", "asyncio"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_data_type_matches_direct(
    scenario: str,
    runner: Callable[[int, int, list[Op]], list[Any]],
    protocol: int,
    direct: redis.Redis,
    redis_node: RedisServer,
    gateway: Gateway,
) -> None:
    ops = SCENARIOS[scenario]
    expected = runner(redis_node.port, protocol, ops)
    direct_state = _dump(direct)
    direct.flushall()
    got = runner(gateway.port, protocol, ops)
    assert got == expected
    # The gateway's writes landed on the node exactly as the direct client's did.
    assert _dump(direct) == direct_state


def _dump(client: redis.Redis) -> dict[bytes, Any]:
    """Every key's type and value (DUMP; entries for streams, whose DUMP holds delivery times)."""
    state: dict[bytes, Any] = {}
    for key in sorted(client.keys("*")):
        kind = client.type(key)
        state[key] = (kind, client.xrange(key) if kind == b"stream" else client.dump(key))
    return state


def test_ttl_set_through_the_gateway_is_on_the_node(direct: redis.Redis, gateway: Gateway) -> None:
    via = redis.Redis(port=gateway.port, socket_timeout=10)
    assert via.set("session", "v", ex=100)
    assert via.pexpire("other", 5000) is False
    pttl = direct.pttl("session")
    assert 90_000 < pttl <= 100_000
    assert 90 < via.ttl("session") <= 100
    assert via.ttl("missing") == -2


@pytest.mark.parametrize("protocol", [2, 3])
def test_resp3_reply_types_in_redis_py(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """The Python types redis-py builds from each reply match, RESP3 ones included."""
    ops = [
        op("hset", "h", mapping={"a": "1", "b": "2"}),
        op("hgetall", "h"),
        op("config_get", "maxmemory*"),
        op("zadd", "z", {"m": 1.5, "n": 2}),
        op("zscore", "z", "m"),
        op("zrange", "z", 0, -1, withscores=True),
        op("sadd", "s", "x", "y"),
        op("smembers", "s"),
        op("eval", "redis.setresp(3); return true", 0),
        op("eval", "return {double=3.5}", 0),
        op("eval", "return {map={a=1}}", 0),
        op("execute_command", "MEMORY", "DOCTOR"),
        op("get", "missing"),
    ]
    expected = run_sync(redis_node.port, protocol, ops)
    direct.flushall()
    got = run_sync(gateway.port, protocol, ops)
    assert got == expected
    assert got[1] == {b"a": b"1", b"b": b"2"}
    assert isinstance(got[4], float) and got[4] == 1.5
    assert got[7] == {b"x", b"y"}
    if protocol == 3:
        assert got[5] == [[b"m", 1.5], [b"n", 2.0]]
        assert got[8] is True
    else:
        assert got[5] == [(b"m", 1.5), (b"n", 2.0)]


# Commands whose raw replies cover every RESP2 and RESP3 reply type.
RAW_COMMANDS: list[tuple[str, ...]] = [
    ("HSET", "h", "a", "1", "b", "2"),
    ("HGETALL", "h"),
    ("CONFIG", "GET", "maxmemory"),
    ("ZADD", "z", "1.5", "a", "2", "b"),
    ("ZSCORE", "z", "a"),
    ("ZRANGE", "z", "0", "-1", "WITHSCORES"),
    ("SADD", "s", "x"),
    ("SMEMBERS", "s"),
    ("EVAL", "redis.setresp(3); return true", "0"),
    ("EVAL", "return false", "0"),
    ("EVAL", "return {double=3.5}", "0"),
    ("EVAL", "return {big_number='123456789012345678901234567890'}", "0"),
    ("EVAL", "return {map={a=1}}", "0"),
    ("EVAL", "return {set={a=true}}", "0"),
    ("EVAL", "return {err='MYERR custom'}", "0"),
    ("EVAL", "return {ok='FINE'}", "0"),
    ("GET", "nope"),
    ("LOLWUT",),
    ("XADD", "st", "1-1", "f", "v"),
    ("XINFO", "STREAM", "st"),
    ("OBJECT", "ENCODING", "h"),
    ("TYPE", "h"),
    ("LPUSH", "s", "x"),
    ("NOSUCHCMD", "a", "b"),
    ("GET",),
    ("SET", "k", "v", "BADOPTION"),
    ("MGET", "h", "nope", "k"),
    ("EXISTS", "h", "s", "z", "nope"),
    ("PUBSUB", "NUMSUB", "chan"),
    ("COMMAND", "COUNT"),
]


@pytest.mark.parametrize("protocol", [2, 3])
def test_raw_replies_are_byte_identical(
    protocol: int, direct: redis.Redis, redis_node: RedisServer, gateway: Gateway
) -> None:
    """One pipelined write of every command above: each reply's bytes match direct's."""
    results: list[list[bytes]] = []
    for port in (redis_node.port, gateway.port):
        direct.flushall()
        with RawRedis(port) as conn:
            if protocol == 3:
                (hello,) = conn.call(("HELLO", "3"))
                assert hello.startswith(b"%7\r\n"), hello
            results.append(conn.call(*RAW_COMMANDS))
    expected, got = results
    for command, want, have in zip(RAW_COMMANDS, expected, got, strict=True):
        assert have == want, command
    if protocol == 3:
        assert expected[RAW_COMMANDS.index(("HGETALL", "h"))].startswith(b"%2\r\n")
        assert expected[RAW_COMMANDS.index(("ZSCORE", "z", "a"))] == b",1.5\r\n"
        assert expected[RAW_COMMANDS.index(("SMEMBERS", "s"))].startswith(b"~1\r\n")
        assert expected[RAW_COMMANDS.index(("GET", "nope"))] == b"_\r\n"
