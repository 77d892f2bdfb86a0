"""Values of the binary protocol (prepared statements): COM_STMT_EXECUTE parameters and the rows
of a binary result set, each column's encoding chosen by its field type.

Public descriptions: https://mariadb.com/kb/en/resultset-row/ (binary resultset row, NULL
bitmap with offset 2), https://mariadb.com/kb/en/com_stmt_execute/ (binary parameter encoding)
and https://dev.mysql.com/doc/dev/mysql-server/latest/page_protocol_binary_resultset.html.

========================  ==========================================================
type                      encoding
========================  ==========================================================
TINY                      1 byte, signed unless the column (or parameter) is unsigned
SHORT, YEAR               2 bytes, little-endian
LONG, INT24               4 bytes
LONGLONG                  8 bytes
FLOAT, DOUBLE             IEEE 754, 4 / 8 bytes, little-endian
DATE, DATETIME, TIMESTAMP length byte 0, 4, 7 or 11: year(2) month day [hour min sec
                          [microsecond(4)]]; 0 means 0000-00-00 00:00:00
TIME                      length byte 0, 8 or 12: negative(1) days(4) hour min sec
                          [microsecond(4)]
NULL                      nothing (a NULL value is a bit in the NULL bitmap)
everything else           string<lenenc>: DECIMAL/NEWDECIMAL as decimal text, strings,
                          blobs, BIT, ENUM, SET, JSON, GEOMETRY
========================  ==========================================================

Why dates and times have their own value types (:class:`DateTimeValue`, :class:`TimeValue`)
instead of :mod:`datetime`'s: the wire holds values Python's types cannot (``0000-00-00``, a
TIME of ``-838:59:59``), and a proxy must pass them through unchanged. Conversions to and from
:mod:`datetime` are methods. Encoding picks the shortest length form that holds the value, as
servers do, so a decoded value re-encodes to the server's bytes.
"""

from __future__ import annotations

import datetime
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from .constants import ColumnType
from .errors import MySQLLocalError, error_info
from .wire import Reader, lenenc_str

__all__ = [
    "UNSIGNED_FLAG",
    "BinaryValue",
    "DateTimeValue",
    "TimeValue",
    "decode_binary_row",
    "decode_binary_value",
    "decode_null_bitmap",
    "encode_binary_row",
    "encode_binary_value",
    "encode_null_bitmap",
    "null_bitmap_size",
]

#: The parameter flag byte's bit for an unsigned integer (second byte of a parameter type).
UNSIGNED_FLAG: Final = 0x80


@dataclass(frozen=True, slots=True)
class DateTimeValue:
    """A DATE, DATETIME or TIMESTAMP value as the wire holds it (zero dates included)."""

    year: int = 0
    month: int = 0
    day: int = 0
    hour: int = 0
    minute: int = 0
    second: int = 0
    microsecond: int = 0

    @classmethod
    def from_python(cls, value: datetime.date) -> DateTimeValue:
        """From a :class:`datetime.date` or :class:`datetime.datetime` (tzinfo ignored)."""
        if isinstance(value, datetime.datetime):
            return cls(
                value.year,
                value.month,
                value.day,
                value.hour,
                value.minute,
                value.second,
                value.microsecond,
            )
        return cls(value.year, value.month, value.day)

    def to_python(self) -> datetime.datetime | None:
        """As a :class:`datetime.datetime`; ``None`` for a date Python cannot hold (zero)."""
        try:
            return datetime.datetime(
                self.year,
                self.month,
                self.day,
                self.hour,
                self.minute,
                self.second,
                self.microsecond,
            )
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class TimeValue:
    """A TIME value as the wire holds it: a sign and a duration (up to 838:59:59)."""

    negative: bool = False
    days: int = 0
    hours: int = 0
    minutes: int = 0
    seconds: int = 0
    microseconds: int = 0

    @classmethod
    def from_timedelta(cls, value: datetime.timedelta) -> TimeValue:
        """From a :class:`datetime.timedelta`."""
        negative = value < datetime.timedelta(0)
        if negative:
            value = -value
        hours, rest = divmod(value.seconds, 3600)
        minutes, seconds = divmod(rest, 60)
        return cls(negative, value.days, hours, minutes, seconds, value.microseconds)

    def to_timedelta(self) -> datetime.timedelta:
        """As a :class:`datetime.timedelta`."""
        magnitude = datetime.timedelta(
            days=self.days,
            hours=self.hours,
            minutes=self.minutes,
            seconds=self.seconds,
            microseconds=self.microseconds,
        )
        return -magnitude if self.negative else magnitude


#: A decoded binary value: an int, a float, bytes (strings, decimals, blobs), a date/time
#: value, or ``None`` for NULL.
BinaryValue: TypeAlias = int | float | bytes | DateTimeValue | TimeValue | None

_INT_SIZES: Final[dict[int, int]] = {
    ColumnType.TINY: 1,
    ColumnType.SHORT: 2,
    ColumnType.YEAR: 2,
    ColumnType.LONG: 4,
    ColumnType.INT24: 4,
    ColumnType.LONGLONG: 8,
}
_DATE_TYPES: Final = frozenset(
    {ColumnType.DATE, ColumnType.DATETIME, ColumnType.TIMESTAMP, ColumnType.NEWDATE}
)
_FLOAT: Final = struct.Struct("<f")
_DOUBLE: Final = struct.Struct("<d")
_DATE: Final = struct.Struct("<HBB")
_CLOCK: Final = struct.Struct("<BBB")
_TIME: Final = struct.Struct("<BIBBB")
_U32: Final = struct.Struct("<I")


def _local(message: str) -> MySQLLocalError:
    return MySQLLocalError(error_info(1105, message))


def null_bitmap_size(count: int, offset: int) -> int:
    """Bytes of a NULL bitmap for ``count`` values whose first bit is ``offset`` (2 for a
    result row, 0 for statement parameters)."""
    return (count + offset + 7) // 8


def decode_null_bitmap(bitmap: bytes, count: int, offset: int) -> list[bool]:
    """Which of ``count`` values are NULL."""
    return [bool(bitmap[(i + offset) >> 3] & (1 << ((i + offset) & 7))) for i in range(count)]


def encode_null_bitmap(nulls: Sequence[bool], offset: int) -> bytes:
    """The NULL bitmap for ``nulls``."""
    bitmap = bytearray(null_bitmap_size(len(nulls), offset))
    for i, null in enumerate(nulls):
        if null:
            bitmap[(i + offset) >> 3] |= 1 << ((i + offset) & 7)
    return bytes(bitmap)


def decode_binary_value(reader: Reader, column_type: int, unsigned: bool = False) -> BinaryValue:
    """Read one non-NULL value of ``column_type``.

    Raises:
        MySQLRemoteError: 1835 if the value runs past the packet, or a date/time length byte
            is not one of the allowed lengths.
    """
    size = _INT_SIZES.get(column_type)
    if size is not None:
        return int.from_bytes(reader.fixed(size), "little", signed=not unsigned)
    if column_type == ColumnType.DOUBLE:
        return float(_DOUBLE.unpack(reader.fixed(8))[0])
    if column_type == ColumnType.FLOAT:
        return float(_FLOAT.unpack(reader.fixed(4))[0])
    if column_type in _DATE_TYPES:
        length = reader.int1()
        if length not in (0, 4, 7, 11):
            raise reader.fail()
        if length == 0:
            return DateTimeValue()
        year, month, day = _DATE.unpack(reader.fixed(4))
        if length == 4:
            return DateTimeValue(year, month, day)
        hour, minute, second = _CLOCK.unpack(reader.fixed(3))
        micro = reader.int4() if length == 11 else 0
        return DateTimeValue(year, month, day, hour, minute, second, micro)
    if column_type == ColumnType.TIME:
        length = reader.int1()
        if length not in (0, 8, 12):
            raise reader.fail()
        if length == 0:
            return TimeValue()
        negative, days, hours, minutes, seconds = _TIME.unpack(reader.fixed(8))
        micro = reader.int4() if length == 12 else 0
        if negative > 1:
            raise reader.fail()
        return TimeValue(bool(negative), days, hours, minutes, seconds, micro)
    if column_type == ColumnType.NULL:
        return None
    return reader.lenenc_str()


def encode_binary_value(column_type: int, value: BinaryValue, unsigned: bool = False) -> bytes:
    """One non-NULL value of ``column_type``, in its shortest form.

    Raises:
        MySQLLocalError: the value's Python type does not fit the column type, or an integer
            is out of range.
    """
    size = _INT_SIZES.get(column_type)
    if size is not None:
        if not isinstance(value, int):
            raise _local(f"type {column_type} needs an int, not {type(value).__name__}")
        try:
            return value.to_bytes(size, "little", signed=not unsigned)
        except OverflowError:
            raise _local(f"{value} does not fit type {column_type}") from None
    if column_type in (ColumnType.DOUBLE, ColumnType.FLOAT):
        if not isinstance(value, int | float) or isinstance(value, bool):
            raise _local(f"type {column_type} needs a float")
        packer = _DOUBLE if column_type == ColumnType.DOUBLE else _FLOAT
        try:
            return packer.pack(value)
        except (OverflowError, struct.error):
            raise _local(f"{value} does not fit type {column_type}") from None
    if column_type in _DATE_TYPES:
        if not isinstance(value, DateTimeValue):
            raise _local(f"type {column_type} needs a DateTimeValue")
        return _encode_datetime(value)
    if column_type == ColumnType.TIME:
        if not isinstance(value, TimeValue):
            raise _local("TIME needs a TimeValue")
        return _encode_time(value)
    if column_type == ColumnType.NULL:
        if value is not None:
            raise _local("type NULL holds no value")
        return b""
    if not isinstance(value, bytes):
        raise _local(f"type {column_type} needs bytes")
    return lenenc_str(value)


def _encode_datetime(value: DateTimeValue) -> bytes:
    try:
        date = _DATE.pack(value.year, value.month, value.day)
        clock = _CLOCK.pack(value.hour, value.minute, value.second)
        micro = _U32.pack(value.microsecond)
    except struct.error:
        raise _local(f"{value} does not fit a DATETIME") from None
    if value.microsecond:
        return b"\x0b" + date + clock + micro
    if value.hour or value.minute or value.second:
        return b"\x07" + date + clock
    if value.year or value.month or value.day:
        return b"\x04" + date
    return b"\x00"


def _encode_time(value: TimeValue) -> bytes:
    try:
        head = _TIME.pack(value.negative, value.days, value.hours, value.minutes, value.seconds)
        micro = _U32.pack(value.microseconds)
    except struct.error:
        raise _local(f"{value} does not fit a TIME") from None
    if value.microseconds:
        return b"\x0c" + head + micro
    if value.negative or value.days or value.hours or value.minutes or value.seconds:
        return b"\x08" + head
    return b"\x00"


def decode_binary_row(
    payload: bytes, columns: Sequence[tuple[int, bool]]
) -> tuple[BinaryValue, ...]:
    """Read a binary result row: 0x00, a NULL bitmap (offset 2), the non-NULL values.

    Args:
        payload: the row's payload.
        columns: each column's ``(type, unsigned)``, from its definition.

    Raises:
        MySQLRemoteError: 1835 for a bad header, a truncated value or trailing bytes.
    """
    reader = Reader(payload)
    if reader.int1() != 0x00:
        raise reader.fail()
    count = len(columns)
    nulls = decode_null_bitmap(reader.fixed(null_bitmap_size(count, 2)), count, 2)
    values = tuple(
        None if null else decode_binary_value(reader, column_type, unsigned)
        for null, (column_type, unsigned) in zip(nulls, columns, strict=True)
    )
    if not reader.at_end():
        raise reader.fail()
    return values


def encode_binary_row(columns: Sequence[tuple[int, bool]], values: Sequence[BinaryValue]) -> bytes:
    """A binary result row's payload.

    Raises:
        MySQLLocalError: as many values as columns are needed, each fitting its type.
    """
    if len(values) != len(columns):
        raise _local(f"{len(values)} values for {len(columns)} columns")
    nulls = [value is None for value in values]
    parts = [b"\x00", encode_null_bitmap(nulls, 2)]
    for (column_type, unsigned), value in zip(columns, values, strict=True):
        if value is not None:
            parts.append(encode_binary_value(column_type, value, unsigned))
    return b"".join(parts)
