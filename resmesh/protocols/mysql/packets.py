"""MySQL packet framing, sans-IO: a 4-byte header, the 16 MiB split, sequence ids, a size cap.

Every message of the protocol travels as one *payload* in one or more packets
(https://mariadb.com/kb/en/0-packet/,
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_packets.html)::

    int<3>  payload length (little-endian), at most 0xFFFFFF
    int<1>  sequence id
    bytes   payload

A payload of 0xFFFFFF bytes or more is cut into packets of exactly 0xFFFFFF bytes, and the last
one carries the remainder, which is empty when the length is an exact multiple: a packet shorter
than 0xFFFFFF bytes ends the payload. The split and the join happen *here*, inside the codec,
so everything above this module sees whole payloads (unlike drivers that leave it to the socket
code). The sequence id counts packets within one exchange, modulo 256: a client's command starts
at 0 and the reply continues where the command stopped; the connection phase counts from the
server's greeting (0). :class:`PacketDecoder` checks the ids it is told to expect
(:attr:`PacketDecoder.expected_seq`), and refuses out-of-order packets with 1156, as a server does.

Why the size cap is checked on the declared lengths, chunk by chunk: a peer that announces a
1 GiB payload is refused with 1153 ("Got a packet bigger than 'max_allowed_packet' bytes",
SQLSTATE 08S01) as soon as the header that takes it over the limit arrives, before its bytes
are buffered. The receive buffer (:class:`~resmesh.protocols._buffer.ReceiveBuffer`) keeps its
own hard cap: one largest payload, its headers, and some read-ahead. Memory per connection is
bounded whatever the peer sends.

``max_chunk`` exists for tests: the split logic is the same for any chunk size, so it can be
exercised around the boundary with payloads of a few bytes instead of 16 MiB.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, final

from .._buffer import ReceiveBuffer
from .errors import (
    ErrorInfo,
    MySQLLocalError,
    MySQLRemoteError,
    error_info,
    packet_too_large,
    packets_out_of_order,
)

__all__ = [
    "DEFAULT_MAX_PAYLOAD",
    "DEFAULT_READ_AHEAD",
    "HEADER_SIZE",
    "MAX_CHUNK",
    "NEED_DATA",
    "NeedData",
    "Packet",
    "PacketDecoder",
    "encode_packet",
    "packet_count",
]

#: The largest payload one packet carries; a payload this long continues in the next packet.
MAX_CHUNK: Final = 0xFFFFFF
HEADER_SIZE: Final = 4
#: MariaDB's default ``max_allowed_packet`` (16 MiB).
DEFAULT_MAX_PAYLOAD: Final = 16 * 1024 * 1024
#: Bytes the receive buffer may hold beyond one largest payload: what arrives behind it.
DEFAULT_READ_AHEAD: Final = 1024 * 1024


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA` (an enum, so ``is`` checks narrow the type)."""

    NEED_DATA = "NEED_DATA"


#: Returned when the buffered bytes end inside a payload (h11's sentinel): feed more.
NEED_DATA: Final = NeedData.NEED_DATA


@dataclass(frozen=True, slots=True)
class Packet:
    """One payload and the sequence ids of the packets that carried it.

    Attributes:
        seq: the sequence id of the first packet.
        payload: the joined payload.
        last_seq: the sequence id of the last packet (``seq`` unless the payload was split);
            the next packet of the exchange has ``(last_seq + 1) % 256``.
    """

    seq: int
    payload: bytes
    last_seq: int = -1

    def __post_init__(self) -> None:
        if self.last_seq < 0:
            object.__setattr__(self, "last_seq", self.seq)

    @property
    def first_byte(self) -> int | None:
        """The payload's first byte, which says what most packets are; ``None`` if empty."""
        return self.payload[0] if self.payload else None

    def encode(self, *, max_chunk: int = MAX_CHUNK) -> bytes:
        """The packet's bytes on the wire (what was received, for a received packet)."""
        return encode_packet(self.payload, self.seq, max_chunk=max_chunk)[0]


def packet_count(size: int, max_chunk: int = MAX_CHUNK) -> int:
    """How many packets carry a payload of ``size`` bytes."""
    return size // max_chunk + 1


def encode_packet(payload: bytes, seq: int, *, max_chunk: int = MAX_CHUNK) -> tuple[bytes, int]:
    """Frame ``payload`` starting at sequence id ``seq``.

    Returns:
        The bytes to send and the sequence id of the last packet written.

    Raises:
        MySQLLocalError: ``seq`` is not a byte.
    """
    if not 0 <= seq <= 0xFF:
        raise MySQLLocalError(error_info(1105, f"sequence id {seq} is not a byte"))
    size = len(payload)
    if size < max_chunk:
        return size.to_bytes(3, "little") + bytes((seq,)) + payload, seq
    parts: list[bytes | memoryview] = []
    view = memoryview(payload)
    offset = 0
    while True:
        chunk = view[offset : offset + max_chunk]
        parts.append(len(chunk).to_bytes(3, "little") + bytes((seq,)))
        parts.append(chunk)
        offset += len(chunk)
        if len(chunk) < max_chunk:
            break
        seq = (seq + 1) & 0xFF
    return b"".join(parts), seq


@final
class PacketDecoder:
    """Splits a byte stream into :class:`Packet` payloads, joining split payloads.

    Use: :meth:`feed` whenever bytes arrive, then :meth:`next_packet` until it returns
    :data:`NEED_DATA`. The result does not depend on how the stream was cut into chunks.
    Errors are final: the stream's boundaries are lost, so every later call raises again.

    Attributes:
        expected_seq: the sequence id the next packet must carry, or ``None`` to accept any
            (the owner sets it at the start of each exchange; the decoder advances it).
        max_payload: the largest joined payload accepted (``max_allowed_packet``).
        buffer: the bounded receive buffer.
    """

    __slots__ = (
        "_error",
        "_scan_end",
        "_scan_last_seq",
        "_scan_seq",
        "_scan_size",
        "buffer",
        "expected_seq",
        "max_chunk",
        "max_payload",
    )

    def __init__(
        self,
        max_payload: int = DEFAULT_MAX_PAYLOAD,
        *,
        max_chunk: int = MAX_CHUNK,
        max_buffer: int | None = None,
        expected_seq: int | None = 0,
    ) -> None:
        """Create a decoder.

        Args:
            max_payload: largest payload accepted; a larger one is refused with 1153.
            max_chunk: payload bytes per packet (0xFFFFFF on the wire; smaller in tests).
            max_buffer: most bytes buffered at once; by default one largest payload with its
                headers plus :data:`DEFAULT_READ_AHEAD`.
            expected_seq: the first packet's sequence id (``None``: do not check).
        """
        if max_chunk < 1 or max_chunk > MAX_CHUNK:
            raise ValueError(f"max_chunk must be in 1..{MAX_CHUNK}")
        self.max_payload = max_payload
        self.max_chunk = max_chunk
        if max_buffer is None:
            headers = HEADER_SIZE * packet_count(max_payload, max_chunk)
            max_buffer = max_payload + headers + DEFAULT_READ_AHEAD
        self.buffer = ReceiveBuffer(max_buffer, packet_too_large().message)
        self.expected_seq = expected_seq
        # The payload in progress: where its next packet header starts (relative to
        # buffer.start), its size so far, its first and last sequence ids.
        self._scan_end = 0
        self._scan_size = 0
        self._scan_seq = -1
        self._scan_last_seq = -1
        self._error: MySQLRemoteError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned in a packet."""
        return len(self.buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the peer.

        Raises:
            MySQLRemoteError: 1153 when the buffer cap would be exceeded, or an earlier error.
        """
        if self._error is not None:
            raise self._error
        try:
            self.buffer.feed(data)
        except MySQLRemoteError:
            raise
        except Exception as exc:  # the shared buffer's overflow error
            self._error = MySQLRemoteError(packet_too_large())
            raise self._error from exc

    def next_packet(self) -> Packet | NeedData:
        """The next complete payload, or :data:`NEED_DATA`.

        Raises:
            MySQLRemoteError: 1153 for a payload over ``max_payload``, 1156 for a sequence id
                other than :attr:`expected_seq`.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_packet()
        except MySQLRemoteError as exc:
            self._error = exc
            raise

    def __iter__(self) -> Iterator[Packet]:
        """Every complete payload buffered so far."""
        while (packet := self.next_packet()) is not NEED_DATA:
            yield packet

    def _fail(self, error: ErrorInfo) -> MySQLRemoteError:
        return MySQLRemoteError(error)

    def _next_packet(self) -> Packet | NeedData:
        buffer = self.buffer
        data = buffer.data
        start = buffer.start
        available = len(data) - start
        max_chunk = self.max_chunk
        offset = self._scan_end
        size = self._scan_size
        while True:
            if available - offset < HEADER_SIZE:
                self._scan_end = offset
                self._scan_size = size
                return NEED_DATA
            head = start + offset
            length = data[head] | data[head + 1] << 8 | data[head + 2] << 16
            seq = data[head + 3]
            if length > max_chunk:
                # Only a test's small max_chunk can be exceeded: 3 bytes hold 0xFFFFFF at most.
                raise self._fail(packet_too_large())
            expected = self.expected_seq
            if expected is not None and seq != expected:
                raise self._fail(packets_out_of_order())
            if size + length > self.max_payload:
                if expected is not None:
                    # Answered after this packet, as MariaDB does: the client's next id.
                    self.expected_seq = (seq + 1) & 0xFF
                raise self._fail(packet_too_large())
            if available - offset - HEADER_SIZE < length:
                self._scan_end = offset
                self._scan_size = size
                return NEED_DATA
            # The packet is complete: the next one continues this payload if it is full.
            if self._scan_seq < 0:
                self._scan_seq = seq
            self._scan_last_seq = seq
            if expected is not None:
                self.expected_seq = (seq + 1) & 0xFF
            offset += HEADER_SIZE + length
            size += length
            if length < max_chunk:
                break
        first_seq = self._scan_seq
        last_seq = self._scan_last_seq
        self._scan_end = 0
        self._scan_size = 0
        self._scan_seq = -1
        self._scan_last_seq = -1
        if offset == HEADER_SIZE + size:
            payload = bytes(data[start + HEADER_SIZE : start + offset])
        else:
            parts = []
            pos = start
            end = start + offset
            while pos < end:
                length = data[pos] | data[pos + 1] << 8 | data[pos + 2] << 16
                parts.append(data[pos + HEADER_SIZE : pos + HEADER_SIZE + length])
                pos += HEADER_SIZE + length
            payload = b"".join(parts)
        buffer.commit(start + offset)
        return Packet(first_seq, payload, last_seq)
