"""The protocol's basic data types inside a packet payload: fixed-width little-endian integers,
length-encoded integers and strings, NUL-terminated strings, rest-of-packet strings.

Described at https://mariadb.com/kb/en/protocol-data-types/ and
https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_basic_data_types.html.

Why a cursor-style :class:`Reader` over one payload: every field of a packet is read in order,
and a payload is complete before it is parsed (framing happens first, in :mod:`.packets`), so a
reader only has to refuse to run past the payload's end. It raises
:class:`~.errors.MySQLRemoteError` with 1835 "Malformed communication packet" and
``close=False``: one bad packet does not lose the stream's framing, so the server role can answer
with an ERR packet and read the next command. Writers are plain functions that return bytes.
"""

from __future__ import annotations

import struct
from typing import Final, final

from .errors import ErrorInfo, MySQLLocalError, MySQLRemoteError, error_info, malformed_packet

__all__ = [
    "LENENC_NULL",
    "Reader",
    "int1",
    "int2",
    "int3",
    "int4",
    "int6",
    "int8",
    "lenenc_int",
    "lenenc_int_size",
    "lenenc_str",
    "nul_str",
]

#: In a text row, 0xFB instead of a length means NULL.
LENENC_NULL: Final = 0xFB

_U16: Final = struct.Struct("<H")
_U32: Final = struct.Struct("<I")
_U64: Final = struct.Struct("<Q")


def _bad_value(what: str) -> MySQLLocalError:
    return MySQLLocalError(error_info(1105, f"cannot encode {what}"))


@final
class Reader:
    """Reads fields from one payload, front to back.

    Attributes:
        data: the payload.
        pos: offset of the next unread byte.
    """

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes, pos: int = 0) -> None:
        self.data = data
        self.pos = pos

    @property
    def remaining(self) -> int:
        """Bytes not read yet."""
        return len(self.data) - self.pos

    def at_end(self) -> bool:
        """Whether every byte was read."""
        return self.pos >= len(self.data)

    def _need(self, size: int) -> int:
        pos = self.pos
        if pos + size > len(self.data):
            raise MySQLRemoteError(malformed_packet(), close=False)
        self.pos = pos + size
        return pos

    def int1(self) -> int:
        """``int<1>``."""
        return self.data[self._need(1)]

    def int2(self) -> int:
        """``int<2>``, little-endian."""
        return int(_U16.unpack_from(self.data, self._need(2))[0])

    def int3(self) -> int:
        """``int<3>``, little-endian."""
        pos = self._need(3)
        return int.from_bytes(self.data[pos : pos + 3], "little")

    def int4(self) -> int:
        """``int<4>``, little-endian."""
        return int(_U32.unpack_from(self.data, self._need(4))[0])

    def int6(self) -> int:
        """``int<6>``, little-endian."""
        pos = self._need(6)
        return int.from_bytes(self.data[pos : pos + 6], "little")

    def int8(self) -> int:
        """``int<8>``, little-endian."""
        return int(_U64.unpack_from(self.data, self._need(8))[0])

    def fixed(self, size: int) -> bytes:
        """``string<fix>``: exactly ``size`` bytes."""
        pos = self._need(size)
        return self.data[pos : pos + size]

    def rest(self) -> bytes:
        """``string<EOF>``: everything left."""
        pos = self.pos
        self.pos = len(self.data)
        return self.data[pos:]

    def lenenc_int(self) -> int:
        """``int<lenenc>``: 1 byte below 0xFB, else 0xFC + 2, 0xFD + 3, 0xFE + 8 bytes.

        Raises:
            MySQLRemoteError: 0xFB (NULL, only meaningful in a row) or 0xFF (not a length).
        """
        first = self.int1()
        if first < 0xFB:
            return first
        if first == 0xFC:
            return self.int2()
        if first == 0xFD:
            return self.int3()
        if first == 0xFE:
            return self.int8()
        raise MySQLRemoteError(malformed_packet(), close=False)

    def lenenc_str(self) -> bytes:
        """``string<lenenc>``."""
        return self.fixed(self.lenenc_int())

    def lenenc_str_or_null(self) -> bytes | None:
        """A text row's column value: ``string<lenenc>``, or 0xFB for NULL."""
        data = self.data
        pos = self.pos
        if pos < len(data) and data[pos] == LENENC_NULL:
            self.pos = pos + 1
            return None
        return self.fixed(self.lenenc_int())

    def nul_str(self) -> bytes:
        """``string<NUL>``: the bytes up to a NUL, which is consumed but not returned."""
        data = self.data
        end = data.find(b"\x00", self.pos)
        if end < 0:
            raise MySQLRemoteError(malformed_packet(), close=False)
        value = data[self.pos : end]
        self.pos = end + 1
        return value

    def nul_str_or_rest(self) -> bytes:
        """A NUL-terminated string whose NUL some peers omit at the end of a packet."""
        data = self.data
        end = data.find(b"\x00", self.pos)
        if end < 0:
            return self.rest()
        value = data[self.pos : end]
        self.pos = end + 1
        return value

    def fail(self, error: ErrorInfo | None = None) -> MySQLRemoteError:
        """The error to raise for a field whose value is impossible."""
        return MySQLRemoteError(error or malformed_packet(), close=False)


def int1(value: int) -> bytes:
    """``int<1>``."""
    if not 0 <= value <= 0xFF:
        raise _bad_value(f"{value} as int<1>")
    return bytes((value,))


def int2(value: int) -> bytes:
    """``int<2>``."""
    if not 0 <= value <= 0xFFFF:
        raise _bad_value(f"{value} as int<2>")
    return _U16.pack(value)


def int3(value: int) -> bytes:
    """``int<3>``."""
    if not 0 <= value <= 0xFFFFFF:
        raise _bad_value(f"{value} as int<3>")
    return value.to_bytes(3, "little")


def int4(value: int) -> bytes:
    """``int<4>``."""
    if not 0 <= value <= 0xFFFFFFFF:
        raise _bad_value(f"{value} as int<4>")
    return _U32.pack(value)


def int6(value: int) -> bytes:
    """``int<6>``."""
    if not 0 <= value < 1 << 48:
        raise _bad_value(f"{value} as int<6>")
    return value.to_bytes(6, "little")


def int8(value: int) -> bytes:
    """``int<8>``."""
    if not 0 <= value < 1 << 64:
        raise _bad_value(f"{value} as int<8>")
    return _U64.pack(value)


def lenenc_int_size(value: int) -> int:
    """Bytes :func:`lenenc_int` writes for ``value``."""
    if value < 0xFB:
        return 1
    if value <= 0xFFFF:
        return 3
    if value <= 0xFFFFFF:
        return 4
    return 9


def lenenc_int(value: int) -> bytes:
    """``int<lenenc>`` in its shortest form (the only form servers write)."""
    if value < 0:
        raise _bad_value(f"{value} as int<lenenc>")
    if value < 0xFB:
        return bytes((value,))
    if value <= 0xFFFF:
        return b"\xfc" + _U16.pack(value)
    if value <= 0xFFFFFF:
        return b"\xfd" + value.to_bytes(3, "little")
    if value < 1 << 64:
        return b"\xfe" + _U64.pack(value)
    raise _bad_value(f"{value} as int<lenenc>")


def lenenc_str(value: bytes) -> bytes:
    """``string<lenenc>``."""
    return lenenc_int(len(value)) + value


def nul_str(value: bytes) -> bytes:
    """``string<NUL>``.

    Raises:
        MySQLLocalError: ``value`` holds a NUL byte, which would end it early.
    """
    if b"\x00" in value:
        raise _bad_value("a NUL-terminated string that holds a NUL byte")
    return value + b"\x00"
