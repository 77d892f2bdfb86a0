"""Motan2 Simple serialization: golden vectors from motan-go, Java motan and motan-php, round
trips and garbage under hypothesis, and the edge cases of sizes, depth, tags and ranges."""

from __future__ import annotations

import gzip
import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import LocalProtocolError, RemoteProtocolError
from resmesh.protocols.motan2.simple import (
    DEFAULT_MAX_DEPTH,
    MAX_DEPTH_CEILING,
    SERIALIZATION_NUMBER,
    Byte,
    Float32,
    Int16,
    Int32,
    StringArray,
    StringMap,
    Value,
    decode,
    decode_one,
    encode,
    encode_many,
)
from tests.protocols.motan2.motan2_support import (
    INT32_MAX,
    INT32_MIN,
    INT64_MAX,
    INT64_MIN,
    SIMPLE_MULTI_VECTORS,
    SIMPLE_VECTORS,
    VECTORS,
    as_json_text,
    is_go,
    mutated,
    same,
    simple_alphabet_garbage,
    values,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

#: Vectors whose ``decoded`` shows another implementation's reading of the same bytes, and what
#: resmesh reads instead.
DECODED_DIFFERENTLY: dict[str, tuple[Value, str]] = {
    "java_simple_byte": (Byte(128), "Java reads tag 6 as a signed byte (-128); Go as uint8"),
    "php_simple_empty_array": (None, "PHP writes an empty array as tag 0, which is null"),
}

#: Vectors from Java that do not re-encode to their own bytes, and motan-go's form of the same
#: value, which is what resmesh emits: Java writes a 10-byte varint for an int32 whose zigzag
#: value has bit 31 set; Go writes at most 5 bytes.
GO_FORM: dict[str, str] = {
    "java_simple_int_2pow30": "088080808008",
    "java_simple_int_max": "08feffffff0f",
    "java_simple_int_min": "08ffffffff0f",
}


def u32(size: int) -> bytes:
    return size.to_bytes(4, "big")


def nested_arrays(levels: int) -> bytes:
    """``levels`` arrays, each holding only the next (the innermost is empty), built in O(n)."""
    return b"".join(b"\x15" + u32(5 * (levels - 1 - level)) for level in range(levels))


def refused(data: bytes, match: str = "", **limits: int) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError, match=match) as caught:
        decode(data, **limits)
    error = caught.value
    assert error.reply_hint.startswith("motan2 simple: ")
    assert not error.close  # a bad body spoils one call, not the connection
    return error


# -- golden vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", SIMPLE_VECTORS, ids=[v["name"] for v in SIMPLE_VECTORS])
def test_golden_value_decodes(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    value = decode_one(data)
    assert same(decode(data), [value])
    if vector["name"] in DECODED_DIFFERENTLY:
        expected, _why = DECODED_DIFFERENTLY[vector["name"]]
        assert same(value, expected)
        assert as_json_text(value) != as_json_text(vector["decoded"])
    else:
        assert as_json_text(value) == as_json_text(vector["decoded"])


@pytest.mark.parametrize(
    "vector", SIMPLE_MULTI_VECTORS, ids=[v["name"] for v in SIMPLE_MULTI_VECTORS]
)
def test_golden_body_decodes(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    body = decode(data)
    assert len(body) > 1
    assert as_json_text(body) == as_json_text(vector["decoded"])
    assert encode_many(body) == data  # every multi vector is in Go's form
    with pytest.raises(RemoteProtocolError, match="unexpected bytes after the value"):
        decode_one(data)


@pytest.mark.parametrize(
    "vector", SIMPLE_VECTORS + SIMPLE_MULTI_VECTORS, ids=lambda v: str(v["name"])
)
def test_golden_reencodes(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    again = encode_many(decode(data))
    if is_go(vector):
        assert again == data
    elif vector["name"] in GO_FORM:
        assert again.hex() == GO_FORM[vector["name"]]
        assert again != data
        assert same(decode(again), decode(data))
    else:  # Java and PHP agree with Go on every other form
        assert again == data


def test_golden_vector_tables_name_real_vectors() -> None:
    names = {v["name"] for v in SIMPLE_VECTORS}
    assert set(DECODED_DIFFERENTLY) <= names
    assert set(GO_FORM) <= names
    assert not any(is_go(v) for v in SIMPLE_VECTORS if v["name"] in GO_FORM)
    assert len(SIMPLE_VECTORS) >= 70
    assert len(SIMPLE_MULTI_VECTORS) >= 3
    assert len(CAPTURED) >= 10
    assert len(GO_BODIES) >= 4
    assert {v["provenance"].split()[0] for v in SIMPLE_VECTORS} == {"motan-go", "java", "motan-php"}


def frame_body(frame: bytes) -> bytes:
    """The (gunzipped) body of one Motan2 frame, read straight from the fixed layout (meta size
    at offset 13, body size after the meta, gzip flag 0x08 in byte 2), so these tests need
    nothing from the frame codec."""
    meta_size = int.from_bytes(frame[13:17], "big")
    body_size = int.from_bytes(frame[17 + meta_size : 21 + meta_size], "big")
    assert len(frame) == 21 + meta_size + body_size
    body = frame[21 + meta_size :]
    return gzip.decompress(body) if frame[2] & 0x08 else body


CAPTURED = [
    v
    for v in VECTORS
    if v["kind"] == "motan2-message"
    and v["decoded"].get("serialization") == SERIALIZATION_NUMBER
    and isinstance(v["decoded"].get("body"), list)
]
GO_BODIES = [
    v
    for v in VECTORS
    if v["kind"] == "motan2-message"
    and v["decoded"].get("serialization") == SERIALIZATION_NUMBER
    and v["decoded"].get("body_hex")
]


@pytest.mark.parametrize("vector", CAPTURED, ids=[v["name"] for v in CAPTURED])
def test_captured_frame_bodies_decode(vector: dict[str, Any]) -> None:
    """Bodies tapped off real connections (motan-go client, agent and server, motan-php)."""
    expected = [
        bytes.fromhex(item["bytes_hex"]) if isinstance(item, dict) else item
        for item in vector["decoded"]["body"]
    ]
    assert as_json_text(decode(frame_body(bytes.fromhex(vector["hex"])))) == as_json_text(expected)


@pytest.mark.parametrize("vector", GO_BODIES, ids=[v["name"] for v in GO_BODIES])
def test_go_frame_bodies_reencode(vector: dict[str, Any]) -> None:
    decoded = vector["decoded"]
    body = bytes.fromhex(decoded.get("body_gunzipped_hex") or decoded["body_hex"])
    assert frame_body(bytes.fromhex(vector["hex"])) == body
    assert encode_many(decode(body)) == body


def test_decoded_types_follow_the_tag() -> None:
    body = bytes.fromhex(
        "0680" "07fffe" "0802" "0902" "0a3fc00000" "0b3ff8000000000000" "0501"
        "0200000000" "0400000000" "1400000000" "1500000000" "0300000000" "0100000000" "00"
    )  # fmt: skip
    assert [type(v) for v in decode(body)] == [
        Byte, Int16, Int32, int, Float32, float, bool,
        StringMap, StringArray, dict, list, bytes, str, type(None),
    ]  # fmt: skip


def test_serialization_number() -> None:
    assert SERIALIZATION_NUMBER << 3 == 0x30


# -- hypothesis ------------------------------------------------------------------------------


@FAST
@given(values)
def test_round_trip(value: Value) -> None:
    data = encode(value)
    back = decode_one(data)
    assert same(back, value)
    assert encode(back) == data
    assert same(decode(data), [value])


@FAST
@given(st.lists(values, max_size=5), st.integers(0, 1 << 16))
def test_body_is_values_back_to_back(body: list[Value], cut: int) -> None:
    data = encode_many(body)
    assert data == b"".join(encode(value) for value in body)
    assert same(decode(data), body)
    # A cut on a value boundary gives the values before it; any other cut is refused.
    ends = [0]
    for value in body:
        ends.append(ends[-1] + len(encode(value)))
    at = cut % (len(data) + 1)
    if at in ends:
        assert same(decode(data[:at]), body[: ends.index(at)])
    else:
        refused(data[:at], "cut short")


@FAST
@given(st.data())
def test_mutated_bodies_fail_cleanly(data: st.DataObject) -> None:
    body = data.draw(st.lists(values, min_size=1, max_size=3).map(encode_many))
    check_garbage(data.draw(mutated(body)))


@FAST
@given(simple_alphabet_garbage)
def test_garbage_fails_cleanly(garbage: bytes) -> None:
    check_garbage(garbage)


def check_garbage(data: bytes) -> None:
    """Garbage either decodes, to values that re-encode and decode the same, or is refused with
    a RemoteProtocolError; nothing else may escape (IndexError, struct.error...)."""
    try:
        body = decode(data, max_depth=8, max_items=200)
    except RemoteProtocolError as error:
        assert error.reply_hint.startswith("motan2 simple: ")
        return
    again = encode_many(body)
    assert same(decode(again), body)
    assert len(again) <= len(data)  # rewrites only shorten (minimal varints, merged map keys)


# -- edge cases: values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (StringMap(), "0200000000"),
        (StringArray(), "0400000000"),
        ({}, "1400000000"),
        ([], "1500000000"),
        (b"", "0300000000"),
        ("", "0100000000"),
        ([[], {}], "150000000a15000000001400000000"),
    ],
)
def test_empty_containers_keep_their_tag(value: Value, hex_: str) -> None:
    assert encode(value).hex() == hex_
    assert same(decode_one(bytes.fromhex(hex_)), value)


@pytest.mark.parametrize(
    ("value", "hex_"),
    [
        (INT64_MAX, "09feffffffffffffffff01"),
        (INT64_MIN, "09ffffffffffffffffff01"),
        (0, "0900"),
        (-65, "098101"),
        (Int32(INT32_MAX), "08feffffff0f"),
        (Int32(INT32_MIN), "08ffffffff0f"),
        (Int32(2**30), "088080808008"),
        (Int16(2**15 - 1), "077fff"),
        (Int16(-(2**15)), "078000"),
        (Byte(0), "0600"),
        (Byte(255), "06ff"),
        (Float32(math.inf), "0a7f800000"),
        (-0.0, "0b8000000000000000"),
        (True, "0501"),
    ],
)
def test_range_limits_round_trip(value: Value, hex_: str) -> None:
    assert encode(value).hex() == hex_
    assert same(decode_one(bytes.fromhex(hex_)), value)


@pytest.mark.parametrize(
    ("hex_", "expected"),
    [
        ("0880808080f8ffffffff01", Int32(2**30)),  # Java's 10-byte int32
        ("08feffffffffffffffff01", Int32(INT32_MAX)),
        ("08ffffffffffffffffff01", Int32(INT32_MIN)),
        ("08feffffff7f", Int32(INT32_MAX)),  # bits above 32 are dropped, as Go and Java do
        ("098000", 0),  # a non-minimal varint is accepted
        ("0502", False),  # only 1 is true, as in Go and Java
    ],
)
def test_lenient_forms_decode(hex_: str, expected: Value) -> None:
    assert same(decode_one(bytes.fromhex(hex_)), expected)


def test_float64_nan_payload_survives() -> None:
    data = bytes.fromhex("0b7ff8000000000001")
    value = decode_one(data)
    assert isinstance(value, float)
    assert math.isnan(value)
    assert encode(value) == data


def test_markers_behave_as_builtins() -> None:
    assert Int32(5) + 1 == 6
    assert type(Int32(5) + 1) is int  # arithmetic drops the tag: re-wrap to keep it
    assert isinstance(Byte(3), int)
    assert isinstance(Float32(1.5), float)
    assert StringMap({"a": "b"}) == {"a": "b"}
    assert StringArray(["a"]) == ["a"]
    assert repr(Int16(-2)) == "Int16(-2)"
    assert repr(Float32(1.5)) == "Float32(1.5)"
    assert repr(StringMap({"k": "v"})) == "StringMap({'k': 'v'})"
    assert repr(StringArray(["a"])) == "StringArray(['a'])"
    assert repr(Byte(7)) == "Byte(7)"
    assert repr(Int32(1)) == "Int32(1)"
    rounded = decode_one(encode(Float32(0.1)))
    assert same(rounded, Float32(0.10000000149011612))  # encoding rounds to float32


def test_encoding_conveniences() -> None:
    assert encode((1, "a")) == encode([1, "a"])
    assert encode(bytearray(b"ab")) == encode(b"ab")
    assert encode(memoryview(b"ab")) == encode(b"ab")
    # map keys may be of any type: here float64 1.5 -> null, and null -> [null]
    expected = "14 00000011 0b 3ff8000000000000 00 00 15 00000001 00"
    assert encode({1.5: None, None: [None]}) == bytes.fromhex(expected)
    assert decode(bytearray(b"\x00")) == [None]
    assert decode(memoryview(b"\x09\x02")) == [1]


def test_empty_body() -> None:
    assert decode(b"") == []
    assert decode_one(b"") is None
    assert encode_many([]) == b""
    assert encode(None) == b"\x00"


def test_map_keys_of_any_scalar_type() -> None:
    value = {Int32(1): "a", b"k": 2.5, None: True, False: StringArray(["x"])}
    assert same(decode_one(encode(value)), value)


# -- edge cases: malformed input --------------------------------------------------------------


@pytest.mark.parametrize("tag", [*range(12, 20), *range(22, 256, 13), 255])
def test_unknown_tags(tag: int) -> None:
    refused(bytes([tag]), f"unknown type tag {tag} at offset 0")
    # inside an array: the offset is the tag's own
    refused(b"\x15" + u32(2) + bytes([tag, 0]), f"unknown type tag {tag} at offset 5")


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        ("0100000009616263", "string of declared size 9 at offset 0 is cut short"),
        ("03ffffffff", "byte array of declared size 4294967295 at offset 0 is cut short"),
        ("15000000100900", "array of declared size 16 at offset 0 is cut short"),
        ("020000ffff", "string map of declared size 65535"),
        ("040000ff", "string array at offset 0 is cut short"),
        ("01", "string at offset 0 is cut short"),
        ("05", "bool at offset 0 is cut short"),
        ("06", "byte at offset 0 is cut short"),
        ("0700", "int16 at offset 0 is cut short"),
        ("0a000000", "float32 at offset 0 is cut short"),
        ("0b00000000000000", "float64 at offset 0 is cut short"),
        ("0980", "varint at offset 0 is cut short"),
        ("08", "varint at offset 0 is cut short"),
    ],
)
def test_declared_size_beyond_the_data(hex_: str, match: str) -> None:
    refused(bytes.fromhex(hex_), match)


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        # array of size 2 holding int64 300 (3 bytes): the element overruns the container
        ("150000000209d804", r"varint at offset 5 runs past the end of its container \(offset 7\)"),
        # array of size 4 holding int64 300 then the tag of a bool whose byte lies outside: the
        # elements underrun the declared size
        ("150000000409d8040501", r"bool at offset 8 runs past the end of its container"),
        # a string inside an array declares more than the array has left
        ("150000000601000000056162", "string of declared size 5 at offset 5 runs past the end"),
        # map of size 2: a key and no value (the value lies outside)
        ("140000000209000900", "map value at offset 7 runs past the end of its container"),
        # string map whose size covers a key but not its value
        ("020000000500000001610000000162", "string map at offset 0 ends after a key"),
        # string array whose size ends inside an entry's length
        ("04000000060000000161000000", "string array entry at offset 10 runs past the end"),
        # string map entry longer than the map
        ("02000000050000000a61", "string map entry of declared size 10 at offset 5"),
    ],
)
def test_container_size_ends_mid_element(hex_: str, match: str) -> None:
    refused(bytes.fromhex(hex_), match)


def test_depth_limit() -> None:
    assert len(decode(nested_arrays(DEFAULT_MAX_DEPTH))) == 1
    refused(nested_arrays(DEFAULT_MAX_DEPTH + 1), f"nests deeper than {DEFAULT_MAX_DEPTH}")
    assert decode(nested_arrays(3), max_depth=3) == [[[[]]]]
    refused(nested_arrays(4), "array at offset 15 nests deeper than 3 containers", max_depth=3)
    refused(b"\x02" + u32(0), "nests deeper than 0", max_depth=0)
    assert decode(b"\x09\x02", max_depth=0) == [1]
    # far beyond any stack: refused by the limit, never a RecursionError
    refused(nested_arrays(200_000), "nests deeper than")
    refused(nested_arrays(MAX_DEPTH_CEILING + 1), "nests deeper than", max_depth=MAX_DEPTH_CEILING)


def test_item_limit() -> None:
    body = encode([None] * 10)
    assert decode(body, max_items=11) == [[None] * 10]
    refused(body, "more than 10 values", max_items=10)
    refused(b"\x00" * 4, "more than 3 values", max_items=3)
    refused(encode(StringArray(["a"] * 5)), "more than 5 values", max_items=5)


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="max_depth"):
        decode(b"", max_depth=MAX_DEPTH_CEILING + 1)
    with pytest.raises(ValueError, match="max_depth"):
        encode(None, max_depth=-1)
    with pytest.raises(ValueError, match="max_items"):
        decode(b"", max_items=-1)


@pytest.mark.parametrize(
    ("hex_", "match"),
    [
        ("0100000002c328", "string at offset 0 is not valid UTF-8 \\(byte 5\\)"),
        ("020000000a0000000161 00000001ff", "string map entry at offset 10 is not valid UTF-8"),
        ("04000000050000000180", "string array entry at offset 5 is not valid UTF-8"),
        ("09ffffffffffffffffff02", "varint at offset 0 overflows 64 bits"),
        ("08ffffffffffffffffffff01", "varint at offset 0 is longer than 10 bytes"),
        ("14000000071500000000 0900", "map key at offset 5 is a list"),
        ("14000000071400000000 0900", "map key at offset 5 is a dict"),
        ("14000000070400000000 0900", "map key at offset 5 is a StringArray"),
    ],
)
def test_malformed(hex_: str, match: str) -> None:
    refused(bytes.fromhex(hex_.replace(" ", "")), match)


def test_trailing_bytes_after_one_value() -> None:
    with pytest.raises(RemoteProtocolError, match="2 unexpected bytes after the value, at 2"):
        decode_one(b"\x09\x02\x00\x00")


# -- edge cases: what cannot be encoded -------------------------------------------------------


def _cycle() -> list[Any]:
    items: list[Any] = []
    items.append(items)
    return items


@pytest.mark.parametrize(
    ("value", "match"),
    [
        (INT64_MAX + 1, "outside int64"),
        (INT64_MIN - 1, "outside int64"),
        pytest.param(10**5000, "integer of 16610 bits is outside int64", id="huge-int"),
        (Int32(INT32_MAX + 1), "outside int32"),
        (Int32(INT32_MIN - 1), "outside int32"),
        (Int16(2**15), "outside int16"),
        (Byte(256), "outside 0..255"),
        (Byte(-1), "outside 0..255"),
        (Float32(1e39), "outside float32's range"),
        (StringMap({"k": None}), "only str keys and values"),  # type: ignore[dict-item]
        (StringMap({1: "v"}), "only str keys and values"),  # type: ignore[dict-item]
        (StringArray(["a", None]), "only str items"),  # type: ignore[list-item]
        ("\ud800", "not encodable as UTF-8"),
        ({1, 2}, "cannot encode a set"),
        (object(), "cannot encode a object"),
        ([[1.5j]], "cannot encode a complex"),
        (_cycle(), "nest deeper than 100 containers"),
    ],
)
def test_unrepresentable_values_are_refused_locally(value: Any, match: str) -> None:
    with pytest.raises(LocalProtocolError, match=match) as caught:
        encode(value)
    assert caught.value.reply_hint.startswith("motan2 simple: ")
    with pytest.raises(LocalProtocolError, match=match):
        encode_many(["ok", value])


def test_encoding_depth_limit() -> None:
    deep: Any = []
    for _ in range(DEFAULT_MAX_DEPTH - 1):
        deep = [deep]
    assert encode(deep) == nested_arrays(DEFAULT_MAX_DEPTH)
    with pytest.raises(LocalProtocolError, match="nest deeper than"):
        encode([deep])
    assert encode([deep], max_depth=DEFAULT_MAX_DEPTH + 1) == nested_arrays(DEFAULT_MAX_DEPTH + 1)
