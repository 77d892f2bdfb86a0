"""Basic types (int<n>, int<lenenc>, strings) and packet framing: the 16 MiB split and join,
sequence ids, the payload cap, split invariance and garbage."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from resmesh.protocols.mysql.errors import MySQLLocalError, MySQLRemoteError
from resmesh.protocols.mysql.packets import (
    MAX_CHUNK,
    NEED_DATA,
    Packet,
    PacketDecoder,
    encode_packet,
    packet_count,
)
from resmesh.protocols.mysql.wire import (
    Reader,
    int1,
    int2,
    int3,
    int4,
    int6,
    int8,
    lenenc_int,
    lenenc_int_size,
    lenenc_str,
    nul_str,
)
from tests.protocols.mysql.mysql_support import frame, split

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decode_all(data: list[bytes], decoder: PacketDecoder) -> list[Packet]:
    packets: list[Packet] = []
    for chunk in data:
        decoder.feed(chunk)
        packets.extend(decoder)
    return packets


# -- int<lenenc>, strings -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "wire"),
    [
        (0, "00"),
        (250, "fa"),
        (251, "fcfb00"),
        (0xFFFF, "fcffff"),
        (0x10000, "fd000001"),
        (0xFFFFFF, "fdffffff"),
        (0x1000000, "fe0000000100000000"),
        (2**64 - 1, "feffffffffffffffff"),
    ],
)
def test_lenenc_int_known_forms(value: int, wire: str) -> None:
    """The boundaries of https://mariadb.com/kb/en/protocol-data-types/ (shortest form)."""
    assert lenenc_int(value).hex() == wire
    assert lenenc_int_size(value) == len(wire) // 2
    reader = Reader(bytes.fromhex(wire))
    assert reader.lenenc_int() == value
    assert reader.at_end()


@given(st.integers(0, 2**64 - 1))
@FAST
def test_lenenc_int_round_trip(value: int) -> None:
    encoded = lenenc_int(value)
    reader = Reader(encoded + b"rest")
    assert reader.lenenc_int() == value
    assert reader.rest() == b"rest"


@given(st.binary(max_size=300))
@FAST
def test_lenenc_str_round_trip(value: bytes) -> None:
    reader = Reader(lenenc_str(value) + lenenc_str(value[::-1]))
    assert reader.lenenc_str() == value
    assert reader.lenenc_str() == value[::-1]
    assert reader.at_end()


@given(st.binary(max_size=40).filter(lambda b: b"\x00" not in b))
@FAST
def test_nul_str_round_trip(value: bytes) -> None:
    reader = Reader(nul_str(value) + b"x")
    assert reader.nul_str() == value
    assert reader.rest() == b"x"


@given(
    st.integers(0, 0xFF),
    st.integers(0, 0xFFFF),
    st.integers(0, 0xFFFFFF),
    st.integers(0, 2**32 - 1),
    st.integers(0, 2**48 - 1),
    st.integers(0, 2**64 - 1),
)
@FAST
def test_fixed_ints_round_trip(a: int, b: int, c: int, d: int, e: int, f: int) -> None:
    reader = Reader(int1(a) + int2(b) + int3(c) + int4(d) + int6(e) + int8(f))
    assert [reader.int1(), reader.int2(), reader.int3(), reader.int4()] == [a, b, c, d]
    assert [reader.int6(), reader.int8()] == [e, f]
    assert reader.at_end()


def test_reader_refuses_to_run_past_the_end() -> None:
    for data, read in [
        (b"", Reader.int1),
        (b"\x01", Reader.int2),
        (b"\xfc\x01", Reader.lenenc_int),
        (b"\x05abc", Reader.lenenc_str),
        (b"abc", Reader.nul_str),
        (b"\xff", Reader.lenenc_int),
        (b"\xfb", Reader.lenenc_int),
    ]:
        with pytest.raises(MySQLRemoteError) as info:
            read(Reader(data))
        assert info.value.error.errno == 1835
        assert not info.value.close  # one bad packet; the framing is intact


def test_writers_refuse_what_does_not_fit() -> None:
    for write, value in [(int1, 256), (int2, -1), (int3, 2**24), (int4, 2**32), (lenenc_int, -1)]:
        with pytest.raises(MySQLLocalError):
            write(value)
    with pytest.raises(MySQLLocalError):
        nul_str(b"a\x00b")
    assert Reader(b"\xfbx").lenenc_str_or_null() is None


# -- framing ------------------------------------------------------------------------------


def test_encode_packet_known_bytes() -> None:
    assert encode_packet(b"\x01", 0) == (bytes.fromhex("0100000001"), 0)
    assert encode_packet(b"", 7) == (bytes.fromhex("00000007"), 7)
    with pytest.raises(MySQLLocalError):
        encode_packet(b"x", 256)


@pytest.mark.parametrize("size", [0, 1, 4, 5, 7, 8, 9, 12, 13])
def test_split_around_the_chunk_size(size: int) -> None:
    """With a 4-byte chunk: full chunks continue, a short (maybe empty) one ends the payload."""
    payload = bytes(range(size))
    wire, last = encode_packet(payload, 254, max_chunk=4)
    lengths = []
    seqs = []
    pos = 0
    while pos < len(wire):
        length = int.from_bytes(wire[pos : pos + 3], "little")
        lengths.append(length)
        seqs.append(wire[pos + 3])
        pos += 4 + length
    assert lengths == [4] * (size // 4) + [size % 4]
    assert len(lengths) == packet_count(size, 4)
    assert seqs == [(254 + i) % 256 for i in range(len(lengths))]
    assert last == seqs[-1]
    decoder = PacketDecoder(max_chunk=4, expected_seq=254)
    (packet,) = decode_all([wire], decoder)
    assert packet == Packet(254, payload, last)
    assert decoder.expected_seq == (last + 1) % 256
    assert packet.encode(max_chunk=4) == wire


@given(st.binary(max_size=40), st.integers(1, 9), st.integers(0, 255), st.data())
@FAST
def test_packets_round_trip_any_chunking(
    payload: bytes, max_chunk: int, seq: int, data: st.DataObject
) -> None:
    wire, last = encode_packet(payload, seq, max_chunk=max_chunk)
    stream = wire + encode_packet(b"next", (last + 1) % 256, max_chunk=max_chunk)[0]
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=8))
    decoder = PacketDecoder(max_chunk=max_chunk, expected_seq=seq)
    packets = decode_all(split(stream, cuts), decoder)
    assert [p.payload for p in packets] == [payload, b"next"]
    assert packets[0].seq == seq
    assert packets[0].last_seq == last
    assert decoder.buffered == 0


def test_a_real_16_mib_payload_is_split_and_joined() -> None:
    """0xFFFFFF + 5 bytes: two packets on the wire; exactly 0xFFFFFF: a full one and an empty
    one (https://mariadb.com/kb/en/0-packet/)."""
    payload = b"a" * MAX_CHUNK + b"bcdef"
    wire, last = encode_packet(payload, 0)
    assert last == 1
    assert wire[:4] == b"\xff\xff\xff\x00"
    assert wire[4 + MAX_CHUNK : 8 + MAX_CHUNK] == b"\x05\x00\x00\x01"
    decoder = PacketDecoder(max_payload=32 * 1024 * 1024)
    (packet,) = decode_all(split(wire, [3, 1000, MAX_CHUNK + 2, MAX_CHUNK + 6]), decoder)
    assert packet.payload == payload
    assert (packet.seq, packet.last_seq) == (0, 1)
    exact = b"z" * MAX_CHUNK
    wire, last = encode_packet(exact, 3)
    assert wire[-4:] == b"\x00\x00\x00\x04"
    assert last == 4
    (packet,) = decode_all([wire], PacketDecoder(max_payload=32 * 1024 * 1024, expected_seq=3))
    assert packet.payload == exact


def test_sequence_out_of_order_is_1156() -> None:
    decoder = PacketDecoder(expected_seq=0)
    decoder.feed(frame(b"x", 1))
    with pytest.raises(MySQLRemoteError) as info:
        decoder.next_packet()
    assert (info.value.error.errno, info.value.error.sqlstate) == (1156, "08S01")
    with pytest.raises(MySQLRemoteError):  # final
        decoder.next_packet()
    unchecked = PacketDecoder(expected_seq=None)
    unchecked.feed(frame(b"x", 9))
    assert unchecked.next_packet() == Packet(9, b"x")


def test_over_max_payload_is_1153_from_the_header_alone() -> None:
    decoder = PacketDecoder(max_payload=10, max_chunk=4)
    decoder.feed(frame(b"abcd", 0) + frame(b"efgh", 1) + b"\x04\x00\x00\x02")  # 12 declared
    with pytest.raises(MySQLRemoteError) as info:
        decoder.next_packet()
    error = info.value.error
    assert (error.errno, error.sqlstate) == (1153, "08S01")
    assert error.message == "Got a packet bigger than 'max_allowed_packet' bytes"
    assert info.value.close
    big = PacketDecoder(max_payload=100)
    big.feed(b"\xff\xff\x7f\x00")  # 8 MiB announced, nothing sent yet
    with pytest.raises(MySQLRemoteError):
        big.next_packet()


def test_the_buffer_cap_holds() -> None:
    decoder = PacketDecoder(max_payload=10, max_buffer=32)
    decoder.feed(b"\x00" * 32)
    with pytest.raises(MySQLRemoteError) as info:
        decoder.feed(b"\x00")
    assert info.value.error.errno == 1153


def test_need_data_until_complete() -> None:
    decoder = PacketDecoder()
    wire = frame(b"hello", 0)
    for byte in wire[:-1]:
        decoder.feed(bytes((byte,)))
        assert decoder.next_packet() is NEED_DATA
    decoder.feed(wire[-1:])
    assert decoder.next_packet() == Packet(0, b"hello")


@given(st.binary(max_size=200), st.integers(1, 0xFFFFFF))
@settings(max_examples=300, deadline=None)
def test_garbage_gives_packets_or_a_remote_error(data: bytes, max_chunk: int) -> None:
    decoder = PacketDecoder(max_payload=64, max_chunk=max_chunk, max_buffer=128)
    try:
        for chunk in split(data, [7, 33, 90]):
            decoder.feed(chunk)
            for packet in decoder:
                assert len(packet.payload) <= 64
            assert decoder.buffer.pending <= 128
    except MySQLRemoteError as exc:
        assert exc.error.errno in (1153, 1156)
