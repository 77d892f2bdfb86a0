"""Motan2's "Simple" serialization (serialization number 6), sans-IO: bytes in, values out.

Simple is the default body encoding of motan-go (the Weibo Mesh agent) and motan-php, and one of
Java motan's: a value is one *type tag* byte followed by a payload that depends on the tag, and a
request body is its arguments' values back to back, with no count (an empty body is null).
Everything fixed-width is big-endian. See ``protocols/motan2.md`` and the encoders/decoders this
module was written to interoperate with: ``serialize/simple.go`` and ``core/bytes.go`` in
https://github.com/weibocom/motan-go, and ``SimpleSerialization.java`` (motan-core) in
https://github.com/weibocom/motan.

==========  ===============  =============================================  ======================
tag         name             payload                                        Python value
==========  ===============  =============================================  ======================
0           null             none                                           ``None``
1           string           u32 byte length, UTF-8 bytes                   ``str``
2           string map       u32 byte size, then (u32 len, key, u32 len,    :class:`StringMap`
                             value) pairs
3           byte array       u32 length, raw bytes                          ``bytes``
4           string array     u32 byte size, then (u32 len, bytes) items     :class:`StringArray`
5           bool             one byte, 1 = true                             ``bool``
6           byte             one byte, 0..255                               :class:`Byte`
7           int16            two bytes, two's complement                    :class:`Int16`
8           int32            zigzag + base-128 varint                       :class:`Int32`
9           int64            zigzag + base-128 varint                       ``int``
10          float32          IEEE 754 binary32                              :class:`Float32`
11          float64          IEEE 754 binary64                              ``float``
20          map              u32 byte size, then (key, value) tagged pairs  ``dict``
21          array            u32 byte size, then tagged values              ``list``
==========  ===============  =============================================  ======================

Why plain Python values plus six *marker* types, rather than one wrapper class per tag (as
:mod:`..resp.values` does): an application mostly wants ``str``, ``int``, ``dict``, and the
mapping motan-go itself uses for untyped data (``string`` ↔ 1, ``int64`` ↔ 9, ``float64`` ↔ 11,
``[]interface{}`` ↔ 21, ``map[interface{}]interface{}`` ↔ 20) is the natural one, so those tags
decode to builtins and builtins encode to them. The other tags exist because Java and Go have
narrower types (a Java ``Integer`` parameter only accepts tag 8, a ``long`` only tag 9, a
``String[]`` only tag 4); a gateway that re-encodes a value must send the same tag back, so each
decodes to a subclass of the builtin that names its tag (:class:`Int32` is an ``int``,
:class:`StringMap` a ``dict``). Code that does not care reads them as numbers, dicts and lists;
code that re-encodes gets the original tag for free, and ``encode(decode(body))`` reproduces
the body byte for byte whenever the body was written the way motan-go writes it.

The markers are thin tags, like ``bool`` is for ``int``: constructing one does not check its
range (the encoder does, raising :class:`~resmesh.protocols._errors.LocalProtocolError` for a
:class:`Byte` outside 0..255 and the like), and arithmetic on one gives a builtin back
(``Int32(1) + 1`` is a plain ``int`` and encodes as int64). Re-wrap the result to keep the tag.

Choices where the upstream implementations differ or leave room, and why:

- **int32 varints**: Go writes at most 5 bytes; Java sign-extends the zigzag value and writes 10
  for values with bit 31 set after zigzag. Both forms are accepted (the low 32 bits are kept, as
  both Go and Java decoders do) and the 5-byte Go form is emitted, so a Java 10-byte int32 is the
  one common input that does not re-encode byte for byte.
- **Varints in general**: at most 10 bytes (motan-go's limit); a value that overflows 64 bits is
  refused rather than silently truncated (no encoder writes one). Non-minimal varints (``80 00``
  for 0) are accepted, and re-encode minimally.
- **bool**: a payload byte of 1 is true and anything else false, as in both Go and Java.
- **Strings (tags 1, 2, 4) must be valid UTF-8**: an invalid one is a
  :class:`~resmesh.protocols._errors.RemoteProtocolError`. Go would pass the bytes through and
  Java would substitute U+FFFD; neither can be represented faithfully as a ``str``, and silently
  turning the value into ``bytes`` would change its tag on re-encoding. Code that must forward a
  body it does not understand should forward the raw body bytes instead of decoding them.
- **Empty containers** keep their tag (motan-go decodes every empty container to ``nil``):
  ``StringMap()`` is tag 2, ``{}`` tag 20, ``StringArray()`` tag 4, ``[]`` tag 21. An empty body
  decodes to no values (``decode``) or to ``None`` (``decode_one``, for a response body).
- **Nulls inside containers**: ``None`` may appear in a ``list`` or ``dict`` (Java writes them;
  motan-go reads them although it cannot write them). A ``StringMap`` or ``StringArray`` holding
  anything but ``str`` is refused on encoding; Java silently drops null entries there, which
  would change the data without telling anyone.
- **Map keys** (tag 20) may be any value, as in Go's ``map[interface{}]interface{}``; a container
  key decodes to an unhashable ``list`` or ``dict``, so it is refused. Keys that Python considers
  equal collapse into one entry, last value wins (as for duplicate keys in every implementation):
  that includes ``1``, ``Int32(1)``, ``True`` and ``1.0``, which Go and Java would keep apart.
- **float32**: decoded to the nearest ``float`` (exact); on encoding, a finite value beyond
  float32's range is refused rather than turned into infinity. A signalling NaN may come back
  quieted, as CPython converts through a C ``float``.

Decoding is bounded: every declared length is checked against the bytes actually present before
anything is read or allocated, containers may not nest deeper than ``max_depth``, and one call
yields at most ``max_items`` values (a 10 MiB body of one-byte nulls would otherwise become ten
million list slots). Malformed input raises only
:class:`~resmesh.protocols._errors.RemoteProtocolError`, whose hint names the problem and its
byte offset in the body, and whose ``close`` is False: a bad body spoils one call, not the
connection (the frame around it was well formed, so the call can be answered with an exception,
as motan-go's server answers a body it cannot read with a "deserialize fail" error).
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, TypeAlias

from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_ITEMS",
    "MAX_DEPTH_CEILING",
    "SERIALIZATION_NUMBER",
    "Byte",
    "Encodable",
    "Float32",
    "Int16",
    "Int32",
    "StringArray",
    "StringMap",
    "Value",
    "decode",
    "decode_one",
    "encode",
    "encode_many",
]

#: The number in the high five bits of a Motan2 header's byte 4 (``0x30``) for this encoding.
SERIALIZATION_NUMBER: Final = 6

#: How many containers may nest inside one another by default (``[[[]]]`` needs 3). Real RPC
#: arguments nest a handful of levels; the cap keeps a hostile body from exhausting the stack.
DEFAULT_MAX_DEPTH: Final = 100
#: The highest ``max_depth`` accepted: each level costs one Python frame while decoding or
#: encoding, and CPython's default recursion limit is 1000 frames for the whole call stack.
MAX_DEPTH_CEILING: Final = 500
#: How many values one decode call may produce by default, counting nested values, map keys and
#: the strings of string maps and arrays.
DEFAULT_MAX_ITEMS: Final = 1 << 20

_NULL: Final = 0
_STRING: Final = 1
_STRING_MAP: Final = 2
_BYTES: Final = 3
_STRING_ARRAY: Final = 4
_BOOL: Final = 5
_BYTE: Final = 6
_INT16: Final = 7
_INT32: Final = 8
_INT64: Final = 9
_FLOAT32: Final = 10
_FLOAT64: Final = 11
_MAP: Final = 20
_ARRAY: Final = 21

_VARINT_TAGS: Final = frozenset((_INT32, _INT64))
_CONTAINER_TAGS: Final = frozenset((_STRING_MAP, _STRING_ARRAY, _MAP, _ARRAY))

_INT16_MIN: Final = -(2**15)
_INT16_MAX: Final = 2**15 - 1
_INT32_MIN: Final = -(2**31)
_INT32_MAX: Final = 2**31 - 1
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1

_U32: Final = struct.Struct(">I")
_I16: Final = struct.Struct(">h")
_F32: Final = struct.Struct(">f")
_F64: Final = struct.Struct(">d")
_unpack_u32: Final = _U32.unpack_from
_unpack_i16: Final = _I16.unpack_from
_unpack_f32: Final = _F32.unpack_from
_unpack_f64: Final = _F64.unpack_from


# -- the value model -------------------------------------------------------------------------


class Byte(int):
    """Tag 6: one unsigned byte, 0..255 (Go ``uint8``; Java reads the same byte as a signed
    ``Byte``, so Java's -128 is ``Byte(128)`` here)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Byte({int.__repr__(self)})"


class Int16(int):
    """Tag 7: a signed 16-bit integer (Go ``int16``, Java ``Short``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Int16({int.__repr__(self)})"


class Int32(int):
    """Tag 8: a signed 32-bit integer (Go ``int32``, Java ``Integer``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Int32({int.__repr__(self)})"


class Float32(float):
    """Tag 10: an IEEE 754 single-precision number (Go ``float32``, Java ``Float``).

    Holds a Python float; encoding rounds it to the nearest float32, so ``Float32(0.1)`` decodes
    back as ``Float32(0.10000000149011612)``.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"Float32({float.__repr__(self)})"


class StringMap(dict[str, str]):
    """Tag 2: a map whose keys and values are all strings (Go ``map[string]string``, Java
    ``Map<String, String>``), in wire order."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"StringMap({dict.__repr__(self)})"


class StringArray(list[str]):
    """Tag 4: a list of strings (Go ``[]string``, Java ``String[]`` or ``List<String>``)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return f"StringArray({list.__repr__(self)})"


#: What :func:`decode` yields. The scalar markers are covered by the builtins they subclass
#: (:class:`Int32` is an ``int``); the container markers are listed because ``list`` and ``dict``
#: are invariant (a ``dict[str, str]`` is not a ``dict[Value, Value]``).
Value: TypeAlias = (
    bool
    | int
    | float
    | str
    | bytes
    | list["Value"]
    | dict["Value", "Value"]
    | StringMap
    | StringArray
    | None
)

#: What :func:`encode` takes: any :data:`Value`, and for convenience any other sequence (tag 21:
#: a ``tuple``...), mapping (tag 20) or bytes-like object (tag 3: ``bytearray``, ``memoryview``).
#: Read-only, hence covariant, so a ``list[int]`` or ``dict[str, str]`` variable type-checks.
Encodable: TypeAlias = (
    bool
    | int
    | float
    | str
    | bytes
    | bytearray
    | memoryview
    | Sequence["Encodable"]
    | Mapping[Any, "Encodable"]
    | None
)

# Immutable values shared by every decode instead of one allocation per value.
_BYTE_VALUES: Final = tuple(Byte(n) for n in range(256))


# -- decoding --------------------------------------------------------------------------------


def _error(message: str) -> RemoteProtocolError:
    # ``close=False``: the frame was intact, only this body is unusable.
    return RemoteProtocolError(f"motan2 simple: {message}", close=False)


def _short(what: str, at: int, end: int, total: int) -> RemoteProtocolError:
    """The error for a read at ``at`` that needs bytes at or beyond ``end``."""
    if end == total:
        return _error(f"{what} at offset {at} is cut short: the body ends at offset {end}")
    return _error(f"{what} at offset {at} runs past the end of its container (offset {end})")


def _check_limits(max_depth: int, max_items: int) -> None:
    if not 0 <= max_depth <= MAX_DEPTH_CEILING:
        raise ValueError(f"max_depth must be within 0..{MAX_DEPTH_CEILING}, not {max_depth}")
    if max_items < 0:
        raise ValueError(f"max_items must not be negative, not {max_items}")


class _Decoder:
    """One decode call's state: the body, the read position and what is left of the budget."""

    __slots__ = ("data", "items_left", "max_depth", "max_items", "pos", "total")

    def __init__(self, data: bytes, max_depth: int, max_items: int) -> None:
        self.data = data
        self.total = len(data)
        self.pos = 0
        self.max_depth = max_depth
        self.max_items = max_items
        self.items_left = max_items

    def _count(self, at: int) -> None:
        self.items_left -= 1
        if self.items_left < 0:
            raise _error(f"more than {self.max_items} values (at offset {at})")

    def _size(self, what: str, at: int, pos: int, end: int) -> tuple[int, int]:
        """A u32 length at ``pos`` that must fit in what is left before ``end``.

        Returns ``(size, position after the length)``. The check comes before anything is read
        or allocated: a peer cannot make us reserve memory it has not sent.
        """
        if end - pos < 4:
            raise _short(what, at, end, self.total)
        (size,) = _unpack_u32(self.data, pos)
        pos += 4
        if size > end - pos:
            raise _short(f"{what} of declared size {size}", at, end, self.total)
        return size, pos

    def _text(self, what: str, at: int, start: int, stop: int) -> str:
        try:
            return self.data[start:stop].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _error(
                f"{what} at offset {at} is not valid UTF-8 (byte {start + exc.start})"
            ) from None

    def _uvarint(self, at: int, pos: int, end: int) -> tuple[int, int]:
        """A base-128 varint at ``pos`` (least significant group first), at most 10 bytes."""
        data = self.data
        result = 0
        shift = 0
        while True:
            if pos >= end:
                raise _short("varint", at, end, self.total)
            byte = data[pos]
            pos += 1
            result |= (byte & 0x7F) << shift
            if byte < 0x80:
                break
            shift += 7
            if shift == 70:
                raise _error(f"varint at offset {at} is longer than 10 bytes")
        if result > _U64_MAX:
            raise _error(f"varint at offset {at} overflows 64 bits")
        return result, pos

    def _strings(self, what: str, at: int, pos: int, stop: int) -> list[str]:
        """The (u32 length, UTF-8 bytes) items of a tag 2 or 4 container, ``pos`` to ``stop``."""
        data = self.data
        entry = f"{what} entry"
        out: list[str] = []
        append = out.append
        while pos < stop:
            self._count(pos)
            if stop - pos < 4:
                raise _short(entry, pos, stop, self.total)
            (size,) = _unpack_u32(data, pos)
            start = pos + 4
            if size > stop - start:
                raise _short(f"{entry} of declared size {size}", pos, stop, self.total)
            pos = start + size
            append(self._text(entry, start - 4, start, pos))
        return out

    def value(self, end: int, depth: int) -> Value:
        """The value at :attr:`pos`, which must end by ``end``; ``depth`` containers enclose it.

        One method with the tags in an ``if`` chain, most common first: a call per value is the
        main cost of decoding, so there is no second dispatch.
        """
        data = self.data
        at = self.pos
        if at >= end:
            raise _short("value", at, end, self.total)
        self.items_left -= 1
        if self.items_left < 0:
            raise _error(f"more than {self.max_items} values (at offset {at})")
        tag = data[at]
        pos = at + 1
        if tag == _STRING:  # the commonest tag: its checks are inlined
            if end - pos < 4:
                raise _short("string", at, end, self.total)
            (size,) = _unpack_u32(data, pos)
            pos += 4
            if size > end - pos:
                raise _short(f"string of declared size {size}", at, end, self.total)
            stop = pos + size
            self.pos = stop
            try:
                return data[pos:stop].decode("utf-8")
            except UnicodeDecodeError:
                return self._text("string", at, pos, stop)  # raises, with the offset
        if tag in _VARINT_TAGS:
            if pos < end and data[pos] < 0x80:
                raw = data[pos]
                pos += 1
            else:
                raw, pos = self._uvarint(at, pos, end)
            self.pos = pos
            if tag == _INT64:
                return (raw >> 1) ^ -(raw & 1)
            raw &= _U32_MAX  # Java's 10-byte form: keep the low 32 bits, as Go and Java do
            return Int32((raw >> 1) ^ -(raw & 1))
        if tag == _NULL:
            self.pos = pos
            return None
        if tag == _BOOL:
            if pos >= end:
                raise _short("bool", at, end, self.total)
            self.pos = pos + 1
            return data[pos] == 1
        if tag in _CONTAINER_TAGS:
            # Inline rather than a helper method: one Python frame per nesting level, so
            # MAX_DEPTH_CEILING levels stay well inside the interpreter's recursion limit.
            what = _CONTAINER_NAMES[tag]
            size, pos = self._size(what, at, pos, end)
            if depth >= self.max_depth:
                raise _error(f"{what} at offset {at} nests deeper than {self.max_depth} containers")
            stop = pos + size
            if tag == _ARRAY:
                self.pos = pos
                items: list[Value] = []
                append = items.append
                read = self.value
                inner = depth + 1
                while self.pos < stop:
                    append(read(stop, inner))
                return items
            if tag == _MAP:
                self.pos = pos
                mapping: dict[Value, Value] = {}
                while self.pos < stop:
                    key_at = self.pos
                    key = self.value(stop, depth + 1)
                    if self.pos >= stop:
                        raise _short("map value", self.pos, stop, self.total)
                    item = self.value(stop, depth + 1)
                    try:
                        mapping[key] = item
                    except TypeError:  # a list or dict as a key (Go would panic on it too)
                        raise _error(
                            f"map key at offset {key_at} is a {_type_name(key)}, which cannot be"
                            " a key"
                        ) from None
                return mapping
            texts = self._strings(what, at, pos, stop)
            self.pos = stop
            if tag == _STRING_ARRAY:
                return StringArray(texts)
            if len(texts) % 2:
                raise _error(f"{what} at offset {at} ends after a key, without its value")
            return StringMap(zip(texts[::2], texts[1::2], strict=True))
        if tag == _BYTES:
            size, pos = self._size("byte array", at, pos, end)
            self.pos = pos + size
            return data[pos : pos + size]
        if tag == _FLOAT64:
            if end - pos < 8:
                raise _short("float64", at, end, self.total)
            self.pos = pos + 8
            return _unpack_f64(data, pos)[0]  # type: ignore[no-any-return]
        if tag == _FLOAT32:
            if end - pos < 4:
                raise _short("float32", at, end, self.total)
            self.pos = pos + 4
            return Float32(_unpack_f32(data, pos)[0])
        if tag == _INT16:
            if end - pos < 2:
                raise _short("int16", at, end, self.total)
            self.pos = pos + 2
            return Int16(_unpack_i16(data, pos)[0])
        if tag == _BYTE:
            if pos >= end:
                raise _short("byte", at, end, self.total)
            self.pos = pos + 1
            return _BYTE_VALUES[data[pos]]
        raise _error(f"unknown type tag {tag} at offset {at}")


_CONTAINER_NAMES: Final = {
    _STRING_MAP: "string map",
    _STRING_ARRAY: "string array",
    _MAP: "map",
    _ARRAY: "array",
}


def _type_name(value: object) -> str:
    return type(value).__name__


def _as_bytes(data: bytes | bytearray | memoryview) -> bytes:
    return data if isinstance(data, bytes) else bytes(data)


def decode(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> list[Value]:
    """Every value of a body, in order: a request's arguments (an empty body has none).

    Args:
        data: the body (already gunzipped if the frame's gzip flag was set).
        max_depth: how many containers may nest inside one another (0: no containers at all);
            at most :data:`MAX_DEPTH_CEILING`.
        max_items: how many values the whole body may hold, nested ones included.

    Raises:
        RemoteProtocolError: the body is malformed or exceeds a limit (never anything else).
        ValueError: a limit is out of range.
    """
    _check_limits(max_depth, max_items)
    decoder = _Decoder(_as_bytes(data), max_depth, max_items)
    total = decoder.total
    read = decoder.value
    values: list[Value] = []
    try:
        while decoder.pos < total:
            values.append(read(total, 0))
    except RecursionError:  # only if the caller's own stack is nearly exhausted
        raise _error(f"nesting at offset {decoder.pos} is too deep for the stack") from None
    return values


def decode_one(
    data: bytes | bytearray | memoryview,
    *,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_items: int = DEFAULT_MAX_ITEMS,
) -> Value:
    """The single value of a body, such as a normal response's; an empty body is ``None``.

    Why empty means ``None``: motan-go writes no body at all when a call returns nil, where Java
    writes the one-byte null; both mean the same. Bytes after the value are an error.

    Raises:
        RemoteProtocolError: the body is malformed, holds more than one value, or exceeds a
            limit. The arguments are those of :func:`decode`.
    """
    _check_limits(max_depth, max_items)
    decoder = _Decoder(_as_bytes(data), max_depth, max_items)
    total = decoder.total
    if total == 0:
        return None
    try:
        value = decoder.value(total, 0)
    except RecursionError:  # only if the caller's own stack is nearly exhausted
        raise _error(f"nesting at offset {decoder.pos} is too deep for the stack") from None
    if decoder.pos != total:
        raise _error(f"{total - decoder.pos} unexpected bytes after the value, at {decoder.pos}")
    return value


# -- encoding --------------------------------------------------------------------------------

#: Tag per Python type. Marker types map to their own tags; a type missing here is looked up by
#: its bases (an ``IntEnum`` member is an int64, a ``str`` subclass a string) in :func:`_tag_of`.
_TAGS: Final[dict[type, int]] = {
    type(None): _NULL,
    str: _STRING,
    StringMap: _STRING_MAP,
    bytes: _BYTES,
    bytearray: _BYTES,
    memoryview: _BYTES,
    StringArray: _STRING_ARRAY,
    bool: _BOOL,
    Byte: _BYTE,
    Int16: _INT16,
    Int32: _INT32,
    int: _INT64,
    Float32: _FLOAT32,
    float: _FLOAT64,
    dict: _MAP,
    list: _ARRAY,
    tuple: _ARRAY,
}


def _tag_of(value: object) -> int:
    cls = value.__class__
    tag = _TAGS.get(cls)
    if tag is not None:
        return tag
    for base in cls.__mro__[1:]:
        tag = _TAGS.get(base)
        if tag is not None:
            return tag
    if isinstance(value, Mapping):
        return _MAP
    if isinstance(value, Sequence):
        return _ARRAY
    raise LocalProtocolError(
        f"motan2 simple: cannot encode a {cls.__name__} (not a Simple value)", close=False
    )


def _local(message: str) -> LocalProtocolError:
    # ``close=False``: nothing was written, the connection is intact.
    return LocalProtocolError(f"motan2 simple: {message}", close=False)


def _show(number: int) -> str:
    """``number`` for an error message; a huge one by its size, as ``str()`` refuses integers
    of more than 4300 digits."""
    if number.bit_length() > 128:
        return f"of {number.bit_length()} bits"
    return str(int(number))


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: not representable in UTF-8
        raise _local(f"string is not encodable as UTF-8: {text[:40]!r}") from None


def _put_uvarint(out: bytearray, number: int) -> None:
    while number >= 0x80:
        out.append((number & 0x7F) | 0x80)
        number >>= 7
    out.append(number)


def _put_text(out: bytearray, text: str) -> None:
    raw = _utf8(text)
    if len(raw) > _U32_MAX:
        raise _local(f"string of {len(raw)} bytes exceeds the 4 GiB length field")
    out += _U32.pack(len(raw))
    out += raw


def _close_container(out: bytearray, at: int) -> None:
    """Back-patch the u32 size reserved at ``at`` now that the contents are written."""
    size = len(out) - at - 4
    if size > _U32_MAX:
        raise _local(f"container of {size} bytes exceeds the 4 GiB size field")
    _U32.pack_into(out, at, size)


def _write(out: bytearray, value: Any, depth: int, max_depth: int) -> None:
    """Append the encoding of ``value`` to ``out``; ``depth`` containers enclose it."""
    tag = _tag_of(value)
    if tag == _STRING:
        out.append(_STRING)
        _put_text(out, value)
    elif tag == _INT64:
        if not _INT64_MIN <= value <= _INT64_MAX:
            raise _local(f"integer {_show(value)} is outside int64")
        out.append(_INT64)
        _put_uvarint(out, (value << 1) ^ (value >> 63))
    elif tag == _NULL:
        out.append(_NULL)
    elif tag == _BOOL:
        out += b"\x05\x01" if value else b"\x05\x00"
    elif tag == _FLOAT64:
        out.append(_FLOAT64)
        out += _F64.pack(value)
    elif tag == _BYTES:
        raw = bytes(value)
        if len(raw) > _U32_MAX:
            raise _local(f"byte array of {len(raw)} bytes exceeds the 4 GiB length field")
        out.append(_BYTES)
        out += _U32.pack(len(raw))
        out += raw
    elif tag == _INT32:
        if not _INT32_MIN <= value <= _INT32_MAX:
            raise _local(f"Int32 {_show(value)} is outside int32")
        out.append(_INT32)
        # 32-bit zigzag, so never more than 5 varint bytes (motan-go's form, not Java's 10)
        _put_uvarint(out, (value << 1) ^ (value >> 31))
    elif tag == _INT16:
        if not _INT16_MIN <= value <= _INT16_MAX:
            raise _local(f"Int16 {_show(value)} is outside int16")
        out.append(_INT16)
        out += _I16.pack(value)
    elif tag == _BYTE:
        if not 0 <= value <= 255:
            raise _local(f"Byte {_show(value)} is outside 0..255")
        out.append(_BYTE)
        out.append(value)
    elif tag == _FLOAT32:
        try:
            packed = _F32.pack(value)
        except OverflowError:
            raise _local(f"Float32 {float(value)!r} is outside float32's range") from None
        out.append(_FLOAT32)
        out += packed
    else:
        if depth >= max_depth:
            raise _local(
                f"values nest deeper than {max_depth} containers (is a list or dict inside itself?)"
            )
        out.append(tag)
        at = len(out)
        out += b"\0\0\0\0"
        inner = depth + 1
        if tag == _ARRAY:
            for item in value:
                _write(out, item, inner, max_depth)
        elif tag == _MAP:
            for key, item in value.items():
                _write(out, key, inner, max_depth)
                _write(out, item, inner, max_depth)
        elif tag == _STRING_MAP:
            for key, item in value.items():
                if not isinstance(key, str) or not isinstance(item, str):
                    raise _local(
                        f"a StringMap holds only str keys and values, not {_type_name(key)}: "
                        f"{_type_name(item)}"
                    )
                _put_text(out, key)
                _put_text(out, item)
        else:
            for item in value:
                if not isinstance(item, str):
                    raise _local(f"a StringArray holds only str items, not {_type_name(item)}")
                _put_text(out, item)
        _close_container(out, at)


def encode(value: Encodable, *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The encoding of one value: a response body, or a request with a single argument.

    ``None`` gives the one-byte null (Java's choice for a null result; motan-go sends an empty
    body instead, which is the frame writer's call).

    Raises:
        LocalProtocolError: ``value`` cannot be represented (an integer outside int64, a marker
            outside its range, a non-``str`` inside a :class:`StringMap` or
            :class:`StringArray`, a type Simple has no tag for, a string with lone surrogates,
            nesting deeper than ``max_depth``, which includes a container that holds itself).
    """
    _check_limits(max_depth, 0)
    out = bytearray()
    try:
        _write(out, value, 0, max_depth)
    except RecursionError:  # only if the caller's own stack is nearly exhausted
        raise _local("values nest too deep for the stack") from None
    return bytes(out)


def encode_many(values: Iterable[Encodable], *, max_depth: int = DEFAULT_MAX_DEPTH) -> bytes:
    """The values back to back: a request body with one value per argument (none: ``b""``).

    Raises:
        LocalProtocolError: as :func:`encode`.
    """
    _check_limits(max_depth, 0)
    out = bytearray()
    try:
        for value in values:
            _write(out, value, 0, max_depth)
    except RecursionError:  # only if the caller's own stack is nearly exhausted
        raise _local("values nest too deep for the stack") from None
    return bytes(out)
