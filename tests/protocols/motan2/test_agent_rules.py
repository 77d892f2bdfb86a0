"""The Motan2 agent's sans-IO rules (:mod:`resmesh.protocols.motan2.agent`) and the raw reading
of frames a relay does (:meth:`FrameDecoder.next_raw`).

What a forwarded request looks like (proxy flag, request id 0, ``M_rid`` and ``M_s`` filled,
the body byte for byte), how an answer counts for its node, the replies the agent makes itself,
and that reading a stream raw gives the same frames, and the same errors, as decoding it.
Expectations come from ``protocols/motan2.md`` and the golden vectors
(``protocols/motan2-vectors.json``), never from the code under test.
"""

from __future__ import annotations

import itertools
import struct
from dataclasses import replace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.call import Outcome
from resmesh.protocols.motan2 import bodies
from resmesh.protocols.motan2.agent import (
    ERRCODE_AGENT,
    ERRCODE_REFUSED,
    Request,
    agent_error,
    empty_reply,
    fallback_reply,
    heartbeat_reply,
    raw_outcome,
    with_request_id,
)
from resmesh.protocols.motan2.frames import (
    ERRTYPE_BUSINESS,
    ERRTYPE_FRAMEWORK,
    ERRTYPE_SERVICE,
    META_EXCEPTION,
    META_REQUEST_ID,
    META_SOURCE,
    NEED_DATA,
    STATUS_EXCEPTION,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameError,
    NeedData,
    RawFrame,
    Serialization,
    encode_frame,
    exception_response,
    request,
    response,
)
from tests.protocols.motan2.motan2_support import VECTORS

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
U64 = st.integers(0, 2**64 - 1)
MESSAGES = [v for v in VECTORS if v["kind"] == "motan2-message"]
INVALID = [v for v in VECTORS if v["kind"] == "motan2-message-invalid"]
BY_NAME = {v["name"]: v for v in VECTORS}


def decode(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_frame()
    assert isinstance(frame, Frame)
    assert decoder.buffered == 0
    return frame


def raw(data: bytes) -> RawFrame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frame = decoder.next_raw()
    assert isinstance(frame, RawFrame)
    assert decoder.buffered == 0
    return frame


def signed(request_id: int) -> str:
    """A u64 as motan-go prints it into ``M_rid``: the int64 with the same bits."""
    return str(struct.unpack(">q", struct.pack(">Q", request_id))[0])


# -- Request -----------------------------------------------------------------------------------


def test_request_names_what_its_meta_says() -> None:
    frame = request(9, "svc.Echo", "echo", b"\x01", group="g1", version="1.0")
    call = Request(frame)
    assert (call.service, call.method, call.group, call.version) == (
        "svc.Echo",
        "echo",
        "g1",
        "1.0",
    )
    assert call.frame is frame
    bare = Request(Frame(request_id=1))
    assert (bare.service, bare.method, bare.group, bare.version) == ("", "", "", "")


@pytest.mark.parametrize(
    ("request_id", "printed"),
    [
        (0, "0"),
        (1, "1"),
        (2**63 - 1, "9223372036854775807"),
        (2**63, "-9223372036854775808"),
        (2**64 - 2, "-2"),
        (2**64 - 1, "-1"),
    ],
)
def test_upstream_adds_the_callers_id_as_a_signed_int64(request_id: int, printed: str) -> None:
    frame = request(request_id, "svc", "m", b"body", group="g")
    sent = decode(Request(frame).upstream("app"))
    assert sent.meta[META_REQUEST_ID] == printed
    assert sent.request_id == 0 and sent.proxy


def test_upstream_keeps_what_the_caller_set() -> None:
    meta = {META_REQUEST_ID: "77", META_SOURCE: "caller-app", "x": "y"}
    frame = request(5, "svc", "m", b"\x09\x02", meta=meta)
    data = Request(frame).upstream("agent-app")
    sent = decode(data)
    assert sent.meta == frame.meta  # nothing added, nothing changed
    assert list(sent.meta) == list(frame.meta)  # same order
    assert encode_frame(replace(frame, request_id=0, proxy=True)) == data


def test_upstream_adds_no_source_when_it_has_none() -> None:
    frame = request(5, "svc", "m")
    sent = decode(Request(frame).upstream(""))
    assert META_SOURCE not in sent.meta
    assert list(sent.meta) == [*frame.meta, META_REQUEST_ID]


meta_text = st.text(min_size=1, max_size=10).filter(lambda s: "\n" not in s)
request_frames = st.builds(
    Frame,
    request_id=U64,
    oneway=st.booleans(),
    proxy=st.booleans(),
    gzip=st.booleans(),
    serialization=st.integers(0, 31),
    meta=st.dictionaries(
        st.one_of(meta_text, st.sampled_from([META_REQUEST_ID, META_SOURCE, "M_p", "M_g"])),
        meta_text,
        max_size=6,
    ),
    body=st.binary(max_size=64),
)


@FAST
@given(request_frames, st.sampled_from(["", "app", "agent-a"]))
def test_upstream_rules_for_any_request(frame: Frame, source: str) -> None:
    """Proxy flag set, id 0, ``M_rid`` added when absent (kept when present), ``M_s`` added
    when absent and the source is not empty; every other key in its place; the body and
    every other header field as received."""
    sent = decode(Request(frame).upstream(source))
    assert sent.request_id == 0 and sent.proxy
    assert replace(sent, request_id=frame.request_id, proxy=frame.proxy, meta=frame.meta) == frame
    assert sent.body == frame.body
    expected = dict(frame.meta)
    expected.setdefault(META_REQUEST_ID, signed(frame.request_id))
    if source:
        expected.setdefault(META_SOURCE, source)
    assert list(sent.meta.items()) == list(expected.items())


def test_upstream_fills_an_empty_rid_and_source() -> None:
    # A peer may send "M_rid\n\n...": decode_meta keeps the empty value, and frames.py says an
    # empty value is indistinguishable from an absent one for every reader.
    frame = decode(encode_frame(request(42, "svc", "m")))
    frame = replace(frame, meta={**frame.meta, META_REQUEST_ID: "", META_SOURCE: ""})
    sent = decode(Request(frame).upstream("app"))
    assert sent.meta.get(META_REQUEST_ID) == "42"
    assert sent.meta.get(META_SOURCE) == "app"


# -- with_request_id ---------------------------------------------------------------------------

any_frames = st.builds(
    Frame,
    request_id=U64,
    response=st.booleans(),
    heartbeat=st.booleans(),
    oneway=st.booleans(),
    proxy=st.booleans(),
    gzip=st.booleans(),
    status=st.integers(0, 7),
    serialization=st.integers(0, 31),
    meta=st.dictionaries(meta_text, meta_text, max_size=5),
    body=st.binary(max_size=80),
)


@FAST
@given(any_frames, U64, st.booleans())
def test_with_request_id_changes_only_the_id(frame: Frame, new_id: int, as_array: bool) -> None:
    data = encode_frame(frame)
    changed = with_request_id(bytearray(data) if as_array else data, new_id)
    assert isinstance(changed, bytes)
    assert len(changed) == len(data)
    assert decode(changed) == replace(frame, request_id=new_id)
    assert changed[:5] == data[:5] and changed[13:] == data[13:]


# -- raw_outcome -------------------------------------------------------------------------------


def _exception(errtype: int) -> bytes:
    return encode_frame(exception_response(3, 500, "boom", errtype))


@pytest.mark.parametrize(
    ("data", "outcome"),
    [
        (encode_frame(response(3, b"\x01\x00\x00\x00\x01x")), Outcome.OK),
        (encode_frame(response(3)), Outcome.OK),
        (_exception(ERRTYPE_BUSINESS), Outcome.APP_ERROR),
        (_exception(ERRTYPE_SERVICE), Outcome.UPSTREAM_ERROR),
        (_exception(ERRTYPE_FRAMEWORK), Outcome.UPSTREAM_ERROR),
        # M_e missing, not JSON, not an object, without errtype (motan-go's zero value: 0)
        (encode_frame(Frame(request_id=3, response=True, status=1)), Outcome.UPSTREAM_ERROR),
        (
            encode_frame(
                Frame(request_id=3, response=True, status=1, meta={META_EXCEPTION: "{oops"})
            ),
            Outcome.UPSTREAM_ERROR,
        ),
        (
            encode_frame(
                Frame(request_id=3, response=True, status=1, meta={META_EXCEPTION: "[2]"})
            ),
            Outcome.UPSTREAM_ERROR,
        ),
        (
            encode_frame(
                Frame(request_id=3, response=True, status=1, meta={META_EXCEPTION: '{"x":1}'})
            ),
            Outcome.UPSTREAM_ERROR,
        ),
    ],
    ids=[
        "normal",
        "null",
        "business",
        "service",
        "framework",
        "no-M_e",
        "M_e-not-json",
        "M_e-not-object",
        "M_e-no-errtype",
    ],
)
def test_raw_outcome(data: bytes, outcome: Outcome) -> None:
    assert raw_outcome(raw(data)) is outcome


def test_raw_outcome_of_an_exception_with_malformed_meta() -> None:
    """An odd number of meta items: next_raw does not read the meta, the outcome does."""
    meta = b"M_e\n" + ErrorInfo(1, "x", ERRTYPE_BUSINESS).to_json().encode() + b"\nstray"
    head = struct.pack(">HBBBQI", 0xF1F1, 0x01, 0x09, 0x30, 3, len(meta))
    reply = raw(head + meta + struct.pack(">I", 0))
    assert reply.status == STATUS_EXCEPTION
    with pytest.raises(FrameError, match="not paired"):
        reply.decoded()
    assert raw_outcome(reply) is Outcome.UPSTREAM_ERROR


@pytest.mark.parametrize(
    ("name", "outcome"),
    [
        ("msg_response_ok", Outcome.OK),
        ("msg_response_exception", Outcome.APP_ERROR),
        ("msg_response_exception_framework", Outcome.UPSTREAM_ERROR),
        ("java_msg_response_biz_exception", Outcome.APP_ERROR),
        ("java_msg_response_service_exception", Outcome.UPSTREAM_ERROR),
        ("wire_server_exception_panic", Outcome.UPSTREAM_ERROR),
        ("wire_server_response_to_agent", Outcome.OK),
        ("probe_server_unknown_serialization", Outcome.UPSTREAM_ERROR),
    ],
)
def test_raw_outcome_of_real_replies(name: str, outcome: Outcome) -> None:
    assert raw_outcome(raw(bytes.fromhex(BY_NAME[name]["hex"]))) is outcome


# -- the agent's own replies -------------------------------------------------------------------


@pytest.mark.parametrize("request_id", [0, 7, 2**64 - 1])
def test_agent_error(request_id: int) -> None:
    frame = decode(agent_error(request_id, "cluster not found. cluster: x <&>"))
    assert frame.request_id == request_id
    assert frame.response and frame.proxy and frame.is_exception and not frame.heartbeat
    assert frame.body == b""
    assert frame.exception() == ErrorInfo(ERRCODE_AGENT, "cluster not found. cluster: x <&>", 1)
    refused = decode(agent_error(1, "limited", ERRCODE_REFUSED)).exception()
    assert refused == ErrorInfo(503, "limited", ERRTYPE_SERVICE)
    assert raw_outcome(raw(agent_error(1, "x"))) is Outcome.UPSTREAM_ERROR


@pytest.mark.parametrize("serialization", [Serialization.SIMPLE, Serialization.MSGPACK, 0, 19])
def test_empty_reply_is_null(serialization: int) -> None:
    frame = decode(empty_reply(12, serialization))
    assert frame.request_id == 12 and frame.response and frame.proxy
    assert frame.status == 0 and frame.body == b"" and frame.serialization == serialization
    assert bodies.decode_result(serialization, frame.body) is None


@pytest.mark.parametrize("serialization", [Serialization.SIMPLE, Serialization.MSGPACK])
@pytest.mark.parametrize(
    ("value", "text"), [(b"n/a", "n/a"), (b"", ""), ("h\u00e9llo".encode(), "h\u00e9llo")]
)
def test_fallback_reply_decodes_to_the_value(serialization: int, value: bytes, text: str) -> None:
    frame = decode(fallback_reply(99, serialization, value))
    assert frame.request_id == 99 and frame.response and frame.proxy and frame.status == 0
    assert frame.serialization == serialization
    assert bodies.decode_result(serialization, frame.body) == text


def test_fallback_reply_of_bytes_not_utf8_is_a_string() -> None:
    frame = decode(fallback_reply(1, Serialization.SIMPLE, b"a\xffb"))
    assert bodies.decode_result(Serialization.SIMPLE, frame.body) == "a\ufffdb"


@pytest.mark.parametrize("serialization", [0, 1, 2, 5, 8, 31])
def test_fallback_reply_in_an_unsupported_serialization(serialization: int) -> None:
    frame = decode(fallback_reply(5, serialization, b"n/a"))
    assert frame.request_id == 5 and frame.response and frame.proxy and frame.is_exception
    info = frame.exception()
    assert info is not None
    assert "message serialize not found" in info.errmsg
    assert info.errcode == 500 and info.errtype == ERRTYPE_SERVICE


@pytest.mark.parametrize("request_id", [0, 1234, 2**64 - 1])
def test_heartbeat_reply(request_id: int) -> None:
    data = heartbeat_reply(request_id)
    assert data == bytes.fromhex("f1f1130830") + request_id.to_bytes(8, "big") + bytes(8)
    if request_id == 1234:
        assert data.hex() == BY_NAME["probe_server_heartbeat_reply"]["hex"]


# -- FrameDecoder.next_raw ---------------------------------------------------------------------


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)] or [b""]


def same_error(left: FrameError, right: FrameError) -> bool:
    return (type(left), left.reply_hint, left.request_id, left.is_request) == (
        type(right),
        right.reply_hint,
        right.request_id,
        right.is_request,
    )


def read_all(
    chunks: list[bytes], whole: bool, **limits: Any
) -> tuple[list[Frame | RawFrame | NeedData], FrameError | None]:
    """Every result of the decoder over ``chunks`` (``NEED_DATA`` marks each chunk's end),
    and the error it ended with."""
    decoder = FrameDecoder(**limits)
    out: list[Frame | RawFrame | NeedData] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while True:
                item = decoder.next_frame() if whole else decoder.next_raw()
                out.append(item)
                if item is NEED_DATA:
                    break
    except FrameError as exc:
        with pytest.raises(FrameError) as again:  # errors are final
            decoder.next_raw() if not whole else decoder.next_frame()
        assert again.value is exc
        return out, exc
    return out, None


def check_raw_matches(chunks: list[bytes], **limits: Any) -> None:
    """next_raw over ``chunks`` gives what next_frame gives, up to next_frame's first error; a
    malformed meta block is the one error next_raw leaves to :meth:`RawFrame.decoded`.

    Each raw frame's data is its bytes as received (so the raw frames concatenate to the
    stream's start), which re-encode the same once the unused header bits are cleared
    (flag bits 0xE0 and the serialization byte's low 3 bits, which no reader keeps)."""
    frames, frame_error = read_all(chunks, True, **limits)
    raws, raw_error = read_all(chunks, False, **limits)
    stream = b"".join(chunks)
    received = b"".join(r.data for r in raws if isinstance(r, RawFrame))
    assert stream.startswith(received)
    for index, frame in enumerate(frames):
        item = raws[index]
        if frame is NEED_DATA:
            assert item is NEED_DATA
            continue
        assert isinstance(frame, Frame) and isinstance(item, RawFrame)
        assert item.decoded() == frame
        assert isinstance(item.data, bytes)
        canonical = bytearray(item.data)
        canonical[2] &= 0x1F
        canonical[4] &= 0xF8
        encoded = encode_frame(frame)
        if bytes(canonical) != encoded:
            # A mutated meta block may decode leniently (the decoder drops a trailing
            # separator): then it is longer than the canonical one, never shorter.
            assert len(canonical) > len(encoded)
        assert (item.flags & 0x1F, item.status, item.request_id) == (
            frame.flags,
            frame.status,
            frame.request_id,
        )
    if frame_error is None:
        assert raw_error is None and len(raws) == len(frames)
    elif "decode meta data fail" in frame_error.reply_hint:
        # next_frame refuses the meta as soon as it and the body size are in; next_raw reads
        # on to the body: it may need more bytes, or find the body size over the limit.
        rest = [r for r in raws[len(frames) :] if r is not NEED_DATA]
        if not rest:
            if raw_error is not None:
                assert "over of limit" in raw_error.reply_hint
                assert raw_error.request_id == frame_error.request_id
            return
        item = rest[0]
        assert isinstance(item, RawFrame)
        with pytest.raises(FrameError) as caught:
            item.decoded()
        assert caught.value.reply_hint == frame_error.reply_hint
        assert caught.value.request_id == frame_error.request_id
    else:
        assert raw_error is not None and len(raws) == len(frames)
        assert same_error(raw_error, frame_error)


cut_lists = st.lists(st.integers(0, 1 << 12), max_size=10)


@FAST
@given(st.lists(any_frames, min_size=1, max_size=6), cut_lists)
def test_next_raw_reads_any_stream_in_any_chunks(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in sent)
    check_raw_matches(split(stream, cuts))
    raws, error = read_all([stream], False)
    assert error is None
    assert [r.data for r in raws if isinstance(r, RawFrame)] == [encode_frame(f) for f in sent]


small_frames = st.builds(
    Frame,
    request_id=U64,
    response=st.booleans(),
    status=st.integers(0, 7),
    meta=st.dictionaries(meta_text, meta_text, max_size=2),
    body=st.binary(max_size=40),
)
SMALL = {"max_meta": 24, "max_body": 32, "max_buffer": 300}


@FAST
@given(st.data())
def test_next_raw_errors_as_next_frame_on_mutated_streams(data: st.DataObject) -> None:
    sent = data.draw(st.lists(small_frames, min_size=1, max_size=4))
    stream = bytearray(b"".join(encode_frame(f) for f in sent))
    for _ in range(data.draw(st.integers(0, 4))):
        if stream:
            at = data.draw(st.integers(0, len(stream) - 1))
            stream[at] = data.draw(st.sampled_from([0x00, 0x0A, 0xF1, 0xFF, 0x08, 0x30, 0x80]))
    check_raw_matches(split(bytes(stream), data.draw(cut_lists)), **SMALL)


@FAST
@given(st.binary(max_size=100), cut_lists)
def test_next_raw_errors_as_next_frame_on_garbage(garbage: bytes, cuts: list[int]) -> None:
    check_raw_matches(split(garbage, cuts), **SMALL)
    prefixed = bytes.fromhex("f1f10008300000000000000001") + garbage
    check_raw_matches(split(prefixed, cuts), **SMALL)


@pytest.mark.parametrize("vector", MESSAGES, ids=[v["name"] for v in MESSAGES])
def test_next_raw_of_every_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    check_raw_matches([data])
    check_raw_matches([data[i : i + 1] for i in range(len(data))])
    assert raw(data).data == data


@pytest.mark.parametrize("vector", INVALID, ids=[v["name"] for v in INVALID])
def test_next_raw_of_every_invalid_vector(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    check_raw_matches([data])
    check_raw_matches([data[i : i + 1] for i in range(len(data))])


def test_next_raw_refuses_over_limit_sizes_with_the_request_id() -> None:
    head = struct.pack(">HBBBQI", 0xF1F1, 0x00, 0x08, 0x30, 77, 101)
    decoder = FrameDecoder(max_meta=100, max_body=200)
    decoder.feed(head)
    with pytest.raises(FrameError, match="size: 101 > 100") as caught:
        decoder.next_raw()
    assert caught.value.request_id == 77 and caught.value.is_request

    decoder = FrameDecoder(max_meta=100, max_body=200)
    head = struct.pack(">HBBBQI", 0xF1F1, 0x01, 0x08, 0x30, 78, 3)
    decoder.feed(head + b"k\nv" + struct.pack(">I", 201))
    with pytest.raises(FrameError, match="size: 201 > 200") as caught:
        decoder.next_raw()
    assert caught.value.request_id == 78 and not caught.value.is_request

    decoder = FrameDecoder()
    decoder.feed(b"\xf1\xf0")
    with pytest.raises(FrameError, match="magic number not correct") as caught:
        decoder.next_raw()
    assert caught.value.request_id is None


@settings(max_examples=200, deadline=None)
@given(cuts=st.lists(st.integers(1, 200_000), max_size=12))
def test_a_relay_skips_a_body_over_the_limit_and_reads_on(cuts: list[int]) -> None:
    """With ``skip_big_bodies``, a frame whose body is over the limit comes out as its
    header with empty data, its body dropped as it arrives, and the frames after it are read
    as usual, however the stream is cut."""
    small = encode_frame(response(1, b"a"))
    big = encode_frame(response(2, b"b" * 150_000))
    after = encode_frame(response(3, b"c" * 500))
    stream = small + big + after
    decoder = FrameDecoder(1024, 1024, skip_big_bodies=True)
    out: list[RawFrame] = []
    position = 0
    for cut in [*sorted(cuts), len(stream)]:
        if cut <= position:
            continue
        decoder.feed(stream[position:cut])
        position = cut
        while (raw := decoder.next_raw()) is not NEED_DATA:
            assert isinstance(raw, RawFrame)
            out.append(raw)
        assert decoder.buffered <= 1024 * 3 + 200_000  # never the whole big body at once
    assert [(r.request_id, r.data) for r in out] == [(1, small), (2, b""), (3, after)]
