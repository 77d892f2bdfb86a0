"""``scan_reply`` and ``ReplyFramer``: where each reply ends, without building it.

The framing must agree with the full parser on every boundary of a valid stream, return -1 for
every proper prefix of a reply (never a wrong end), and turn garbage into RemoteProtocolError.
"""

from __future__ import annotations

from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols._errors import RemoteProtocolError
from resmesh.protocols.resp import framing, writer
from resmesh.protocols.resp.framing import (
    NEED_DATA,
    ReplyFramer,
    ReplyLimits,
    error_text,
    is_error_reply,
    parse_length,
    scan_replies,
    scan_reply,
)
from resmesh.protocols.resp.parser import ReplyParser
from resmesh.protocols.resp.values import Array, BlobError, BulkString, Value
from tests.protocols.resp.resp_support import (
    VECTORS,
    check_compiled_agrees,
    compiled_scan,
    cut_lists,
    mutated,
    reply_limits,
    resp2_values,
    resp3_values,
    resp_alphabet_garbage,
    split,
    wire,
)

REPLIES = VECTORS["replies"]
REPLY_ERRORS = VECTORS["reply_errors"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def scan_with(data: bytes | bytearray | memoryview, pos: int, limits: ReplyLimits) -> int:
    return scan_reply(
        data,
        pos,
        limits.max_depth,
        max_bulk_len=limits.max_bulk_len,
        max_aggregate_len=limits.max_aggregate_len,
        max_line_len=limits.max_line_len,
    )


def frame_all(chunks: list[bytes], framer: ReplyFramer | None = None) -> list[bytes]:
    framer = framer or ReplyFramer()
    out: list[bytes] = []
    for chunk in chunks:
        framer.feed(chunk)
        while (reply := framer.next_reply()) is not NEED_DATA:
            assert isinstance(reply, bytes)
            out.append(reply)
    return out


# -- golden vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", REPLIES, ids=[v["name"] for v in REPLIES])
def test_golden_reply_boundaries(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    size = len(data)
    assert scan_reply(data, 0) == size
    # Any buffer type, any offset, anything after the reply.
    padded = b"junk" + data + b"?garbage"
    for buf in (padded, bytearray(padded), memoryview(padded)):
        assert scan_reply(buf, 4) == 4 + size
    # Every proper prefix is incomplete, never an error or a wrong end.
    for cut in range(size):
        assert scan_reply(data[:cut], 0) == -1
    assert frame_all([data[i : i + 1] for i in range(size)]) == [data]


@pytest.mark.parametrize("vector", REPLY_ERRORS, ids=[v["name"] for v in REPLY_ERRORS])
def test_golden_reply_errors(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    limits = reply_limits(vector.get("limits"))
    if vector["framing"] == "accepts":
        # Content errors: the structure is fine, so framing forwards the bytes as they are.
        assert scan_with(data, 0, limits) == len(data)
        return
    if vector["framing"] == "same":
        with pytest.raises(RemoteProtocolError) as caught:
            scan_with(data, 0, limits)
        assert caught.value.reply_hint == vector["reply_hint"]
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        framer = ReplyFramer(limits)
        with pytest.raises(RemoteProtocolError) as caught:
            frame_all(chunks, framer)
        assert caught.value.reply_hint == vector["reply_hint"]
        with pytest.raises(RemoteProtocolError):
            framer.next_reply()


def test_common_replies() -> None:
    assert scan_reply(b"+OK\r\n", 0) == 5
    assert scan_reply(b":1\r\n", 0) == 4
    assert scan_reply(b"-ERR x\r\n", 0) == 8
    assert scan_reply(b"$-1\r\n", 0) == 5
    assert scan_reply(b"$16\r\n0123456789abcdef\r\n+OK\r\n", 0) == 23
    assert scan_reply(b"$16\r\n0123456789abcdef\r", 0) == -1
    assert scan_reply(b"*2\r\n$1\r\na\r\n$-1\r\n", 0) == 16
    assert scan_reply(b"", 0) == -1
    assert scan_reply(b"+OK\r\n", 5) == -1
    assert scan_reply(b"$100000\r\n", 0) == -1  # lengths >= 10000 take the slow path
    assert scan_reply(b"$10000\r\n" + b"x" * 10000 + b"\r\n", 0) == 10010


def test_header_search_is_bounded() -> None:
    """A header without CRLF is refused once it cannot be valid, however big the buffer."""
    with pytest.raises(RemoteProtocolError, match="invalid bulk length"):
        scan_reply(b"$" + b"1" * 40, 0)
    with pytest.raises(RemoteProtocolError, match="invalid multibulk length"):
        scan_reply(b"*" + b"1" * 40, 0)
    assert scan_reply(b"$" + b"1" * 20, 0) == -1  # may still become a (too long) length


def test_parse_length() -> None:
    assert parse_length(b"0") == 0
    assert parse_length(b"-1") == -1
    assert parse_length(bytearray(b"123")) == 123
    assert parse_length(b"9223372036854775807") == 2**63 - 1
    for bad in (
        b"",
        b"-2",
        b"-0",
        b"00",
        b"01",
        b"+1",
        b" 1",
        b"1 ",
        b"1_0",
        b"9223372036854775808",
    ):
        assert parse_length(bad) == -2, bad


def test_error_helpers() -> None:
    data = b":1\r\n-WRONGTYPE Operation\r\n!9\r\nERR a\r\nbc\r\n+OK\r\n"
    assert not is_error_reply(data, 0)
    assert is_error_reply(data, 4)
    end = scan_reply(data, 4)
    assert error_text(data, 4, end) == b"WRONGTYPE Operation"
    assert is_error_reply(data, end)
    end2 = scan_reply(data, end)
    assert error_text(data, end, end2) == b"ERR a\r\nbc"
    assert error_text(bytearray(data), end, end2) == b"ERR a\r\nbc"
    assert not is_error_reply(data, end2)
    assert not is_error_reply(data, len(data))


def test_framer_resp2_only() -> None:
    framer = ReplyFramer(resp2_only=True)
    framer.feed(b"*2\r\n:1\r\n_\r\n")
    with pytest.raises(RemoteProtocolError, match="'_' as reply type byte"):
        framer.next_reply()
    framer = ReplyFramer(resp2_only=True)
    framer.feed(b"#t\r\n")
    with pytest.raises(RemoteProtocolError, match="'#' as reply type byte"):
        framer.next_reply()


def test_framer_buffer_cap_counts_the_reply_in_progress() -> None:
    framer = ReplyFramer(ReplyLimits(max_buffer=32))
    framer.feed(b"*3\r\n$10\r\n0123456789\r\n")
    assert framer.next_reply() is NEED_DATA
    with pytest.raises(RemoteProtocolError, match="reply buffer limit exceeded"):
        framer.feed(b"$10\r\n0123456789\r\n")
    with pytest.raises(RemoteProtocolError):
        framer.next_reply()


def test_framer_resumes_large_aggregates() -> None:
    """An incomplete array is resumed where the scan stopped, not rescanned (no O(n^2))."""
    count = 20000
    element = b"$5\r\nvalue\r\n"
    stream = b"*%d\r\n" % count + element * count + b"+OK\r\n"
    framer = ReplyFramer()
    chunk = 4096
    for offset in range(0, len(stream) - 2 * chunk, chunk):
        framer.feed(stream[offset : offset + chunk])
        assert framer.next_reply() is NEED_DATA
        # The resume point trails the received bytes by less than one element.
        assert framer.buffered - framer._resume < len(element)
    framer.feed(stream[offset + chunk :])
    assert framer.next_reply() == stream[:-5]
    assert framer.next_reply() == b"+OK\r\n"
    assert framer.next_reply() is NEED_DATA


def test_framer_returns_the_received_object_when_aligned() -> None:
    framer = ReplyFramer()
    chunk = b"$3\r\nabc\r\n"
    framer.feed(chunk)
    assert framer.next_reply() is chunk


# -- agreement with the parser, split-invariance, garbage --------------------------------------


def _boundaries(stream: bytes) -> list[int]:
    ends = []
    pos = 0
    while pos < len(stream):
        pos = scan_reply(stream, pos)
        assert pos > 0
        ends.append(pos)
    return ends


@FAST
@given(st.lists(resp3_values, min_size=1, max_size=6))
def test_framing_agrees_with_the_parser(values: list[Value]) -> None:
    encoded = [writer.encode(v) for v in values]
    stream = b"".join(encoded)
    expected_ends = []
    total = 0
    for item in encoded:
        total += len(item)
        expected_ends.append(total)
    assert _boundaries(stream) == expected_ends
    # Both buffer types give the same answers (bytes uses the small-length table).
    assert _boundaries(bytearray(stream)) == expected_ends  # type: ignore[arg-type]


@FAST
@given(st.lists(resp3_values, min_size=1, max_size=6), cut_lists)
def test_framer_split_invariance(values: list[Value], cuts: list[int]) -> None:
    encoded = [writer.encode(v) for v in values]
    assert frame_all(split(b"".join(encoded), cuts)) == encoded


@FAST
@given(resp2_values)
def test_every_proper_prefix_is_incomplete(value: Value) -> None:
    data = writer.encode(value)
    for cut in range(len(data)):
        assert scan_reply(data[:cut], 0) == -1


SMALL_LIMITS = ReplyLimits(
    max_bulk_len=64, max_aggregate_len=16, max_depth=6, max_line_len=48, max_buffer=256
)


def _check_garbage(data: bytes) -> None:
    """scan_reply answers an offset or a RemoteProtocolError; where the parser reads a whole
    first value, framing puts its end at the same place."""
    try:
        end = scan_with(data, 0, SMALL_LIMITS)
    except RemoteProtocolError:
        end = None
    parser = ReplyParser(SMALL_LIMITS)
    try:
        parser.feed(data)
        value = parser.next_value()
    except RemoteProtocolError:
        return
    if value is NEED_DATA:
        assert end == -1 or end is None
    else:
        assert end == len(data) - parser.buffered


@FAST
@given(resp_alphabet_garbage)
def test_garbage_scan(data: bytes) -> None:
    _check_garbage(data)


@FAST
@given(st.data())
def test_mutated_scan_and_framer(data: st.DataObject) -> None:
    values = data.draw(st.lists(resp3_values, min_size=1, max_size=4))
    stream = data.draw(mutated(writer.encode_many(values)))
    _check_garbage(stream)
    framer = ReplyFramer(SMALL_LIMITS)
    try:
        for chunk in split(stream, data.draw(cut_lists)):
            framer.feed(chunk)
            while framer.next_reply() is not NEED_DATA:
                pass
            assert framer.buffer.pending <= SMALL_LIMITS.max_buffer
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith("ERR Protocol error")


def test_deep_nesting_is_not_recursion() -> None:
    deep = b"*1\r\n" * 100000 + b":1\r\n"
    with pytest.raises(RemoteProtocolError, match="nested too deeply"):
        scan_reply(deep, 0)
    assert scan_reply(deep, 0, max_depth=200000) == len(deep)


def test_blob_and_bulk_payloads_are_opaque() -> None:
    value = Array((BulkString(b"*1\r\n$-5\r\n"), BlobError(b"-\r\n+")))
    data = writer.encode(value)
    assert scan_reply(data, 0) == len(data)


# -- the compiled scanner (_framer.scan_replies) ------------------------------------------------
#
# It takes only what it can frame unambiguously and stops at anything else (a push, an
# attribute, a malformed or over-limit header, an incomplete reply), leaving the rest to the
# Python scan, which stays the reference: every reply it takes must end where the Python scan
# puts the end, and it must never take a reply the Python scan refuses.


_NOT_BUILT = (
    "resmesh/protocols/resp/_framer.c is not built: install with a C compiler "
    "(apt-get install build-essential python3-dev) and `pip install -e .`"
)


@pytest.fixture
def compiled() -> None:
    """The compiled scanner is there; a test of it fails, never skips, without it."""
    if scan_replies is None:
        pytest.fail(_NOT_BUILT)


compiled_only = pytest.mark.usefixtures("compiled")


def test_the_compiled_scanner_is_installed() -> None:
    assert scan_replies is not None, _NOT_BUILT


@compiled_only
@pytest.mark.parametrize("vector", REPLIES, ids=[v["name"] for v in REPLIES])
def test_compiled_scan_golden_replies(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    end, count = compiled_scan(data + data, ReplyLimits())
    if b">" in data or b"|" in data:  # a push or an attribute: Python frames them
        assert (end, count) == (0, 0)
    else:
        assert (end, count) == (2 * len(data), 2)
        assert compiled_scan(data + data, ReplyLimits(), limit=1) == (len(data), 1)
    for cut in range(len(data)):
        assert compiled_scan(data[:cut], ReplyLimits()) == (0, 0)


@compiled_only
@pytest.mark.parametrize("vector", REPLY_ERRORS, ids=[v["name"] for v in REPLY_ERRORS])
def test_compiled_scan_leaves_every_golden_error_to_python(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    limits = reply_limits(vector.get("limits"))
    check_compiled_agrees(data, limits, resp3=True)
    check_compiled_agrees(data, limits, resp3=False)


@compiled_only
def test_compiled_scan_limits() -> None:
    limits = ReplyLimits(max_bulk_len=3, max_aggregate_len=2, max_depth=2, max_line_len=4)
    assert compiled_scan(b"$3\r\nabc\r\n$4\r\nabcd\r\n", limits) == (9, 1)
    assert compiled_scan(b"*2\r\n:1\r\n:2\r\n*3\r\n", limits) == (12, 1)
    assert compiled_scan(b"*1\r\n*1\r\n*0\r\n*1\r\n*1\r\n*1\r\n:1\r\n", limits) == (12, 1)
    assert compiled_scan(b"+1234\r\n+12345\r\n", limits) == (7, 1)
    assert compiled_scan(b"+12345", limits) == (0, 0)  # over the line limit: Python's call
    assert compiled_scan(b"_\r\n#t\r\n", limits, resp3=False) == (0, 0)
    assert compiled_scan(b"*-1\r\n$-1\r\n%-1\r\n", limits) == (10, 2)
    assert compiled_scan(b"=4\r\ntxt:\r\n=3\r\ntxt\r\n", ReplyLimits()) == (10, 1)


@compiled_only
@FAST
@given(st.lists(resp3_values, min_size=1, max_size=6), st.booleans())
def test_compiled_scan_agrees_on_valid_streams(values: list[Value], resp3: bool) -> None:
    check_compiled_agrees(writer.encode_many(values), ReplyLimits(), resp3)


@compiled_only
@FAST
@given(st.data(), st.booleans())
def test_compiled_scan_agrees_on_mutated_streams(data: st.DataObject, resp3: bool) -> None:
    values = data.draw(st.lists(resp3_values, min_size=1, max_size=4))
    check_compiled_agrees(data.draw(mutated(writer.encode_many(values))), SMALL_LIMITS, resp3)


@compiled_only
@FAST
@given(resp_alphabet_garbage, st.booleans())
def test_compiled_scan_agrees_on_garbage(data: bytes, resp3: bool) -> None:
    check_compiled_agrees(data, SMALL_LIMITS, resp3)


@FAST
@given(st.lists(resp3_values, min_size=1, max_size=6), cut_lists, st.integers(1, 8), st.booleans())
def test_ends_frames_whole_replies(
    values: list[Value], cuts: list[int], limit: int, compiled: bool
) -> None:
    """``ends`` (compiled scan, then Python where it stops; or Python alone) gives the end of
    every reply in turn, at most ``limit`` at a time, however the bytes arrive, and counts the
    error replies among them."""
    encoded = [writer.encode(v) for v in values]
    framer = ReplyFramer()
    got: list[bytes] = []
    with mock.patch.object(framing, "scan_replies", framing.scan_replies if compiled else None):
        for chunk in split(b"".join(encoded), cuts):
            framer.feed(chunk)
            while True:
                ends, errors = framer.ends(limit)
                if not ends:
                    break
                assert len(ends) <= limit
                buffer = framer.buffer
                starts = [buffer.start, *ends[:-1]]
                replies = [bytes(buffer.data[a:b]) for a, b in zip(starts, ends, strict=True)]
                assert errors == sum(reply[:1] in (b"-", b"!") for reply in replies)
                got.extend(replies)
                buffer.commit(ends[-1])
    assert got == encoded
