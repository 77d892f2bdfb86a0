"""RESP values, the reply parsers (pure and hiredis) and the writer.

Golden vectors come from ``protocols/resp-vectors.json``; hypothesis checks the round trip,
split-invariance, and that garbage yields values or a RemoteProtocolError and nothing else.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols import _errors
from resmesh.protocols.resp import writer
from resmesh.protocols.resp.framing import ReplyLimits
from resmesh.protocols.resp.parser import (
    NEED_DATA,
    HiredisReplyParser,
    ReplyParser,
    make_reply_parser,
    parse_integer,
)
from resmesh.protocols.resp.values import (
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
    Push,
    Set,
    SimpleError,
    SimpleString,
    Value,
    VerbatimString,
)
from tests.protocols.resp.resp_support import (
    VECTORS,
    collapse_top,
    cut_lists,
    mutated,
    reply_limits,
    resp2_values,
    resp3_values,
    resp_alphabet_garbage,
    shape_to_value,
    split,
    wire,
)

LocalProtocolError = _errors.LocalProtocolError
RemoteProtocolError = _errors.RemoteProtocolError

REPLIES = VECTORS["replies"]
REPLY_ERRORS = VECTORS["reply_errors"]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def parse_all(chunks: list[bytes], parser: Any = None) -> list[Value]:
    """Feed ``chunks`` one by one, collecting every value (the way the net driver does)."""
    parser = parser or ReplyParser()
    out: list[Value] = []
    for chunk in chunks:
        parser.feed(chunk)
        out.extend(parser.values())
    return out


def parse_one(data: bytes) -> Value:
    values = parse_all([data])
    assert len(values) == 1
    return values[0]


# -- golden vectors --------------------------------------------------------------------------


@pytest.mark.parametrize("vector", REPLIES, ids=[v["name"] for v in REPLIES])
def test_golden_reply_parses_and_reencodes(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    expected = shape_to_value(vector["decoded"])
    assert parse_one(data) == expected
    assert writer.encode(expected) == data
    # byte at a time: the resumable path gives the same value
    assert parse_all([data[i : i + 1] for i in range(len(data))]) == [expected]


@pytest.mark.parametrize(
    "vector", [v for v in REPLIES if v["resp"] == 2], ids=lambda v: str(v["name"])
)
def test_golden_resp2_reply_through_hiredis(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    expected = collapse_top(shape_to_value(vector["decoded"]))
    assert parse_all([data], HiredisReplyParser()) == [expected]
    assert parse_all([data[i : i + 1] for i in range(len(data))], HiredisReplyParser()) == [
        expected
    ]


@pytest.mark.parametrize(
    "vector", [v for v in REPLIES if v["resp"] == 3], ids=lambda v: str(v["name"])
)
def test_hiredis_parser_refuses_resp3(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    parser = HiredisReplyParser()
    parser.feed(data)
    with pytest.raises(RemoteProtocolError, match="as reply type byte"):
        parser.values()


@pytest.mark.parametrize("vector", REPLY_ERRORS, ids=[v["name"] for v in REPLY_ERRORS])
def test_golden_reply_errors(vector: dict[str, Any]) -> None:
    data = wire(vector["wire"])
    limits = reply_limits(vector.get("limits"))
    for chunks in ([data], [data[i : i + 1] for i in range(len(data))]):
        parser = ReplyParser(limits)
        with pytest.raises(RemoteProtocolError) as caught:
            parse_all(chunks, parser)
        assert caught.value.reply_hint == vector["reply_hint"]
        assert caught.value.close
        # The parser stays failed: the same error again, whatever is fed.
        with pytest.raises(RemoteProtocolError) as again:
            parser.next_value()
        assert again.value is caught.value


def test_reply_error_vectors_cover_every_hint() -> None:
    hints = {v["reply_hint"] for v in REPLY_ERRORS}
    assert len(hints) >= 14


# -- values ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build",
    [
        lambda: SimpleString(b"a\r\nb"),
        lambda: SimpleString(b"a\nb"),
        lambda: SimpleError(b"ERR \r"),
        lambda: Integer(2**63),
        lambda: Integer(-(2**63) - 1),
        lambda: Double(b"1_0"),
        lambda: Double(b" 1"),
        lambda: Double(b"infinity"),
        lambda: Double(b""),
        lambda: BigNumber(10**4300),
        lambda: VerbatimString(b"tx", b"x"),
    ],
)
def test_invalid_values_are_refused_locally(build: Any) -> None:
    with pytest.raises(LocalProtocolError):
        build()


def test_value_helpers() -> None:
    assert SimpleError(b"WRONGTYPE Operation").code == b"WRONGTYPE"
    assert BlobError(b"SYNTAX bad").code == b"SYNTAX"
    assert Double.of(1.5) == Double(b"1.5")
    assert Double.of(float("inf")).text == b"inf"
    assert Double.of(float("-inf")).text == b"-inf"
    assert Double.of(float("nan")) == Double(b"nan")  # equal: the text is compared
    assert math.isnan(Double(b"nan").value)
    assert Double(b"3.1400000000000001").value == 3.14
    pairs = ((BulkString(b"a"), Integer(1)), (BulkString(b"a"), Integer(2)))
    assert Map(pairs).to_dict() == {BulkString(b"a"): Integer(2)}
    assert hash(Array((Map(pairs), NULL))) == hash(Array((Map(pairs), NULL)))
    # The three nulls are distinct values.
    assert len({NULL, NULL_BULK, NULL_ARRAY}) == 3


@FAST
@given(st.floats())
def test_double_of_round_trips_any_float(number: float) -> None:
    value = parse_one(writer.encode(Double.of(number)))
    assert isinstance(value, Double)
    assert value.value == number or (math.isnan(number) and math.isnan(value.value))


def test_parse_integer() -> None:
    assert parse_integer(b"0") == 0
    assert parse_integer(b"-9223372036854775808") == -(2**63)
    assert parse_integer(b"9223372036854775807") == 2**63 - 1
    assert parse_integer(bytearray(b"12345")) == 12345
    for bad in (b"", b"-", b"-0", b"01", b"+1", b" 1", b"1_0", b"9223372036854775808", b"1e3"):
        assert parse_integer(bad) is None, bad


# -- writer ----------------------------------------------------------------------------------


def test_builders() -> None:
    assert writer.simple(b"OK") == writer.OK == b"+OK\r\n"
    assert writer.simple("PONG") == writer.PONG
    assert writer.error("ERR unknown command") == b"-ERR unknown command\r\n"
    assert writer.error(b"NOAUTH Authentication required.") == (
        b"-NOAUTH Authentication required.\r\n"
    )
    assert writer.integer(-5) == b":-5\r\n"
    assert writer.bulk(b"") == b"$0\r\n\r\n"
    assert writer.bulk(None) == b"$-1\r\n"
    assert writer.bulk(None, resp3=True) == b"_\r\n"
    assert writer.null(False) == b"$-1\r\n"
    assert writer.null(True) == b"_\r\n"
    assert writer.null_array(False) == b"*-1\r\n"
    assert writer.null_array(True) == b"_\r\n"
    assert writer.array([writer.bulk(b"a"), writer.NULL_BULK_REPLY]) == b"*2\r\n$1\r\na\r\n$-1\r\n"
    assert writer.array([]) == b"*0\r\n"
    assert writer.array_header(3) == b"*3\r\n"
    pairs = [(writer.bulk(b"k"), writer.integer(1))]
    assert writer.map_(pairs, resp3=True) == b"%1\r\n$1\r\nk\r\n:1\r\n"
    assert writer.map_(pairs, resp3=False) == b"*2\r\n$1\r\nk\r\n:1\r\n"
    assert writer.map_header(2, resp3=False) == b"*4\r\n"
    assert writer.set_([writer.integer(1)], resp3=True) == b"~1\r\n:1\r\n"
    assert writer.set_([writer.integer(1)], resp3=False) == b"*1\r\n:1\r\n"
    assert writer.push([writer.bulk(b"message")], resp3=True) == b">1\r\n$7\r\nmessage\r\n"
    assert writer.push([writer.bulk(b"message")], resp3=False) == b"*1\r\n$7\r\nmessage\r\n"
    assert writer.attribute(pairs) + writer.OK == b"|1\r\n$1\r\nk\r\n:1\r\n+OK\r\n"
    assert writer.boolean(True, resp3=True) == b"#t\r\n"
    assert writer.boolean(False, resp3=False) == b":0\r\n"
    assert writer.double(1.5, resp3=True) == b",1.5\r\n"
    assert writer.double(float("inf"), resp3=False) == b"$3\r\ninf\r\n"
    assert writer.double(b"3.1400000000000001", resp3=True) == b",3.1400000000000001\r\n"
    assert writer.big_number(-(10**30), resp3=True) == b"(-1000000000000000000000000000000\r\n"
    assert writer.big_number(12, resp3=False) == b"$2\r\n12\r\n"
    assert writer.blob_error(b"ERR\r\nx") == b"!6\r\nERR\r\nx\r\n"
    assert writer.verbatim(b"hi", resp3=True) == b"=6\r\ntxt:hi\r\n"
    assert writer.verbatim(b"# x", fmt=b"mkd", resp3=True) == b"=7\r\nmkd:# x\r\n"
    assert writer.verbatim(b"hi", resp3=False) == b"$2\r\nhi\r\n"
    assert writer.encode_many([SimpleString(b"OK"), Integer(1)]) == b"+OK\r\n:1\r\n"


@pytest.mark.parametrize(
    "call",
    [
        lambda: writer.simple(b"a\r\nb"),
        lambda: writer.simple("a\n"),
        lambda: writer.error("ERR two\nlines"),
        lambda: writer.error(b"\r"),
        lambda: writer.integer(2**63),
        lambda: writer.double(b"x", resp3=True),
        lambda: writer.big_number(10**4300, resp3=True),
        lambda: writer.verbatim(b"x", fmt=b"long", resp3=True),
        lambda: writer.encode(b"not a value"),  # type: ignore[arg-type]
        lambda: writer.encode(Array((1,))),  # type: ignore[arg-type]
    ],
)
def test_writer_refuses_invalid_input(call: Any) -> None:
    with pytest.raises(LocalProtocolError):
        call()


def test_builders_parse_back() -> None:
    """The RESP2 fallbacks are what a RESP2 parser reads as plain values."""
    data = writer.map_([(writer.bulk(b"k"), writer.double(2.5, resp3=False))], resp3=False)
    assert parse_one(data) == Array((BulkString(b"k"), BulkString(b"2.5")))


# -- round trip, split-invariance, garbage -----------------------------------------------------


@FAST
@given(resp3_values)
def test_round_trip_every_type(value: Value) -> None:
    data = writer.encode(value)
    assert parse_one(data) == value
    assert writer.encode(parse_one(data)) == data


@FAST
@given(st.lists(resp3_values, min_size=1, max_size=6), cut_lists)
def test_split_invariance(values: list[Value], cuts: list[int]) -> None:
    stream = writer.encode_many(values)
    assert parse_all(split(stream, cuts)) == values


@FAST
@given(st.lists(resp2_values, min_size=1, max_size=6), cut_lists)
def test_hiredis_split_invariance_and_collapse(values: list[Value], cuts: list[int]) -> None:
    stream = writer.encode_many(values)
    assert parse_all(split(stream, cuts), HiredisReplyParser()) == [collapse_top(v) for v in values]


def _garbage_run(parser: Any, chunks: list[bytes], cap: int) -> None:
    try:
        for chunk in chunks:
            parser.feed(chunk)
            for value in parser.values():
                writer.encode(value)  # anything the parser returns is encodable
            assert parser.buffered <= cap
    except RemoteProtocolError as exc:
        assert exc.reply_hint.startswith("ERR Protocol error")


SMALL_LIMITS = ReplyLimits(
    max_bulk_len=64, max_aggregate_len=16, max_depth=6, max_line_len=48, max_buffer=256
)


@FAST
@given(resp_alphabet_garbage, cut_lists)
def test_garbage_gives_values_or_protocol_error(data: bytes, cuts: list[int]) -> None:
    for parser in (ReplyParser(SMALL_LIMITS), HiredisReplyParser(SMALL_LIMITS)):
        _garbage_run(parser, split(data, cuts), SMALL_LIMITS.max_buffer)


@FAST
@given(st.data())
def test_mutated_streams_give_values_or_protocol_error(data: st.DataObject) -> None:
    values = data.draw(st.lists(resp3_values, min_size=1, max_size=4))
    stream = data.draw(mutated(writer.encode_many(values)))
    chunks = split(stream, data.draw(cut_lists))
    _garbage_run(ReplyParser(SMALL_LIMITS), chunks, SMALL_LIMITS.max_buffer)
    _garbage_run(HiredisReplyParser(SMALL_LIMITS), chunks, SMALL_LIMITS.max_buffer)
    _garbage_run(ReplyParser(), chunks, ReplyLimits().max_buffer)


@FAST
@given(st.binary(min_size=1, max_size=40), cut_lists)
def test_buffer_cap_holds_for_a_reply_in_progress(payload: bytes, cuts: list[int]) -> None:
    """Consumed elements of an unfinished array still count against the cap."""
    limits = ReplyLimits(max_buffer=64)
    element = writer.encode(BulkString(payload))
    stream = b"*1000\r\n" + element * 1000
    parser = ReplyParser(limits)
    with pytest.raises(RemoteProtocolError) as caught:
        for chunk in split(stream, cuts):
            parser.feed(chunk)
            assert parser.values() == []
    assert caught.value.reply_hint == "ERR Protocol error: reply buffer limit exceeded"


# -- resumable parsing -----------------------------------------------------------------------


def test_large_array_in_small_chunks_is_consumed_incrementally() -> None:
    """Elements are consumed as they complete: nothing re-parsed per chunk (no O(n^2))."""
    count = 20000
    stream = b"*%d\r\n" % count + b"$5\r\nvalue\r\n" * count
    parser = ReplyParser()
    chunk = 4096
    for offset in range(0, len(stream) - chunk, chunk):
        parser.feed(stream[offset : offset + chunk])
        assert parser.next_value() is NEED_DATA
        # Only the tail of an unfinished element stays buffered.
        assert parser.buffered < 16
    parser.feed(stream[offset + chunk :])
    value = parser.next_value()
    assert isinstance(value, Array)
    assert len(value.items) == count
    assert value.items[-1] == BulkString(b"value")


def test_large_bulk_in_chunks() -> None:
    payload = bytes(range(256)) * 40000  # 10 MB
    stream = writer.bulk(payload) + writer.OK
    parser = ReplyParser()
    out: list[Value] = []
    for offset in range(0, len(stream), 65536):
        parser.feed(stream[offset : offset + 65536])
        out.extend(parser.values())
    assert out == [BulkString(payload), SimpleString(b"OK")]
    assert parser.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    parser = ReplyParser()
    parser.feed(bytearray(b"*2\r\n$1\r\na"))
    parser.feed(memoryview(b"\r\n:7\r\n+OK\r\n"))
    assert parser.values() == [Array((BulkString(b"a"), Integer(7))), SimpleString(b"OK")]


def test_factory() -> None:
    assert isinstance(make_reply_parser(), ReplyParser)
    assert isinstance(make_reply_parser(resp3=True, exact_types=False), ReplyParser)
    assert isinstance(make_reply_parser(exact_types=False), HiredisReplyParser)


def test_hiredis_collapses_only_inside_arrays() -> None:
    parser = HiredisReplyParser()
    parser.feed(b"+OK\r\n*-1\r\n*2\r\n+OK\r\n*-1\r\n*1\r\n-ERR \xff\r\n")
    assert parser.values() == [
        SimpleString(b"OK"),
        NULL_ARRAY,
        Array((BulkString(b"OK"), NULL_BULK)),
        Array((SimpleError("ERR \ufffd".encode()),)),
    ]


def test_hiredis_content_error_inside_array() -> None:
    parser = HiredisReplyParser()
    parser.feed(b"*1\r\n:12x\r\n")
    with pytest.raises(RemoteProtocolError, match="Protocol error"):
        parser.next_value()
    with pytest.raises(RemoteProtocolError):
        parser.feed(b"+OK\r\n")


def test_every_type_is_covered_by_the_vectors() -> None:
    seen: set[type] = set()

    def walk(value: Value) -> None:
        seen.add(type(value))
        if isinstance(value, (Array, Set, Push)):
            for item in value.items:
                walk(item)
        elif isinstance(value, Map):
            for key, item in value.pairs:
                walk(key)
                walk(item)
        elif isinstance(value, Attributed):
            walk(value.value)

    for vector in REPLIES:
        walk(shape_to_value(vector["decoded"]))
    assert len(seen) == 15
    assert {v.kind for v in (NULL, NULL_BULK, NULL_ARRAY)} == {
        shape_to_value(v["decoded"]).kind  # type: ignore[union-attr]
        for v in REPLIES
        if v["decoded"]["type"] == "null"
    }
    assert Boolean(True) in [shape_to_value(v["decoded"]) for v in REPLIES]
