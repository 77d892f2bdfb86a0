"""The command table against a real redis-server.

Key extraction is checked against the server's own ``COMMAND GETKEYS`` for every command that has
keys, with arguments synthesised from ``COMMAND DOCS`` (minimal and maximal forms, each ``oneof``
both ways), plus a hand-written list of realistic movable-key commands. Flags, blocking timeouts
(including two behaviours observed on the live server), refusals and the never-raise guarantee
are checked too. A missing ``redis-server`` fails the run (``tests.support.servers``): a skipped
comparison would pass while testing nothing. The tests that use the server are marked
``integration``; the rest belong to the fast tier.
"""

from __future__ import annotations

import importlib.util
import math
import socket
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import redis
from hypothesis import given, settings
from hypothesis import strategies as st

from resmesh.protocols.resp import _command_data
from resmesh.protocols.resp.commands import (
    COMMANDS,
    REFUSALS,
    BeginSearch,
    CommandFlag,
    CommandSpec,
    FindKeys,
    KeyFlag,
    KeySpec,
    block_timeout,
    command_keys,
    is_idempotent_read,
    lookup,
    refusal,
)
from tests.support.servers import RedisServer

ROOT = Path(__file__).resolve().parents[3]


# --- the server ------------------------------------------------------------------------------


class Server:
    """A private redis-server and a raw RESP3 client (no redis-py reply reshaping)."""

    def __init__(self, node: RedisServer) -> None:
        self.node = node
        self.client = redis.Redis(port=node.port, protocol=3, socket_timeout=5)
        deadline = time.monotonic() + 10
        while True:
            try:
                self.client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def raw(self, *args: bytes | str) -> Any:
        """The server's reply, or the ``ResponseError`` it answered with."""
        conn = self.client.connection_pool.get_connection()
        try:
            conn.send_command(*args)  # type: ignore[no-untyped-call]
            try:
                return conn.read_response()
            except redis.ResponseError as error:
                return error
        finally:
            self.client.connection_pool.release(conn)

    def getkeys(self, args: list[bytes]) -> list[bytes] | None:
        """``COMMAND GETKEYS``; ``[]`` where the server finds none, ``None`` on arity errors.

        ``COMMAND GETKEYS`` itself needs at least one argument after the command name, so a bare
        command name also gives ``None``.
        """
        reply = self.raw("COMMAND", "GETKEYS", *args)
        if isinstance(reply, redis.ResponseError):
            text = str(reply)
            if "Invalid number of arguments" in text or "wrong number of arguments" in text:
                return None
            assert "no key arguments" in text or "Invalid arguments" in text, (args, text)
            return []
        return list(reply)


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    node = RedisServer()
    try:
        yield Server(node)
    finally:
        node.stop()


def _keys(line: list[bytes]) -> list[bytes]:
    spec = lookup(line)
    assert spec is not None, line
    return command_keys(spec, line)


# --- arguments synthesised from COMMAND DOCS ---------------------------------------------------

#: How each argument type is filled in. Integers are the repetition count of ``multiple``
#: arguments, so ``numkeys`` arguments agree with the keys that follow.
_SAMPLE_VALUES: Mapping[bytes, bytes] = {
    b"string": b"str",
    b"double": b"1.5",
    b"pattern": b"pat*",
    b"unix-time": b"1700000000",
}


class _Synth:
    """Builds one invocation from a docs argument tree.

    ``full`` includes every optional argument; ``last`` picks the last alternative of every
    ``oneof`` instead of the first; ``repeats`` is how many times each ``multiple`` argument
    repeats. Keys get distinct names so a swapped or missing key shows.
    """

    def __init__(self, *, full: bool, last: bool, repeats: int) -> None:
        self.full = full
        self.last = last
        self.repeats = repeats
        self.key_count = 0

    def args(self, arguments: list[Mapping[bytes, Any]]) -> list[bytes]:
        out: list[bytes] = []
        for argument in arguments:
            flags = argument.get(b"flags", [])
            if b"optional" in flags and not self.full:
                continue
            repeats = self.repeats if b"multiple" in flags else 1
            for repeat in range(repeats):
                token = argument.get(b"token")
                first = repeat == 0 or b"multiple_token" in flags
                if token is not None and first and argument[b"type"] != b"pure-token":
                    out.append(token)
                out.extend(self.one(argument))
        return out

    def one(self, argument: Mapping[bytes, Any]) -> list[bytes]:
        kind = argument[b"type"]
        if kind == b"key":
            self.key_count += 1
            return [b"key%d" % self.key_count]
        if kind == b"pure-token":
            return [argument[b"token"]]
        if kind == b"oneof":
            choices = argument[b"arguments"]
            choice = choices[-1] if self.last else choices[0]
            token = choice.get(b"token")
            prefix = [token] if token is not None and choice[b"type"] != b"pure-token" else []
            return prefix + self.one(choice)
        if kind == b"block":
            return self.args(argument[b"arguments"])
        if kind == b"integer":
            return [b"%d" % self.repeats]
        return [_SAMPLE_VALUES[kind]]


def _invocations(name: bytes, doc: Mapping[bytes, Any]) -> list[list[bytes]]:
    prefix = [part.upper() for part in name.split(b"|")]
    arguments = doc.get(b"arguments", [])
    forms = []
    shapes = [
        (False, False, 2),
        (True, False, 2),
        (True, True, 2),
        (True, False, 3),
        (True, True, 1),
    ]
    for full, last, repeats in shapes:
        line = prefix + _Synth(full=full, last=last, repeats=repeats).args(arguments)
        if line not in forms:
            forms.append(line)
    return forms


def _flat_docs(server: Server) -> dict[bytes, Mapping[bytes, Any]]:
    docs = server.raw("COMMAND", "DOCS")
    flat: dict[bytes, Mapping[bytes, Any]] = {}
    for name, doc in docs.items():
        flat[name] = doc
        for sub_name, sub_doc in (doc.get(b"subcommands") or {}).items():
            flat[sub_name] = sub_doc
    return flat


@pytest.mark.integration
def test_keys_match_server_for_every_command(server: Server) -> None:
    """Every command with keys, in several argument shapes, against ``COMMAND GETKEYS``."""
    compared: dict[bytes, int] = {}
    mismatches = []
    for name, doc in sorted(_flat_docs(server).items()):
        spec = COMMANDS.get(name.upper())
        assert spec is not None, f"{name!r} missing: rerun scripts/gen_redis_commands.py"
        if not spec.key_specs:
            continue
        for line in _invocations(name, doc):
            expected = server.getkeys(line)
            if expected is None:
                continue
            compared[name] = compared.get(name, 0) + 1
            got = _keys(line)
            if got != expected:
                mismatches.append((line, expected, got))
    assert not mismatches, mismatches
    keyed = [
        name
        for name, spec in COMMANDS.items()
        if spec.key_specs and name.lower().decode() not in _command_data.SUPPLEMENT
    ]
    missing = sorted(name for name in keyed if name.lower() not in compared)
    assert not missing, f"no well-formed sample for {missing}"
    assert sum(compared.values()) >= 500, sum(compared.values())


#: Realistic command lines, every family and every kind of movable keys.
REALISTIC: list[list[bytes]] = [
    line.split()
    for line in [
        b"GET user:1",
        b"SET user:1 alice EX 10 NX GET",
        b"MGET a b c",
        b"MSET a 1 b 2 c 3",
        b"MSETNX a 1 b 2",
        b"DEL a b c",
        b"UNLINK a",
        b"EXISTS a b a",
        b"TOUCH a b",
        b"RENAME old new",
        b"COPY src dst DB 1 REPLACE",
        b"EXPIRE k 10 NX",
        b"INCRBY counter 5",
        b"APPEND k v",
        b"GETEX k PERSIST",
        b"SETRANGE k 3 abc",
        b"LCS a b LEN",
        b"BITOP AND dest s1 s2 s3",
        b"BITCOUNT k 0 -1 BIT",
        b"BITFIELD k GET u8 0 INCRBY u8 0 1",
        b"BITFIELD_RO k GET u8 0",
        b"LPUSH list a b c",
        b"LRANGE list 0 -1",
        b"LMOVE src dst LEFT RIGHT",
        b"RPOPLPUSH src dst",
        b"BLPOP l1 l2 l3 1.5",
        b"BRPOP l1 0",
        b"BLMOVE src dst LEFT RIGHT 0",
        b"BRPOPLPUSH src dst 5",
        b"LMPOP 2 l1 l2 LEFT COUNT 3",
        b"BLMPOP 0.5 3 l1 l2 l3 RIGHT",
        b"HSET h f v f2 v2",
        b"HGETALL h",
        b"HRANDFIELD h 2 WITHVALUES",
        b"SADD s a b",
        b"SMOVE s1 s2 member",
        b"SINTER s1 s2 s3",
        b"SINTERSTORE dst s1 s2",
        b"SINTERCARD 2 s1 s2 LIMIT 10",
        b"SUNIONSTORE dst s1",
        b"SDIFF s1 s2",
        b"ZADD z 1 a 2 b",
        b"ZUNIONSTORE dst 2 z1 z2 WEIGHTS 1 2 AGGREGATE MAX",
        b"ZINTERSTORE dst 3 z1 z2 z3",
        b"ZDIFFSTORE dst 2 z1 z2",
        b"ZUNION 2 z1 z2 WITHSCORES",
        b"ZINTER 1 z1",
        b"ZDIFF 2 z1 z2",
        b"ZINTERCARD 2 z1 z2 LIMIT 1",
        b"ZMPOP 2 z1 z2 MIN COUNT 2",
        b"BZMPOP 1 2 z1 z2 MAX",
        b"BZPOPMIN z1 z2 0",
        b"BZPOPMAX z1 0.01",
        b"ZRANGESTORE dst src 0 -1",
        b"ZRANGE z 0 -1 WITHSCORES",
        b"PFADD hll a b",
        b"PFCOUNT h1 h2",
        b"PFMERGE dst h1 h2",
        b"GEOADD g 13.36 38.11 palermo",
        b"GEORADIUS g 15 37 200 km STORE dst",
        b"GEORADIUS g 15 37 200 km STOREDIST dst2",
        b"GEORADIUS g 15 37 200 km WITHDIST",
        b"GEORADIUSBYMEMBER g palermo 100 km STORE dst",
        b"GEORADIUS_RO g 15 37 200 km",
        b"GEOSEARCHSTORE dst src FROMMEMBER m BYRADIUS 10 km",
        b"XADD stream * field value",
        b"XREAD COUNT 2 STREAMS s1 s2 0 0",
        b"XREAD BLOCK 100 STREAMS s1 $",
        b"XREAD STREAMS streams 0",
        b"XREADGROUP GROUP g c COUNT 1 STREAMS s1 s2 > >",
        b"XREADGROUP GROUP streams c BLOCK 0 NOACK STREAMS s1 >",
        b"XGROUP CREATE s g $ MKSTREAM",
        b"XINFO STREAM s FULL",
        b"XINFO GROUPS s",
        b"XAUTOCLAIM s g c 10 0",
        b"EVAL script 2 k1 k2 a1 a2",
        b"EVAL script 0 a1",
        b"EVALSHA sha 1 k1",
        b"EVAL_RO script 1 k1 arg",
        b"EVALSHA_RO sha 0",
        b"FCALL fn 2 k1 k2 arg",
        b"FCALL_RO fn 1 k1",
        b"SORT list",
        b"SORT list BY weight_* GET # GET obj_*->f LIMIT 0 10 DESC ALPHA STORE dst",
        b"SORT list GET store STORE dst",
        b"SORT list LIMIT store 5 STORE dst",
        b"SORT_RO list BY w_* GET #",
        b"MIGRATE host 6379 key 0 1000",
        b"MIGRATE host 6379 key 0 1000 COPY REPLACE",
        b"MIGRATE host 6379 '' 0 1000 KEYS a b c",
        b"MIGRATE host 6379 '' 0 1000 COPY AUTH keys KEYS a b",
        b"MIGRATE host 6379 '' 0 1000 AUTH2 user keys KEYS a",
        b"OBJECT ENCODING k",
        b"OBJECT FREQ k",
        b"MEMORY USAGE k SAMPLES 5",
        b"DUMP k",
        b"RESTORE k 0 payload REPLACE",
        b"WATCH a b",
        b"TYPE k",
        b"SPUBLISH channel message",
        b"PUBLISH channel message",
        b"GET",
        b"MSET a",
        b"ZUNIONSTORE dst 5 z1",
        b"XREAD STREAMS s1 s2 0",
        b"EVAL script notanumber k1",
    ]
]


@pytest.mark.integration
@pytest.mark.parametrize("line", REALISTIC, ids=lambda line: b" ".join(line).decode())
def test_realistic_lines_match_server(server: Server, line: list[bytes]) -> None:
    line = [b"" if arg == b"''" else arg for arg in line]
    expected = server.getkeys(line)
    if expected is None:
        # Wrong arity: the server will refuse the command; we only promise not to raise.
        assert isinstance(_keys(line), list)
        return
    got = _keys(line)
    if expected or got == expected:
        assert got == expected
    else:
        # The server gives up on malformed movable keys; we return the keys that are there.
        assert set(got) <= set(line[1:])


def test_movable_keys_spot_checks() -> None:
    """Hand-checked answers, so a table that finds no keys at all cannot pass by agreement."""
    assert _keys(b"EVAL s 2 k1 k2 a".split()) == [b"k1", b"k2"]
    assert _keys(b"ZUNIONSTORE d 2 a b WEIGHTS 1 2".split()) == [b"d", b"a", b"b"]
    assert _keys(b"BLMPOP 0 2 a b LEFT".split()) == [b"a", b"b"]
    assert _keys(b"XREAD COUNT 1 STREAMS a b 0 0".split()) == [b"a", b"b"]
    assert _keys(b"XREADGROUP GROUP g c STREAMS a >".split()) == [b"a"]
    assert _keys(b"SORT l BY w GET store STORE d".split()) == [b"l", b"d"]
    assert _keys([b"MIGRATE", b"h", b"1", b"", b"0", b"5", b"KEYS", b"a", b"b"]) == [b"a", b"b"]
    assert _keys(b"GEORADIUS g 0 0 1 km STORE a STOREDIST b".split()) == [b"g", b"a", b"b"]
    assert _keys(b"OBJECT ENCODING k".split()) == [b"k"]
    assert _keys(b"MEMORY USAGE k".split()) == [b"k"]
    assert _keys(b"MSET a 1 b 2".split()) == [b"a", b"b"]
    assert _keys(b"BLPOP a b 0".split()) == [b"a", b"b"]
    assert _keys(b"SPUBLISH ch m".split()) == []
    # Malformed: whatever can be found, never an exception.
    assert _keys(b"EVAL s 5 k1 k2".split()) == [b"k1", b"k2"]
    assert _keys(b"EVAL s -1 k1".split()) == []
    assert _keys([b"GET"]) == []
    assert _keys([b"XREAD"]) == []


def test_hand_made_specs() -> None:
    """Spec shapes no 7.0 command exercises on the generic path, built through the public API."""
    backwards = CommandSpec(
        b"X",
        -2,
        CommandFlag.MOVABLE_KEYS,
        key_specs=(KeySpec(BeginSearch.KEYWORD, -2, b"KEYS", FindKeys.RANGE, last_key=-1),),
    )
    # Searching backwards from argc-2 finds the *last* KEYS before the final argument.
    assert command_keys(backwards, b"X a KEYS b KEYS c d".split()) == [b"c", b"d"]
    assert command_keys(backwards, b"X KEYS".split()) == []
    assert command_keys(backwards, b"X a b KEYS".split()) == []
    stepped = CommandSpec(
        b"Y",
        -3,
        CommandFlag.NONE,
        key_specs=(KeySpec(BeginSearch.INDEX, 1, find=FindKeys.KEYNUM, key_step=2),),
    )
    assert command_keys(stepped, b"Y 2 k1 v1 k2 v2".split()) == [b"k1", b"k2"]
    assert command_keys(stepped, b"Y 9 k1 v1".split()) == [b"k1"]
    assert command_keys(stepped, b"Y x k1".split()) == []
    after_keyword = CommandSpec(
        b"W",
        -3,
        CommandFlag.NONE,
        key_specs=(KeySpec(BeginSearch.KEYWORD, 1, b"KEYS", FindKeys.KEYNUM),),
    )
    assert command_keys(after_keyword, b"W a keys 2 k1 k2 x".split()) == [b"k1", b"k2"]
    assert command_keys(after_keyword, b"W a KEYS two k1".split()) == []
    channel = CommandSpec(
        b"Z",
        2,
        CommandFlag.NONE,
        key_specs=(KeySpec(BeginSearch.INDEX, 1, flags=KeyFlag.NOT_KEY),),
    )
    assert command_keys(channel, [b"Z", b"ch"]) == []


def test_lookup() -> None:
    get = lookup([b"GET", b"k"])
    assert get is not None and get.name == b"GET"
    assert lookup([b"get", b"k"]) is get
    assert lookup([b"gEt", b"k"]) is get
    assert lookup([b"NOSUCHCOMMAND"]) is None
    assert lookup([]) is None
    for line, name in [
        (b"CLIENT SETNAME x", b"CLIENT|SETNAME"),
        (b"client setinfo lib-name redis-py", b"CLIENT|SETINFO"),
        (b"Object Encoding k", b"OBJECT|ENCODING"),
        (b"XINFO STREAM s", b"XINFO|STREAM"),
        (b"SCRIPT LOAD x", b"SCRIPT|LOAD"),
        (b"CONFIG GET maxmemory", b"CONFIG|GET"),
        (b"config set maxmemory 1", b"CONFIG|SET"),
        (b"CLIENT", b"CLIENT"),
        (b"CLIENT NOPE", b"CLIENT"),
    ]:
        spec = lookup(line.split())
        assert spec is not None and spec.name == name, line
    container = lookup([b"CLIENT"])
    assert container is not None and CommandFlag.CONTAINER in container.flags


@pytest.mark.integration
def test_every_server_command_resolves(server: Server) -> None:
    names = list(server.raw("COMMAND", "LIST"))
    for info in server.raw("COMMAND", "INFO", *names):
        names.extend(sub[0] for sub in info[9])
    assert len(names) > 300
    for name in names:
        spec = lookup(name.split(b"|"))
        assert spec is not None and spec.name == name.upper(), name


@pytest.mark.integration
def test_table_matches_the_server(server: Server) -> None:
    """The committed data is what the generator reads from this server (same version)."""
    path = ROOT / "scripts" / "gen_redis_commands.py"
    module_spec = importlib.util.spec_from_file_location("gen_redis_commands", path)
    assert module_spec is not None and module_spec.loader is not None
    generator = importlib.util.module_from_spec(module_spec)
    sys.modules["gen_redis_commands"] = generator
    module_spec.loader.exec_module(generator)
    version, rows = generator.read_table(server.client)
    if version == _command_data.SERVER_VERSION:
        assert rows == _command_data.COMMANDS, "stale table: rerun scripts/gen_redis_commands.py"
    else:
        # A different redis-server: at least every command we know must still exist there.
        gone = set(_command_data.COMMANDS) - set(rows)
        assert not gone, f"redis-server {version} lacks {sorted(gone)}"


# --- flags ------------------------------------------------------------------------------------


def _spec(line: bytes) -> CommandSpec:
    spec = lookup(line.split())
    assert spec is not None, line
    return spec


def test_flags() -> None:
    assert CommandFlag.READONLY in _spec(b"GET k").flags
    assert CommandFlag.FAST in _spec(b"GET k").flags
    assert CommandFlag.WRITE in _spec(b"SET k v").flags
    assert CommandFlag.DENYOOM in _spec(b"SET k v").flags
    assert CommandFlag.BLOCKING in _spec(b"BLPOP k 0").flags
    assert CommandFlag.BLOCKING in _spec(b"WAIT 1 0").flags
    assert CommandFlag.BLOCKING in _spec(b"WAITAOF 1 0 0").flags
    assert CommandFlag.BLOCKING in _spec(b"XREAD STREAMS s 0").flags
    assert CommandFlag.PUBSUB in _spec(b"SUBSCRIBE ch").flags
    assert CommandFlag.PUBSUB not in _spec(b"PUBLISH ch m").flags
    assert CommandFlag.PUBSUB not in _spec(b"SPUBLISH ch m").flags
    assert CommandFlag.TRANSACTION in _spec(b"MULTI").flags
    assert CommandFlag.SCRIPTING in _spec(b"EVAL s 0").flags
    assert CommandFlag.SCRIPTING in _spec(b"SCRIPT LOAD s").flags
    assert CommandFlag.SCRIPTING in _spec(b"FUNCTION LIST").flags
    assert CommandFlag.CONNECTION in _spec(b"CLIENT SETNAME x").flags
    assert CommandFlag.CONNECTION in _spec(b"HELLO 3").flags
    assert CommandFlag.ADMIN in _spec(b"CONFIG SET a b").flags
    assert CommandFlag.MOVABLE_KEYS in _spec(b"EVAL s 0").flags
    assert CommandFlag.NOSCRIPT in _spec(b"MULTI").flags
    assert CommandFlag.NO_MULTI not in _spec(b"GET k").flags
    assert CommandFlag.RANDOM in _spec(b"RANDOMKEY").flags
    assert CommandFlag.NONDETERMINISTIC_ORDER in _spec(b"SMEMBERS s").flags
    assert CommandFlag.LOADING_OK in _spec(b"SELECT 1").flags
    assert CommandFlag.STALE_OK in _spec(b"INFO").flags
    assert _spec(b"GETSET k v").deprecated
    assert _spec(b"GET k").group == "string"
    assert "read" in _spec(b"GET k").acl_categories


def test_flag_sets_are_exact() -> None:
    def named(flag: CommandFlag) -> set[bytes]:
        return {name for name, spec in COMMANDS.items() if flag in spec.flags}

    assert named(CommandFlag.BLOCKING) == {
        *b"BLPOP BRPOP BLMOVE BRPOPLPUSH BZPOPMIN BZPOPMAX BLMPOP BZMPOP".split(),
        *b"XREAD XREADGROUP WAIT WAITAOF".split(),
    }
    assert named(CommandFlag.PUBSUB) == {
        *b"SUBSCRIBE PSUBSCRIBE SSUBSCRIBE UNSUBSCRIBE PUNSUBSCRIBE SUNSUBSCRIBE".split()
    }
    assert named(CommandFlag.TRANSACTION) == {*b"MULTI EXEC DISCARD WATCH UNWATCH".split()}
    assert named(CommandFlag.TRANSACTION) == {
        name for name, spec in COMMANDS.items() if "transaction" in spec.acl_categories
    }
    assert named(CommandFlag.SCRIPTING) >= {
        *b"EVAL EVALSHA EVAL_RO EVALSHA_RO FCALL FCALL_RO SCRIPT FUNCTION".split(),
        b"SCRIPT|LOAD",
        b"FUNCTION|LOAD",
    }
    connection = named(CommandFlag.CONNECTION)
    assert {*b"AUTH HELLO SELECT CLIENT QUIT RESET PING ECHO".split()} <= connection
    assert all(name.startswith(b"CLIENT") or b"|" not in name for name in connection)


def test_data_vocabulary_is_mapped() -> None:
    """A regenerated table with a new server flag must not be silently ignored."""
    from resmesh.protocols.resp import commands as module

    for row in (*_command_data.COMMANDS.values(), *_command_data.SUPPLEMENT.values()):
        for flag in row[1]:
            assert flag in module._SERVER_FLAGS, flag
        for key_row in row[4]:
            for key_flag in key_row[7]:
                assert key_flag in module._KEY_FLAGS, key_flag


def test_untrusted_specs_have_parsers() -> None:
    """The server hands commands with unknown/incomplete key specs to their own parser."""
    from resmesh.protocols.resp import commands as module

    untrusted = {
        name
        for name, spec in COMMANDS.items()
        if any(
            ks.begin is BeginSearch.UNKNOWN
            or ks.find is FindKeys.UNKNOWN
            or KeyFlag.INCOMPLETE in ks.flags
            for ks in spec.key_specs
        )
    }
    assert untrusted == set(module._KEY_PROCS)


def test_idempotent_reads() -> None:
    for line in [b"GET k", b"MGET a b", b"HGETALL h", b"SRANDMEMBER s", b"RANDOMKEY"]:
        assert is_idempotent_read(_spec(line)), line
    for line in [b"EVAL_RO s 0", b"FCALL_RO f 0", b"PFCOUNT h", b"SCAN 0", b"OBJECT FREQ k"]:
        assert is_idempotent_read(_spec(line)), line
    for line in [
        b"SET k v",
        b"SPOP s",
        b"INCR k",
        b"BLPOP k 0",
        b"XREADGROUP GROUP g c STREAMS s >",
        b"SUBSCRIBE ch",
        b"WATCH k",
        b"EXEC",
        b"EVAL s 0",
        b"PING",
        b"CLIENT GETNAME",
    ]:
        assert not is_idempotent_read(_spec(line)), line
    xread = _spec(b"XREAD STREAMS s 0")
    assert not is_idempotent_read(xread)
    assert is_idempotent_read(xread, b"XREAD COUNT 1 STREAMS s 0".split())
    assert not is_idempotent_read(xread, b"XREAD BLOCK 10 STREAMS s 0".split())


# --- block timeouts ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (b"BLPOP a b 1.5", 1.5),
        (b"BLPOP a 0", math.inf),
        (b"BLPOP a 0.0", math.inf),
        (b"BLPOP a 0.0001", 0.001),
        (b"BLPOP a -0.0001", math.inf),
        (b"BLPOP a 1e-3", 0.001),
        (b"BLPOP a 0x10", 16.0),
        (b"BLPOP a -1", None),
        (b"BLPOP a inf", None),
        (b"BLPOP a nan", None),
        (b"BLPOP a soon", None),
        (b"BLPOP a", None),
        (b"BRPOP a 2", 2.0),
        (b"BRPOPLPUSH a b 3", 3.0),
        (b"BLMOVE a b LEFT RIGHT 4", 4.0),
        (b"BZPOPMIN z 0.25", 0.25),
        (b"BZPOPMAX z1 z2 0", math.inf),
        (b"BLMPOP 2.5 2 a b LEFT", 2.5),
        (b"BZMPOP 0 1 z MIN", math.inf),
        (b"WAIT 1 250", 0.25),
        (b"WAIT 1 0", math.inf),
        (b"WAIT 1 1.5", None),
        (b"WAITAOF 1 0 100", 0.1),
        (b"XREAD STREAMS s 0", None),
        (b"XREAD COUNT 5 STREAMS s 0", None),
        (b"XREAD BLOCK 1500 STREAMS s $", 1.5),
        (b"XREAD COUNT 1 BLOCK 0 STREAMS s1 s2 $ $", math.inf),
        (b"xread block 10 streams s $", 0.01),
        (b"XREAD BLOCK -1 STREAMS s $", None),
        (b"XREAD BLOCK 00 STREAMS s $", None),
        (b"XREAD BLOCK 10 STREAMS s1 s2 $", None),
        (b"XREAD BLOCK 10 COUNT x STREAMS s $", None),
        (b"XREAD BLOCK 10 GROUP g c STREAMS s $", None),
        (b"XREAD BLOCK 10", None),
        (b"XREADGROUP GROUP g c BLOCK 2000 STREAMS s >", 2.0),
        (b"XREADGROUP GROUP g c BLOCK 0 NOACK STREAMS s1 s2 > >", math.inf),
        (b"XREADGROUP GROUP g c BLOCK 2000 STREAMS s 0", None),
        (b"XREADGROUP GROUP g c BLOCK 2000 STREAMS s1 s2 > 0", None),
        (b"XREADGROUP GROUP g c STREAMS s >", None),
        (b"XREADGROUP BLOCK 10 STREAMS s >", None),
        (b"GET k", None),
        (b"SUBSCRIBE ch", None),
    ],
)
def test_block_timeout(line: bytes, expected: float | None) -> None:
    assert block_timeout(_spec(line), line.split()) == expected


def _answers_within(server: Server, line: list[bytes], seconds: float) -> bool:
    """Whether the server answers ``line`` within ``seconds`` (a fresh socket, no sleeping)."""
    payload = b"*%d\r\n" % len(line) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in line)
    with socket.create_connection(("127.0.0.1", server.node.port), timeout=seconds) as sock:
        sock.sendall(payload)
        try:
            return bool(sock.recv(1024))
        except TimeoutError:
            return False


@pytest.mark.integration
def test_block_timeout_agrees_with_the_server(server: Server) -> None:
    """The two less obvious rules, observed on the real server rather than assumed.

    Each line is answered at once or blocks forever; 10 s tells the two apart on any machine.
    """
    assert server.raw("XGROUP", "CREATE", "blk", "g", "$", "MKSTREAM") == b"OK"
    history = b"XREADGROUP GROUP g c BLOCK 0 STREAMS blk 0".split()
    assert block_timeout(_spec(b"XREADGROUP GROUP g c STREAMS s >"), history) is None
    assert _answers_within(server, history, 10.0)
    # 0.0001 s rounds up to 1 ms rather than down to "forever".
    tiny = b"BLPOP nothing-here 0.0001".split()
    assert block_timeout(_spec(b"BLPOP k 0"), tiny) == 0.001
    assert _answers_within(server, tiny, 10.0)
    # A timeout the server rejects is answered at once.
    assert _answers_within(server, b"BLPOP nothing-here inf".split(), 10.0)


# --- refusals ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "line",
    [
        b"MONITOR",
        b"SHUTDOWN NOSAVE",
        b"DEBUG SLEEP 1",
        b"REPLICAOF host 6379",
        b"SLAVEOF NO ONE",
        b"SYNC",
        b"PSYNC ? -1",
        b"REPLCONF listening-port 1",
        b"FAILOVER",
        b"SAVE",
        b"BGSAVE",
        b"BGREWRITEAOF",
        b"CONFIG SET maxmemory 1",
        b"CONFIG REWRITE",
        b"CONFIG RESETSTAT",
        b"CLIENT KILL ID 1",
        b"CLIENT PAUSE 100",
        b"CLIENT UNPAUSE",
        b"CLIENT UNBLOCK 1",
        b"CLIENT REPLY OFF",
        b"CLIENT TRACKING ON",
        b"CLIENT CACHING YES",
        b"CLIENT NO-EVICT ON",
        b"CLIENT NO-TOUCH ON",
        b"CLUSTER NODES",
        b"CLUSTER INFO",
        b"CLUSTER WHATEVER",
        b"ACL SETUSER bob on",
        b"ACL DELUSER bob",
        b"ACL LIST",
        b"MODULE LOAD /x.so",
        b"LATENCY RESET",
        b"SLOWLOG RESET",
        b"SWAPDB 0 1",
        b"MIGRATE h 6379 k 0 100",
        b"SCRIPT DEBUG YES",
    ],
)
def test_refused(line: bytes) -> None:
    args = line.split()
    spec = _spec(line)
    message = refusal(spec, args)
    assert message is not None
    shown = spec.display_name
    assert message.startswith(
        f"ERR command '{shown}' is not supported through the resmesh gateway: "
    )
    assert shown.split()[0] == args[0].decode().upper()


@pytest.mark.parametrize(
    "line",
    [
        b"GET k",
        b"FLUSHALL",
        b"FLUSHDB ASYNC",
        b"OBJECT FREQ k",
        b"CONFIG GET maxmemory",
        b"CLIENT SETNAME app",
        b"CLIENT GETNAME",
        b"CLIENT ID",
        b"CLIENT INFO",
        b"CLIENT LIST",
        b"CLIENT SETINFO lib-name redis-py",
        b"CLIENT REPLY ON",
        b"CLUSTER KEYSLOT k",
        b"ACL CAT",
        b"ACL GENPASS",
        b"MODULE LIST",
        b"SLOWLOG GET 10",
        b"LATENCY LATEST",
        b"SCRIPT KILL",
        b"SCRIPT DEBUG NO",
        b"FUNCTION KILL",
        b"INFO",
        b"SELECT 1",
        b"WAIT 1 0",
        b"KEYS *",
    ],
)
def test_allowed(line: bytes) -> None:
    assert refusal(_spec(line), line.split()) is None


def test_monitor_message() -> None:
    assert refusal(_spec(b"MONITOR"), [b"MONITOR"]) == (
        "ERR command 'MONITOR' is not supported through the resmesh gateway: it would observe "
        "a shared backend connection, other applications' traffic included"
    )


def test_refusals_name_real_commands() -> None:
    assert set(REFUSALS) <= set(COMMANDS)


# --- robustness -------------------------------------------------------------------------------

_NAMES = sorted(name for name in COMMANDS if b"|" not in name)
_SUBNAMES = sorted({name.partition(b"|")[2] for name in COMMANDS if b"|" in name})
_TRICKY = [
    b"",
    b"0",
    b"1",
    b"2",
    b"-1",
    b"3",
    b"99999999999999999999",
    b">",
    b"$",
    b"STREAMS",
    b"streams",
    b"KEYS",
    b"STORE",
    b"STOREDIST",
    b"BLOCK",
    b"GROUP",
    b"COUNT",
    b"LIMIT",
    b"GET",
    b"BY",
    b"AUTH",
    b"AUTH2",
    b"NOACK",
    b"inf",
    b"0x",
    b"1e999",
]
_ARG = st.one_of(st.sampled_from(_TRICKY), st.sampled_from(_SUBNAMES), st.binary(max_size=8))


@settings(max_examples=1500, deadline=None)
@given(
    name=st.one_of(st.sampled_from(_NAMES), st.sampled_from(_NAMES).map(bytes.lower)),
    rest=st.lists(_ARG, max_size=12),
)
def test_never_raises(name: bytes, rest: list[bytes]) -> None:
    args = [name, *rest]
    spec = lookup(args)
    assert spec is not None
    keys = command_keys(spec, args)
    assert all(isinstance(key, bytes) for key in keys)
    assert len(keys) <= len(args) - 1
    timeout = block_timeout(spec, args)
    assert timeout is None or timeout > 0
    assert refusal(spec, args) is None or spec.name in REFUSALS
    is_idempotent_read(spec, args)


@given(st.lists(st.binary(max_size=10), max_size=6))
def test_lookup_never_raises(args: list[bytes]) -> None:
    spec = lookup(args)
    if spec is not None:
        command_keys(spec, args)
        block_timeout(spec, args)
