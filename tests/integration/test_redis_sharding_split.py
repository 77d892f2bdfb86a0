"""Split and merged commands against real redis-servers: byte for byte what one server answers.

Three redis-servers play the shards and a fourth the reference holding every key. Random
workloads of ``MGET``/``MSET``/``DEL``/``UNLINK``/``EXISTS``/``TOUCH`` (with duplicates, hash tags,
binary and wrong-type keys, malformed forms) run on the reference directly and on the shards
through :func:`~resmesh.protocols.resp.sharding.plan` and
:func:`~resmesh.protocols.resp.sharding.merge`, in RESP2 and RESP3; every reply must be
identical, and so must the data left behind. No gateway is involved: this tests the planner.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import pytest

from resmesh.protocols.resp.sharding import MergeKind, Plan, hash_tag, merge, plan
from tests.support.servers import RawRedis, RedisServer, encode_command, resp_frame_end

SHARDS = 3


def shard_of(key: bytes) -> int:
    return zlib.crc32(key) % SHARDS


@pytest.fixture(scope="module")
def servers() -> Iterator[list[RedisServer]]:
    started: list[RedisServer] = []
    try:
        for _ in range(SHARDS + 1):
            started.append(RedisServer())
        yield started
    finally:
        for server in started:
            server.stop()


class Cluster:
    """The reference connection and one connection per shard, in one protocol version."""

    def __init__(self, servers: list[RedisServer], resp: int) -> None:
        self.reference = RawRedis(servers[0].port)
        self.shards = [RawRedis(server.port) for server in servers[1:]]
        for conn in (self.reference, *self.shards):
            conn.call(("FLUSHALL",))
            if resp == 3:
                assert conn.call(("HELLO", "3"))[0].startswith(b"%")

    def close(self) -> None:
        for conn in (self.reference, *self.shards):
            conn.close()

    def direct(self, args: list[bytes]) -> bytes:
        return self.reference.call(tuple(args))[0]

    def sharded(self, args: list[bytes]) -> bytes:
        outcome = plan(args, shard_of, SHARDS)
        assert isinstance(outcome, Plan), (args, outcome)
        if outcome.merge is MergeKind.SINGLE:
            return self.shards[outcome.shard].call(tuple(args))[0]
        # Every part goes to a different node: send them all, then read one reply from each.
        for part in outcome.parts:
            self.shards[part.shard].send(encode_command(*part.args))
        replies = [self.shards[part.shard].read_replies(1)[0] for part in outcome.parts]
        return merge(outcome, replies)

    def both(self, args: list[bytes]) -> tuple[bytes, bytes]:
        return self.direct(args), self.sharded(args)


@pytest.fixture(params=[2, 3], ids=["resp2", "resp3"])
def cluster(request: pytest.FixtureRequest, servers: list[RedisServer]) -> Iterator[Cluster]:
    made = Cluster(servers, request.param)
    yield made
    made.close()


_POOL = [
    *(b"k%d" % i for i in range(10)),
    b"{u1}a",
    b"{u1}b",
    b"{u1}c",
    b"",
    b"\r\n\x00bin",
    b"{}x",
    b"x{}",
    b"list",
]
_VALUES = [b"", b"v", b"\x00\r\n", b"12345", b"x" * 300]


def _workload(rng: random.Random, size: int) -> Iterator[list[bytes]]:
    def keys(low: int = 1, high: int = 8) -> list[bytes]:
        return [rng.choice(_POOL) for _ in range(rng.randint(low, high))]

    for _ in range(size):
        roll = rng.random()
        name = rng.choice([b"MGET", b"DEL", b"UNLINK", b"EXISTS", b"TOUCH", b"MSET"])
        if rng.random() < 0.2:
            name = name.lower()
        if roll < 0.80:
            if name.upper() == b"MSET":
                yield [name, *(x for key in keys() for x in (key, rng.choice(_VALUES)))]
            else:
                yield [name, *keys()]
        elif roll < 0.88:
            yield [b"RPUSH", b"list", b"item"]  # a wrong-type key for MGET, deletable by DEL
        elif roll < 0.93:
            yield [b"SET", rng.choice(_POOL), rng.choice(_VALUES)]
        elif roll < 0.96:
            yield [b"DBSIZE"]
        else:  # malformed: each node must answer the server's own error
            yield rng.choice(
                [
                    [b"MSET", *keys(2, 4)],
                    [b"MSET", b"k1", b"v", b"k2"],
                    [b"MGET"],
                    [b"DEL"],
                    [b"EXISTS"],
                ]
            )


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_workload_is_byte_identical_to_one_server(cluster: Cluster, seed: int) -> None:
    rng = random.Random(seed)
    splits = 0
    for args in _workload(rng, 400):
        direct, sharded = cluster.both(args)
        assert sharded == direct, args
        outcome = plan(args, shard_of, SHARDS)
        splits += isinstance(outcome, Plan) and outcome.merge is not MergeKind.SINGLE
    assert splits > 250  # the workload really does split
    for key in _POOL:
        home = cluster.shards[shard_of(hash_tag(key))]
        assert home.call(("DUMP", key)) == cluster.reference.call(("DUMP", key)), key
        for other in cluster.shards:
            if other is not home:
                assert other.call(("EXISTS", key)) == [b":0\r\n"], key


def _elements(reply: bytes) -> list[bytes]:
    header = reply.index(b"\r\n")
    position = header + 2
    found = []
    for _ in range(int(reply[1:header])):
        end = resp_frame_end(reply, position)
        found.append(reply[position:end])
        position = end
    assert position == len(reply)
    return found


def test_fan_outs_match_one_server(cluster: Cluster) -> None:
    for args in _workload(random.Random(7), 60):
        cluster.both(args)
    direct, sharded = cluster.both([b"KEYS", b"*"])
    assert sorted(_elements(sharded)) == sorted(_elements(direct))  # order is arbitrary on both
    assert cluster.sharded([b"DBSIZE"]) == cluster.direct([b"DBSIZE"])
    script = b"return redis.call('GET', KEYS[1])"
    loaded = cluster.direct([b"SCRIPT", b"LOAD", script])
    assert cluster.sharded([b"script", b"load", script]) == loaded
    sha = loaded.split(b"\r\n")[1]
    exists = [b"SCRIPT", b"EXISTS", sha, b"0" * 40]
    assert cluster.sharded(exists) == cluster.direct(exists) == b"*2\r\n:1\r\n:0\r\n"
    for key in _POOL:  # the script now runs on whichever node owns the key
        evalsha = [b"EVALSHA", sha, b"1", key]
        assert cluster.sharded(evalsha) == cluster.direct(evalsha)
    # SCRIPT EXISTS is 1 only where every node has the script.
    cluster.shards[1].call(("SCRIPT", "FLUSH"))
    assert cluster.sharded(exists) == b"*2\r\n:0\r\n:0\r\n"
    assert cluster.sharded([b"FLUSHDB"]) == cluster.direct([b"FLUSHDB"]) == b"+OK\r\n"
    assert cluster.sharded([b"DBSIZE"]) == b":0\r\n"


def test_an_error_on_one_node_is_the_merged_reply(cluster: Cluster) -> None:
    """A node out of memory refuses its MSET part; the client sees redis-server's own error."""
    keys = [b"k%d" % i for i in range(10)]
    victim = shard_of(keys[0])
    args = [b"MSET", *(x for key in keys for x in (key, b"v"))]
    assert len({shard_of(key) for key in keys}) == SHARDS
    for conn in (cluster.reference, cluster.shards[victim]):
        assert conn.call(("CONFIG", "SET", "maxmemory", "1")) == [b"+OK\r\n"]
    try:
        direct, sharded = cluster.both(args)
        assert direct.startswith(b"-OOM ")
        assert sharded == direct
        # Not atomic across nodes (as in twemproxy and Envoy): the other nodes' parts applied.
        assert cluster.sharded([b"EXISTS", *keys]) == b":%d\r\n" % sum(
            shard_of(key) != victim for key in keys
        )
    finally:
        for conn in (cluster.reference, cluster.shards[victim]):
            conn.call(("CONFIG", "SET", "maxmemory", "0"))
