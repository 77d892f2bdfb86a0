"""Shared by the Motan2 Simple tests (and any future fuzz harness): golden vectors, the JSON form
the vectors use, a type-exact comparison, and hypothesis strategies over the value model.

Not a test module (pytest collects ``test_*.py`` only). The vectors live in the language-neutral
``protocols/motan2-vectors.json``, written by running motan-go, Java motan and motan-php, so the
tests compare against data produced independently of :mod:`resmesh.protocols.motan2.simple`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from resmesh.protocols.motan2.simple import (
    Byte,
    Float32,
    Int16,
    Int32,
    StringArray,
    StringMap,
    Value,
)
from tests.support import mutation

VECTORS_PATH = Path(__file__).resolve().parents[3] / "protocols" / "motan2-vectors.json"
VECTORS: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

#: Vectors of one Simple value, and of Simple bodies with several values back to back.
SIMPLE_VECTORS = [v for v in VECTORS if v["kind"] == "simple"]
SIMPLE_MULTI_VECTORS = [v for v in VECTORS if v["kind"] == "simple-multi"]

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1

#: Integers beyond this are written as decimal strings in some vectors (JSON readers that use
#: doubles would round them), as plain numbers in others; both forms are normalised to strings.
_JSON_SAFE_INT = 2**53


def is_go(vector: dict[str, Any]) -> bool:
    """Whether motan-go produced the vector's bytes (those re-encode byte for byte)."""
    return str(vector["provenance"]).startswith("motan-go")


def json_form(value: Any) -> Any:
    """``value`` (a decoded Simple value, or a vector's ``decoded``) in the vectors' JSON form.

    Bytes become lowercase hex, marker types their builtin, big integers decimal strings, map keys
    strings. Applied to a vector's ``decoded`` too, so both sides use the same integer form.
    """
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, int):
        number = int(value)
        return str(number) if abs(number) > _JSON_SAFE_INT else number
    if isinstance(value, float):
        return float(value)
    if isinstance(value, list):
        return [json_form(item) for item in value]
    if isinstance(value, dict):
        return {
            (key if isinstance(key, str) else json.dumps(json_form(key))): json_form(item)
            for key, item in value.items()
        }
    raise AssertionError(f"not a Simple value: {value!r}")


def as_json_text(value: Any) -> str:
    """A canonical text for comparing JSON forms: ``true`` differs from ``1``, ``2.0`` from
    ``2`` (a plain ``==`` would call them equal)."""
    return json.dumps(json_form(value), sort_keys=True, ensure_ascii=False)


def same(left: Any, right: Any) -> bool:
    """Type-exact structural equality: ``Int32(1)`` differs from ``1``, ``StringMap`` from
    ``dict``; floats compare by value and sign, and NaN equals NaN; maps compare in order."""
    if type(left) is not type(right):
        return False
    if isinstance(left, float):
        if math.isnan(left):
            return math.isnan(right)
        return bool(left == right and math.copysign(1.0, left) == math.copysign(1.0, right))
    if isinstance(left, list):
        return len(left) == len(right) and all(map(same, left, right))
    if isinstance(left, dict):
        return len(left) == len(right) and all(
            same(lk, rk) and same(lv, rv)
            for (lk, lv), (rk, rv) in zip(left.items(), right.items(), strict=True)
        )
    return bool(left == right)


# -- strategies ------------------------------------------------------------------------------

texts = st.text(max_size=12)

#: Scalars of every tag; no NaN here, so they can be map keys (NaN never equals itself).
hashable_scalars: st.SearchStrategy[Value] = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(INT64_MIN, INT64_MAX),
    st.integers(INT32_MIN, INT32_MAX).map(Int32),
    st.integers(-(2**15), 2**15 - 1).map(Int16),
    st.integers(0, 255).map(Byte),
    st.floats(allow_nan=False),
    st.floats(width=32, allow_nan=False).map(Float32),
    texts,
    st.binary(max_size=12),
)
scalars: st.SearchStrategy[Value] = st.one_of(
    hashable_scalars,
    st.just(math.nan),
    st.just(Float32(math.nan)),
    st.dictionaries(texts, texts, max_size=3).map(StringMap),
    st.lists(texts, max_size=4).map(StringArray),
)


def _containers(children: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
    return st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(hashable_scalars, children, max_size=3),
    )


#: Any Simple value, nested.
values: st.SearchStrategy[Value] = st.recursive(scalars, _containers, max_leaves=12)


def mutated(body: bytes) -> st.SearchStrategy[bytes]:
    """``body`` mutated, with tags and sizes among the replacements: garbage that looks like
    Simple, so it reaches deep into the decoder."""
    return mutation.mutated(body, range(24), sizes=True)


#: Concatenations of tags, small sizes and stray bytes: random input with Simple's shape.
simple_alphabet_garbage = st.binary(max_size=64) | st.lists(
    st.one_of(
        st.integers(0, 23).map(lambda tag: bytes([tag])),
        st.integers(0, 40).map(lambda size: size.to_bytes(4, "big")),
        st.sampled_from([b"\x80", b"\xff", b"\x01", b"\x00\x00\x00", b"\xff\xff\xff\xff"]),
        st.binary(max_size=3),
    ),
    max_size=30,
).map(b"".join)
