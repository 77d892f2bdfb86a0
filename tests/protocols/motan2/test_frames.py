"""Motan2 frames: golden vectors from motan-go, Java motan and motan-php, limits, gzip, fuzzing.

The vectors (``protocols/motan2-vectors.json``) were produced by running the upstream codecs and
capturing real peers; the expectations below are read from their ``decoded`` objects, never from
the codec under test. Three shapes of ``decoded`` exist: motan-go generator vectors (flag booleans,
``meta`` map plus ``meta_wire_order``, ``body_hex``), wire captures and probes (``flags`` list,
``meta`` as ordered pairs, ``body_len``), and the Java/PHP harness vectors, whose sparse
``decoded`` comes with a full ``decoded_by_spec_decoder`` in the second shape.
"""

from __future__ import annotations

import itertools
import json
import struct
import zlib
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import LocalProtocolError, RemoteProtocolError
from resmesh.protocols.motan2.frames import (
    DEFAULT_MAX_BODY,
    DEFAULT_MAX_META,
    DEFAULT_READ_AHEAD,
    ERRTYPE_BUSINESS,
    ERRTYPE_SERVICE,
    FRAME_OVERHEAD,
    NEED_DATA,
    ErrorInfo,
    Frame,
    FrameDecoder,
    FrameError,
    Serialization,
    decode_meta,
    encode_frame,
    encode_meta,
    exception_response,
    gunzip,
    gzip_compress,
    heartbeat_request,
    heartbeat_response,
    request,
    response,
)
from tests.protocols.motan2.motan2_support import VECTORS
from tests.support import mutation

MESSAGES = [v for v in VECTORS if v["kind"] == "motan2-message"]
INVALID = {v["name"]: v for v in VECTORS if v["kind"] == "motan2-message-invalid"}
BY_NAME = {v["name"]: v for v in VECTORS}
WITH_REQUEST = [v for v in MESSAGES if "request_hex" in v]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

_FLAG_NAMES = {"response", "heartbeat", "oneway", "proxy", "gzip"}


def _ids(vectors: list[dict[str, Any]]) -> list[str]:
    return [v["name"] for v in vectors]


def decode_all(chunks: list[bytes], decoder: FrameDecoder | None = None) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    frames: list[Frame] = []
    for chunk in chunks:
        decoder.feed(chunk)
        frames.extend(decoder)
    return frames


def decode_one(data: bytes) -> Frame:
    decoder = FrameDecoder()
    decoder.feed(data)
    frames = list(decoder)
    assert len(frames) == 1
    assert decoder.buffered == 0
    return frames[0]


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (modulo its length, sorted, deduplicated)."""
    if not data:
        return [data]
    points = sorted({cut % (len(data) + 1) for cut in cuts} | {0, len(data)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


# -- expectations from the vectors -------------------------------------------------------------


def expectations(vector: dict[str, Any]) -> list[dict[str, Any]]:
    """The header fields, meta pairs (wire order) and body facts each full ``decoded`` shape of
    ``vector`` states, normalised to one form."""
    shapes = [vector["decoded"], vector.get("decoded_by_spec_decoder")]
    out = []
    for shape in shapes:
        if not shape:
            continue
        if "msg_type_byte" in shape:  # motan-go generator shape
            order = shape["meta_wire_order"] or []
            assert sorted(order) == sorted(shape["meta"])
            flags = {name for name in _FLAG_NAMES - {"response"} if shape[name]}
            if not shape["request"]:
                flags.add("response")
            assert int(shape["version_status"], 16) == shape["version"] << 3 | shape["status"]
            assert int(shape["serialize_byte"], 16) == shape["serialization"] << 3
            out.append(
                {
                    "msg_type": int(shape["msg_type_byte"], 16),
                    "flags": flags,
                    "version": shape["version"],
                    "status": shape["status"],
                    "serialization": shape["serialization"],
                    "request_id": shape["request_id"],
                    "meta": [(key, shape["meta"][key]) for key in order],
                    "body_len": shape["body_len"],
                    "body": bytes.fromhex(shape["body_hex"]),
                    "gunzipped": bytes.fromhex(shape["body_gunzipped_hex"])
                    if "body_gunzipped_hex" in shape
                    else None,
                }
            )
        elif "flags" in shape:  # wire capture / spec decoder shape
            flags = set(shape["flags"]) - {"request"}
            assert ("request" in shape["flags"]) != ("response" in flags)
            assert shape["serialize_low_bits"] == 0
            out.append(
                {
                    "msg_type": int(shape["msg_type"], 16),
                    "flags": flags,
                    "version": shape["version"],
                    "status": shape["status"],
                    "serialization": shape["serialization"],
                    "request_id": shape["request_id"],
                    "meta": [tuple(pair) for pair in shape["meta"]],
                    "body_len": shape["body_len"],
                    "gunzipped_len": shape.get("gunzipped_len"),
                    "simple_values": shape.get("body"),
                }
            )
    assert out, f"{vector['name']} has no full decoded shape"
    return out


def frame_of(expected: dict[str, Any], body: bytes) -> Frame:
    """The frame an expectation describes, built without the decoder."""
    flags = expected["flags"]
    return Frame(
        request_id=expected["request_id"],
        response="response" in flags,
        heartbeat="heartbeat" in flags,
        oneway="oneway" in flags,
        proxy="proxy" in flags,
        gzip="gzip" in flags,
        version=expected["version"],
        status=expected["status"],
        serialization=expected["serialization"],
        meta=dict(expected["meta"]),
        body=body,
    )


def simple_string(text: str) -> bytes:
    """A Simple-serialized string (tag 1, u32 length, UTF-8): enough to check gzip vectors."""
    raw = text.encode()
    return b"\x01" + struct.pack(">I", len(raw)) + raw


# -- golden vectors: decoding ------------------------------------------------------------------


@pytest.mark.parametrize("vector", MESSAGES, ids=_ids(MESSAGES))
def test_vectors_decode(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    frame = decode_one(data)
    for expected in expectations(vector):
        flags = expected["flags"]
        assert frame.flags == expected["msg_type"]
        assert frame.response == ("response" in flags)
        assert frame.is_request == ("response" not in flags)
        assert frame.heartbeat == ("heartbeat" in flags)
        assert frame.oneway == ("oneway" in flags)
        assert frame.proxy == ("proxy" in flags)
        assert frame.gzip == ("gzip" in flags)
        assert frame.version == expected["version"] == 1
        assert frame.status == expected["status"]
        assert frame.is_exception == (expected["status"] == 1)
        assert frame.serialization == expected["serialization"]
        assert frame.request_id == expected["request_id"]
        assert list(frame.meta.items()) == expected["meta"]
        assert len(frame.body) == expected["body_len"]
        assert frame.body == data[len(data) - expected["body_len"] :]
        if "body" in expected:
            assert frame.body == expected["body"]
        if expected.get("gunzipped") is not None:
            assert frame.gunzip_body() == expected["gunzipped"]
        if expected.get("gunzipped_len") is not None:
            plain = frame.gunzip_body()
            assert len(plain) == expected["gunzipped_len"]
            assert expected["simple_values"] is not None
            assert plain == b"".join(simple_string(s) for s in expected["simple_values"])
    # The sparse Java/PHP ``decoded`` objects: whatever they state must hold too.
    sparse = vector["decoded"]
    if "request_id" in sparse:
        assert frame.request_id == int(sparse["request_id"])
    for key in ("status", "heartbeat"):
        if key in sparse:
            assert getattr(frame, key) == sparse[key]
    if "request" in sparse:
        assert frame.is_request == sparse["request"]
    if isinstance(sparse.get("meta"), dict):
        assert frame.meta == sparse["meta"]
    for key, value in sparse.items():
        if key.startswith("M_"):
            assert frame.meta[key] == value


@pytest.mark.parametrize("vector", MESSAGES, ids=_ids(MESSAGES))
def test_vectors_reencode_byte_exactly(vector: dict[str, Any]) -> None:
    """With meta emitted in the recorded wire order, encoding gives the captured bytes back.
    Gzip vectors too: the body is kept as received (compressed), so nothing is recompressed."""
    data = bytes.fromhex(vector["hex"])
    assert encode_frame(decode_one(data)) == data
    for expected in expectations(vector):
        body = data[len(data) - expected["body_len"] :]
        assert encode_frame(frame_of(expected, body)) == data


@pytest.mark.parametrize("vector", MESSAGES, ids=_ids(MESSAGES))
def test_vectors_byte_by_byte(vector: dict[str, Any]) -> None:
    data = bytes.fromhex(vector["hex"])
    decoder = FrameDecoder()
    frames: list[Frame] = []
    for i in range(len(data)):
        decoder.feed(data[i : i + 1])
        frame = decoder.next_frame()
        if i < len(data) - 1:
            assert frame is NEED_DATA
        else:
            assert isinstance(frame, Frame)
            frames.append(frame)
    assert frames == [decode_one(data)]


def test_vector_exceptions_parse_whatever_the_member_order() -> None:
    seen = 0
    for vector in MESSAGES:
        frame = decode_one(bytes.fromhex(vector["hex"]))
        if not frame.is_exception:
            assert frame.exception() is None
            continue
        raw = json.loads(frame.meta["M_e"])
        assert frame.exception() == ErrorInfo(raw["errcode"], raw["errmsg"], raw["errtype"])
        assert frame.body == b""
        seen += 1
    assert seen >= 8
    java = decode_one(bytes.fromhex(BY_NAME["java_msg_response_biz_exception"]["hex"]))
    assert java.meta["M_e"].index("errtype") < java.meta["M_e"].index("errmsg")
    assert java.exception() == ErrorInfo(30001, "boom, org err:cause", ERRTYPE_BUSINESS)


def test_serialization_numbers() -> None:
    java_heartbeat = decode_one(bytes.fromhex(BY_NAME["java_msg_heartbeat_request"]["hex"]))
    assert java_heartbeat.serialization is Serialization.GRPC_PB
    agent = decode_one(bytes.fromhex(BY_NAME["wire_agent_exception_cluster_not_found"]["hex"]))
    assert agent.serialization is Serialization.HESSIAN2
    unknown = encode_frame(Frame(request_id=1, serialization=31))
    frame = decode_one(unknown)
    assert frame.serialization == 31
    assert not isinstance(frame.serialization, Serialization)


# -- golden vectors: what a server does with a probe's request ---------------------------------


@pytest.mark.parametrize("vector", WITH_REQUEST, ids=_ids(WITH_REQUEST))
def test_probe_requests_are_valid_frames(vector: dict[str, Any]) -> None:
    """Each probe's request (a heartbeat, Java's heartbeat style, a oneway request, an unknown
    serialization) is a valid frame, and the codec can build the reply motan-go gave."""
    sent = decode_one(bytes.fromhex(vector["request_hex"]))
    reply = bytes.fromhex(vector["hex"])
    assert sent.is_request
    assert encode_frame(sent) == bytes.fromhex(vector["request_hex"])
    if sent.heartbeat:
        assert encode_frame(heartbeat_response(sent.request_id)) == reply
    elif sent.serialization == 4:  # not a serialization motan-go has
        assert sent.meta["M_m"] == "hello"
        errmsg = f"deserialize fail. err:message serialize not found method:{sent.meta['M_m']}"
        assert encode_frame(exception_response(sent.request_id, 500, errmsg)) == reply
    else:
        assert sent.oneway
        answer = decode_one(reply)
        assert answer.request_id == sent.request_id
        if not answer.proxy:
            rebuilt = response(sent.request_id, answer.body, process_time=0)
            assert encode_frame(rebuilt) == reply


def test_constructors_match_motan_go() -> None:
    def hex_of(name: str) -> str:
        return str(BY_NAME[name]["hex"])

    assert encode_frame(heartbeat_request(1234)).hex() == hex_of("msg_heartbeat_request")
    assert encode_frame(heartbeat_response(1234)).hex() == hex_of("msg_heartbeat_response")
    assert encode_frame(heartbeat_response(1234))[2:5] == b"\x13\x08\x30"
    framework = exception_response(7, 404, "provider not exist serviceKey=g_svc")
    assert encode_frame(framework).hex() == hex_of("msg_response_exception_framework")
    business = exception_response(99, 503, "boom", ERRTYPE_BUSINESS, process_time=0)
    assert encode_frame(business).hex() == hex_of("msg_response_exception")
    ok = response(0x0102030405060708, simple_string("hello Ray"), process_time=3)
    assert encode_frame(ok).hex() == hex_of("msg_response_ok")
    oneway = request(42, "svc", "m", bytes.fromhex("09020501"), oneway=True, proxy=True)
    assert encode_frame(oneway).hex() == hex_of("msg_request_oneway_proxy")


def test_request_and_response_meta() -> None:
    frame = request(
        1,
        "com.example.Svc",
        "hello",
        method_desc="java.lang.String",
        group="g",
        source="app",
        meta={"M_p": "ignored", "M_pp": "grpc", "M_tmo": "800"},
    )
    assert list(frame.meta.items()) == [
        ("M_p", "com.example.Svc"),
        ("M_m", "hello"),
        ("M_md", "java.lang.String"),
        ("M_g", "g"),
        ("M_s", "app"),
        ("M_pp", "grpc"),
        ("M_tmo", "800"),
    ]
    assert request(1, "s", "m").meta == {"M_p": "s", "M_m": "m", "M_pp": "motan2"}
    assert frame.is_request and not frame.is_exception
    answer = response(1, meta={"x-forwarded-for": "10.0.0.1:8002"}, proxy=True)
    assert answer.flags == 0x03 and answer.meta == {"x-forwarded-for": "10.0.0.1:8002"}
    failed = exception_response(1, 400, "no", serialization=0, meta={"M_e": "x", "k": "v"})
    assert list(failed.meta) == ["M_e", "k"]
    assert failed.exception() == ErrorInfo(400, "no", ERRTYPE_SERVICE)
    assert failed.serialization == 0 and failed.body == b""


# -- golden vectors: invalid frames ------------------------------------------------------------

INVALID_EXPECTED = {
    # name: (words of the hint, request id, is a request)
    "probe_server_rejects_bad_magic": ("magic number not correct", None, False),
    "probe_server_rejects_version2": ("version not correct", None, False),
    "probe_server_rejects_odd_meta": ("decode meta data fail", 6, True),
    "probe_server_rejects_oversize_meta": ("over of limit, size: 11534336 > 10485760", 9, True),
    "probe_server_rejects_oversize_body": ("over of limit, size: 11534336 > 10485760", 10, True),
}


def test_every_invalid_vector_is_covered() -> None:
    assert set(INVALID) == set(INVALID_EXPECTED)


@pytest.mark.parametrize("name", sorted(INVALID_EXPECTED))
def test_invalid_vectors_are_refused(name: str) -> None:
    """motan-go closes the connection on each of these; the decoder raises a closing error with
    the request id where the header got that far (so a server could answer, as Java does for an
    over-limit request). The oversize vectors stop at the size field: no bytes are awaited."""
    words, request_id, is_request = INVALID_EXPECTED[name]
    data = bytes.fromhex(INVALID[name]["hex"])
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        decoder = FrameDecoder()
        with pytest.raises(FrameError) as caught:
            decode_all(chunks, decoder)
        error = caught.value
        assert isinstance(error, RemoteProtocolError)
        assert words in error.reply_hint
        assert error.close
        assert error.request_id == request_id
        assert error.is_request == is_request
        # Errors are final.
        with pytest.raises(FrameError):
            decoder.next_frame()
        with pytest.raises(FrameError):
            decoder.feed(b"\xf1\xf1")


def test_bad_magic_and_version_fail_early() -> None:
    for prefix in (b"G", b"\xf1\xf0", b"\xf1\xf1\x00\x10"):  # an HTTP client, magic, version 2
        decoder = FrameDecoder()
        decoder.feed(prefix)
        with pytest.raises(FrameError):
            decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(b"\xf1\xf1\x00\x01")  # Motan1 puts version 0 in the high bits of byte 3
    with pytest.raises(FrameError, match="Motan1"):
        decoder.next_frame()
    decoder = FrameDecoder()
    decoder.feed(b"\xf1\xf1\x00")
    assert decoder.next_frame() is NEED_DATA


# -- meta --------------------------------------------------------------------------------------


def test_meta_decoding_rules() -> None:
    assert decode_meta(b"") == {}
    assert decode_meta(b"\n") == {}
    assert decode_meta(b"k\nv") == {"k": "v"}
    assert decode_meta(b"k\nv\n") == {"k": "v"}  # one trailing newline: tolerated
    assert decode_meta(b"k\n\nx\ny") == {"k": "", "x": "y"}  # empty value: fine
    assert list(decode_meta(b"a\n1\nb\n2\na\n3").items()) == [("a", "3"), ("b", "2")]
    assert decode_meta("ключ\n值".encode()) == {"ключ": "值"}
    assert decode_meta(b"k\nv \x00") == {"k": "v \x00"}  # kept, unlike PHP's unpack("A*")
    for bad, words in (
        (b"k", "not paired"),
        (b"k\n", "not paired"),
        (b"k\nv\nx", "not paired"),
        (b"k\nv\n\n", "not paired"),
        (b"\nk\nv", "not paired"),
        (b"\nv", "empty key"),
        (b"k\nv\n\nw", "empty key"),
        (b"k\n\xff", "not UTF-8"),
    ):
        with pytest.raises(RemoteProtocolError, match=words):
            decode_meta(bad)


def test_meta_encoding_rules() -> None:
    assert encode_meta({}) == b""
    assert encode_meta({"a": "1", "b": "2"}) == b"a\n1\nb\n2"
    assert encode_meta({"": "x", "a": "", "b": "2"}) == b"b\n2"  # dropped, as motan-go
    assert encode_meta({"k": "值"}) == "k\n值".encode()
    for bad in ({"a\nb": "1"}, {"a": "1\n2"}, {"a": "\ud800"}):
        with pytest.raises(LocalProtocolError):
            encode_meta(bad)


def test_meta_errors_carry_the_request_id() -> None:
    # A response header (id 77) with meta size 2, meta "k\xff" (not UTF-8), body size 0.
    data = bytes.fromhex("f1f1010830000000000000004d00000002") + b"k\xff" + bytes(4)
    decoder = FrameDecoder()
    decoder.feed(data)
    with pytest.raises(FrameError, match="not UTF-8") as caught:
        decoder.next_frame()
    assert caught.value.request_id == 77
    assert not caught.value.is_request


def test_encode_refuses_out_of_range_fields() -> None:
    for frame in (
        Frame(request_id=-1),
        Frame(request_id=2**64),
        Frame(request_id=1, version=32),
        Frame(request_id=1, status=8),
        Frame(request_id=1, serialization=32),
        Frame(request_id=1, meta={"k": "a\nb"}),
    ):
        with pytest.raises(LocalProtocolError):
            encode_frame(frame)


def test_frames_are_hashable_and_compare_meta() -> None:
    a = Frame(request_id=1, meta={"k": "v"})
    b = Frame(request_id=1, meta={"k": "v"})
    assert a == b and hash(a) == hash(b)
    assert a != Frame(request_id=1, meta={"k": "w"})


# -- exceptions (M_e) --------------------------------------------------------------------------


def test_error_info_parsing_is_tolerant() -> None:
    def parse(text: str) -> ErrorInfo | None:
        return Frame(request_id=1, response=True, status=1, meta={"M_e": text}).exception()

    assert parse('{"errtype":2,"errmsg":"m","errcode":7}') == ErrorInfo(7, "m", 2)
    assert parse('{ "errcode" : 7 }') == ErrorInfo(7, "", 0)
    assert parse('{"errcode":"7","errmsg":5,"errtype":true}') == ErrorInfo(0, "", 0)
    for text in ("", "not json", "[1]", '"text"', "null", "[" * 100000, "{"):
        assert parse(text) is None
    assert Frame(request_id=1, response=True, status=1).exception() is None
    assert Frame(request_id=1, response=True, meta={"M_e": '{"errcode":1}'}).exception() is None


def test_error_info_json_is_what_motan_go_writes() -> None:
    assert ErrorInfo(500, "x", 1).to_json() == '{"errcode":500,"errmsg":"x","errtype":1}'
    # Go's encoding/json: HTML-safe escapes, raw UTF-8, \n escaped (so M_e never holds one).
    text = ErrorInfo(1, 'a<b>&"c"\n中\u2028', 0).to_json()
    assert text == '{"errcode":1,"errmsg":"a\\u003cb\\u003e\\u0026\\"c\\"\\n中\\u2028","errtype":0}'
    assert ErrorInfo.from_json(text) == ErrorInfo(1, 'a<b>&"c"\n中\u2028', 0)
    frame = exception_response(3, 1, "multi\nline")
    assert decode_one(encode_frame(frame)).exception() == ErrorInfo(1, "multi\nline", 1)


# -- gzip --------------------------------------------------------------------------------------

GZIP_VECTORS = ["msg_request_gzip", "wire_server_gzip_response", "wire_client_gzip_request"]


@pytest.mark.parametrize("name", GZIP_VECTORS)
def test_gzip_vectors_decompress_and_recompress(name: str) -> None:
    """Decode-only vectors: our deflate differs from Go's, but each side reads the other."""
    frame = decode_one(bytes.fromhex(BY_NAME[name]["hex"]))
    plain = frame.decompressed()
    assert not plain.gzip and plain.body == frame.gunzip_body()
    again = plain.compressed(1)
    assert again.gzip and again.body != frame.body
    assert again.gunzip_body() == plain.body
    assert decode_one(encode_frame(again)).gunzip_body() == plain.body


def test_gzip_helpers() -> None:
    body = b"payload " * 100
    frame = Frame(request_id=5, body=body)
    assert frame.compressed(0) is frame  # mingzSize 0: off, as motan-go
    assert frame.compressed(len(body)) is frame  # only strictly longer bodies
    packed = frame.compressed(10)
    assert packed.gzip and len(packed.body) < len(body)
    assert packed.compressed(10) is packed
    assert frame.gunzip_body() is body and frame.decompressed() is frame
    assert gunzip(gzip_compress(b"")) == b""
    assert gunzip(b"") == b""
    assert gunzip(gzip_compress(b"ab") + gzip_compress(b"cd")) == b"abcd"  # two members
    assert gzip_compress(b"x") == gzip_compress(b"x")  # deterministic


def test_gunzip_refuses_bad_streams() -> None:
    good = gzip_compress(b"hello world")
    for bad, words in (
        (b"testbody", "gzip"),  # motan-go's TestEncode body: flagged gzip, not gzip
        (good[:-3], "truncated"),
        (good + b"junk", "gzip"),
        (zlib.compress(b"zlib, not gzip"), "gzip"),
    ):
        frame = Frame(request_id=9, gzip=True, body=bad)
        with pytest.raises(FrameError, match=words) as caught:
            frame.gunzip_body()
        assert not caught.value.close  # the framing is intact: answer and carry on
        assert caught.value.request_id == 9 and caught.value.is_request
    testencode = decode_one(bytes.fromhex(BY_NAME["msg_all_flags_testencode"]["hex"]))
    with pytest.raises(FrameError):
        testencode.gunzip_body()


def test_gunzip_is_bounded() -> None:
    """A decompression bomb stops at the cap instead of expanding in memory."""
    bomb = gzip_compress(bytes(DEFAULT_MAX_BODY + 1), level=9)
    assert len(bomb) < 20000
    with pytest.raises(RemoteProtocolError, match="over 10485760 bytes"):
        gunzip(bomb)
    exact = gzip_compress(bytes(1000))
    assert gunzip(exact, 1000) == bytes(1000)
    with pytest.raises(RemoteProtocolError, match="over 999 bytes"):
        gunzip(exact, 999)
    with pytest.raises(RemoteProtocolError, match="over 1500"):
        gunzip(exact + exact, 1500)  # the cap covers all members together


# -- limits ------------------------------------------------------------------------------------


def _header(meta_size: int, request_id: int = 3, flags: int = 0) -> bytes:
    return struct.pack(">HBBBQI", 0xF1F1, flags, 0x08, 0x30, request_id, meta_size)


def test_declared_sizes_over_the_limit_fail_at_once() -> None:
    decoder = FrameDecoder(max_meta=100, max_body=200)
    decoder.feed(_header(101))
    with pytest.raises(FrameError, match="size: 101 > 100") as caught:
        decoder.next_frame()
    assert caught.value.request_id == 3 and caught.value.is_request

    decoder = FrameDecoder(max_meta=100, max_body=200)
    decoder.feed(_header(3, flags=0x01) + b"k\nv" + struct.pack(">I", 201))
    with pytest.raises(FrameError, match="size: 201 > 200") as caught:
        decoder.next_frame()
    assert caught.value.request_id == 3 and not caught.value.is_request

    # Exactly at the limits: waits for the bytes.
    decoder = FrameDecoder(max_meta=100, max_body=200)
    decoder.feed(_header(100))
    assert decoder.next_frame() is NEED_DATA
    decoder.feed(b"k\n" + b"v" * 98 + struct.pack(">I", 200))
    assert decoder.next_frame() is NEED_DATA
    decoder.feed(bytes(200))
    frame = decoder.next_frame()
    assert isinstance(frame, Frame) and len(frame.body) == 200


def test_default_limits_are_ten_mib() -> None:
    assert DEFAULT_MAX_META == DEFAULT_MAX_BODY == 10 * 1024 * 1024
    decoder = FrameDecoder()
    decoder.feed(_header(10 * 1024 * 1024))
    assert decoder.next_frame() is NEED_DATA
    decoder = FrameDecoder()
    decoder.feed(_header(10 * 1024 * 1024 + 1))
    with pytest.raises(FrameError):
        decoder.next_frame()
    assert decoder.buffer.max_size == FRAME_OVERHEAD + 2 * DEFAULT_MAX_BODY + DEFAULT_READ_AHEAD


def test_the_buffer_cap_holds_when_frames_are_not_drained() -> None:
    frame = encode_frame(Frame(request_id=1, body=bytes(50)))
    decoder = FrameDecoder(max_meta=16, max_body=64, max_buffer=200)
    decoder.feed(frame * 2)
    with pytest.raises(FrameError, match="buffer over of limit") as caught:
        decoder.feed(frame * 2)
    assert caught.value.close
    with pytest.raises(FrameError):
        decoder.next_frame()


def test_a_large_frame_in_small_chunks() -> None:
    body = bytes(range(256)) * 8192  # 2 MiB
    data = encode_frame(Frame(request_id=8, meta={"k": "v"}, body=body))
    decoder = FrameDecoder()
    for offset in range(0, len(data), 4096):
        decoder.feed(data[offset : offset + 4096])
        frame = decoder.next_frame()
    assert isinstance(frame, Frame) and frame.body == body and decoder.buffered == 0


def test_the_received_chunk_is_kept_intact() -> None:
    """A body that follows other bytes in a bytearray buffer is copied out, not aliased."""
    one = encode_frame(Frame(request_id=1, body=b"abc"))
    two = encode_frame(Frame(request_id=2, body=b"defg"))
    decoder = FrameDecoder()
    decoder.feed(one[:5])
    decoder.feed(one[5:] + two)
    first, second = list(decoder)
    decoder.feed(encode_frame(Frame(request_id=3, body=b"zzz")))
    assert (first.body, second.body) == (b"abc", b"defg")
    assert isinstance(first.body, bytes) and isinstance(second.body, bytes)


# -- property tests ----------------------------------------------------------------------------

meta_text = st.text(min_size=1, max_size=12).filter(lambda s: "\n" not in s)
frames = st.builds(
    Frame,
    request_id=st.integers(0, 2**64 - 1),
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
cut_lists = st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=12)


@FAST
@given(frames)
def test_round_trip(frame: Frame) -> None:
    decoded = decode_one(encode_frame(frame))
    assert decoded == frame
    assert list(decoded.meta.items()) == list(frame.meta.items())


@FAST
@given(st.lists(frames, min_size=1, max_size=6), cut_lists)
def test_split_invariance(sent: list[Frame], cuts: list[int]) -> None:
    stream = b"".join(encode_frame(f) for f in sent)
    assert decode_all(split(stream, cuts)) == sent


SMALL = {"max_meta": 48, "max_body": 64, "max_buffer": 400}
#: Most bytes an incomplete frame may leave buffered under SMALL's limits.
SMALL_FRAME = FRAME_OVERHEAD + SMALL["max_meta"] + SMALL["max_body"]


def check_garbage(chunks: list[bytes]) -> None:
    """Only frames or FrameError come out, and between reads the decoder never holds more than
    one allowed (incomplete) frame."""
    decoder = FrameDecoder(**SMALL)
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            for frame in decoder:
                assert isinstance(frame, Frame)
            assert decoder.buffered < SMALL_FRAME
            assert decoder.buffer.pending <= SMALL["max_buffer"]
    except FrameError as exc:
        assert exc.close
        assert exc.reply_hint


def mutated(stream: bytes) -> st.SearchStrategy[bytes]:
    """``stream`` mutated, with magic, newline and header bytes among the replacements."""
    return mutation.mutated(stream, [0x00, 0x0A, 0xF1, 0xFF, 0x08, 0x30, 0x80])


small_frames = st.builds(
    Frame,
    request_id=st.integers(0, 2**64 - 1),
    response=st.booleans(),
    gzip=st.booleans(),
    status=st.integers(0, 7),
    meta=st.dictionaries(meta_text, meta_text, max_size=2),
    body=st.binary(max_size=40),
)


@FAST
@given(st.data())
def test_mutated_streams(data: st.DataObject) -> None:
    sent = data.draw(st.lists(small_frames, min_size=1, max_size=4))
    stream = data.draw(mutated(b"".join(encode_frame(f) for f in sent)))
    check_garbage(split(stream, data.draw(cut_lists)))


motan_garbage = st.lists(
    st.sampled_from(
        [
            *(b"\xf1\xf1", b"\xf1", b"\x00", b"\x01", b"\x08", b"\x09", b"\x10", b"\x12", b"\x30"),
            *(b"\x00\x00\x00", b"\x00\x00\x00\x03", b"\x00\x00\x00\x40", b"\xff\xff\xff\xff"),
            *(b"k\nv", b"\n", b"\xff", b"M_p\nsvc"),
        ]
    ),
    max_size=40,
).map(b"".join)


@FAST
@given(st.one_of(st.binary(max_size=120), motan_garbage), cut_lists)
def test_garbage(stream: bytes, cuts: list[int]) -> None:
    check_garbage(split(stream, cuts))
    check_garbage(split(bytes.fromhex("f1f10008300000000000000001") + stream, cuts))
