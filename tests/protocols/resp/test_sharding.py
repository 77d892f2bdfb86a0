"""Sharded command planning: hash tags, splits that cover every key once, merges that restore order.

The merge tests run every plan against a small model of redis-server (``_Model``): the same
command on one model holding every key, and split over per-node models, must give the same reply
bytes and leave the same data behind. ``tests/integration/test_redis_sharding_split.py`` does the
same against real redis-servers.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import LocalProtocolError, RemoteProtocolError
from resmesh.protocols.resp.commands import COMMANDS, lookup
from resmesh.protocols.resp.sharding import (
    FAN_OUTS,
    SHARDED_REFUSALS,
    SPLITS,
    MergeKind,
    Part,
    Plan,
    RefusedPlan,
    hash_tag,
    merge,
    plan,
)

# --- hash tags ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "tag"),
    [
        # The Redis Cluster specification's own examples ("Hash tags").
        (b"{user1000}.following", b"user1000"),
        (b"{user1000}.followers", b"user1000"),
        (b"foo{}{bar}", b"foo{}{bar}"),
        (b"foo{{bar}}zap", b"{bar"),
        (b"foo{{bar}}", b"{bar"),
        (b"foo{bar}{zap}", b"bar"),
        # And the edges around them.
        (b"", b""),
        (b"plain", b"plain"),
        (b"{", b"{"),
        (b"}{", b"}{"),
        (b"{}", b"{}"),
        (b"a{b", b"a{b"),
        (b"a}b{c}", b"c"),
        (b"{\r\n}", b"\r\n"),
        (b"{a}", b"a"),
    ],
)
def test_hash_tag_examples(key: bytes, tag: bytes) -> None:
    assert hash_tag(key) == tag


_TAG_RE = re.compile(rb"[^{]*\{([^}]+)\}", re.DOTALL)


@given(st.binary(max_size=12) | st.lists(st.sampled_from([b"{", b"}", b"a", b"b"])).map(b"".join))
def test_hash_tag_matches_a_regex_reading_of_the_spec(key: bytes) -> None:
    found = _TAG_RE.match(key)
    assert hash_tag(key) == (found.group(1) if found else key)


# --- a model of redis-server for the split commands --------------------------------------------


class _Model:
    """A dict playing redis-server for MGET/MSET/DEL/UNLINK/EXISTS/TOUCH, replying in raw RESP."""

    def __init__(self, data: dict[bytes, bytes], resp: int = 2) -> None:
        self.data = data
        self.null = b"_\r\n" if resp == 3 else b"$-1\r\n"

    def run(self, args: list[bytes]) -> bytes:
        name = args[0].upper()
        keys = args[1:]
        if name == b"MGET":
            items = [self._bulk(self.data.get(key)) for key in keys]
            return b"*%d\r\n%b" % (len(items), b"".join(items))
        if name == b"MSET":
            for index in range(0, len(keys), 2):
                self.data[keys[index]] = keys[index + 1]
            return b"+OK\r\n"
        if name in (b"DEL", b"UNLINK"):
            # Each key counts once however often it is named: the second delete finds nothing.
            return b":%d\r\n" % sum(self.data.pop(key, None) is not None for key in keys)
        if name in (b"EXISTS", b"TOUCH"):
            return b":%d\r\n" % sum(key in self.data for key in keys)
        raise AssertionError(name)

    def _bulk(self, value: bytes | None) -> bytes:
        return self.null if value is None else b"$%d\r\n%b\r\n" % (len(value), value)


def _crc_shards(count: int, salt: bytes = b"") -> Callable[[bytes], int]:
    return lambda key: zlib.crc32(salt + key) % count


def _run_sharded(
    args: list[bytes],
    stores: dict[int, _Model],
    shard_of: Callable[[bytes], int],
    count: int,
) -> bytes:
    outcome = plan(args, shard_of, count)
    assert isinstance(outcome, Plan), outcome
    if outcome.merge is MergeKind.SINGLE:
        assert outcome.parts == ()
        return merge(outcome, [stores[outcome.shard].run(args)])
    return merge(outcome, [stores[part.shard].run(part.args) for part in outcome.parts])


_KEYS = st.sampled_from(
    [b"a", b"b", b"c", b"d", b"e", b"{t}1", b"{t}2", b"x{t}", b"", b"\r\n", b"{}k", b"k{}"]
)
_VALUES = st.binary(max_size=6)
_COUNTS = st.integers(min_value=1, max_value=5)


@settings(max_examples=300)
@given(
    name=st.sampled_from([b"MGET", b"DEL", b"UNLINK", b"EXISTS", b"TOUCH", b"mget", b"Del"]),
    keys=st.lists(_KEYS, min_size=1, max_size=10),
    count=_COUNTS,
    salt=st.binary(max_size=2),
)
def test_split_parts_cover_every_key_once(
    name: bytes, keys: list[bytes], count: int, salt: bytes
) -> None:
    shard_of = _crc_shards(count, salt)
    args = [name, *keys]
    outcome = plan(args, shard_of, count)
    assert isinstance(outcome, Plan)
    homes = [shard_of(hash_tag(key)) for key in keys]
    if len(set(homes)) == 1:
        assert outcome.merge is MergeKind.SINGLE
        assert outcome.shard == homes[0]
        return
    assert outcome.merge is SPLITS[name.upper()][0]
    covered = sorted(position for part in outcome.parts for position in part.positions)
    assert covered == list(range(len(keys)))
    assert len({part.shard for part in outcome.parts}) == len(outcome.parts)
    firsts = [part.positions[0] for part in outcome.parts]
    assert firsts == sorted(firsts)
    for part in outcome.parts:
        assert list(part.positions) == sorted(part.positions)
        assert part.args == [name, *(keys[position] for position in part.positions)]
        assert {homes[position] for position in part.positions} == {part.shard}


@settings(max_examples=200)
@given(
    pairs=st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=8),
    count=_COUNTS,
)
def test_mset_parts_carry_key_value_pairs(pairs: list[tuple[bytes, bytes]], count: int) -> None:
    shard_of = _crc_shards(count)
    args = [b"MSET", *(item for pair in pairs for item in pair)]
    outcome = plan(args, shard_of, count)
    assert isinstance(outcome, Plan)
    if outcome.merge is MergeKind.SINGLE:
        assert len({shard_of(hash_tag(key)) for key, _ in pairs}) == 1
        return
    assert outcome.merge is MergeKind.OK_ALL
    covered = sorted(position for part in outcome.parts for position in part.positions)
    assert covered == list(range(len(pairs)))
    for part in outcome.parts:
        expected = [item for position in part.positions for item in pairs[position]]
        assert part.args == [b"MSET", *expected]


_COMMANDS = st.one_of(
    st.tuples(
        st.sampled_from([b"MGET", b"DEL", b"UNLINK", b"EXISTS", b"TOUCH"]),
        st.lists(_KEYS, min_size=1, max_size=8),
    ).map(lambda t: [t[0], *t[1]]),
    st.lists(st.tuples(_KEYS, _VALUES), min_size=1, max_size=6).map(
        lambda pairs: [b"MSET", *(item for pair in pairs for item in pair)]
    ),
)


@settings(max_examples=300)
@given(
    data=st.dictionaries(_KEYS, _VALUES, max_size=8),
    commands=st.lists(_COMMANDS, min_size=1, max_size=8),
    count=_COUNTS,
    resp=st.sampled_from([2, 3]),
)
def test_split_and_merge_equal_one_server(
    data: dict[bytes, bytes], commands: list[list[bytes]], count: int, resp: int
) -> None:
    """The sharded run of any workload answers and stores exactly what one server would."""
    shard_of = _crc_shards(count)
    reference = _Model(dict(data), resp)
    stores = {shard: _Model({}, resp) for shard in range(count)}
    for key, value in data.items():
        stores[shard_of(hash_tag(key))].data[key] = value
    for args in commands:
        assert _run_sharded(args, stores, shard_of, count) == reference.run(args), args
    merged: dict[bytes, bytes] = {}
    for shard, store in stores.items():
        assert all(shard_of(hash_tag(key)) == shard for key in store.data)
        merged.update(store.data)
    assert merged == reference.data


@given(
    keys=st.lists(_KEYS, min_size=2, max_size=8, unique=True),
    failing=st.data(),
    name=st.sampled_from([b"MGET", b"DEL", b"EXISTS", b"MSET"]),
)
def test_first_error_in_part_order_wins(
    keys: list[bytes], failing: st.DataObject, name: bytes
) -> None:
    shard_of = _crc_shards(5)
    args = (
        [b"MSET", *(x for key in keys for x in (key, b"v"))] if name == b"MSET" else [name, *keys]
    )
    outcome = plan(args, shard_of, 5)
    assert isinstance(outcome, Plan)
    if outcome.merge is MergeKind.SINGLE:
        return
    model = _Model({keys[0]: b"v"})
    replies = [model.run(part.args) for part in outcome.parts]
    bad = failing.draw(st.sets(st.integers(0, len(replies) - 1), min_size=1), label="failing parts")
    for index in bad:
        replies[index] = (
            b"-LOADING Redis is loading the dataset in memory\r\n"
            if index % 2
            else (b"!21\r\nERR timeout on node %d\r\n" % index)
        )
    assert merge(outcome, replies) == replies[min(bad)]


def test_mget_merge_restores_order_resp3_nulls() -> None:
    shard_of = {b"a": 0, b"b": 1, b"c": 0, b"d": 2}.__getitem__
    outcome = plan([b"MGET", b"a", b"b", b"c", b"d"], shard_of, 3)
    assert isinstance(outcome, Plan)
    assert [(p.shard, p.args, p.positions) for p in outcome.parts] == [
        (0, [b"MGET", b"a", b"c"], (0, 2)),
        (1, [b"MGET", b"b"], (1,)),
        (2, [b"MGET", b"d"], (3,)),
    ]
    replies = [b"*2\r\n$1\r\nA\r\n_\r\n", b"*1\r\n_\r\n", b"*1\r\n$3\r\nD\r\n\r\n"]
    assert merge(outcome, replies) == b"*4\r\n$1\r\nA\r\n_\r\n_\r\n$3\r\nD\r\n\r\n"


# --- single node, refusals, fan-outs ----------------------------------------------------------

_AB = {b"a": 0, b"b": 1, b"{a}b": 0, b"c": 0, b"a{x}": 1, b"x": 1}


def _ab(key: bytes) -> int:
    return _AB.get(key, 0)


def test_single_key_command_calls_shard_of_once_with_a_cached_plan() -> None:
    seen: list[bytes] = []

    def shard_of(key: bytes) -> int:
        seen.append(key)
        return 2

    first = plan([b"GET", b"{user1000}.following"], shard_of, 3)
    second = plan([b"set", b"k", b"v"], shard_of, 3, spec=lookup([b"SET"]))
    assert seen == [b"user1000", b"k"]
    assert first is second
    assert first == Plan(MergeKind.SINGLE, (), 2)
    assert merge(first, [b"$1\r\nv\r\n"]) == b"$1\r\nv\r\n"


def test_hash_tags_can_be_turned_off() -> None:
    seen: list[bytes] = []

    def shard_of(key: bytes) -> int:
        seen.append(key)
        return {b"{a}1": 0, b"{a}2": 1}[key]

    outcome = plan([b"RENAME", b"{a}1", b"{a}2"], shard_of, 2, hash_tags=False)
    assert seen == [b"{a}1", b"{a}2"]
    assert isinstance(outcome, RefusedPlan)
    assert "hash tag" not in outcome.message
    assert plan([b"RENAME", b"{a}1", b"{a}2"], lambda key: 0, 2) == Plan(MergeKind.SINGLE, (), 0)


@pytest.mark.parametrize(
    "args",
    [
        [b"RENAME", b"a", b"b"],
        [b"copy", b"a", b"b"],
        [b"SMOVE", b"a", b"b", b"m"],
        [b"LMOVE", b"a", b"b", b"LEFT", b"RIGHT"],
        [b"BLMOVE", b"a", b"b", b"LEFT", b"RIGHT", b"0"],
        [b"SUNIONSTORE", b"a", b"b"],
        [b"SINTER", b"a", b"b"],
        [b"ZUNIONSTORE", b"a", b"1", b"b"],
        [b"PFMERGE", b"a", b"b"],
        [b"PFCOUNT", b"a", b"b"],
        [b"EVAL", b"return 1", b"2", b"a", b"b"],
        [b"FCALL", b"f", b"2", b"a", b"b"],
        [b"BLPOP", b"a", b"b", b"0"],
        [b"BLMPOP", b"0", b"2", b"a", b"b", b"LEFT"],
        [b"XREAD", b"COUNT", b"1", b"STREAMS", b"a", b"b", b"0", b"0"],
        [b"SORT", b"a", b"STORE", b"b"],
        [b"MSETNX", b"a", b"1", b"b", b"2"],
        [b"OBJECT", b"ENCODING", b"a"],  # single key: must NOT be refused (checked below)
    ],
)
def test_commands_spanning_nodes_are_refused_with_crossslot(args: list[bytes]) -> None:
    outcome = plan(args, _ab, 2)
    spec = lookup(args)
    assert spec is not None
    if len(spec.extract_keys(args)) == 1:
        assert outcome == Plan(MergeKind.SINGLE, (), 0)
        return
    assert isinstance(outcome, RefusedPlan), outcome
    assert outcome.message.startswith("CROSSSLOT Keys in request don't hash to the same node: ")
    assert f"'{spec.display_name}'" in outcome.message
    assert "{user1000}" in outcome.message
    assert outcome.reply == f"-{outcome.message}\r\n".encode()
    if spec.name == b"MSETNX":
        assert "all of them or none" in outcome.message
    # The same command with its keys on one node runs there, unchanged.
    together = [arg.replace(b"b", b"{a}b") if arg == b"b" else arg for arg in args]
    assert plan(together, _ab, 2) == Plan(MergeKind.SINGLE, (), 0)


@pytest.mark.parametrize(
    ("args", "shard"),
    [
        ([b"RENAME", b"a", b"b", b"extra"], 0),  # arity error: the server says so
        ([b"MSET", b"a", b"1", b"b"], 0),  # MSET without its last value
        ([b"MSET", b"x", b"1", b"a"], 1),
        ([b"MGET"], 0),
        ([b"DEL"], 0),
        ([b"EVAL", b"return 1", b"0"], 0),
        ([b"PING"], 0),
        ([b"INFO", b"keyspace"], 0),
        ([b"PUBLISH", b"ch", b"m"], 0),
        ([b"SUBSCRIBE", b"ch"], 0),
        ([b"SPUBLISH", b"x", b"m"], 0),  # a shard channel is not a key
        ([b"NOSUCHCOMMAND", b"x"], 0),
        ([], 0),
    ],
)
def test_keyless_malformed_and_unknown_commands_go_to_one_node(
    args: list[bytes], shard: int
) -> None:
    assert plan(args, _ab, 2) == Plan(MergeKind.SINGLE, (), shard)


@pytest.mark.parametrize("name", sorted(SHARDED_REFUSALS))
def test_keyspace_commands_refused_in_sharded_mode(name: bytes) -> None:
    args = [name.lower(), *([b"a"] if name == b"WATCH" else [])]
    if name == b"SCAN":
        args.append(b"0")
    if name in (b"WAIT", b"WAITAOF"):
        args += [b"1", b"0"] if name == b"WAIT" else [b"1", b"1", b"0"]
    outcome = plan(args, _ab, 3)
    assert isinstance(outcome, RefusedPlan)
    assert outcome.message.startswith(f"ERR '{name.decode()}' is not supported in sharded mode: ")
    assert outcome.reply.endswith(b"\r\n") and outcome.reply.count(b"\r\n") == 1


@pytest.mark.parametrize(("name", "kind"), sorted(FAN_OUTS.items()))
def test_fan_outs_send_the_command_to_every_node(name: bytes, kind: MergeKind) -> None:
    args = [*name.split(b"|"), b"x"]
    outcome = plan(args, _ab, 3)
    assert outcome == Plan(kind, tuple(Part(shard, args) for shard in range(3)))
    assert plan(args, _ab, 1) == Plan(MergeKind.SINGLE, (), 0)
    with pytest.raises(ValueError, match="shard_count"):
        plan(args, _ab, 0)


_RESPONSE_POLICIES = {
    "response_policy:all_succeeded": MergeKind.OK_ALL,
    "response_policy:agg_sum": MergeKind.SUM_INTEGERS,
    "response_policy:agg_logical_and": MergeKind.LOGICAL_AND,
    "response_policy:one_succeeded": MergeKind.ONE_SUCCEEDED,
}


def test_tables_agree_with_the_servers_command_tips() -> None:
    """Fan-outs and splits are the server's own ``request_policy``/``response_policy`` tips.

    Every command the server tips as ``all_shards``/``all_nodes``/``multi_shard`` is either
    planned here or deliberately left alone: a new tip in a Redis upgrade fails this test.
    """
    for name, kind in FAN_OUTS.items():
        tips = COMMANDS[name].tips
        assert {"request_policy:all_shards", "request_policy:all_nodes"} & set(tips), name
        policy = [tip for tip in tips if tip.startswith("response_policy:")]
        assert (_RESPONSE_POLICIES[policy[0]] if policy else MergeKind.ARRAY_CONCAT) is kind
    for name, (kind, _) in SPLITS.items():
        tips = COMMANDS[name].tips
        assert "request_policy:multi_shard" in tips, name
        policy = [tip for tip in tips if tip.startswith("response_policy:")]
        if policy:
            assert _RESPONSE_POLICIES[policy[0]] is kind
    tipped = {
        name
        for name, spec in COMMANDS.items()
        if {"request_policy:all_shards", "request_policy:all_nodes", "request_policy:multi_shard"}
        & set(spec.tips)
    }
    # Left alone: answered by the session layer (PING), node-local diagnostics that go to node 0,
    # refused everywhere (CONFIG SET, LATENCY RESET, SLOWLOG RESET), or refused in sharded mode.
    node_zero = {
        b"PING",
        b"INFO",
        b"CONFIG|SET",
        b"FUNCTION|STATS",
        b"LATENCY|DOCTOR",
        b"LATENCY|GRAPH",
        b"LATENCY|HISTOGRAM",
        b"LATENCY|HISTORY",
        b"LATENCY|LATEST",
        b"LATENCY|RESET",
        b"MEMORY|DOCTOR",
        b"MEMORY|MALLOC-STATS",
        b"MEMORY|STATS",
        b"SLOWLOG|GET",
        b"SLOWLOG|LEN",
        b"SLOWLOG|RESET",
    }
    handled = set(FAN_OUTS) | set(SPLITS) | set(SHARDED_REFUSALS) | {b"MSETNX"} | node_zero
    assert tipped <= handled, sorted(tipped - handled)
    for name in (*FAN_OUTS, *SPLITS, *SHARDED_REFUSALS):
        assert name in COMMANDS, name


# --- SORT patterns -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "refused"),
    [
        ([b"SORT", b"a"], False),
        ([b"SORT", b"a", b"BY", b"nosort"], False),
        ([b"SORT", b"a", b"GET", b"#"], False),
        ([b"SORT", b"a", b"GET", b"fixed"], False),  # no '*': names no key
        ([b"SORT", b"a", b"BY", b"w_*"], True),
        ([b"SORT", b"a", b"GET", b"#", b"GET", b"o_*->f"], True),
        ([b"SORT_RO", b"a", b"BY", b"w_*"], True),
        ([b"SORT", b"{a}l", b"BY", b"{a}w_*", b"GET", b"{a}o_*->f"], False),
        ([b"SORT", b"a", b"BY", b"{a}w_*"], False),  # the tag is the sorted key's node
        ([b"SORT", b"a", b"BY", b"{x}w_*"], True),  # tag on another node
        ([b"SORT", b"a", b"BY", b"w_*{a}"], True),  # the element may bring its own tag
        ([b"SORT", b"a", b"BY", b"{a*}"], True),
        ([b"SORT", b"a", b"BY", b"{}{a}*"], True),  # empty first tag: the whole key hashes
        ([b"sort", b"a", b"limit", b"0", b"by", b"w_*"], False),  # LIMIT's "by" is no option
        ([b"SORT", b"a", b"LIMIT", b"0", b"1", b"BY", b"w_*"], True),
    ],
)
def test_sort_patterns_must_share_the_sorted_keys_node(args: list[bytes], refused: bool) -> None:
    outcome = plan(args, _ab, 2)
    if refused:
        assert isinstance(outcome, RefusedPlan)
        assert outcome.message.startswith("CROSSSLOT")
        assert "BY or GET pattern" in outcome.message
    else:
        assert isinstance(outcome, Plan)
        assert outcome.merge is MergeKind.SINGLE
    if refused:
        assert isinstance(plan(args, _ab, 2, hash_tags=False), RefusedPlan)


# --- merge ---------------------------------------------------------------------------------------


def _fan(kind: MergeKind, count: int = 3) -> Plan:
    return Plan(kind, tuple(Part(shard, [b"X"]) for shard in range(count)))


def test_merge_fan_out_kinds() -> None:
    assert merge(_fan(MergeKind.SUM_INTEGERS), [b":1\r\n", b":0\r\n", b":41\r\n"]) == b":42\r\n"
    assert merge(_fan(MergeKind.OK_ALL), [b"$2\r\nab\r\n"] * 3) == b"$2\r\nab\r\n"
    assert (
        merge(_fan(MergeKind.ARRAY_CONCAT), [b"*1\r\n$1\r\na\r\n", b"*0\r\n", b"*1\r\n$0\r\n\r\n"])
        == b"*2\r\n$1\r\na\r\n$0\r\n\r\n"
    )
    assert (
        merge(
            _fan(MergeKind.LOGICAL_AND),
            [b"*3\r\n:1\r\n:1\r\n:0\r\n", b"*3\r\n:1\r\n:0\r\n:1\r\n", b"*3\r\n:1\r\n:1\r\n:1\r\n"],
        )
        == b"*3\r\n:1\r\n:0\r\n:0\r\n"
    )
    notbusy = b"-NOTBUSY No scripts in execution right now.\r\n"
    assert merge(_fan(MergeKind.ONE_SUCCEEDED), [notbusy, b"+OK\r\n", notbusy]) == b"+OK\r\n"
    assert merge(_fan(MergeKind.ONE_SUCCEEDED), [notbusy, b"-ERR x\r\n", notbusy]) == notbusy
    assert merge(_fan(MergeKind.SUM_INTEGERS), [b":1\r\n", b"-ERR a\r\n", b"-ERR b\r\n"]) == (
        b"-ERR a\r\n"
    )


def test_merge_nested_elements_move_whole() -> None:
    """Elements are framed, not assumed scalar: a nested reply moves as one element."""
    reply = b"*2\r\n*2\r\n$1\r\na\r\n%1\r\n+k\r\n:1\r\n_\r\n"
    assert merge(_fan(MergeKind.ARRAY_CONCAT, 2), [reply, b"*0\r\n"]) == reply


@pytest.mark.parametrize(
    ("kind", "reply"),
    [
        (MergeKind.SUM_INTEGERS, b"+OK\r\n"),
        (MergeKind.SUM_INTEGERS, b":1x\r\n"),
        (MergeKind.SUM_INTEGERS, b":1\r\n:2\r\n"),
        (MergeKind.ARRAY_CONCAT, b":1\r\n"),
        (MergeKind.ARRAY_CONCAT, b"*2\r\n$1\r\na\r\n"),  # one element short
        (MergeKind.ARRAY_CONCAT, b"*1\r\n$1\r\na\r\n+extra\r\n"),
        (MergeKind.ARRAY_CONCAT, b"*-1\r\n"),
        (MergeKind.ARRAY_CONCAT, b"*1\r\n$9\r\na\r\n"),
        (MergeKind.ARRAY_CONCAT, b"*1\r\n?\r\n"),
        (MergeKind.LOGICAL_AND, b"*1\r\n:2\r\n"),
        (MergeKind.LOGICAL_AND, b"*2\r\n:1\r\n:1\r\n"),  # length differs from the first part
    ],
)
def test_merge_rejects_replies_of_the_wrong_shape(kind: MergeKind, reply: bytes) -> None:
    first = b"*1\r\n:1\r\n" if kind is MergeKind.LOGICAL_AND else b":1\r\n"
    if kind is MergeKind.ARRAY_CONCAT:
        first = b"*0\r\n"
    with pytest.raises(RemoteProtocolError) as caught:
        merge(_fan(kind, 2), [first, reply])
    assert caught.value.close is False
    assert caught.value.reply_hint.startswith("ERR resmesh: node 1 sent an unexpected reply")


def test_merge_checks_mget_element_counts() -> None:
    outcome = plan([b"MGET", b"a", b"b", b"c"], _ab, 2)
    assert isinstance(outcome, Plan)
    with pytest.raises(RemoteProtocolError):
        merge(outcome, [b"*1\r\n_\r\n", b"*1\r\n_\r\n"])  # node 0 owes two elements


def test_merge_wants_one_reply_per_part() -> None:
    with pytest.raises(LocalProtocolError):
        merge(_fan(MergeKind.OK_ALL), [b"+OK\r\n"])
    with pytest.raises(LocalProtocolError):
        merge(Plan(MergeKind.SINGLE, (), 1), [b"+OK\r\n", b"+OK\r\n"])
