"""Sans-IO planning of Redis commands over key-sharded nodes: route, split, merge, or refuse.

In ``sharded`` mode every key lives on exactly one node, chosen by consistent hashing
(ketama) of the key. Most commands name one key, or several that live together, and go to that
node unchanged. A few multi-key commands are *split*: one sub-command per node, the replies merged
back into the exact bytes a single redis-server would have sent (twemproxy's ``MGET``/``DEL``/
``MSET`` fragments, Envoy redis_proxy's fragmented commands). Keyspace-wide commands with no key
fan out to every node where a merged answer means the same as a single node's (Redis 7's own
``request_policy``/``response_policy`` command tips, the ones cluster clients follow). Everything
else that would need keys from several nodes is refused with a ``CROSSSLOT`` error, as Redis
Cluster does, naming the command and the fix: a hash tag.

Use (the I/O is the caller's; parts go to different nodes and may be sent concurrently)::

    outcome = plan(command.args, shard_of, shard_count)
    if isinstance(outcome, RefusedPlan):
        reply = outcome.reply  # nothing is sent to any node
    elif outcome.merge is MergeKind.SINGLE:
        reply = call(outcome.shard, command.raw)  # the client's bytes, unchanged
    else:
        replies = [call(part.shard, encode_command(part.args)) for part in outcome.parts]
        reply = merge(outcome, replies)

``shard_of(key)`` maps the bytes to hash to a node index in ``range(shard_count)``. With
``hash_tags`` (the default) it receives the key's hash tag (:func:`hash_tag`), so
``{user1000}.following`` and ``{user1000}.followers`` always share a node.

The policy, command by command (canonical names; see the tables at the end of the module):

- **One node**: any command whose keys all map to one node (single-key commands, the usual case,
  cost one key extraction, one ``shard_of`` call and a cached plan), and commands without keys
  that are not keyspace-wide (``INFO``, ``TIME``, ``EVAL`` with no keys, ``PUBLISH`` and the
  subscribe family, unknown or module commands): these go to node 0, so publishers and
  subscribers meet and the answer is deterministic. ``PING``, ``AUTH``, ``HELLO``, ``SELECT``,
  ``CLIENT ...`` are the session layer's to answer; if asked, they too go to node 0.
- **Split**: ``MGET`` (per-key results back in the client's order), ``MSET`` (``+OK`` if every node
  said so, else the first error), ``DEL``, ``UNLINK``, ``EXISTS``, ``TOUCH`` (sum of counts).
  Duplicate keys always fall on the same node, so ``EXISTS k k`` still counts 2 and
  ``DEL k k`` counts 1. The split is not atomic (nor is it in twemproxy, Envoy or Redis Cluster
  clients): an ``MSET`` part may fail while another succeeded, and the client sees the first
  error.
- **Fan out to every node**: ``FLUSHDB``, ``FLUSHALL``, ``SCRIPT LOAD``, ``SCRIPT FLUSH``,
  ``FUNCTION LOAD|DELETE|FLUSH|RESTORE``, ``MEMORY PURGE`` (all must succeed), ``DBSIZE`` (sum),
  ``KEYS`` (concatenated: each node's order, which is arbitrary on one node too),
  ``SCRIPT EXISTS`` (element-wise AND: a script is usable only where every node has it),
  ``SCRIPT KILL``, ``FUNCTION KILL`` (the one node running a script answers ``OK``).
- **Refused when the keys span nodes** (``CROSSSLOT``): every other multi-key command
  (``RENAME``, ``COPY``, ``SMOVE``, ``LMOVE``, ``SUNIONSTORE``, ``ZUNIONSTORE``, ``PFMERGE``,
  ``BLPOP``/``XREAD`` over several nodes, ``EVAL``/``FCALL`` with declared keys on several nodes,
  ``SORT ... STORE``...), ``MSETNX`` (all-or-nothing cannot hold across nodes), and ``SORT`` or
  ``SORT_RO`` whose ``BY``/``GET`` pattern may name keys on another node (the pattern must carry
  the sorted key's hash tag, as Redis Cluster requires).
- **Refused in sharded mode**: ``RANDOMKEY``, ``SCAN``, ``WAIT``, ``WAITAOF`` and the
  transaction commands ``MULTI``, ``EXEC``, ``DISCARD``, ``WATCH``, ``UNWATCH``.

Hot-path cost, measured with ``timeit`` on CPython 3.11: ``plan`` for ``GET key`` takes about
0.4 µs plus one ``shard_of`` call (0.1 µs for ``crc32 % n``), 0.25 µs of it the command-table
``lookup`` and key extraction (pass ``spec=`` when the caller already looked it up): a dict hit
for the few special commands, one ``memchr`` for a ``{``, and a cached plan per node.

Not detectable, so not refused: Lua scripts and functions that touch keys they did not declare,
and module commands with keys (the command table does not know them). Commands the gateway refuses
in every mode (``commands.refusal``) are expected to be refused before :func:`plan` is called.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Final, final

from .._errors import LocalProtocolError, RemoteProtocolError
from .commands import CommandSpec, lookup
from .framing import is_error_reply, parse_length, scan_reply
from .parser import parse_integer
from .writer import error

__all__ = [
    "FAN_OUTS",
    "SHARDED_REFUSALS",
    "SPLITS",
    "MergeKind",
    "Part",
    "Plan",
    "RefusedPlan",
    "ShardOf",
    "hash_tag",
    "merge",
    "plan",
]

#: ``key → node index`` (``0 <= index < shard_count``); takes the hash tag when tags are on.
ShardOf = Callable[[bytes], int]


def hash_tag(key: bytes) -> bytes:
    """The part of ``key`` that decides its node: the hash tag if it has one, else the key.

    Redis Cluster specification, "Hash tags" (``keyHashSlot`` in ``cluster.c``), which twemproxy's
    ``hash_tag: "{}"`` also follows: if the key contains ``{``, and a ``}`` follows it, and at
    least one byte lies between the *first* ``{`` and the first ``}`` after it, only those bytes
    are hashed. ``{user1000}.following`` → ``user1000``; ``foo{}{bar}`` → the whole key (the
    first tag is empty); ``foo{{bar}}zap`` → ``{bar``; ``foo{bar}{zap}`` → ``bar``.
    """
    start = key.find(b"{")
    if start < 0:
        return key
    end = key.find(b"}", start + 1)
    if end <= start + 1:  # no closing brace (-1), or an empty tag
        return key
    return key[start + 1 : end]


class MergeKind(enum.Enum):
    """How the parts' replies become the client's one reply.

    In every kind but ``SINGLE`` and ``ONE_SUCCEEDED``, an error reply from any part is the
    answer: the first one in part order (Redis command tips: ``all_succeeded``).

    Members:
        SINGLE: one node, the client's command unchanged; its reply is forwarded as is.
        ARRAY_IN_ORDER: ``MGET``: each part answers an array for its keys; the elements are put
            back at their keys' positions in the client's command.
        OK_ALL: ``MSET``, ``FLUSHDB``, ``SCRIPT LOAD``...: the first part's reply (``+OK``, or
            the script's SHA1, the same from every node) once every part succeeded.
        SUM_INTEGERS: ``DEL``, ``UNLINK``, ``EXISTS``, ``TOUCH``, ``DBSIZE``: the sum of the
            parts' integer replies (``agg_sum``).
        ARRAY_CONCAT: ``KEYS``: the parts' arrays, one after the other.
        LOGICAL_AND: ``SCRIPT EXISTS``: arrays of 0/1, combined element by element; 1 only if
            every part answered 1 (``agg_logical_and``).
        ONE_SUCCEEDED: ``SCRIPT KILL``, ``FUNCTION KILL``: the first non-error reply; the first
            error only if every part failed (``one_succeeded``).
    """

    SINGLE = "single"
    ARRAY_IN_ORDER = "array_in_order"
    OK_ALL = "ok_all"
    SUM_INTEGERS = "sum_integers"
    ARRAY_CONCAT = "array_concat"
    LOGICAL_AND = "logical_and"
    ONE_SUCCEEDED = "one_succeeded"


@final
@dataclass(frozen=True, slots=True)
class Part:
    """One sub-command of a split or fanned-out command.

    Attributes:
        shard: the node index to send it to.
        args: the sub-command, name included, in the client's spelling (``[b"mget", b"a",
            b"c"]``); encode it with ``requests.encode_command``.
        positions: which of the client's keys this part carries, ascending: key indices for
            ``MGET``/``DEL``/..., key/value pair indices for ``MSET``; empty for a fan-out.
    """

    shard: int
    args: list[bytes]
    positions: tuple[int, ...] = ()


@final
@dataclass(frozen=True, slots=True)
class Plan:
    """How to run one command on the shards.

    Attributes:
        merge: how the replies combine (see :class:`MergeKind`).
        parts: the sub-commands, one per node, ordered by the first key each carries (by node
            index for a fan-out). Empty for ``SINGLE``.
        shard: ``SINGLE`` only: the node that gets the client's command unchanged (so the
            client's own bytes are forwarded, never re-encoded); -1 otherwise.
    """

    merge: MergeKind
    parts: tuple[Part, ...] = ()
    shard: int = -1


@final
@dataclass(frozen=True, slots=True)
class RefusedPlan:
    """The command cannot run in sharded mode; answer the error instead of forwarding it.

    Attributes:
        message: the whole RESP error text, code included (``"CROSSSLOT Keys in request don't
            hash to the same node: ..."`` or ``"ERR ..."``): ASCII, no CR/LF.
    """

    message: str

    @property
    def reply(self) -> bytes:
        """The error reply's bytes (``-CROSSSLOT ...\\r\\n``), the same in RESP2 and RESP3."""
        return error(self.message)


#: ``SINGLE`` plans by node: they hold no per-command data, so one per node serves every call.
_SINGLE_PLANS: Final[dict[int, Plan]] = {}


def _single(shard: int) -> Plan:
    found = _SINGLE_PLANS.get(shard)
    if found is None:
        found = _SINGLE_PLANS[shard] = Plan(MergeKind.SINGLE, (), shard)
    return found


_SHARD_ZERO: Final = _single(0)


def plan(
    args: list[bytes],
    shard_of: ShardOf,
    shard_count: int,
    *,
    spec: CommandSpec | None = None,
    hash_tags: bool = True,
) -> Plan | RefusedPlan:
    """Decide where ``args`` runs in sharded mode: one node, split, fanned out, or refused.

    Args:
        args: the command line, name included, as the client sent it.
        shard_of: maps a key (its hash tag, with ``hash_tags``) to a node index.
        shard_count: how many nodes there are, for fan-outs (``FLUSHDB`` goes to each).
        spec: ``lookup(args)`` if the caller already has it (``None``: looked up here).
        hash_tags: hash only a key's ``{tag}`` (:func:`hash_tag`), as Redis Cluster and
            twemproxy do. Without it, related keys can only be kept together by luck.

    Returns:
        A :class:`Plan`, or a :class:`RefusedPlan` whose ``reply`` goes to the client. Malformed
        commands (wrong arity, ``MSET`` without its last value) are never refused or split
        here: they go whole to one node, so the client gets redis-server's own error.

    Raises:
        ValueError: a fan-out was needed and ``shard_count`` is below 1.
    """
    if spec is None:
        spec = lookup(args)
        if spec is None:
            return _SHARD_ZERO  # unknown or module command: the server answers or runs it
    special = _SPECIAL.get(spec.name)
    if special is not None:
        outcome = special(args, spec, shard_of, shard_count, hash_tags)
        if outcome is not None:
            return outcome
    keys = spec.extract_keys(args)
    if len(keys) == 1:
        key = keys[0]
        # An int needle is a plain memchr; ``b"{" in key`` costs four times as much.
        if hash_tags and 0x7B in key:
            key = hash_tag(key)
        shard = shard_of(key)
        single = _SINGLE_PLANS.get(shard)
        return single if single is not None else _single(shard)
    if not keys:
        return _SHARD_ZERO
    if hash_tags:
        shards = [shard_of(hash_tag(key) if 0x7B in key else key) for key in keys]
    else:
        shards = [shard_of(key) for key in keys]
    first = shards[0]
    if shards.count(first) == len(shards):
        return _single(first)
    split = _SPLITS.get(spec.name)
    if split is not None:
        kind, step = split
        if len(args) == 1 + step * len(keys):
            return _split(args, shards, kind, step)
        return _single(first)  # MSET k1 v1 k2: the server's arity error, from one node
    if not _arity_ok(spec.arity, len(args)):
        return _single(first)  # the server's arity error rather than ours
    if spec.name == b"MSETNX":
        return RefusedPlan(_crossslot(spec, _MSETNX_WHY, hash_tags))
    return RefusedPlan(_crossslot(spec, _SPAN_WHY, hash_tags))


def _arity_ok(arity: int, argc: int) -> bool:
    return argc == arity if arity >= 0 else argc >= -arity


def _split(args: list[bytes], shards: list[int], kind: MergeKind, step: int) -> Plan:
    """One part per node, ordered by each node's first key, keys in the client's order."""
    groups: dict[int, list[int]] = {}
    for index, shard in enumerate(shards):
        group = groups.get(shard)
        if group is None:
            groups[shard] = [index]
        else:
            group.append(index)
    name = args[0]
    parts: list[Part] = []
    for shard, positions in groups.items():
        if step == 1:
            part_args = [name, *[args[1 + index] for index in positions]]
        else:
            part_args = [name]
            for index in positions:
                part_args += args[1 + step * index : 1 + step * (index + 1)]
        parts.append(Part(shard, part_args, tuple(positions)))
    return Plan(kind, tuple(parts))


# --- commands that need more than their keys ---------------------------------------------------

_Special = Callable[[list[bytes], CommandSpec, ShardOf, int, bool], Plan | RefusedPlan | None]

_HASH_TAG_HINT: Final = (
    "put keys that are used together under one hash tag, e.g. {user1000}.following and "
    "{user1000}.followers"
)
_NO_TAG_HINT: Final = "keys that are used together must map to the same node"
_SPAN_WHY: Final = "its keys are on different nodes and it cannot be split"
_MSETNX_WHY: Final = (
    "its keys are on different nodes, and it must set all of them or none, which cannot be "
    "guaranteed across nodes"
)
_SORT_WHY: Final = (
    "a BY or GET pattern may name keys on other nodes; give the pattern the sorted key's hash "
    "tag, e.g. SORT {user1000}:ids BY {user1000}:weight_*"
)


def _crossslot(spec: CommandSpec, why: str, hash_tags: bool) -> str:
    hint = _HASH_TAG_HINT if hash_tags else _NO_TAG_HINT
    return (
        f"CROSSSLOT Keys in request don't hash to the same node: '{spec.display_name}' in "
        f"sharded mode: {why}; {hint}"
    )


def _refuse(reason: str) -> _Special:
    def refuse(
        args: list[bytes], spec: CommandSpec, shard_of: ShardOf, count: int, tags: bool
    ) -> RefusedPlan:
        return RefusedPlan(f"ERR '{spec.display_name}' is not supported in sharded mode: {reason}")

    return refuse


def _fan_out(kind: MergeKind) -> _Special:
    def fan_out(
        args: list[bytes], spec: CommandSpec, shard_of: ShardOf, count: int, tags: bool
    ) -> Plan:
        if count < 1:
            raise ValueError(f"shard_count must be at least 1, got {count}")
        if count == 1:
            return _SHARD_ZERO
        return Plan(kind, tuple(Part(shard, args) for shard in range(count)))

    return fan_out


def _sort_patterns(
    args: list[bytes], spec: CommandSpec, shard_of: ShardOf, count: int, tags: bool
) -> RefusedPlan | None:
    """Refuse ``SORT``/``SORT_RO`` whose ``BY``/``GET`` patterns may read another node's keys.

    A pattern names keys only through ``*`` (redis ``lookupKeyByPattern``: ``BY nosort``,
    ``GET #`` and star-less patterns read nothing). Every key it can name shares the sorted
    key's node only when the pattern has a non-empty hash tag *before* the ``*``, so the
    substituted element cannot change the tag, and that tag maps to the sorted key's node: Redis
    Cluster's rule for the same options (``sortCommand``, ``patternHashSlot``). The option walk
    is ``commands._sort_keys``'s, so a pattern spelled "store" is not taken for an option.
    """
    argc = len(args)
    if argc < 3:
        return None
    home: int | None = None
    position = 2
    while position < argc:
        option = args[position].upper()
        if option == b"LIMIT":
            position += 3
            continue
        if option in (b"BY", b"GET") and position + 1 < argc:
            pattern = args[position + 1]
            star = pattern.find(b"*")
            if star >= 0:
                tag = _pattern_tag(pattern, star) if tags else None
                if tag is None:
                    return RefusedPlan(_crossslot(spec, _SORT_WHY, tags))
                if home is None:
                    key = args[1]
                    home = shard_of(hash_tag(key) if tags else key)
                if shard_of(tag) != home:
                    return RefusedPlan(_crossslot(spec, _SORT_WHY, tags))
            position += 2
            continue
        position += 1
    return None


def _pattern_tag(pattern: bytes, star: int) -> bytes | None:
    """The hash tag every key named by ``pattern`` shares, or ``None`` if the ``*`` can vary it."""
    start = pattern.find(b"{", 0, star)
    if start < 0:
        return None
    end = pattern.find(b"}", start + 1, star)
    if end <= start + 1:
        return None
    return pattern[start + 1 : end]


_TRANSACTION_WHY: Final = (
    "a transaction runs on one node, its keys may live on several, and the gateway does not "
    "pin transactions to a node in sharded mode"
)

#: Keyspace-wide commands sent to every node, and how their replies merge. These follow
#: redis-server's ``request_policy:all_shards``/``all_nodes`` tips with the matching
#: ``response_policy`` (``tests/protocols/resp/test_sharding.py`` holds the table to them).
FAN_OUTS: Final[Mapping[bytes, MergeKind]] = types.MappingProxyType(
    {
        b"FLUSHDB": MergeKind.OK_ALL,
        b"FLUSHALL": MergeKind.OK_ALL,
        b"DBSIZE": MergeKind.SUM_INTEGERS,
        b"KEYS": MergeKind.ARRAY_CONCAT,
        b"SCRIPT|LOAD": MergeKind.OK_ALL,
        b"SCRIPT|FLUSH": MergeKind.OK_ALL,
        b"SCRIPT|EXISTS": MergeKind.LOGICAL_AND,
        b"SCRIPT|KILL": MergeKind.ONE_SUCCEEDED,
        b"FUNCTION|LOAD": MergeKind.OK_ALL,
        b"FUNCTION|DELETE": MergeKind.OK_ALL,
        b"FUNCTION|FLUSH": MergeKind.OK_ALL,
        b"FUNCTION|RESTORE": MergeKind.OK_ALL,
        b"FUNCTION|KILL": MergeKind.ONE_SUCCEEDED,
        b"MEMORY|PURGE": MergeKind.OK_ALL,
    }
)

#: Commands refused in sharded mode whatever their arguments, with the reason.
SHARDED_REFUSALS: Final[Mapping[bytes, str]] = types.MappingProxyType(
    {
        b"RANDOMKEY": "each node holds only part of the keys, and a node without keys would "
        "answer nil while others have some",
        b"SCAN": "its cursor walks the keys of a single node",
        b"WAIT": "it counts replica acknowledgements of this connection's writes on one node, "
        "and in sharded mode those writes went to several nodes",
        b"WAITAOF": "it counts fsync acknowledgements of this connection's writes on one node, "
        "and in sharded mode those writes went to several nodes",
        b"MULTI": _TRANSACTION_WHY,
        b"EXEC": _TRANSACTION_WHY,
        b"DISCARD": _TRANSACTION_WHY,
        b"WATCH": _TRANSACTION_WHY,
        b"UNWATCH": _TRANSACTION_WHY,
    }
)

#: Multi-key commands split across nodes: merge kind and arguments per key (2: key and value).
SPLITS: Final[Mapping[bytes, tuple[MergeKind, int]]] = types.MappingProxyType(
    {
        b"MGET": (MergeKind.ARRAY_IN_ORDER, 1),
        b"MSET": (MergeKind.OK_ALL, 2),
        b"DEL": (MergeKind.SUM_INTEGERS, 1),
        b"UNLINK": (MergeKind.SUM_INTEGERS, 1),
        b"EXISTS": (MergeKind.SUM_INTEGERS, 1),
        b"TOUCH": (MergeKind.SUM_INTEGERS, 1),
    }
)

#: Commands planned by more than their keys, by canonical name: one dict hit on the hot path.
_SPECIAL: Final[dict[bytes, _Special]] = {
    **{name: _fan_out(kind) for name, kind in FAN_OUTS.items()},
    **{name: _refuse(reason) for name, reason in SHARDED_REFUSALS.items()},
    b"SORT": _sort_patterns,
    b"SORT_RO": _sort_patterns,
}
_SPLITS: Final[dict[bytes, tuple[MergeKind, int]]] = dict(SPLITS)


# --- merging -----------------------------------------------------------------------------------


def merge(plan: Plan, replies: Sequence[bytes]) -> bytes:
    """The client's reply, from the parts' raw replies (one complete reply each, part order).

    The result is byte for byte what one redis-server holding every key would send, in RESP2 and
    RESP3 alike: elements are moved, never decoded, so a RESP3 null (``_``) stays one. Errors
    follow :class:`MergeKind`. A reply is typically substituted by the caller with an error
    (``-ERR ... timed out``) when a node could not be reached; that error then wins like any other.

    Raises:
        LocalProtocolError: ``replies`` does not have one reply per part (a caller bug).
        RemoteProtocolError: a node answered with a reply of the wrong shape (an integer to
            ``MGET``, an array of the wrong length); ``close`` is false, since only this command
            is affected, and ``reply_hint`` is the error to give the client.
    """
    kind = plan.merge
    expected = len(plan.parts) if kind is not MergeKind.SINGLE else 1
    if len(replies) != expected:
        raise LocalProtocolError(
            f"ERR resmesh: {len(replies)} replies for a {kind.value} plan of {expected} parts"
        )
    if kind is MergeKind.SINGLE:
        return replies[0]
    if kind is MergeKind.ONE_SUCCEEDED:
        for reply in replies:
            if not is_error_reply(reply, 0):
                return reply
        return replies[0]
    for reply in replies:
        if is_error_reply(reply, 0):
            return reply
    if kind is MergeKind.OK_ALL:
        return replies[0]
    if kind is MergeKind.SUM_INTEGERS:
        total = 0
        for part, reply in zip(plan.parts, replies, strict=True):
            total += _integer(reply, part, kind)
        return b":%d\r\n" % total
    if kind is MergeKind.ARRAY_IN_ORDER:
        slots: list[bytes] = [b""] * sum(len(part.positions) for part in plan.parts)
        for part, reply in zip(plan.parts, replies, strict=True):
            elements = _elements(reply, part, kind)
            if len(elements) != len(part.positions):
                raise _unexpected(part, kind, reply)
            for position, element in zip(part.positions, elements, strict=True):
                slots[position] = element
        return b"*%d\r\n%b" % (len(slots), b"".join(slots))
    if kind is MergeKind.ARRAY_CONCAT:
        gathered: list[bytes] = []
        for part, reply in zip(plan.parts, replies, strict=True):
            gathered += _elements(reply, part, kind)
        return b"*%d\r\n%b" % (len(gathered), b"".join(gathered))
    # LOGICAL_AND
    combined: list[bytes] | None = None
    for part, reply in zip(plan.parts, replies, strict=True):
        flags = _elements(reply, part, kind)
        if any(flag not in (b":0\r\n", b":1\r\n") for flag in flags):
            raise _unexpected(part, kind, reply)
        if combined is None:
            combined = flags
        elif len(flags) != len(combined):
            raise _unexpected(part, kind, reply)
        else:
            combined = [
                mine if mine == b":0\r\n" else flag
                for mine, flag in zip(combined, flags, strict=True)
            ]
    assert combined is not None  # a fan-out has at least two parts
    return b"*%d\r\n%b" % (len(combined), b"".join(combined))


def _unexpected(part: Part, kind: MergeKind, reply: bytes) -> RemoteProtocolError:
    shown = reply[:1].decode("latin-1").encode("unicode_escape").decode("ascii")
    return RemoteProtocolError(
        f"ERR resmesh: node {part.shard} sent an unexpected reply (type '{shown}', "
        f"{len(reply)} bytes) to a {kind.value} part",
        close=False,
    )


def _integer(reply: bytes, part: Part, kind: MergeKind) -> int:
    if reply[:1] == b":" and reply[-2:] == b"\r\n":
        value = parse_integer(reply[1:-2])
        if value is not None:
            return value
    raise _unexpected(part, kind, reply)


def _elements(reply: bytes, part: Part, kind: MergeKind) -> list[bytes]:
    """The raw elements of the array ``reply`` (``*n`` then ``n`` replies, nothing after)."""
    header_end = reply.find(b"\r\n")
    if reply[:1] != b"*" or header_end < 0:
        raise _unexpected(part, kind, reply)
    count = parse_length(reply[1:header_end])
    if count < 0:
        raise _unexpected(part, kind, reply)
    elements: list[bytes] = []
    position = header_end + 2
    try:
        for _ in range(count):
            end = scan_reply(reply, position)
            if end < 0:
                raise _unexpected(part, kind, reply)
            elements.append(reply[position:end])
            position = end
    except RemoteProtocolError:
        raise _unexpected(part, kind, reply) from None
    if position != len(reply):
        raise _unexpected(part, kind, reply)
    return elements
