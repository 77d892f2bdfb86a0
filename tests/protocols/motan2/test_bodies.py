"""Motan2 bodies by serialization number: Simple delegation against the golden vectors, msgpack
against bytes written from the spec (https://github.com/msgpack/msgpack/blob/master/spec.md) and
in round trips under hypothesis, garbage and limits, and unsupported numbers as motan-go answers
them."""

from __future__ import annotations

import datetime
import enum
import math
import tracemalloc
from types import MappingProxyType
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import LocalProtocolError, ProtocolError, RemoteProtocolError
from resmesh.protocols.motan2.bodies import (
    DEFAULT_LIMITS,
    SERIALIZE_NOT_FOUND,
    SUPPORTED,
    Limits,
    LocalSerializationNotFound,
    RemoteSerializationNotFound,
    SerializationNotFound,
    decode_arguments,
    decode_result,
    encode_arguments,
    encode_result,
)
from resmesh.protocols.motan2.frames import (
    ERRTYPE_SERVICE,
    Frame,
    FrameDecoder,
    Serialization,
    encode_frame,
    exception_response,
)
from resmesh.protocols.motan2.simple import (
    MAX_DEPTH_CEILING,
    Byte,
    Float32,
    Int16,
    Int32,
    StringArray,
    StringMap,
    Value,
)
from resmesh.protocols.motan2.simple import decode_one as simple_decode_one
from tests.protocols.motan2.motan2_support import (
    SIMPLE_MULTI_VECTORS,
    SIMPLE_VECTORS,
    VECTORS,
    as_json_text,
    is_go,
    same,
    values,
)
from tests.support import mutation

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SIMPLE = Serialization.SIMPLE
MSGPACK = Serialization.MSGPACK
UNSUPPORTED = [n for n in range(32) if n not in (3, 6)]
BY_NAME = {v["name"]: v for v in VECTORS}

#: Bytes that mean something to msgpack: nil, bool, the float, bin, str, array, map and ext
#: headers, fix families, and 0xc1, the one byte no type uses.
MSGPACK_MEANINGFUL = [0x00, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF, *range(0xC0, 0xE0), 0xE0]


def decode_frame(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert isinstance(frame, Frame)
    return frame


def as_builtin(value: Any) -> Any:
    """``value`` as msgpack gives it back: the Simple marker types as their builtin."""
    if value is None or type(value) in (bool, str, bytes):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return [as_builtin(item) for item in value]
    if isinstance(value, dict):
        return {as_builtin(key): as_builtin(item) for key, item in value.items()}
    raise AssertionError(f"not a value: {value!r}")


def refused(serialization: int, body: bytes, match: str = "", **limits: int) -> None:
    """Both decoders refuse ``body`` with a RemoteProtocolError that spares the connection."""
    given_limits = Limits(**limits) if limits else DEFAULT_LIMITS
    for decode in (decode_arguments, decode_result):
        with pytest.raises(RemoteProtocolError, match=match) as caught:
            decode(serialization, body, limits=given_limits)
        assert not caught.value.close  # a bad body spoils one call, not the connection
        assert not isinstance(caught.value, SerializationNotFound)


def fails_cleanly(serialization: int, body: bytes) -> None:
    """Decoding either works or raises RemoteProtocolError, nothing else; what it decodes
    re-encodes to a body that decodes to the same values."""
    prefix = "motan2 msgpack: " if serialization == MSGPACK else "motan2 simple: "
    try:
        args = decode_arguments(serialization, body)
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith(prefix)
        assert not exc.close
    else:
        if serialization == MSGPACK:
            assert same(decode_arguments(MSGPACK, encode_arguments(MSGPACK, args)), args)
    try:
        decode_result(serialization, body)
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith(prefix)
        assert not exc.close


# -- the registry ----------------------------------------------------------------------------


def test_supported_numbers() -> None:
    assert frozenset({3, 6}) == SUPPORTED
    assert Serialization.SIMPLE in SUPPORTED
    assert Serialization.MSGPACK in SUPPORTED
    assert all(type(n) is Serialization for n in SUPPORTED)


# -- Simple (6): delegation to simple.py -----------------------------------------------------


@pytest.mark.parametrize(
    "vector", SIMPLE_MULTI_VECTORS, ids=[v["name"] for v in SIMPLE_MULTI_VECTORS]
)
def test_simple_arguments_golden(vector: dict[str, Any]) -> None:
    body = bytes.fromhex(vector["hex"])
    args = decode_arguments(SIMPLE, body)
    assert len(args) > 1
    assert as_json_text(args) == as_json_text(vector["decoded"])
    assert encode_arguments(SIMPLE, args) == body  # every multi vector is in Go's form
    assert decode_arguments(6, bytearray(body)) == args  # a plain int and any bytes-like do
    with pytest.raises(RemoteProtocolError, match="unexpected bytes after the value"):
        decode_result(SIMPLE, body)


@pytest.mark.parametrize("vector", SIMPLE_VECTORS, ids=[v["name"] for v in SIMPLE_VECTORS])
def test_simple_result_golden(vector: dict[str, Any]) -> None:
    body = bytes.fromhex(vector["hex"])
    value = decode_result(SIMPLE, body)
    assert same(value, simple_decode_one(body))
    assert same(decode_arguments(SIMPLE, body), [value])
    if is_go(vector):
        # A nil result is written as no body at all, motan-go's form; the rest byte for byte.
        assert encode_result(SIMPLE, value) == (b"" if value is None else body)
        assert encode_arguments(SIMPLE, [value]) == body


def test_simple_empty_bodies() -> None:
    assert decode_arguments(SIMPLE, b"") == []
    assert decode_result(SIMPLE, b"") is None
    assert decode_result(SIMPLE, b"\x00") is None  # Java's null result
    assert encode_result(SIMPLE, None) == b""
    assert encode_arguments(SIMPLE, []) == b""
    assert encode_arguments(SIMPLE, [None]) == b"\x00"  # an argument keeps its place
    assert decode_arguments(SIMPLE, b"\x00\x00") == [None, None]


def test_simple_markers_keep_their_tags() -> None:
    args = [Int32(7), StringMap(k="v"), StringArray(["a"]), Byte(1), Int16(-2), Float32(1.5)]
    assert same(decode_arguments(SIMPLE, encode_arguments(SIMPLE, args)), args)


def test_simple_errors_pass_through() -> None:
    refused(SIMPLE, b"\x01\x00\x00\x00\x05ab", "motan2 simple: .*cut short")
    refused(SIMPLE, b"\x63", "unknown type tag 99")
    refused(SIMPLE, b"\x15\x00\x00\x00\x00", "nests deeper than 0", max_depth=0)
    with pytest.raises(RemoteProtocolError, match="more than 1 values"):
        decode_arguments(SIMPLE, b"\x00\x00", limits=Limits(max_items=1))
    refused(SIMPLE, b"\x00" * 11, "motan2 simple: body of 11 bytes is over the limit", max_size=10)
    with pytest.raises(LocalProtocolError, match="outside int64"):
        encode_result(SIMPLE, 2**63)
    with pytest.raises(LocalProtocolError, match="deeper than 1"):
        encode_arguments(SIMPLE, [[[]]], max_depth=1)


# -- msgpack (3): bytes from the spec --------------------------------------------------------

#: (hex, value): the encodings the spec gives, which are also the smallest, so they re-encode.
SPEC_FORMS: list[tuple[str, Value]] = [
    ("c0", None),
    ("c2", False),
    ("c3", True),
    ("00", 0),
    ("7f", 127),
    ("e0", -32),
    ("ff", -1),
    ("ccff", 255),
    ("cd0100", 256),
    ("ce00010000", 65536),
    ("cf0000000100000000", 2**32),
    ("cfffffffffffffffff", 2**64 - 1),
    ("d080", -128),
    ("d1ff7f", -129),
    ("d2ffff7fff", -32769),
    ("d3ffffffff7fffffff", -(2**31) - 1),
    ("d38000000000000000", -(2**63)),
    ("cb400921fb54442d18", math.pi),
    ("cb8000000000000000", -0.0),
    ("a0", ""),
    ("a568656c6c6f", "hello"),
    ("a6e4b8ade69687", "中文"),
    ("d920" + "61" * 32, "a" * 32),
    ("c400", b""),
    ("c403010203", b"\x01\x02\x03"),
    ("90", []),
    ("93010203", [1, 2, 3]),
    ("dc0010" + "c0" * 16, [None] * 16),
    ("80", {}),
    ("81a16101", {"a": 1}),
    ("8201a178c403010203c3", {1: "x", b"\x01\x02\x03": True}),
    ("92a178928081c0c0", ["x", [{}, {None: None}]]),
]

#: (hex, value): forms that decode but that an encoder writes smaller (or, for float 32, as
#: float 64), so they do not re-encode byte for byte.
DECODE_ONLY: list[tuple[str, Value]] = [
    ("ca3fc00000", 1.5),
    ("cc05", 5),
    ("d3ffffffffffffffff", -1),
    ("d90568656c6c6f", "hello"),
    ("da000161", "a"),
    ("c5000101", b"\x01"),
    ("c600000001ff", b"\xff"),
    ("dc000101", [1]),
    ("dd0000000101", [1]),
    ("de0001a16101", {"a": 1}),
    ("df00000001a16101", {"a": 1}),
    ("82a16101a16102", {"a": 2}),  # duplicate keys: the last one wins
]


@pytest.mark.parametrize(("hex_", "value"), SPEC_FORMS, ids=[h for h, _ in SPEC_FORMS])
def test_msgpack_spec_forms(hex_: str, value: Value) -> None:
    body = bytes.fromhex(hex_)
    assert same(decode_result(MSGPACK, body), value)
    assert same(decode_arguments(MSGPACK, body), [value])
    assert encode_arguments(MSGPACK, [value]) == body
    assert encode_result(MSGPACK, value) == (b"" if value is None else body)


@pytest.mark.parametrize(("hex_", "value"), DECODE_ONLY, ids=[h for h, _ in DECODE_ONLY])
def test_msgpack_lenient_forms(hex_: str, value: Value) -> None:
    assert same(decode_result(MSGPACK, bytes.fromhex(hex_)), value)


def test_msgpack_arguments_are_values_back_to_back() -> None:
    # The msgpack twin of the simple-multi vectors: "ray" then {"id": "7"}, no count in front.
    body = bytes.fromhex("a372617981a26964a137")
    assert encode_arguments(MSGPACK, ["ray", {"id": "7"}]) == body
    assert decode_arguments(MSGPACK, body) == ["ray", {"id": "7"}]
    assert decode_arguments(MSGPACK, memoryview(body)) == ["ray", {"id": "7"}]
    with pytest.raises(
        RemoteProtocolError, match="6 unexpected bytes after the value, at offset 4"
    ):
        decode_result(MSGPACK, body)
    # A list argument is one array, not several arguments.
    assert decode_arguments(MSGPACK, encode_arguments(MSGPACK, [[1, 2]])) == [[1, 2]]
    assert encode_arguments(MSGPACK, iter([1, None, 2])) == b"\x01\xc0\x02"
    assert decode_arguments(MSGPACK, b"\xc0\xc0\xc0") == [None, None, None]


def test_msgpack_empty_bodies() -> None:
    assert decode_arguments(MSGPACK, b"") == []
    assert decode_result(MSGPACK, b"") is None
    assert decode_result(MSGPACK, b"\xc0") is None
    assert encode_result(MSGPACK, None) == b""
    assert encode_arguments(MSGPACK, []) == b""
    assert encode_arguments(MSGPACK, [None]) == b"\xc0"


def test_msgpack_markers_encode_as_their_builtin() -> None:
    assert encode_result(MSGPACK, Int32(5)) == encode_result(MSGPACK, 5) == b"\x05"
    assert encode_result(MSGPACK, Int32(-(2**31))) == b"\xd2\x80\x00\x00\x00"
    assert encode_result(MSGPACK, Int16(-2)) == b"\xfe"
    assert encode_result(MSGPACK, Byte(255)) == b"\xcc\xff"
    assert encode_result(MSGPACK, Byte(300)) == b"\xcd\x01\x2c"  # a tag only, no range here
    # Float32 goes out as float 64, which holds its value exactly.
    assert encode_result(MSGPACK, Float32(0.1)) == b"\xcb" + bytes.fromhex("3fb999999999999a")
    assert encode_result(MSGPACK, StringMap(k="v")) == bytes.fromhex("81a16ba176")
    assert encode_result(MSGPACK, StringArray(["a"])) == bytes.fromhex("91a161")
    markers = [Int32(1), Int16(2), Byte(3), Float32(0.5), StringMap(k="v"), StringArray(["a"])]
    back = decode_arguments(MSGPACK, encode_arguments(MSGPACK, markers))
    assert same(back, [1, 2, 3, 0.5, {"k": "v"}, ["a"]])


class Color(enum.IntEnum):
    RED = 1


class Mode(enum.StrEnum):
    FAST = "fast"


def test_msgpack_encoding_conveniences() -> None:
    assert encode_result(MSGPACK, (1, 2)) == b"\x92\x01\x02"
    assert encode_result(MSGPACK, range(2)) == b"\x92\x00\x01"
    assert encode_result(MSGPACK, MappingProxyType({"a": (1,)})) == b"\x81\xa1a\x91\x01"
    assert encode_result(MSGPACK, [MappingProxyType({})]) == b"\x91\x80"
    assert encode_result(MSGPACK, bytearray(b"\x01")) == b"\xc4\x01\x01"
    assert encode_result(MSGPACK, memoryview(b"\x01")) == b"\xc4\x01\x01"
    assert encode_result(MSGPACK, Color.RED) == b"\x01"
    assert encode_result(MSGPACK, Mode.FAST) == b"\xa4fast"
    assert encode_result(MSGPACK, {(1, 2): 3}) == b"\x81\x92\x01\x02\x03"  # a tuple key: an array


def test_msgpack_matches_the_reference_encoder() -> None:
    value = {"a": [1, -1, 2**40, 1.25, b"\x00", "é", None, True, {}], 7: {b"k": []}}
    body = msgpack.packb(value, use_bin_type=True)
    assert encode_result(MSGPACK, value) == body
    assert decode_result(MSGPACK, body) == value


# -- msgpack: round trips --------------------------------------------------------------------


@FAST
@given(values)
def test_msgpack_result_round_trip(value: Value) -> None:
    body = encode_result(MSGPACK, value)
    assert same(decode_result(MSGPACK, body), as_builtin(value))
    assert body == (b"" if value is None else msgpack.packb(as_builtin(value)))


@FAST
@given(st.lists(values, max_size=5))
def test_msgpack_arguments_round_trip(args: list[Value]) -> None:
    body = encode_arguments(MSGPACK, args)
    assert same(decode_arguments(MSGPACK, body), [as_builtin(a) for a in args])
    assert body == b"".join(msgpack.packb(as_builtin(a)) for a in args)


@settings(FAST, max_examples=100)
@given(st.lists(values, min_size=1, max_size=5), st.data())
def test_msgpack_cut_bodies_are_refused(args: list[Value], data: st.DataObject) -> None:
    body = encode_arguments(MSGPACK, args)
    last = len(encode_arguments(MSGPACK, args[:-1]))
    cut = data.draw(st.integers(last + 1, len(body) - 1)) if len(body) - last > 1 else None
    if cut is not None:
        with pytest.raises(RemoteProtocolError, match="cut short") as caught:
            decode_arguments(MSGPACK, body[:cut])
        assert not caught.value.close
        with pytest.raises(RemoteProtocolError, match=r"cut short|unexpected bytes"):
            decode_result(MSGPACK, body[:cut])


# -- msgpack: garbage --------------------------------------------------------------------------

msgpack_alphabet_garbage = st.binary(max_size=64) | st.lists(
    st.one_of(
        st.sampled_from([bytes([b]) for b in MSGPACK_MEANINGFUL]),
        st.integers(0, 40).map(lambda size: size.to_bytes(4, "big")),
        st.integers(0, 40).map(lambda size: size.to_bytes(2, "big")),
        st.sampled_from([b"\xff\xfe", b"\xed\xa0\x80", b"\xff\xff\xff\xff", b"\xd6\xff"]),
        st.binary(max_size=3),
    ),
    max_size=30,
).map(b"".join)


@FAST
@given(msgpack_alphabet_garbage)
def test_msgpack_garbage_fails_cleanly(garbage: bytes) -> None:
    fails_cleanly(MSGPACK, garbage)


@FAST
@given(st.data())
def test_msgpack_mutated_bodies_fail_cleanly(data: st.DataObject) -> None:
    args = data.draw(st.lists(values, min_size=1, max_size=3))
    body = encode_arguments(MSGPACK, args)
    fails_cleanly(MSGPACK, data.draw(mutation.mutated(body, MSGPACK_MEANINGFUL, sizes=True)))


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        ("c1", "offset 0 is not valid msgpack"),
        ("92c1", "offset 0 is not valid msgpack"),
        ("a56162", "offset 0 is cut short: the body ends at offset 3"),
        ("dbffffffff", "cut short"),
        ("c6ffffffff", "cut short"),
        ("ddffffffff", "cut short"),
        ("dfffffffff", "cut short"),
        ("81a161", "cut short"),
        ("a2fffe", "offset 0 holds a str that is not valid UTF-8"),
        ("a3eda080", "not valid UTF-8"),  # a UTF-8 encoded surrogate
        ("81a2fffe01", "not valid UTF-8"),  # in a key
        ("d40100", "ext"),
        ("d501ffff", "ext"),
        ("c70005", "ext type 5: ext types are refused"),
        ("c70105ff", "ext"),
        ("d6ff00000000", "ext"),  # a timestamp
        ("d7ff0000000000000000", "ext"),
        ("c70cff000000000000000000000000", "ext"),
        ("c700ff", "ext"),  # a timestamp of no bytes
        ("9201d40100", "ext"),
        ("819001", "an array or map as a key"),
        ("818001", "an array or map as a key"),
    ],
)
def test_msgpack_malformed(hex_: str, match: str) -> None:
    refused(MSGPACK, bytes.fromhex(hex_), match)


def test_msgpack_offsets_in_errors() -> None:
    with pytest.raises(RemoteProtocolError, match="offset 1 is not valid msgpack"):
        decode_arguments(MSGPACK, b"\x01\xc1")
    with pytest.raises(
        RemoteProtocolError, match="offset 2 is cut short: the body ends at offset 4"
    ):
        decode_arguments(MSGPACK, b"\x01\xc0\x92\x01")
    with pytest.raises(RemoteProtocolError, match="offset 1 holds a str that is not valid UTF-8"):
        decode_arguments(MSGPACK, b"\x01\xa1\xff")


def test_msgpack_trailing_bytes_after_one_value() -> None:
    with pytest.raises(
        RemoteProtocolError, match="2 unexpected bytes after the value, at offset 1"
    ):
        decode_result(MSGPACK, b"\x01\x02\x03")
    with pytest.raises(RemoteProtocolError, match="unexpected bytes"):
        decode_result(MSGPACK, b"\x01\xc1")  # refused as trailing bytes, before looking at them


# -- msgpack: limits -----------------------------------------------------------------------------


def test_msgpack_size_limit() -> None:
    refused(MSGPACK, b"\xc0" * 11, "body of 11 bytes is over the limit of 10", max_size=10)
    assert decode_arguments(MSGPACK, b"\xc0" * 10, limits=Limits(max_size=10)) == [None] * 10
    refused(MSGPACK, b"\xc0", "over the limit of 0", max_size=0)
    assert decode_result(MSGPACK, b"", limits=Limits(max_size=0)) is None


@pytest.mark.parametrize(
    ("limit", "ok", "over", "match"),
    [
        ("max_str_len", "a3616263", "a461626364", "exceeds max_str_len"),
        ("max_bin_len", "c403010203", "c40401020304", "exceeds max_bin_len"),
        ("max_array_len", "93c0c0c0", "94c0c0c0c0", "exceeds max_array_len"),
        ("max_map_len", "83000001010202", "840000010102020303", "max_map_len"),
    ],
)
def test_msgpack_length_limits(limit: str, ok: str, over: str, match: str) -> None:
    limits = Limits(**{limit: 3})
    assert decode_result(MSGPACK, bytes.fromhex(ok), limits=limits) is not None
    refused(MSGPACK, bytes.fromhex(over), match, **{limit: 3})
    nested = bytes.fromhex("91" + over)
    refused(MSGPACK, nested, match, **{limit: 3})


def test_msgpack_argument_count_limit() -> None:
    limits = Limits(max_array_len=2)
    assert decode_arguments(MSGPACK, b"\x01\x02", limits=limits) == [1, 2]
    with pytest.raises(RemoteProtocolError, match=r"more than 2 values \(at offset 2\)"):
        decode_arguments(MSGPACK, b"\x01\x02\x03", limits=limits)
    with pytest.raises(RemoteProtocolError, match="more than 0 values"):
        decode_arguments(MSGPACK, b"\x01", limits=Limits(max_array_len=0))


def test_msgpack_lengths_are_capped_by_the_body() -> None:
    # An array declaring more items than the body has bytes is short, whatever the limits.
    refused(MSGPACK, b"\xdc\x01\x00" + b"\xc0" * 200, "cut short")
    refused(MSGPACK, b"\xde\x00\x10" + b"\xc0" * 20, "cut short")


def test_msgpack_depth_limit() -> None:
    assert decode_result(MSGPACK, b"\x91\x91\xc0", limits=Limits(max_depth=2)) == [[None]]
    refused(MSGPACK, b"\x91\x91\x91\xc0", "nest deeper than 2", max_depth=2)
    refused(MSGPACK, b"\x81\x01\x91\x90", "nest deeper than 2", max_depth=2)
    refused(MSGPACK, b"\x90", "nest deeper than 0", max_depth=0)
    assert decode_arguments(MSGPACK, b"\x01\xa1a", limits=Limits(max_depth=0)) == [1, "a"]
    # The default, Simple's: 100 levels decode, 101 do not.
    assert decode_result(MSGPACK, b"\x91" * 99 + b"\x90") is not None
    refused(MSGPACK, b"\x91" * 100 + b"\x90", "nest deeper than 100")
    refused(MSGPACK, b"\x91" * MAX_DEPTH_CEILING + b"\x90", "nest deeper than 100")
    # Past the msgpack unpacker's own stack (1024 levels): refused while skipping through.
    refused(MSGPACK, b"\x91" * 5000 + b"\xc0", "nests deeper than the msgpack unpacker allows")
    deep = b"\x91" * (MAX_DEPTH_CEILING - 1) + b"\x90"
    assert decode_result(MSGPACK, deep, limits=Limits(max_depth=MAX_DEPTH_CEILING)) is not None


def test_declared_lengths_allocate_nothing_before_the_bytes_are_there() -> None:
    """1000 nested arrays each declaring a million items, then 100 kB of nils: unchecked, the
    unpacker would reserve a million slots per level (8 GB) before finding the body short."""
    body = b"\xdd\x00\x10\x00\x00" * 1000 + b"\xc0" * 100_000
    tracemalloc.start()
    try:
        refused(MSGPACK, body, "cut short")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * len(body)


def test_limits_are_validated() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert DEFAULT_LIMITS.max_size == 10 * 1024 * 1024
    with pytest.raises(ValueError, match="max_depth must be within"):
        Limits(max_depth=MAX_DEPTH_CEILING + 1)
    for name in ("max_size", "max_depth", "max_items", "max_str_len", "max_map_len"):
        with pytest.raises(ValueError, match=f"{name} must be a non-negative int"):
            Limits(**{name: -1})
    with pytest.raises(ValueError, match="non-negative int"):
        Limits(max_size=1.5)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_depth"):
        encode_result(MSGPACK, 1, max_depth=-1)
    with pytest.raises(ValueError, match="max_depth"):
        encode_arguments(SIMPLE, [1], max_depth=MAX_DEPTH_CEILING + 1)


# -- msgpack: what cannot be encoded ---------------------------------------------------------


def _holding_itself() -> list[Any]:
    loop: list[Any] = []
    loop.append(loop)
    loop.append(loop)  # breadth first, this would double at every level
    return loop


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (2**64, "outside msgpack's range"),
        (-(2**63) - 1, "outside msgpack's range"),
        ([1, {"k": 2**70}], "outside msgpack's range"),
        ("\ud800", "not encodable as UTF-8"),
        ({"\udfff": 1}, "not encodable as UTF-8"),
        (object(), "cannot encode a value of type object"),
        ([{1, 2}], "cannot encode a value of type set"),
        ({"when": datetime.datetime(2020, 1, 1)}, "type datetime"),
        (msgpack.ExtType(1, b"x"), "ExtType: ext types are refused"),
        ([msgpack.Timestamp(0)], "Timestamp: ext types are refused"),
        ({msgpack.ExtType(1, b""): 1}, "ext types are refused"),
        (_holding_itself(), "nest deeper than 100"),
        ([[[[]]]], None),
    ],
)
def test_msgpack_unencodable_values(value: Any, match: str | None) -> None:
    if match is None:  # too deep for max_depth=3 only
        with pytest.raises(LocalProtocolError, match="nest deeper than 3"):
            encode_result(MSGPACK, value, max_depth=3)
        assert encode_result(MSGPACK, value, max_depth=4) == b"\x91\x91\x91\x90"
        return
    for encode in (
        lambda: encode_result(MSGPACK, value),
        lambda: encode_arguments(MSGPACK, [1, value]),
    ):
        with pytest.raises(LocalProtocolError, match=match) as caught:
            encode()
        assert caught.value.reply_hint.startswith("motan2 msgpack: ")
        assert not caught.value.close


def test_msgpack_large_flat_values() -> None:
    big = [*range(200_000), [1.5] * 100_000, {"k": "v"}]
    body = encode_result(MSGPACK, big)
    assert same(decode_result(MSGPACK, body), big)


# -- unsupported serializations --------------------------------------------------------------


@pytest.mark.parametrize("number", UNSUPPORTED)
def test_unsupported_numbers_when_decoding(number: int) -> None:
    for decode in (decode_arguments, decode_result):
        with pytest.raises(RemoteSerializationNotFound) as caught:
            decode(number, b"\x01")
        error = caught.value
        assert isinstance(error, SerializationNotFound)
        assert isinstance(error, RemoteProtocolError)
        assert not isinstance(error, LocalProtocolError)
        assert error.serialization == number
        assert error.reply_hint == SERIALIZE_NOT_FOUND == "message serialize not found"
        assert not error.close
        assert str(number) in str(error)
    # Without bytes to read, motan-go asks for no codec: the body is no arguments, a null result.
    assert decode_arguments(number, b"") == []
    assert decode_result(number, b"") is None


@pytest.mark.parametrize("number", UNSUPPORTED)
def test_unsupported_numbers_when_encoding(number: int) -> None:
    for encode in (
        lambda: encode_arguments(number, []),
        lambda: encode_arguments(number, ["x"]),
        lambda: encode_result(number, None),
        lambda: encode_result(number, 1),
    ):
        with pytest.raises(LocalSerializationNotFound) as caught:
            encode()
        assert isinstance(caught.value, SerializationNotFound)
        assert isinstance(caught.value, LocalProtocolError)
        assert not isinstance(caught.value, RemoteProtocolError)
        assert caught.value.serialization == number


def test_unsupported_number_answers_like_motan_go() -> None:
    """A motan-go server's reply to a request in serialization 4, rebuilt from the error."""
    vector = BY_NAME["probe_server_unknown_serialization"]
    sent = decode_frame(bytes.fromhex(vector["request_hex"]))
    with pytest.raises(SerializationNotFound) as caught:
        decode_arguments(sent.serialization, sent.body)
    error = caught.value
    assert (error.errcode, error.errtype) == (500, ERRTYPE_SERVICE)
    method = sent.meta["M_m"]
    assert (
        error.errmsg(method) == f"deserialize fail. err:message serialize not found method:{method}"
    )
    reply = exception_response(sent.request_id, error.errcode, error.errmsg(method), error.errtype)
    assert encode_frame(reply) == bytes.fromhex(vector["hex"])


@pytest.mark.parametrize("number", [-1, 32, 255])
def test_numbers_outside_the_field(number: int) -> None:
    with pytest.raises(ValueError, match=r"within 0\.\.31"):
        decode_arguments(number, b"")
    with pytest.raises(ValueError, match=r"within 0\.\.31"):
        encode_result(number, None)


@pytest.mark.parametrize("number", ["6", True, 6.0])
def test_numbers_must_be_ints(number: Any) -> None:
    with pytest.raises(TypeError, match="serialization number is an int"):
        decode_result(number, b"\x00")
    with pytest.raises(TypeError, match="serialization number is an int"):
        encode_arguments(number, [])


def test_errors_are_protocol_errors() -> None:
    assert issubclass(RemoteSerializationNotFound, ProtocolError)
    assert issubclass(LocalSerializationNotFound, ProtocolError)
    assert not issubclass(SerializationNotFound, RemoteProtocolError | LocalProtocolError)
