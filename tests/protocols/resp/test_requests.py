"""The client → server parser (``requests.py``): multibulk and inline commands, limits, wording.

Golden vectors (``protocols/resp-vectors.json``, sections ``requests`` and ``request_errors``)
pin redis-server's behaviour; ``split_inline`` is checked against a line-by-line transliteration
of redis-server's ``sdssplitargs`` (sds.c) on generated lines.
"""

from __future__ import annotations

import tracemalloc
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import RemoteProtocolError
from resmesh.protocols.resp import requests
from resmesh.protocols.resp.requests import (
    Command,
    RequestLimits,
    RequestParser,
    _PureRequestParser,
    encode_command,
    split_inline,
)
from tests.protocols.resp.resp_support import (
    VECTORS,
    cut_lists,
    mutated,
    request_limits,
    split,
    wire,
)

REQUESTS = VECTORS["requests"]
REQUEST_ERRORS = VECTORS["request_errors"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def command_args(spec: list[Any]) -> list[bytes]:
    return [wire(arg) for arg in spec]


def parse_all(chunks: list[bytes], parser: RequestParser | None = None) -> list[Command]:
    parser = parser or RequestParser()
    out: list[Command] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.commands())
    return out


def args_of(commands: list[Command]) -> list[list[bytes]]:
    return [command.args for command in commands]


# -- a reference model of redis-server's sdssplitargs ------------------------------------------

_C_SPACE = b" \t\n\v\f\r"


def sdssplitargs(line: bytes) -> list[bytes] | None:
    """redis-server's ``sdssplitargs`` (sds.c), transliterated; None where it fails.

    It works on a NUL-terminated C string, so ``*p`` past the end (or at a NUL) is 0.
    """

    def at(i: int) -> int:
        return line[i] if i < len(line) else 0

    def is_hex(c: int) -> bool:
        return c != 0 and chr(c) in "0123456789abcdefABCDEF"

    p = 0
    vector: list[bytes] = []
    while True:
        while at(p) and at(p) in _C_SPACE:
            p += 1
        if not at(p):
            return vector
        inq = insq = done = False
        current = bytearray()
        while not done:
            c = at(p)
            if inq:
                if c == 0x5C and at(p + 1) == ord("x") and is_hex(at(p + 2)) and is_hex(at(p + 3)):
                    current.append(int(bytes([at(p + 2), at(p + 3)]), 16))
                    p += 3
                elif c == 0x5C and at(p + 1):
                    p += 1
                    current.append(
                        {ord("n"): 10, ord("r"): 13, ord("t"): 9, ord("b"): 8, ord("a"): 7}.get(
                            at(p), at(p)
                        )
                    )
                elif c == 0x22:
                    if at(p + 1) and at(p + 1) not in _C_SPACE:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current.append(c)
            elif insq:
                if c == 0x5C and at(p + 1) == 0x27:
                    p += 1
                    current.append(0x27)
                elif c == 0x27:
                    if at(p + 1) and at(p + 1) not in _C_SPACE:
                        return None
                    done = True
                elif not c:
                    return None
                else:
                    current.append(c)
            else:
                if c in (0x20, 0x0A, 0x0D, 0x09, 0x00):
                    done = True
                elif c == 0x22:
                    inq = True
                elif c == 0x27:
                    insq = True
                else:
                    current.append(c)
            if at(p):
                p += 1
        vector.append(bytes(current))


inline_lines = st.lists(
    st.sampled_from(
        [
            *(b"a", b"bc", b" ", b"  ", b"\t", b"\v", b"\f", b"\r", b"\x00", b'"', b"'"),
            *(b"\\", b"\\x4", b"\\x41", b"\\n", b"\\'", b'\\"', b"x", b"\xff", b"SET", b"k"),
        ]
    ),
    max_size=14,
).map(b"".join)


@FAST
@given(inline_lines)
def test_split_inline_matches_redis(line: bytes) -> None:
    expected = sdssplitargs(line)
    if expected is None:
        with pytest.raises(RemoteProtocolError) as caught:
            split_inline(line)
        assert caught.value.reply_hint == "ERR Protocol error: unbalanced quotes in request"
    else:
        assert split_inline(line) == expected


def test_reference_model_sanity() -> None:
    assert sdssplitargs(b'SET k "a b"') == [b"SET", b"k", b"a b"]
    assert sdssplitargs(b'"a"b') is None
    assert sdssplitargs(b"a\x00b") == [b"a"]


# -- golden vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", REQUESTS, ids=[v["name"] for v in REQUESTS])
def test_golden_requests(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    expected = [command_args(c) for c in vector["commands"]]
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        parser = RequestParser(authenticated=vector["authenticated"])
        commands = parse_all(chunks, parser)
        assert args_of(commands) == expected
        assert parser.buffered == 0
        for command in commands:
            # ``raw`` is always a forwardable multibulk encoding of exactly these args.
            assert args_of(parse_all([command.raw])) == [command.args]


@pytest.mark.parametrize("vector", REQUEST_ERRORS, ids=[v["name"] for v in REQUEST_ERRORS])
def test_golden_request_errors(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    limits = request_limits(vector.get("limits"))
    chunkings = [[data]]
    if len(data) < 2000:
        chunkings.append([data[i : i + 1] for i in range(len(data))])
    for chunks in chunkings:
        parser = RequestParser(limits, authenticated=vector["authenticated"])
        with pytest.raises(RemoteProtocolError) as caught:
            parse_all(chunks, parser)
        assert caught.value.reply_hint == vector["reply_hint"]
        if "buffer" not in vector["reply_hint"]:  # raised by feed(), which keeps no state
            with pytest.raises(RemoteProtocolError):
                parser.commands()


def test_multibulk_raw_is_the_clients_bytes() -> None:
    data = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n*1\r\n$4\r\nPING\r\n"
    commands = parse_all([data])
    assert b"".join(c.raw for c in commands) == data
    assert commands[0].name == b"GET"
    assert parse_all([b"get a\r\n"])[0].name == b"GET"


def test_inline_raw_is_reencoded() -> None:
    (command,) = parse_all([b'SET k "a b"\r\n'])
    assert command.raw == encode_command([b"SET", b"k", b"a b"])


def test_commands_before_an_error_are_returned_first() -> None:
    parser = RequestParser()
    parser.feed(b"*1\r\n$4\r\nPING\r\n*x\r\n")
    assert args_of(parser.commands()) == [[b"PING"]]
    with pytest.raises(RemoteProtocolError, match="invalid multibulk length"):
        parser.commands()


def test_authentication_lifts_the_pre_auth_limits() -> None:
    parser = RequestParser(authenticated=False)
    parser.feed(b"*2\r\n$4\r\nAUTH\r\n$2\r\npw\r\n")
    assert args_of(parser.commands()) == [[b"AUTH", b"pw"]]
    parser.authenticated = True
    parser.feed(encode_command([b"MSET"] + [b"k", b"v"] * 10))
    assert len(parser.commands()[0].args) == 21


# -- hypothesis --------------------------------------------------------------------------------

arg_lists = st.lists(st.binary(max_size=30), min_size=1, max_size=8)
inline_safe_words = st.lists(
    st.binary(min_size=1, max_size=8).filter(
        lambda w: not any(c in w for c in b" \t\r\n\v\f\x00\"'")
    ),
    min_size=1,
    max_size=6,
).filter(lambda words: not words[0].startswith(b"*"))  # a line starting with '*' is multibulk


@FAST
@given(arg_lists)
def test_round_trip(args: list[bytes]) -> None:
    (command,) = parse_all([encode_command(args)])
    assert command.args == args
    assert command.raw == encode_command(args)


@FAST
@given(
    st.lists(
        st.one_of(arg_lists.map(lambda a: (a, True)), inline_safe_words.map(lambda a: (a, False))),
        min_size=1,
        max_size=8,
    ),
    cut_lists,
)
def test_split_invariance(commands: list[tuple[list[bytes], bool]], cuts: list[int]) -> None:
    stream = b"".join(
        encode_command(args) if multibulk else b" ".join(args) + b"\r\n"
        for args, multibulk in commands
    )
    expected = [args for args, _ in commands]
    assert args_of(parse_all([stream])) == expected
    assert args_of(parse_all(split(stream, cuts))) == expected


SMALL = RequestLimits(max_bulk_len=64, max_multibulk_len=16, max_buffer=512)


def _garbage_run(chunks: list[bytes], authenticated: bool) -> None:
    parser = RequestParser(SMALL, authenticated=authenticated)
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for command in parser.commands():
                assert command.args
                assert all(isinstance(a, bytes) for a in command.args)
                assert len(command.args) <= SMALL.max_multibulk_len
                assert all(len(a) <= SMALL.max_bulk_len for a in command.args)
            assert parser.buffered <= SMALL.max_buffer
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith("ERR Protocol error: ")


request_garbage = st.binary(max_size=80) | st.lists(
    st.sampled_from(
        [
            *(b"*", b"$", b"\r\n", b"\n", b"1", b"2", b"-1", b"0", b"a", b" ", b'"', b"'"),
            *(b"\\x", b"PING", b"*1\r\n", b"$1\r\n", b"\x00", b"+", b":"),
        ]
    ),
    max_size=40,
).map(b"".join)


@FAST
@given(request_garbage, cut_lists, st.booleans())
def test_garbage_gives_commands_or_protocol_error(
    data: bytes, cuts: list[int], authenticated: bool
) -> None:
    _garbage_run(split(data, cuts), authenticated)


@FAST
@given(st.data())
def test_mutated_pipelines(data: st.DataObject) -> None:
    commands = data.draw(st.lists(arg_lists, min_size=1, max_size=5))
    stream = data.draw(mutated(b"".join(encode_command(a) for a in commands)))
    _garbage_run(split(stream, data.draw(cut_lists)), data.draw(st.booleans()))


def test_huge_declared_count_is_a_protocol_error() -> None:
    """A count far beyond any limit is refused with redis-server's words, never a MemoryError."""
    for header in (b"*4000000000\r\n", b"*2147483648\r\n", b"*99999999999999999999\r\n"):
        parser = RequestParser()
        parser.feed(header + b"$1\r\na\r\n")
        with pytest.raises(RemoteProtocolError, match="invalid multibulk length"):
            parser.commands()


def test_many_args_in_small_chunks() -> None:
    args = [b"MSET"] + [b"k%d" % i for i in range(20000)]
    stream = encode_command(args)
    commands = parse_all([stream[i : i + 1024] for i in range(0, len(stream), 1024)])
    assert args_of(commands) == [args]


def _outcome(parser: Any, chunks: list[bytes]) -> tuple[list[list[bytes]], str | None]:
    got: list[list[bytes]] = []
    try:
        for chunk in chunks:
            parser.feed(chunk)
            got.extend(c.args for c in parser.commands())
        got.extend(c.args for c in parser.commands())
    except RemoteProtocolError as exc:
        return got, exc.reply_hint
    return got, None


@FAST
@given(st.data())
def test_the_framer_agrees_with_the_pure_parser(data: st.DataObject) -> None:
    """The compiled framer and the pure parser give the same commands and the same error on
    any input, cut anywhere: the framer stops where it is unsure and the pure parser reads on
    from there."""
    commands = data.draw(st.lists(arg_lists, min_size=1, max_size=5))
    stream = b"".join(encode_command(a) for a in commands)
    if data.draw(st.booleans()):
        stream = data.draw(mutated(stream))
    chunks = split(stream, data.draw(cut_lists))
    assert _outcome(RequestParser(SMALL), chunks) == _outcome(_PureRequestParser(SMALL), chunks)


def test_the_framer_takes_over_again_after_a_large_command_and_after_an_inline_one() -> None:
    """A command still incomplete after 64 KiB (a large value) and an inline command go to the
    pure parser; at the next command boundary the fast engine is back, with ``batch_raw``."""
    parser = RequestParser()
    big = encode_command([b"SET", b"k", b"v" * 200_000])
    for start in range(0, len(big), 16_384):
        parser.feed(big[start : start + 16_384])
        got = parser.commands()
    assert args_of(got) == [[b"SET", b"k", b"v" * 200_000]]
    assert not parser._fast  # the large command was the pure parser's
    small = encode_command([b"GET", b"k"]) * 3
    parser.feed(small)
    assert args_of(parser.commands()) == [[b"GET", b"k"]] * 3
    assert parser._fast and parser.batch_raw == small
    parser.feed(b"PING\r\n")  # inline
    assert args_of(parser.commands()) == [[b"PING"]]
    parser.feed(small)
    assert args_of(parser.commands()) == [[b"GET", b"k"]] * 3
    assert parser._fast and parser.batch_raw == small


@pytest.mark.parametrize("kind", [b"*", b">", b"%", b"~", b"|"])
def test_a_nested_aggregate_declaring_millions_is_refused_without_allocating_it(
    kind: bytes,
) -> None:
    """An aggregate header inside a request (``*1\r\n>2147483648``) is refused at once, in
    redis-server's words, without allocating what it declares (a reply reader such as
    hiredis allocates it on sight: 16 GB there)."""
    parser = RequestParser()
    tracemalloc.start()
    try:
        parser.feed(encode_command([b"PING"]) + b"*1\r\n" + kind + b"30000000\r\n")
        assert args_of(parser.commands()) == [[b"PING"]]
        with pytest.raises(RemoteProtocolError, match=f"expected '\\$', got '\\{kind.decode()}'"):
            parser.commands()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20  # a list of 30 M slots would be 240 MB


def test_a_value_that_looks_like_a_long_header_parses_and_the_framer_comes_back() -> None:
    parser = RequestParser()
    tricky = encode_command([b"SET", b"k", b"\r\n*123456789\r\n>99999999"])
    parser.feed(tricky)
    assert args_of(parser.commands()) == [[b"SET", b"k", b"\r\n*123456789\r\n>99999999"]]
    small = encode_command([b"GET", b"k"]) * 2
    parser.feed(small)
    assert args_of(parser.commands()) == [[b"GET", b"k"]] * 2
    assert parser._fast and parser.batch_raw == small


large_and_small = st.lists(
    st.one_of(
        arg_lists,
        st.integers(min_value=60_000, max_value=140_000).map(lambda n: [b"SET", b"k", b"x" * n]),
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(large_and_small, st.lists(st.integers(min_value=0, max_value=600_000), max_size=12))
def test_large_commands_among_small_ones_parse_the_same_however_split(
    commands: list[list[bytes]], cuts: list[int]
) -> None:
    stream = b"".join(encode_command(a) for a in commands)
    chunks = split(stream, cuts)
    fast_commands, fast_error = _outcome(RequestParser(), chunks)
    assert fast_error is None
    assert fast_commands == commands


def test_the_compiled_framer_is_installed() -> None:
    assert requests.COMPILED, (
        "resmesh/protocols/resp/_framer.c was not built: install a C compiler and Python's "
        "headers (apt-get install build-essential python3-dev), then pip install -e '.[dev]'"
    )


def _framed(data: bytes, max_count: int = 100, max_length: int = 100) -> Any:
    assert requests.frame is not None
    commands, end, stopped = requests.frame(data, max_count, max_length, lambda a, r: (a, r))
    return [args for args, _ in commands], end, stopped


GET = encode_command([b"GET", b"k"])


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (GET + GET, ([[b"GET", b"k"]] * 2, 2 * len(GET), False)),
        (b"*0\r\n" + GET, ([[b"GET", b"k"]], 4 + len(GET), False)),  # skipped, as redis does
        (b"*1\r\n$0\r\n\r\n", ([[b""]], 10, False)),
        (GET + GET[:-1], ([[b"GET", b"k"]], len(GET), False)),  # incomplete: wait
        (GET + b"*", ([[b"GET", b"k"]], len(GET), False)),
        (GET + b"*12", ([[b"GET", b"k"]], len(GET), False)),
        (GET + b"PING\r\n", ([[b"GET", b"k"]], len(GET), True)),  # inline: the pure parser's
        (b"*01\r\n$4\r\nPING\r\n", ([], 0, True)),  # leading zero
        (b"*1\r\n$+4\r\nPING\r\n", ([], 0, True)),  # sign
        (b"*-1\r\n", ([], 0, True)),
        (b"*1\r\n:4\r\n", ([], 0, True)),  # not a bulk string
        (b"*1\r\n$4\r\nPINGxx", ([], 0, True)),  # no terminator after the declared length
        (b"*1\r\n$4\n", ([], 0, True)),  # LF without CR
        (b"*101\r\n", ([], 0, True)),  # over max_count, seen before its arguments
        (b"*1\r\n$101\r\n", ([], 0, True)),  # over max_length, seen before its bytes
        (b"*1\r\n$99999999999999999999999", ([], 0, True)),
    ],
)
def test_framer_golden(data: bytes, expected: Any) -> None:
    assert _framed(data) == expected


def test_framer_returns_each_command_s_own_bytes() -> None:
    assert requests.frame is not None
    stream = GET + b"*0\r\n" + encode_command([b"SET", b"k", b"\r\n"])
    commands, _, _ = requests.frame(stream, 100, 100, lambda a, r: r)
    assert commands == [GET, encode_command([b"SET", b"k", b"\r\n"])]


def test_without_the_framer_the_pure_parser_does_everything(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(requests, "frame", None)
    parser = RequestParser()
    parser.feed(GET * 3 + b"PING\r\n")
    assert args_of(parser.commands()) == [[b"GET", b"k"]] * 3 + [[b"PING"]]
    assert not parser._fast
