"""Long-running hypothesis fuzz target for the Motan2 codecs (frames, gzip bodies, Simple).

Run: ``python fuzz/fuzz_motan2_codec.py --examples 20000`` (every run prints its seed; add
``--seed N`` to reproduce it, ``--property NAME`` to run only some properties, ``--slow S`` to
change the time bound). ``tests/protocols/motan2/test_fuzz_smoke.py`` runs the same properties
for a few hundred examples each in the test suite.

The properties are the suite's (``tests/protocols/motan2/test_frames.py``, ``test_simple.py``)
with many more examples, bigger inputs and more oracles:

- frame_streams: random and *mutated* streams of several frames (bytes flipped, inserted,
  deleted, u32 sizes inserted, header bytes and size fields rewritten, cut short), seeded from
  every ``motan2-message`` and ``motan2-message-invalid`` vector, cut at random points, through
  :class:`FrameDecoder` under random limits. Only frames or :class:`FrameError` come out, nothing
  else ever raises; between reads the decoder holds less than one allowed frame and its buffer
  stays under its cap; the frames and the error (its wording, request id and direction) are the
  ones an independent reading of the wire rules finds in the whole stream, however it is cut;
  every decoded frame re-encodes to its own bytes (less the bits and meta items the encoder
  drops) and decodes to itself; ``exception()`` and ``gunzip_body()`` never raise anything but a
  ``FrameError`` that keeps the connection; and errors are final (the decoder keeps raising);
- valid_frames: random frames and the golden vectors back to back, cut at random points or fed
  byte by byte: round trip, split invariance, byte-exact re-encoding, and limits that are met
  exactly accept the stream where one byte less refuses it;
- gunzip: gzip bodies (one or more members, motan-go's level, Python's writer, headers with every
  optional field, zero-filled "bombs", the golden vectors' gzip bodies) mutated or not, under
  random caps: :func:`gunzip` returns bytes within the cap or raises :class:`RemoteProtocolError`
  (``close`` false); an intact body gives back its data exactly when it fits; what it accepts,
  Python's own gzip reader reads the same, and the cap is exact;
- simple_bodies: mutated and garbage Simple bodies (seeded from every ``simple`` and
  ``simple-multi`` vector and the Simple bodies of the frame vectors, plus nesting around the
  depth limit) through :func:`decode` under random limits: values or
  :class:`RemoteProtocolError` (``close`` false) only; the values are within their tags' ranges,
  re-encode without error to no more bytes, decode to equal values of the same types, and
  re-encode to the same bytes again; :func:`decode_one` agrees;
- simple_values: random nested values round-trip type-exactly, alone and back to back;
- error_info: ``M_e`` texts (the vectors' ones mutated, JSON-ish garbage, absurd nesting)
  through :meth:`ErrorInfo.from_json`: an :class:`ErrorInfo` of the right types or ``None``,
  never an exception; ``to_json`` output is a valid meta value that parses back to itself.

Every example is timed: one that takes longer than ``--slow`` seconds (1 by default) twice in a
row is reported with its input and fails its property. Exit status 1 if a property fails, with
hypothesis' minimal example printed; one summary line per property.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import itertools
import json
import random
import sys
import time
import traceback
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis import strategies as st

from resmesh.protocols._errors import RemoteProtocolError
from resmesh.protocols.motan2.frames import (
    DEFAULT_MAX_BODY,
    FRAME_OVERHEAD,
    META_EXCEPTION,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_meta,
    gunzip,
    gzip_compress,
)
from resmesh.protocols.motan2.simple import (
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_ITEMS,
    MAX_DEPTH_CEILING,
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
    VECTORS,
    hashable_scalars,
    same,
    scalars,
    simple_alphabet_garbage,
)
from tests.protocols.motan2.motan2_support import mutated as simple_mutated
from tests.support import mutation

#: An example that takes longer than this (seconds), twice in a row, fails its property.
SLOW_SECONDS = 1.0

_U32_MAX = 2**32 - 1
_U64_MAX = 2**64 - 1


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (taken modulo its length, sorted, deduplicated)."""
    if not data:
        return [data]
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=16)


# -- seeds from the golden vectors -------------------------------------------------------------

MESSAGE_VECTORS = [v for v in VECTORS if v["kind"] == "motan2-message"]
#: Every frame of the vectors: messages, the requests of the probes, and the invalid frames.
FRAME_SEEDS: list[bytes] = [
    *(bytes.fromhex(v["hex"]) for v in MESSAGE_VECTORS),
    *(bytes.fromhex(v["request_hex"]) for v in MESSAGE_VECTORS if "request_hex" in v),
    *(bytes.fromhex(v["hex"]) for v in VECTORS if v["kind"] == "motan2-message-invalid"),
]
#: The valid ones (the invalid vectors are refused, whatever the limits).
VALID_FRAME_SEEDS: list[bytes] = [
    *(bytes.fromhex(v["hex"]) for v in MESSAGE_VECTORS),
    *(bytes.fromhex(v["request_hex"]) for v in MESSAGE_VECTORS if "request_hex" in v),
]


def _layout(frame: bytes) -> tuple[int, bytes, bytes]:
    """Flags, meta block and body of one well-formed frame, read from the fixed layout (no
    codec involved)."""
    meta_size = int.from_bytes(frame[13:17], "big")
    body_size = int.from_bytes(frame[17 + meta_size : 21 + meta_size], "big")
    assert len(frame) == FRAME_OVERHEAD + meta_size + body_size
    return frame[2], frame[17 : 17 + meta_size], frame[21 + meta_size :]


def _body_seeds() -> tuple[list[bytes], list[bytes], list[str]]:
    """From the valid frame vectors: the gzip'd bodies (flagged gzip, and Python's reader reads
    them), the Simple bodies (gunzipped), and the ``M_e`` texts of the exceptions."""
    gzipped: list[bytes] = []
    simple: list[bytes] = []
    errors: list[str] = []
    for frame in VALID_FRAME_SEEDS:
        flags, meta, body = _layout(frame)
        items = meta.decode().split("\n")
        errors.extend(
            v for k, v in zip(items[::2], items[1::2], strict=False) if k == META_EXCEPTION
        )
        if flags & 0x08:
            try:
                plain = gzip.decompress(body)
            except (OSError, EOFError):
                continue  # flagged but not gzip (motan-go's TestEncode frame)
            gzipped.append(body)
            body = plain
        if frame[4] >> 3 == 6 and body:
            simple.append(body)
    assert gzipped and simple and errors
    return gzipped, simple, errors


#: The gzip'd bodies of the vectors, the Simple bodies of the frames, the ``M_e`` texts.
GZIP_SEEDS, _FRAME_BODIES, ERROR_SEEDS = _body_seeds()
#: Simple bodies: every ``simple`` and ``simple-multi`` vector, and the Simple frames' bodies.
SIMPLE_SEEDS: list[bytes] = [
    *(bytes.fromhex(v["hex"]) for v in VECTORS if v["kind"] in ("simple", "simple-multi")),
    *_FRAME_BODIES,
]


# -- time bound --------------------------------------------------------------------------------


@dataclass
class SlowLog:
    """Examples that took longer than ``limit`` seconds, twice in a row (a GC pause or a busy
    machine does not count), per property."""

    limit: float = SLOW_SECONDS
    #: Per property: (seconds, the example's arguments as text).
    found: dict[str, list[tuple[float, str]]] = field(default_factory=dict)

    def run(self, name: str, check: Callable[..., None], *args: Any) -> None:
        started = time.perf_counter()
        check(*args)
        elapsed = time.perf_counter() - started
        if elapsed <= self.limit:
            return
        started = time.perf_counter()
        check(*args)
        elapsed = min(elapsed, time.perf_counter() - started)
        if elapsed > self.limit:
            shown = repr(args)
            if len(shown) > 4000:
                shown = shown[:4000] + f"... ({len(shown)} characters)"
            self.found.setdefault(name, []).append((elapsed, shown))


# -- frames: an independent reading of the wire rules ------------------------------------------


@dataclass(frozen=True)
class Limits:
    max_meta: int
    max_body: int
    #: ``None``: the decoder's default (one largest frame plus 1 MiB), more than any stream here.
    max_buffer: int | None

    def decoder(self, *, tight: bool) -> FrameDecoder:
        max_buffer = self.max_buffer if tight else None
        return FrameDecoder(self.max_meta, self.max_body, max_buffer=max_buffer)


@dataclass(frozen=True)
class Refusal:
    """What the reference reading expects of an error: the start of its wording, and the
    request id and direction once the header was read."""

    hint: str
    request_id: int | None = None
    is_request: bool = False


def reference_meta(block: bytes) -> dict[str, str] | None:
    """The meta map as ``frames.py``'s module docstring states the rules, or ``None`` if the
    block is refused: UTF-8, ``key\\nvalue`` items, one trailing newline tolerated, an odd
    number of items or an empty key refused, the last of duplicate keys wins."""
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        return {}
    items = text.split("\n")
    if len(items) % 2 or "" in items[0::2]:
        return None
    meta: dict[str, str] = {}
    for key, value in zip(items[0::2], items[1::2], strict=True):
        meta[key] = value
    return meta


def reference_decode(stream: bytes, limits: Limits) -> tuple[list[Frame], Refusal | None]:
    """The frames of a whole stream and how it is refused, if it is, read straight from the
    layout: magic and version are refused as soon as their bytes are in, the meta size once
    the 17-byte prefix is, the meta block and body size once both are in."""
    frames: list[Frame] = []
    pos = 0
    while True:
        rest = stream[pos:]
        if (len(rest) >= 1 and rest[0] != 0xF1) or (len(rest) >= 2 and rest[1] != 0xF1):
            return frames, Refusal("message magic number not correct")
        if len(rest) >= 4 and rest[3] >> 3 != 1:
            return frames, Refusal("message version not correct")
        if len(rest) < 17:
            return frames, None
        flags, version_status, serialize = rest[2], rest[3], rest[4]
        request_id = int.from_bytes(rest[5:13], "big")
        is_request = not flags & 0x01
        meta_size = int.from_bytes(rest[13:17], "big")
        if meta_size > limits.max_meta:
            return frames, Refusal(
                f"transport data content length over of limit, size: {meta_size} > "
                f"{limits.max_meta}",
                request_id,
                is_request,
            )
        if len(rest) < 21 + meta_size:
            return frames, None
        meta = reference_meta(rest[17 : 17 + meta_size])
        if meta is None:
            return frames, Refusal("decode meta data fail", request_id, is_request)
        body_size = int.from_bytes(rest[17 + meta_size : 21 + meta_size], "big")
        if body_size > limits.max_body:
            return frames, Refusal(
                f"transport data content length over of limit, size: {body_size} > "
                f"{limits.max_body}",
                request_id,
                is_request,
            )
        end = 21 + meta_size + body_size
        if len(rest) < end:
            return frames, None
        frames.append(
            Frame(
                request_id=request_id,
                response=bool(flags & 0x01),
                proxy=bool(flags & 0x02),
                oneway=bool(flags & 0x04),
                gzip=bool(flags & 0x08),
                heartbeat=bool(flags & 0x10),
                version=1,
                status=version_status & 0x07,
                serialization=serialize >> 3,
                meta=meta,
                body=rest[21 + meta_size : end],
            )
        )
        pos += end


def same_frames(left: list[Frame], right: list[Frame]) -> bool:
    """Equal frames with the meta in the same order (``==`` on a dict ignores the order)."""
    return left == right and all(
        list(a.meta.items()) == list(b.meta.items()) for a, b in zip(left, right, strict=True)
    )


def check_frame(frame: Frame, raw: bytes, limits: Limits) -> None:
    """A frame the decoder returned, and the bytes it was read from."""
    assert isinstance(frame, Frame), frame
    assert type(frame.body) is bytes
    assert len(frame.body) <= limits.max_body
    assert len(raw) - FRAME_OVERHEAD - len(frame.body) <= limits.max_meta
    assert frame.version == 1 and 0 <= frame.status <= 7 and 0 <= frame.serialization <= 31
    assert 0 <= frame.request_id <= _U64_MAX
    assert all(key and "\n" not in key + value for key, value in frame.meta.items())
    # Re-encoding gives the frame's own bytes, less what the encoder drops: the unused flag and
    # serialization bits, duplicate keys, a trailing newline, empty meta values.
    meta = encode_meta(frame.meta)
    expected = b"".join(
        (
            raw[:2],
            bytes((raw[2] & 0x1F, raw[3], raw[4] & 0xF8)),
            raw[5:13],
            len(meta).to_bytes(4, "big"),
            meta,
            len(frame.body).to_bytes(4, "big"),
            frame.body,
        )
    )
    again = encode_frame(frame)
    assert again == expected, (raw, again)
    assert len(meta) <= len(raw) - FRAME_OVERHEAD - len(frame.body)
    decoder = FrameDecoder()
    decoder.feed(again)
    back = list(decoder)
    kept = replace(frame, meta={key: value for key, value in frame.meta.items() if value})
    assert same_frames(back, [kept]) and decoder.buffered == 0
    # The accessors never raise anything but a FrameError that keeps the connection.
    info = frame.exception()
    assert info is None or isinstance(info, ErrorInfo)
    try:
        plain = frame.gunzip_body(limits.max_body)
    except FrameError as exc:
        assert frame.gzip and not exc.close
        assert exc.request_id == frame.request_id and exc.is_request == frame.is_request
        assert exc.reply_hint.startswith("decode gzip body fail")
    else:
        assert len(plain) <= limits.max_body
        if frame.gzip:
            assert type(plain) is bytes
        else:
            assert plain is frame.body


def check_final(decoder: FrameDecoder, error: FrameError) -> None:
    """A decoder error closes the connection, and the decoder keeps raising it."""
    assert error.close and error.reply_hint
    assert error.request_id is None or 0 <= error.request_id <= _U64_MAX
    for again in (decoder.next_frame, lambda: decoder.feed(b"\xf1"), lambda: list(decoder)):
        try:
            again()
        except FrameError as exc:
            assert exc.reply_hint == error.reply_hint
        else:
            raise AssertionError(f"the decoder went on after {error!r}")


def drain(
    decoder: FrameDecoder, chunks: list[bytes], stream: bytes, limits: Limits
) -> tuple[list[Frame], FrameError | None]:
    """Feed ``chunks``, reading every frame after each; the frames and the error, if any."""
    frames: list[Frame] = []
    fed = consumed = 0
    one_frame = FRAME_OVERHEAD + limits.max_meta + limits.max_body
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            fed += len(chunk)
            for frame in decoder:
                end = fed - decoder.buffered
                check_frame(frame, stream[consumed:end], limits)
                frames.append(frame)
                consumed = end
            assert decoder.buffered < one_frame, (decoder.buffered, one_frame)
            assert decoder.buffer.pending <= decoder.buffer.max_size
    except FrameError as exc:
        check_final(decoder, exc)
        return frames, exc
    return frames, None


def check_frame_stream(stream: bytes, cuts: list[int], limits: Limits) -> None:
    chunks = split(stream, cuts)
    expected, refusal = reference_decode(stream, limits)
    # A buffer that holds the whole stream: the reference's frames and error, however cut.
    frames, error = drain(limits.decoder(tight=False), chunks, stream, limits)
    assert same_frames(frames, expected), (frames, expected)
    if refusal is None:
        assert error is None, error
    else:
        assert error is not None, refusal
        assert error.reply_hint.startswith(refusal.hint), (error.reply_hint, refusal)
        assert error.request_id == refusal.request_id, (error.request_id, refusal)
        if refusal.request_id is not None:
            assert error.is_request == refusal.is_request
    if limits.max_buffer is None:
        return
    # The capped buffer: the same, or stopped early by the cap.
    capped, capped_error = drain(limits.decoder(tight=True), chunks, stream, limits)
    assert same_frames(capped, frames[: len(capped)])
    if capped_error is None or "buffer over of limit" not in capped_error.reply_hint:
        assert same_frames(capped, frames)
        assert (capped_error and capped_error.reply_hint) == (error and error.reply_hint)


def check_valid_frames(sent: list[Frame], original: bytes | None, cuts: list[int]) -> None:
    """``sent`` encoded back to back (``original``: the vectors they were read from, which are
    written canonically, so they re-encode byte for byte)."""
    stream = b"".join(encode_frame(frame) for frame in sent)
    if original is not None:
        assert stream == original
    widest_meta = max(len(encode_meta(frame.meta)) for frame in sent)
    widest_body = max(len(frame.body) for frame in sent)
    exact = Limits(widest_meta, widest_body, None)
    ways = [[stream], split(stream, cuts)]
    if len(stream) <= 1024:
        ways.append([stream[i : i + 1] for i in range(len(stream))])
    for chunks in ways:
        for limits in (ROOMY, exact):
            frames, error = drain(limits.decoder(tight=False), chunks, stream, limits)
            assert error is None, error
            assert same_frames(frames, sent)
    # One byte less than the widest meta or body: refused, at that frame.
    for smaller in (
        Limits(widest_meta - 1, widest_body, None),
        Limits(widest_meta, widest_body - 1, None),
    ):
        if min(smaller.max_meta, smaller.max_body) < 0:
            continue
        frames, error = drain(smaller.decoder(tight=False), split(stream, cuts), stream, smaller)
        assert error is not None and "over of limit" in error.reply_hint, error
        assert same_frames(frames, sent[: len(frames)])


# -- frame strategies --------------------------------------------------------------------------

meta_texts = st.text(st.characters(codec="utf-8", exclude_characters="\n"), min_size=1, max_size=40)
frames = st.builds(
    Frame,
    request_id=st.integers(0, _U64_MAX),
    response=st.booleans(),
    heartbeat=st.booleans(),
    oneway=st.booleans(),
    proxy=st.booleans(),
    gzip=st.booleans(),
    status=st.integers(0, 7),
    serialization=st.integers(0, 31),
    meta=st.dictionaries(meta_texts, meta_texts, max_size=8),
    body=st.binary(max_size=4096) | st.binary(max_size=64),
)

#: Bytes that mean something in a frame: magic, newline, header bytes of common frames.
FRAME_BYTES = [0x00, 0x01, 0x0A, 0xF1, 0xFF, 0x08, 0x09, 0x10, 0x12, 0x30, 0x80]
motan_garbage = st.lists(
    st.sampled_from(
        [
            *(b"\xf1\xf1", b"\xf1", b"\x00", b"\x01", b"\x08", b"\x09", b"\x10", b"\x12", b"\x30"),
            *(b"\x00\x00\x00", b"\x00\x00\x00\x03", b"\x00\x00\x00\x40", b"\xff\xff\xff\xff"),
            *(b"k\nv", b"\n", b"\xff", b"M_p\nsvc", b"M_e\n{}", b"\xc3", b"\xe2\x82"),
            *(b"\xf1\xf1\x00\x08\x30", b"\xf1\xf1\x01\x00\x30", b"\xf1\xf1\x00\x10\x30"),
        ]
    ),
    max_size=60,
).map(b"".join)
#: Mostly roomy limits (every frame here fits), else small ones.
limit_choices = st.builds(
    Limits,
    max_meta=st.sampled_from([1 << 16] * 5 + [0, 8, 48, 256, 4096]),
    max_body=st.sampled_from([1 << 16] * 5 + [0, 16, 64, 512, 8192]),
    max_buffer=st.sampled_from([None, 0, 64, 400, 2048, 65536]),
)


def _fields(pieces: list[bytes]) -> Iterator[tuple[str, int, int]]:
    """(kind, offset, current value) of each rewritable field of the pieces that parse as
    frame headers: the three header bytes, the meta size, the body size."""
    start = 0
    for piece in pieces:
        if len(piece) >= 17:
            for at in (2, 3, 4):
                yield "byte", start + at, piece[at]
            meta_size = int.from_bytes(piece[13:17], "big")
            yield "meta", start + 13, meta_size
            if 21 + meta_size <= len(piece):
                at = 17 + meta_size
                yield "body", start + at, int.from_bytes(piece[at : at + 4], "big")
        start += len(piece)


@st.composite
def frame_cases(draw: st.DrawFn) -> tuple[bytes, list[int], Limits]:
    limits = draw(limit_choices)
    source = draw(st.sampled_from(["frames"] * 3 + ["seeds"] * 3 + ["mixed"] * 2 + ["garbage"]))
    if source == "frames":
        pieces = [encode_frame(f) for f in draw(st.lists(frames, min_size=1, max_size=8))]
    elif source == "seeds":
        pieces = draw(st.lists(st.sampled_from(FRAME_SEEDS), min_size=1, max_size=6))
    elif source == "mixed":
        piece = st.one_of(
            frames.map(encode_frame), st.sampled_from(FRAME_SEEDS), motan_garbage, st.binary()
        )
        pieces = draw(st.lists(piece, min_size=1, max_size=8))
    else:
        pieces = [draw(st.one_of(motan_garbage, st.binary(max_size=512)))]
    stream = bytearray(b"".join(pieces))
    # Header bytes and size fields rewritten, sizes close to the truth or to the limits.
    fields = list(_fields(pieces))
    for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3])) if fields else 0):
        kind, at, value = draw(st.sampled_from(fields))
        if kind == "byte":
            stream[at] = draw(st.integers(0, 255))
            continue
        limit = limits.max_meta if kind == "meta" else limits.max_body
        new = draw(
            st.one_of(
                st.integers(value - 3, value + 3),
                st.integers(limit - 1, limit + 1),
                st.sampled_from([0, _U32_MAX]),
                st.integers(0, _U32_MAX),
            )
        )
        stream[at : at + 4] = min(max(new, 0), _U32_MAX).to_bytes(4, "big")
    data = bytes(stream)
    if draw(st.booleans()):
        # One piece mutated, so the frames before it stay intact, or (-1) the whole stream.
        which = draw(st.integers(-1, len(pieces) - 1))
        start = sum(len(piece) for piece in pieces[:which]) if which >= 0 else 0
        end = start + len(pieces[which]) if which >= 0 else len(data)
        middle = draw(mutation.mutated(data[start:end], FRAME_BYTES, sizes=True))
        data = data[:start] + middle + data[end:]
    if data and draw(st.integers(0, 3)) == 0:
        data = data[: len(data) - draw(st.integers(1, len(data)))]  # cut short, at the end
    return data, draw(cut_lists), limits


#: Limits no stream here reaches.
ROOMY = Limits(1 << 20, 1 << 20, None)
valid_cases: st.SearchStrategy[tuple[list[Frame], bytes | None]] = st.one_of(
    st.tuples(st.lists(frames, min_size=1, max_size=10), st.none()),
    st.lists(st.sampled_from(VALID_FRAME_SEEDS), min_size=1, max_size=8)
    .map(b"".join)
    .map(lambda stream: (reference_decode(stream, ROOMY)[0], stream)),
)


# -- gzip --------------------------------------------------------------------------------------


def gzip_member(
    plain: bytes,
    *,
    level: int = 6,
    extra: bytes | None = None,
    name: bytes | None = None,
    comment: bytes | None = None,
    header_crc: bool = False,
) -> bytes:
    """One RFC 1952 member with the optional header fields asked for."""
    flags = (
        (0x02 if header_crc else 0)
        | (0x04 if extra is not None else 0)
        | (0x08 if name is not None else 0)
        | (0x10 if comment is not None else 0)
    )
    head = b"\x1f\x8b\x08" + bytes([flags]) + b"\x01\x02\x03\x04\x00\xff"
    if extra is not None:
        head += len(extra).to_bytes(2, "little") + extra
    if name is not None:
        head += name + b"\x00"
    if comment is not None:
        head += comment + b"\x00"
    if header_crc:
        head += (zlib.crc32(head) & 0xFFFF).to_bytes(2, "little")
    deflate = zlib.compressobj(level, zlib.DEFLATED, -zlib.MAX_WBITS)
    raw = deflate.compress(plain) + deflate.flush()
    trailer = zlib.crc32(plain).to_bytes(4, "little") + (len(plain) & _U32_MAX).to_bytes(
        4, "little"
    )
    return head + raw + trailer


no_nul = st.binary(max_size=20).map(lambda b: b.replace(b"\x00", b"n"))
plains = st.one_of(
    st.binary(max_size=2048),
    st.integers(0, 1 << 20).map(bytes),  # zeros: a thousandfold expansion
    st.text(max_size=300).map(str.encode),
)


@st.composite
def gzip_members(draw: st.DrawFn) -> tuple[bytes, bytes]:
    plain = draw(plains)
    writer = draw(st.sampled_from(["motan", "python", "fields"]))
    if writer == "motan":
        return gzip_compress(plain, draw(st.integers(1, 9))), plain
    if writer == "python":
        return gzip.compress(plain, draw(st.integers(0, 9)), mtime=0), plain
    member = gzip_member(
        plain,
        level=draw(st.integers(0, 9)),
        extra=draw(st.none() | st.binary(max_size=20)),
        name=draw(st.none() | no_nul),
        comment=draw(st.none() | no_nul),
        header_crc=draw(st.booleans()),
    )
    return member, plain


#: Bytes that mean something in gzip: magic, method, flag bits, block types, padding.
GZIP_BYTES = [0x1F, 0x8B, 0x08, 0x00, 0xFF, 0x01, 0x02, 0x04, 0x10, 0x1E, 0x03]


@st.composite
def gzip_cases(draw: st.DrawFn) -> tuple[bytes, bytes | None, int]:
    """(body, its data if the body is intact, cap)."""
    source = draw(st.sampled_from(["members", "members", "seed", "empty", "garbage"]))
    plain: bytes | None
    if source == "members":
        members = draw(st.lists(gzip_members(), min_size=1, max_size=3))
        body = b"".join(member for member, _ in members)
        plain = b"".join(plain for _, plain in members)
    elif source == "seed":
        body = draw(st.sampled_from(GZIP_SEEDS))
        plain = gzip.decompress(body)
    elif source == "empty":
        body, plain = b"", b""
    else:
        body, plain = draw(st.binary(max_size=256)), None
    caps = [0, 1, 64, 4096, DEFAULT_MAX_BODY]
    if plain is not None:
        caps += [max(len(plain) - 1, 0), len(plain), len(plain) + 1]
    cap = draw(st.sampled_from(caps))
    if body and draw(st.integers(0, 2)) == 0:
        body = draw(mutation.mutated(body, GZIP_BYTES, sizes=True))
        plain = None
        if body and draw(st.integers(0, 3)) == 0:
            body = body[: len(body) - draw(st.integers(1, len(body)))]  # cut short, at the end
    return body, plain, cap


def gzip_refused(body: bytes, cap: int) -> RemoteProtocolError | None:
    try:
        gunzip(body, cap)
    except RemoteProtocolError as exc:
        return exc
    return None


def check_gunzip(body: bytes, plain: bytes | None, cap: int) -> None:
    try:
        out = gunzip(body, cap)
    except RemoteProtocolError as exc:
        assert type(exc) is RemoteProtocolError and not exc.close
        assert exc.reply_hint.startswith("decode gzip body fail: "), exc.reply_hint
        if plain is not None:
            assert len(plain) > cap and f"over {cap} bytes" in exc.reply_hint, exc.reply_hint
        error: RemoteProtocolError | None = exc
        out = None
    else:
        error = None
        assert type(out) is bytes and len(out) <= cap
        if plain is not None:
            assert out == plain
        # What it accepts, Python's own gzip reader reads the same.
        assert gzip.decompress(body) == out
        # The cap is exact: the data's own size passes, a byte less is refused.
        assert gunzip(body, len(out)) == out
        if out:
            smaller = gzip_refused(body, len(out) - 1)
            assert smaller is not None and "over" in smaller.reply_hint, smaller
    # The frame accessor says the same, with the frame's request id, keeping the connection.
    frame = Frame(request_id=7, response=True, gzip=True, body=body)
    try:
        via_frame = frame.gunzip_body(cap)
    except FrameError as exc:
        assert error is not None and exc.reply_hint == error.reply_hint
        assert exc.request_id == 7 and not exc.is_request and not exc.close
    else:
        assert error is None and via_frame == out


# -- Simple ------------------------------------------------------------------------------------

#: The bounds (inclusive) of each integer type. Compared, not ``in range(...)``: a range tests
#: an ``int`` subclass by iterating.
RANGES: dict[type, tuple[int, int]] = {
    Byte: (0, 255),
    Int16: (-(2**15), 2**15 - 1),
    Int32: (-(2**31), 2**31 - 1),
    int: (-(2**63), 2**63 - 1),
}


def check_value(value: Value) -> None:
    """A decoded value is of one of the model's types, within its tag's range."""
    kind = type(value)
    if kind in RANGES:
        low, high = RANGES[kind]
        assert low <= value <= high, value  # type: ignore[operator]
    elif kind in (list, StringArray):
        assert isinstance(value, list)
        for item in value:
            if kind is StringArray:
                assert type(item) is str
            check_value(item)
    elif kind in (dict, StringMap):
        assert isinstance(value, dict)
        for key, item in value.items():
            if kind is StringMap:
                assert type(key) is str and type(item) is str
            check_value(key)
            check_value(item)
    else:
        assert kind in (type(None), bool, float, Float32, str, bytes), kind


@contextlib.contextmanager
def stack_headroom(depth: int = 4000) -> Iterator[None]:
    """Room for the checks' own recursion (``same`` takes two frames per nested map) over
    bodies nested up to MAX_DEPTH_CEILING deep; the codec needs none of it."""
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(max(before, depth))
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


def check_simple(body: bytes, max_depth: int, max_items: int, form: str) -> None:
    with stack_headroom():
        _check_simple(body, max_depth, max_items, form)


def _check_simple(body: bytes, max_depth: int, max_items: int, form: str) -> None:
    forms: dict[str, bytes | bytearray | memoryview] = {
        "bytes": body,
        "bytearray": bytearray(body),
        "memoryview": memoryview(body),
    }
    data = forms[form]
    limits = {"max_depth": max_depth, "max_items": max_items}
    try:
        values = decode(data, **limits)
    except RemoteProtocolError as exc:
        assert not exc.close and exc.reply_hint.startswith("motan2 simple: "), exc.reply_hint
        try:
            decode_one(data, **limits)
        except RemoteProtocolError as also:
            assert not also.close
        else:
            raise AssertionError("decode refuses a body that decode_one accepts") from None
        return
    assert isinstance(values, list) and len(values) <= max(max_items, 0)
    for value in values:
        check_value(value)
    again = encode_many(values, max_depth=max_depth)
    assert len(again) <= len(body), (again, body)  # rewrites only shorten
    back = decode(again, **limits)
    assert same(back, values), (back, values)
    assert encode_many(back, max_depth=max_depth) == again
    # decode_one: the single value, None for an empty body, refused for several.
    if len(values) <= 1:
        assert same(decode_one(data, **limits), values[0] if values else None)
    else:
        try:
            decode_one(data, **limits)
        except RemoteProtocolError as exc:
            assert "unexpected bytes after the value" in exc.reply_hint, exc.reply_hint
        else:
            raise AssertionError("decode_one accepts several values")


def check_simple_values(values: list[Value], cut: int) -> None:
    for value in values:
        data = encode(value)
        back = decode_one(data)
        assert same(back, value), (back, value)
        assert encode(back) == data
    body = encode_many(values)
    assert body == b"".join(encode(value) for value in values)
    assert same(decode(body), values)
    assert same(decode(memoryview(bytearray(body))), values)
    # A cut on a value boundary gives the values before it; any other cut is refused.
    ends = list(itertools.accumulate((len(encode(value)) for value in values), initial=0))
    at = cut % (len(body) + 1)
    try:
        got = decode(body[:at])
    except RemoteProtocolError as exc:
        assert at not in ends and "cut short" in exc.reply_hint, (at, exc.reply_hint)
    else:
        assert at in ends and same(got, values[: ends.index(at)])


def nested(levels: int, tag: int) -> bytes:
    """``levels`` containers of ``tag`` (21 array, 20 map, with a null key at each level)
    inside one another."""
    body = b""
    for _ in range(levels):
        inner = b"\x00" + body if tag == 20 and body else body
        if tag == 20 and not body:
            inner = b"\x00\x00"
        body = bytes([tag]) + len(inner).to_bytes(4, "big") + inner
    return body


big_texts = st.text(max_size=12) | st.text(max_size=300)


def _containers(children: st.SearchStrategy[Value]) -> st.SearchStrategy[Value]:
    return st.one_of(
        st.lists(children, max_size=8),
        st.dictionaries(hashable_scalars, children, max_size=6),
    )


big_scalars: st.SearchStrategy[Value] = st.one_of(
    scalars,
    big_texts,
    st.binary(max_size=1024),
    st.dictionaries(big_texts, big_texts, max_size=8).map(StringMap),
    st.lists(big_texts, max_size=8).map(StringArray),
)
#: Any Simple value, nested, bigger than the suite's.
big_values: st.SearchStrategy[Value] = st.recursive(big_scalars, _containers, max_leaves=40)


@st.composite
def simple_cases(draw: st.DrawFn) -> tuple[bytes, int, int, str]:
    # Half the time the defaults, half the time limits that bite.
    max_depth = draw(st.just(DEFAULT_MAX_DEPTH) | st.sampled_from([0, 1, 2, 8, MAX_DEPTH_CEILING]))
    max_items = draw(st.just(DEFAULT_MAX_ITEMS) | st.sampled_from([0, 1, 10, 200, 5000]))
    source = draw(st.sampled_from(["values", "seeds", "garbage", "deep"]))
    if source == "values":
        body = encode_many(draw(st.lists(big_values, min_size=1, max_size=4)))
    elif source == "seeds":
        body = b"".join(draw(st.lists(st.sampled_from(SIMPLE_SEEDS), min_size=1, max_size=3)))
    elif source == "garbage":
        body = draw(st.one_of(simple_alphabet_garbage, st.binary(max_size=512)))
    else:
        levels = draw(st.integers(max(max_depth - 1, 0), max_depth + 1))
        body = nested(levels, draw(st.sampled_from([20, 21])))
    for _ in range(draw(st.integers(0, 2))):
        body = draw(simple_mutated(body))
    return body, max_depth, max_items, draw(st.sampled_from(["bytes", "bytearray", "memoryview"]))


# -- ErrorInfo ---------------------------------------------------------------------------------


def check_error_info(text: str) -> None:
    info = ErrorInfo.from_json(text)
    if info is None:
        return
    assert type(info.errcode) is int and type(info.errtype) is int
    assert type(info.errmsg) is str
    try:
        info.errmsg.encode("utf-8")
        written = info.to_json()
    except (UnicodeEncodeError, ValueError):
        return  # a lone surrogate from a \\ud800 escape, or a number of over 4300 digits
    assert "\n" not in written and not any(c in written for c in "<>&\u2028\u2029")
    assert encode_meta({META_EXCEPTION: written})
    assert ErrorInfo.from_json(written) == info


json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=40),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["errcode", "errmsg", "errtype", "other"]) | st.text(max_size=8),
            children,
            max_size=5,
        )
    ),
    max_leaves=20,
)


def _mutate_text(text: str) -> st.SearchStrategy[str]:
    return mutation.mutated(text.encode(), list(b'{}[]",:0-9\\tfnue')).map(
        lambda raw: raw.decode("utf-8", "replace")
    )


error_texts = st.one_of(
    st.sampled_from(ERROR_SEEDS),
    st.sampled_from(ERROR_SEEDS).flatmap(_mutate_text),
    json_values.map(lambda value: json.dumps(value, ensure_ascii=False)),
    st.text(max_size=200),
    st.tuples(st.integers(1, 100_000), st.sampled_from(["[", "{", '{"a":'])).map(
        lambda pair: pair[1] * pair[0]
    ),
    st.builds(ErrorInfo, st.integers(), st.text(max_size=60), st.integers(-(2**70), 2**70)).map(
        ErrorInfo.to_json
    ),
)


# -- the properties ----------------------------------------------------------------------------

Target = Callable[[], None]


def build(
    examples: int,
    *,
    seed: int | None = None,
    derandomize: bool = False,
    slow: SlowLog | None = None,
) -> list[Target]:
    """The properties, each a function that runs ``examples`` examples and raises on the first
    failure (after hypothesis has shrunk it) or when examples were too slow."""
    log = slow if slow is not None else SlowLog()
    config = settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=derandomize,
        print_blob=True,
        suppress_health_check=list(HealthCheck),
    )

    @config
    @given(frame_cases())
    def fuzz_frame_streams(case: tuple[bytes, list[int], Limits]) -> None:
        log.run("fuzz_frame_streams", check_frame_stream, *case)

    @config
    @given(valid_cases, cut_lists)
    def fuzz_valid_frames(case: tuple[list[Frame], bytes | None], cuts: list[int]) -> None:
        log.run("fuzz_valid_frames", check_valid_frames, *case, cuts)

    @config
    @given(gzip_cases())
    def fuzz_gunzip(case: tuple[bytes, bytes | None, int]) -> None:
        log.run("fuzz_gunzip", check_gunzip, *case)

    @config
    @given(simple_cases())
    def fuzz_simple_bodies(case: tuple[bytes, int, int, str]) -> None:
        log.run("fuzz_simple_bodies", check_simple, *case)

    @config
    @given(st.lists(big_values, max_size=3), st.integers(0, 1 << 16))
    def fuzz_simple_values(values: list[Value], cut: int) -> None:
        log.run("fuzz_simple_values", check_simple_values, values, cut)

    @config
    @given(error_texts)
    def fuzz_error_info(text: str) -> None:
        log.run("fuzz_error_info", check_error_info, text)

    properties = [
        fuzz_frame_streams,
        fuzz_valid_frames,
        fuzz_gunzip,
        fuzz_simple_bodies,
        fuzz_simple_values,
        fuzz_error_info,
    ]
    targets: list[Target] = []
    for prop in properties:
        test = hypothesis_seed(seed)(prop) if seed is not None else prop
        targets.append(_with_time_bound(prop.__name__, test, log))
    return targets


class SlowExamples(AssertionError):
    """Examples of a property took longer than the time bound."""


def _with_time_bound(name: str, test: Callable[[], None], log: SlowLog) -> Target:
    def target() -> None:
        log.found.pop(name, None)
        test()
        if found := log.found.get(name):
            slowest = sorted(found, reverse=True)[:5]
            shown = "\n  ".join(f"{seconds:.2f} s: {args}" for seconds, args in slowest)
            raise SlowExamples(
                f"{len(found)} example(s) over {log.limit} s (the slowest five):\n  {shown}"
            )

    target.__name__ = target.__qualname__ = name
    return target


def main() -> int:
    args = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    args.add_argument("--examples", type=int, default=2000, help="examples per property")
    args.add_argument("--seed", type=int, default=None, help="hypothesis seed, to reproduce")
    args.add_argument(
        "--slow", type=float, default=SLOW_SECONDS, help="seconds one example may take"
    )
    args.add_argument(
        "--property", action="append", default=None, help="run only this one (repeatable)"
    )
    options = args.parse_args()
    chosen_seed = options.seed if options.seed is not None else random.randrange(2**32)
    sys.stdout.write(f"seed {chosen_seed} (reproduce with --seed {chosen_seed})\n")
    targets = build(options.examples, seed=chosen_seed, slow=SlowLog(options.slow))
    if options.property:
        wanted = {name if name.startswith("fuzz_") else f"fuzz_{name}" for name in options.property}
        unknown = wanted - {target.__name__ for target in targets}
        if unknown:
            args.error(f"no such property: {', '.join(sorted(unknown))}")
        targets = [target for target in targets if target.__name__ in wanted]
    failed = False
    for target in targets:
        started = time.perf_counter()
        try:
            target()
        except Exception as exc:  # report every target, then fail
            failed = True
            sys.stdout.flush()
            traceback.print_exception(exc, limit=-4)
            elapsed = time.perf_counter() - started
            sys.stderr.write(
                f"FAIL {target.__name__}: {type(exc).__name__}: {exc} ({elapsed:.1f} s)\n"
            )
            sys.stderr.flush()
            continue
        elapsed = time.perf_counter() - started
        sys.stdout.write(f"ok   {target.__name__}: {options.examples} examples, {elapsed:.1f} s\n")
        sys.stdout.flush()
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
