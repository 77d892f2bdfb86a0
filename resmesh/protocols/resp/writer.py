"""Encode RESP values to bytes: the inverse of :mod:`.parser`, plus cheap reply builders.

Two layers:

- :func:`encode` turns any :mod:`.values` object into its exact wire bytes
  (``parse(encode(v)) == v`` for every value, and ``encode(parse(b)) == b`` for every valid ``b``).
- Builders (:func:`simple`, :func:`error`, :func:`integer`, :func:`bulk`, :func:`array`...) make
  the bytes of the replies the gateway writes itself (``-ERR`` for a rejected call, ``+OK`` for
  gateway-side ``AUTH``, merged ``MGET`` results) without building value objects first.
  Aggregate builders take *already encoded* items, so a reply assembled from forwarded backend
  replies never decodes them. Builders with a ``resp3`` flag fall back the way redis-server's
  ``addReply*`` functions do for a RESP2 client (a map becomes a flat array, a double a bulk
  string, a boolean an integer).

Everything that cannot be represented (CR or LF in a simple string or error, an integer outside
int64) raises :class:`~resmesh.protocols._errors.LocalProtocolError`: it is our bug, and sending
it would corrupt the client's stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Final

from .._errors import LocalProtocolError
from .values import (
    INT64_MAX,
    INT64_MIN,
    Array,
    Attributed,
    BigNumber,
    BlobError,
    Boolean,
    BulkString,
    Double,
    Integer,
    Map,
    Null,
    NullKind,
    Push,
    Set,
    SimpleError,
    SimpleString,
    Value,
    VerbatimString,
    is_double_text,
)

__all__ = [
    "NULL_ARRAY_REPLY",
    "NULL_BULK_REPLY",
    "NULL_REPLY",
    "OK",
    "PONG",
    "QUEUED",
    "array",
    "array_header",
    "attribute",
    "big_number",
    "blob_error",
    "boolean",
    "bulk",
    "double",
    "encode",
    "encode_many",
    "error",
    "integer",
    "map_",
    "map_header",
    "null",
    "null_array",
    "push",
    "set_",
    "simple",
    "verbatim",
]

OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
QUEUED: Final = b"+QUEUED\r\n"
NULL_BULK_REPLY: Final = b"$-1\r\n"
NULL_ARRAY_REPLY: Final = b"*-1\r\n"
NULL_REPLY: Final = b"_\r\n"

_NULL_BYTES: Final = {
    NullKind.BULK: NULL_BULK_REPLY,
    NullKind.ARRAY: NULL_ARRAY_REPLY,
    NullKind.RESP3: NULL_REPLY,
}


def _check_line(text: bytes, what: str) -> None:
    if 13 in text or 10 in text:  # int needles: a plain memchr
        raise LocalProtocolError(f"ERR {what} must not contain CR or LF: {text[:40]!r}")


# -- encode ----------------------------------------------------------------------------------


def encode(value: Value) -> bytes:
    """The exact wire bytes of ``value``.

    Raises:
        LocalProtocolError: ``value`` is not a RESP value (values validate themselves when
            constructed, so a well-typed value always encodes).
    """
    # The replies the gateway builds most often, without the list-and-join of the general case.
    if isinstance(value, BulkString):
        data = value.value
        return b"$%d\r\n%b\r\n" % (len(data), data)
    if isinstance(value, SimpleString):
        return b"+%b\r\n" % value.value
    if isinstance(value, Integer):
        return b":%d\r\n" % value.value
    out: list[bytes] = []
    _encode_into(value, out)
    return b"".join(out)


def encode_many(values: Iterable[Value]) -> bytes:
    """The concatenated encodings of ``values`` (a pipeline's replies, in order)."""
    out: list[bytes] = []
    for value in values:
        _encode_into(value, out)
    return b"".join(out)


def _encode_into(value: Value, out: list[bytes]) -> None:
    try:
        encoder = _ENCODERS[value.__class__]
    except KeyError:
        raise LocalProtocolError(f"ERR not a RESP value: {value!r}") from None
    encoder(value, out)


def _enc_simple(value: SimpleString, out: list[bytes]) -> None:
    out.append(b"+%b\r\n" % value.value)


def _enc_error(value: SimpleError, out: list[bytes]) -> None:
    out.append(b"-%b\r\n" % value.value)


def _enc_integer(value: Integer, out: list[bytes]) -> None:
    out.append(b":%d\r\n" % value.value)


def _enc_bulk(value: BulkString, out: list[bytes]) -> None:
    data = value.value
    out.append(b"$%d\r\n" % len(data))
    out.append(data)
    out.append(b"\r\n")


def _enc_null(value: Null, out: list[bytes]) -> None:
    out.append(_NULL_BYTES[value.kind])


def _enc_items(prefix: bytes, items: tuple[Value, ...], out: list[bytes]) -> None:
    out.append(b"%b%d\r\n" % (prefix, len(items)))
    for item in items:
        _encode_into(item, out)


def _enc_array(value: Array, out: list[bytes]) -> None:
    _enc_items(b"*", value.items, out)


def _enc_boolean(value: Boolean, out: list[bytes]) -> None:
    out.append(b"#t\r\n" if value.value else b"#f\r\n")


def _enc_double(value: Double, out: list[bytes]) -> None:
    out.append(b",%b\r\n" % value.text)


def _enc_big_number(value: BigNumber, out: list[bytes]) -> None:
    out.append(b"(%d\r\n" % value.value)


def _enc_blob_error(value: BlobError, out: list[bytes]) -> None:
    data = value.value
    out.append(b"!%d\r\n" % len(data))
    out.append(data)
    out.append(b"\r\n")


def _enc_verbatim(value: VerbatimString, out: list[bytes]) -> None:
    out.append(b"=%d\r\n%b:" % (len(value.text) + 4, value.format))
    out.append(value.text)
    out.append(b"\r\n")


def _enc_pairs(prefix: bytes, pairs: tuple[tuple[Value, Value], ...], out: list[bytes]) -> None:
    out.append(b"%b%d\r\n" % (prefix, len(pairs)))
    for key, item in pairs:
        _encode_into(key, out)
        _encode_into(item, out)


def _enc_map(value: Map, out: list[bytes]) -> None:
    _enc_pairs(b"%", value.pairs, out)


def _enc_set(value: Set, out: list[bytes]) -> None:
    _enc_items(b"~", value.items, out)


def _enc_push(value: Push, out: list[bytes]) -> None:
    _enc_items(b">", value.items, out)


def _enc_attributed(value: Attributed, out: list[bytes]) -> None:
    _enc_pairs(b"|", value.attributes, out)
    _encode_into(value.value, out)


_ENCODERS: Final[dict[type, Callable[[Any, list[bytes]], None]]] = {
    SimpleString: _enc_simple,
    SimpleError: _enc_error,
    Integer: _enc_integer,
    BulkString: _enc_bulk,
    Null: _enc_null,
    Array: _enc_array,
    Boolean: _enc_boolean,
    Double: _enc_double,
    BigNumber: _enc_big_number,
    BlobError: _enc_blob_error,
    VerbatimString: _enc_verbatim,
    Map: _enc_map,
    Set: _enc_set,
    Push: _enc_push,
    Attributed: _enc_attributed,
}


# -- builders --------------------------------------------------------------------------------


def simple(text: bytes | str) -> bytes:
    """``+text\\r\\n``.

    Raises:
        LocalProtocolError: ``text`` holds CR or LF.
    """
    data = text.encode() if isinstance(text, str) else text
    _check_line(data, "a simple string")
    return b"+%b\r\n" % data


def error(text: bytes | str) -> bytes:
    """``-text\\r\\n``, e.g. ``error("ERR unknown command")``.

    Unlike redis-server's ``addReplyErrorFormat``, which silently turns CR/LF into spaces, this
    refuses them: the gateway's own messages are fixed strings, so one with a newline is a bug.

    Raises:
        LocalProtocolError: ``text`` holds CR or LF.
    """
    data = text.encode() if isinstance(text, str) else text
    _check_line(data, "an error")
    return b"-%b\r\n" % data


def integer(number: int) -> bytes:
    """``:number\\r\\n``.

    Raises:
        LocalProtocolError: ``number`` is outside int64.
    """
    if not INT64_MIN <= number <= INT64_MAX:
        raise LocalProtocolError(f"ERR integer reply out of int64 range: {number}")
    return b":%d\r\n" % number


def bulk(data: bytes | None, *, resp3: bool = False) -> bytes:
    """``$len\\r\\ndata\\r\\n``; ``None`` gives the null (``$-1`` or, for RESP3, ``_``)."""
    if data is None:
        return NULL_REPLY if resp3 else NULL_BULK_REPLY
    return b"$%d\r\n%b\r\n" % (len(data), data)


def null(resp3: bool) -> bytes:
    """The null a missing value gets: ``_`` for RESP3, ``$-1`` (null bulk) for RESP2."""
    return NULL_REPLY if resp3 else NULL_BULK_REPLY


def null_array(resp3: bool) -> bytes:
    """The null an absent aggregate gets (``BLPOP`` timeout, aborted ``EXEC``): ``_`` or ``*-1``."""
    return NULL_REPLY if resp3 else NULL_ARRAY_REPLY


def array_header(count: int) -> bytes:
    """``*count\\r\\n``: for streaming ``count`` encoded items after it."""
    return b"*%d\r\n" % count


def array(items: Iterable[bytes]) -> bytes:
    """An array of already-encoded items (e.g. forwarded replies merged from several nodes)."""
    parts = list(items)
    return b"*%d\r\n%b" % (len(parts), b"".join(parts))


def map_header(count: int, *, resp3: bool) -> bytes:
    """``%count`` for RESP3; for RESP2 ``*2count``, a flat key/value array (redis-server's way)."""
    return b"%%%d\r\n" % count if resp3 else b"*%d\r\n" % (count * 2)


def map_(pairs: Iterable[tuple[bytes, bytes]], *, resp3: bool) -> bytes:
    """A map of already-encoded key/value pairs (a flat array for RESP2)."""
    parts = list(pairs)
    body = b"".join(key + item for key, item in parts)
    return map_header(len(parts), resp3=resp3) + body


def set_(items: Iterable[bytes], *, resp3: bool) -> bytes:
    """A set of already-encoded items (an array for RESP2)."""
    parts = list(items)
    return b"%b%d\r\n%b" % (b"~" if resp3 else b"*", len(parts), b"".join(parts))


def push(items: Iterable[bytes], *, resp3: bool) -> bytes:
    """An out-of-band push of already-encoded items (RESP2 pub/sub messages are arrays)."""
    parts = list(items)
    return b"%b%d\r\n%b" % (b">" if resp3 else b"*", len(parts), b"".join(parts))


def attribute(pairs: Iterable[tuple[bytes, bytes]]) -> bytes:
    """A RESP3 attribute header and pairs; the annotated value must be written right after it."""
    parts = list(pairs)
    return b"|%d\r\n%b" % (len(parts), b"".join(key + item for key, item in parts))


def boolean(value: bool, *, resp3: bool) -> bytes:
    """``#t``/``#f`` for RESP3; ``:1``/``:0`` for RESP2."""
    if resp3:
        return b"#t\r\n" if value else b"#f\r\n"
    return b":1\r\n" if value else b":0\r\n"


def double(value: float | bytes, *, resp3: bool) -> bytes:
    """A double: ``,text`` for RESP3; a bulk string of the same text for RESP2.

    ``value`` is a float (formatted as :meth:`.Double.of` does) or the exact text to send.

    Raises:
        LocalProtocolError: ``value`` is text that is not a RESP3 double.
    """
    if isinstance(value, bytes):
        if not is_double_text(value):
            raise LocalProtocolError(f"ERR invalid double text: {value[:40]!r}")
        text = value
    else:
        text = Double.of(value).text
    if resp3:
        return b",%b\r\n" % text
    return b"$%d\r\n%b\r\n" % (len(text), text)


def big_number(value: int, *, resp3: bool) -> bytes:
    """``(digits`` for RESP3; a bulk string of the digits for RESP2 (as redis-server does)."""
    text = b"%d" % BigNumber(value).value
    if resp3:
        return b"(%b\r\n" % text
    return b"$%d\r\n%b\r\n" % (len(text), text)


def blob_error(data: bytes) -> bytes:
    """RESP3 ``!len`` blob error (binary-safe, may hold CR/LF). RESP2 has no equivalent."""
    return b"!%d\r\n%b\r\n" % (len(data), data)


def verbatim(text: bytes, *, fmt: bytes = b"txt", resp3: bool) -> bytes:
    """``=len\\r\\nfmt:text`` for RESP3; a bulk string of ``text`` for RESP2.

    Raises:
        LocalProtocolError: ``fmt`` is not three bytes.
    """
    if resp3:
        value = VerbatimString(fmt, text)
        return b"=%d\r\n%b:%b\r\n" % (len(text) + 4, value.format, text)
    return b"$%d\r\n%b\r\n" % (len(text), text)
