"""Shared by the RESP tests and ``fuzz/fuzz_resp_codec.py``: golden vectors and strategies.

Not a test module (pytest collects ``test_*.py`` only). The vectors live in the language-neutral
``protocols/resp-vectors.json``; this module turns their JSON shapes into :mod:`values` objects
so every test compares against data written independently of the parser.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from resmesh.protocols._errors import RemoteProtocolError
from resmesh.protocols.resp.framing import NEED_DATA, ReplyFramer, ReplyLimits, scan_replies
from resmesh.protocols.resp.requests import RequestLimits
from resmesh.protocols.resp.values import (
    INT64_MAX,
    INT64_MIN,
    NULL,
    NULL_ARRAY,
    NULL_BULK,
    Array,
    Attributed,
    BigNumber,
    BlobError,
    Boolean,
    BulkString,
    Double,
    Integer,
    Map,
    Null,
    Push,
    Set,
    SimpleError,
    SimpleString,
    Value,
    VerbatimString,
)
from tests.support import mutation

VECTORS_PATH = Path(__file__).resolve().parents[3] / "protocols" / "resp-vectors.json"
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="ascii"))


def wire(spec: str | list[Any]) -> bytes:
    """A vector's byte string: latin-1 text, or a list of segments / ``[text, repeat]`` pairs."""
    if isinstance(spec, str):
        return spec.encode("latin-1")
    return b"".join(
        wire(part) if isinstance(part, str) else wire(part[0]) * part[1] for part in spec
    )


_NULL_FORMS = {"bulk": NULL_BULK, "array": NULL_ARRAY, "resp3": NULL}


def shape_to_value(shape: dict[str, Any]) -> Value:
    """The value a golden vector's ``decoded`` shape describes."""
    kind = shape["type"]
    if kind == "simple":
        return SimpleString(wire(shape["value"]))
    if kind == "error":
        return SimpleError(wire(shape["value"]))
    if kind == "integer":
        return Integer(shape["value"])
    if kind == "bulk":
        return BulkString(wire(shape["value"]))
    if kind == "null":
        return _NULL_FORMS[shape["form"]]
    if kind == "array":
        return Array(tuple(shape_to_value(item) for item in shape["items"]))
    if kind == "boolean":
        return Boolean(shape["value"])
    if kind == "double":
        return Double(wire(shape["text"]))
    if kind == "big_number":
        return BigNumber(int(shape["value"]))
    if kind == "blob_error":
        return BlobError(wire(shape["value"]))
    if kind == "verbatim":
        return VerbatimString(wire(shape["format"]), wire(shape["value"]))
    if kind == "map":
        return Map(tuple((shape_to_value(k), shape_to_value(v)) for k, v in shape["pairs"]))
    if kind == "set":
        return Set(tuple(shape_to_value(item) for item in shape["items"]))
    if kind == "push":
        return Push(tuple(shape_to_value(item) for item in shape["items"]))
    if kind == "attributed":
        pairs = tuple((shape_to_value(k), shape_to_value(v)) for k, v in shape["attributes"])
        return Attributed(pairs, shape_to_value(shape["value"]))
    raise AssertionError(f"unknown shape type {kind!r}")


def reply_limits(spec: dict[str, int] | None) -> ReplyLimits:
    return ReplyLimits(**spec) if spec else ReplyLimits()


def request_limits(spec: dict[str, int] | None) -> RequestLimits:
    return RequestLimits(**spec) if spec else RequestLimits()


def collapse(value: Value) -> Value:
    """What :class:`HiredisReplyParser` makes of ``value`` when it sits inside an array."""
    if isinstance(value, SimpleString):
        return BulkString(value.value)
    if isinstance(value, Null):
        return NULL_BULK
    if isinstance(value, SimpleError):
        return SimpleError(value.value.decode("utf-8", "replace").encode())
    if isinstance(value, Array):
        return Array(tuple(collapse(item) for item in value.items))
    return value


def collapse_top(value: Value) -> Value:
    """What :class:`HiredisReplyParser` returns for a top-level ``value`` (arrays collapse)."""
    if isinstance(value, Array) and value.items:
        return collapse(value)
    return value


# -- strategies ------------------------------------------------------------------------------

line_bytes = st.binary(max_size=24).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b""))
double_texts = st.from_regex(
    rb"\A[+-]?(?:\d{1,6}(?:\.\d{0,6})?(?:[eE][+-]?\d{1,3})?|\.\d{1,4}|inf|nan|INF|NaN)\Z"
)

resp2_scalars = st.one_of(
    line_bytes.map(SimpleString),
    line_bytes.map(SimpleError),
    st.integers(INT64_MIN, INT64_MAX).map(Integer),
    st.binary(max_size=40).map(BulkString),
    st.sampled_from([NULL_BULK, NULL_ARRAY]),
)
resp3_scalars = st.one_of(
    resp2_scalars,
    st.just(NULL),
    st.booleans().map(Boolean),
    st.floats().map(Double.of),
    double_texts.map(Double),
    st.integers(-(10**60), 10**60).map(BigNumber),
    st.binary(max_size=40).map(BlobError),
    st.builds(VerbatimString, st.binary(min_size=3, max_size=3), st.binary(max_size=30)),
)


def _pairs(
    children: st.SearchStrategy[Value],
) -> st.SearchStrategy[tuple[tuple[Value, Value], ...]]:
    return st.lists(st.tuples(children, children), max_size=3).map(tuple)


def _items(children: st.SearchStrategy[Value]) -> st.SearchStrategy[tuple[Value, ...]]:
    return st.lists(children, max_size=4).map(tuple)


resp2_values: st.SearchStrategy[Value] = st.recursive(
    resp2_scalars, lambda children: _items(children).map(Array), max_leaves=16
)
resp3_values: st.SearchStrategy[Value] = st.recursive(
    resp3_scalars,
    lambda children: st.one_of(
        _items(children).map(Array),
        _pairs(children).map(Map),
        _items(children).map(Set),
        _items(children).map(Push),
        st.builds(Attributed, _pairs(children), children),
    ),
    max_leaves=16,
)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted, deduplicated)."""
    if not data:
        return [data]
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


resp_alphabet_garbage = st.binary(max_size=64) | st.lists(
    st.sampled_from(
        [
            *(b"+", b"-", b":", b"$", b"*", b"_", b",", b"#", b"(", b"!", b"=", b"%", b"~"),
            *(b">", b"|", b"\r\n", b"0", b"1", b"2", b"-1", b"10", b"3", b"txt:", b"OK", b"t"),
            b"\n",
        ]
    ),
    max_size=40,
).map(b"".join)


def compiled_ends(
    data: bytes, limits: ReplyLimits, *, resp3: bool = True, limit: int = 1 << 20
) -> tuple[list[int], int]:
    """``scan_replies`` from the start of ``data``: (ends, errors)."""
    assert scan_replies is not None
    return scan_replies(
        data,
        0,
        limit,
        limits.max_bulk_len,
        limits.max_aggregate_len,
        limits.max_line_len,
        limits.max_depth,
        resp3,
    )


def compiled_scan(
    data: bytes, limits: ReplyLimits, *, resp3: bool = True, limit: int = 1 << 20
) -> tuple[int, int]:
    """``scan_replies`` from the start of ``data``: (where the last reply ends, how many)."""
    ends, _ = compiled_ends(data, limits, resp3=resp3, limit=limit)
    return (ends[-1] if ends else 0), len(ends)


def python_ends(data: bytes, limits: ReplyLimits, *, resp3: bool = True) -> list[int]:
    """The ends of the complete replies at the start of ``data`` by the Python framer, up to
    the first incomplete or refused one. (The buffer cap is the receive buffer's concern.)"""
    framer = ReplyFramer(dataclasses.replace(limits, max_buffer=len(data)), resp2_only=not resp3)
    framer.feed(data)
    ends: list[int] = []
    try:
        while (reply := framer.next_reply()) is not NEED_DATA:
            assert isinstance(reply, bytes)
            ends.append((ends[-1] if ends else 0) + len(reply))
    except RemoteProtocolError:
        pass
    return ends


def check_compiled_agrees(data: bytes, limits: ReplyLimits, resp3: bool) -> None:
    """The compiled scanner takes only what the Python framer takes, ending each reply where it
    does and counting its error replies, and stops short only at a push or an attribute, which
    it leaves to Python."""
    taken, errors = compiled_ends(data, limits, resp3=resp3)
    ends = python_ends(data, limits, resp3=resp3)
    count = len(taken)
    assert taken == ends[:count]
    end = taken[-1] if taken else 0
    starts = [0, *ends[: count - 1]] if count else []
    assert errors == sum(data[start] in b"-!" for start in starts)
    # Stopping short is allowed only where the Python scan takes a form the compiled one leaves.
    if count < len(ends):
        rest = data[end : ends[count]]
        assert b">" in rest or b"|" in rest


def mutated(stream: bytes) -> st.SearchStrategy[bytes]:
    """``stream`` mutated, with RESP's type bytes and separators among the replacements."""
    return mutation.mutated(stream, list(b"+-:$*_,#(!=%~>|\r\n0-9"))
