"""Garbage that looks like a protocol: valid bytes with a few mutations, for the codecs'
hypothesis tests and fuzzers (random bytes mostly fail on the first byte; these reach deep)."""

from __future__ import annotations

from collections.abc import Sequence

from hypothesis import strategies as st


@st.composite
def mutated(
    draw: st.DrawFn, stream: bytes, meaningful: Sequence[int] = (), *, sizes: bool = False
) -> bytes:
    """``stream`` with one to four bytes flipped, inserted or deleted, or overwritten with a
    byte that means something to the protocol (``meaningful``: type bytes, separators), and,
    with ``sizes``, a big-endian u32 size inserted (for length-prefixed formats)."""
    ops = ["flip", "insert", "delete"]
    if meaningful:
        ops.append("meaningful")
    if sizes:
        ops.append("size")
    data = bytearray(stream)
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(ops))
        at = draw(st.integers(0, len(data)))
        if op == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and at < len(data):
            del data[at]
        elif op == "meaningful" and at < len(data):
            data[at] = draw(st.sampled_from(list(meaningful)))
        elif op == "size":
            data[at:at] = draw(st.integers(0, 64)).to_bytes(4, "big")
    return bytes(data)
