"""Sans-IO parsers for the server → client direction of RESP: replies, as typed values.

Two implementations behind one interface (``feed``, ``next_value`` → value or
:data:`NEED_DATA`, ``buffered``), as redis-py puts hiredis behind its pure reader:

- :class:`ReplyParser`, pure Python, exact: every RESP2 and RESP3 type comes back as its own
  :mod:`.values` class, so ``encode(value)`` reproduces the received bytes.
- :class:`HiredisReplyParser`, RESP2 only, **values only, types collapsed**: arrays are decoded by
  hiredis' C reader, which cannot tell ``+OK`` from ``$2\\r\\nOK`` or ``*-1`` from ``$-1`` inside
  an aggregate, and decodes error text as UTF-8 with replacement. Use it where only the values
  matter (merging ``MGET`` results across shards, reading ``CLUSTER SLOTS``), never where the
  reply is re-encoded for a client that could tell the difference. hiredis cannot parse RESP3
  blob errors at all, and turns attributes, sets, pushes and verbatim strings into plain lists and
  strings, which is why this variant refuses RESP3.

:func:`make_reply_parser` picks one. Both enforce the same :class:`~.framing.ReplyLimits` and
raise :class:`~resmesh.protocols._errors.RemoteProtocolError` (with a redis-server-style
``reply_hint``) on anything malformed; a parser that raised is unusable afterwards and raises the
same error again.

Why the pure parser keeps an explicit stack between calls rather than re-parsing from the start of
an incomplete reply: a 100 000-element ``LRANGE`` reply arriving in 64 KiB chunks would otherwise
be re-parsed once per chunk (quadratic). Elements are consumed as soon as they are complete, and
the bytes they came from stay counted against ``max_buffer`` until the whole reply is returned
(see :class:`~resmesh.protocols._buffer.ReceiveBuffer`), so memory stays bounded as well.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, final

from .._buffer import ReceiveBuffer
from .._errors import LocalProtocolError, RemoteProtocolError
from .framing import (
    _AGGREGATE_KINDS,
    _LINE_KINDS,
    _RESP2_KINDS,
    _SMALL_GET,
    DEFAULT_LIMITS,
    NEED_DATA,
    NeedData,
    ReplyFramer,
    ReplyLimits,
    bad_type_error,
    buffer_overflow_hint,
    bulk_length_error,
    depth_error,
    line_too_long_error,
    multibulk_length_error,
    parse_length,
    protocol_error,
    verbatim_error,
)
from .values import (
    _BIG_NUMBER_BOUND,
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

try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a pinned dependency
    hiredis = None  # type: ignore[assignment]

__all__ = [
    "HAVE_HIREDIS",
    "NEED_DATA",
    "HiredisReplyParser",
    "NeedData",
    "ReplyLimits",
    "ReplyParser",
    "ReplyReader",
    "make_reply_parser",
    "parse_integer",
]

#: Whether :class:`HiredisReplyParser` can be used.
HAVE_HIREDIS: Final = hiredis is not None

_HEADER_SPAN: Final = 23
_INT64_MIN: Final = -(2**63)
_INT64_MAX: Final = 2**63 - 1

# Frame kinds of the parse stack: the aggregate type bytes, plus one for "the value an attribute
# annotates".
_ARRAY: Final = 42  # '*'
_MAP: Final = 37  # '%'
_SET: Final = 126  # '~'
_PUSH: Final = 62  # '>'
_ATTRIBUTE: Final = 124  # '|'
_ANNOTATED: Final = 0


class ReplyReader(Protocol):
    """What the gateway needs from a reply parser; both implementations provide it."""

    @property
    def buffered(self) -> int: ...

    def feed(self, data: bytes | bytearray | memoryview) -> None: ...

    def next_value(self) -> Value | NeedData: ...


def parse_integer(text: bytes | bytearray) -> int | None:
    """A RESP integer as redis-server's ``string2ll`` reads it, or None if invalid.

    Canonical decimal only: optional ``-``, no leading zero, no ``-0``, within int64, which is
    what every server emits and what hiredis accepts.
    """
    value = _SMALL_GET(text) if text.__class__ is bytes else None
    if value is not None:
        return value
    digits = text[1:] if text[:1] == b"-" else text
    if not digits.isdigit() or (digits[0] == 48 and len(text) > 1) or len(digits) > 19:
        return None
    value = int(text)
    return value if _INT64_MIN <= value <= _INT64_MAX else None


def _parse_big_number(text: bytes | bytearray) -> int | None:
    digits = text[1:] if text[:1] == b"-" else text
    if (
        not digits.isdigit()
        or (digits[0] == 48 and len(text) > 1)
        or len(digits) > 4300  # values.BIG_NUMBER_MAX_DIGITS: int() refuses longer
    ):
        return None
    value = int(text)
    return value if -_BIG_NUMBER_BOUND < value < _BIG_NUMBER_BOUND else None


def _build(kind: int, items: list[Any]) -> Any:
    """The value (or, for an attribute, the pairs) of a completed stack frame."""
    if kind == _ARRAY:
        return Array(tuple(items))
    if kind == _MAP:
        return Map(tuple(zip(items[::2], items[1::2], strict=True)))
    if kind == _ATTRIBUTE:
        return tuple(zip(items[::2], items[1::2], strict=True))
    if kind == _ANNOTATED:
        return Attributed(items[0], items[1])
    if kind == _SET:
        return Set(tuple(items))
    return Push(tuple(items))


def _parse(
    data: bytes | bytearray,
    pos: int,
    stack: list[tuple[int, int, list[Any]]],
    limits: ReplyLimits,
) -> tuple[Value | None, int]:
    """Parse elements from ``pos`` until one whole reply is complete or the bytes run out.

    ``stack`` holds the open aggregates as ``(kind, expected items, items so far)``; it is only
    changed once an element is fully consumed, so an incomplete return leaves it describing the
    state at the returned offset and the next call simply continues from there.

    Returns:
        ``(value, end)`` for a complete reply, or ``(None, resume)`` when more bytes are needed.
    """
    size = len(data)
    find = data.find
    value: Any
    # The innermost open aggregate's items and expected count, kept in locals (one tuple
    # unpack less per element); ``items`` is None while no aggregate is open.
    items: list[Any] | None = None
    expected = 0
    if stack:
        _, expected, items = stack[-1]
    while True:
        if pos >= size:
            return None, pos
        kind = data[pos]
        if kind == 36 or kind == 33 or kind == 61:  # '$' '!' '='
            nl = find(b"\r\n", pos + 1)
            if nl < 0 or nl - pos >= _HEADER_SPAN:
                if size >= pos + _HEADER_SPAN:
                    raise bulk_length_error()
                return None, pos
            digits = data[pos + 1 : nl]
            length = _SMALL_GET(digits) if digits.__class__ is bytes else None
            if length is None:
                length = parse_length(digits)
            if length >= 0:
                if length > limits.max_bulk_len:
                    raise bulk_length_error()
                end = nl + 2 + length
                if end + 2 > size:
                    return None, pos
                if data[end] != 13 or data[end + 1] != 10:
                    raise bulk_length_error()
                # ``bytes(b)`` of a ``bytes`` slice returns it as is; a bytearray slice is copied.
                payload = bytes(data[nl + 2 : end])
                if kind == 36:
                    value = BulkString(payload)
                elif kind == 33:
                    value = BlobError(payload)
                else:
                    if length < 4 or payload[3] != 58:  # ':'
                        raise verbatim_error()
                    value = VerbatimString(payload[:3], payload[4:])
                pos = end + 2
            elif length == -1 and kind == 36:
                value = NULL_BULK
                pos = nl + 2
            else:
                raise bulk_length_error()
        elif kind in _LINE_KINDS:
            nl = find(b"\r\n", pos + 1)
            if nl < 0:
                if size - pos > limits.max_line_len + 2:
                    raise line_too_long_error()
                return None, pos
            if nl - pos - 1 > limits.max_line_len:
                raise line_too_long_error()
            value = _line_value(kind, bytes(data[pos + 1 : nl]))
            pos = nl + 2
        elif kind in _AGGREGATE_KINDS:
            nl = find(b"\r\n", pos + 1)
            if nl < 0 or nl - pos >= _HEADER_SPAN:
                if size >= pos + _HEADER_SPAN:
                    raise multibulk_length_error()
                return None, pos
            digits = data[pos + 1 : nl]
            count = _SMALL_GET(digits) if digits.__class__ is bytes else None
            if count is None:
                count = parse_length(digits)
            if count > 0:
                if count > limits.max_aggregate_len:
                    raise multibulk_length_error()
                pos = nl + 2
                if kind == _ATTRIBUTE:
                    stack.append((_ANNOTATED, 2, []))
                expected = count * 2 if kind in (_MAP, _ATTRIBUTE) else count
                items = []
                stack.append((kind, expected, items))
                if len(stack) > limits.max_depth:
                    raise depth_error()
                continue
            if count == 0:
                pos = nl + 2
                if kind == _ATTRIBUTE:
                    expected = 2
                    items = [()]
                    stack.append((_ANNOTATED, expected, items))
                    if len(stack) > limits.max_depth:
                        raise depth_error()
                    continue
                value = _EMPTY[kind]
            elif count == -1 and kind == _ARRAY:
                value = NULL_ARRAY
                pos = nl + 2
            else:
                raise multibulk_length_error()
        else:
            raise bad_type_error(kind)
        # ``value`` is complete: hand it to the innermost open aggregate, closing every one it
        # completes.
        if items is None:
            return value, pos
        items.append(value)
        if len(items) < expected:
            continue
        while True:
            frame_kind, _, done = stack.pop()
            value = _build(frame_kind, done)
            if not stack:
                return value, pos
            _, expected, items = stack[-1]
            items.append(value)
            if len(items) < expected:
                break


_EMPTY: Final[dict[int, Value]] = {
    _ARRAY: Array(()),
    _MAP: Map(()),
    _SET: Set(()),
    _PUSH: Push(()),
}


def _line_value(kind: int, line: bytes) -> Value:
    """Decode a line-typed scalar, validating its content (framing does not)."""
    try:
        if kind == 43:  # '+'
            return SimpleString(line)
        if kind == 45:  # '-'
            return SimpleError(line)
    except LocalProtocolError:
        raise protocol_error("CR or LF inside a simple string or error") from None
    if kind == 58:  # ':'
        number = parse_integer(line)
        if number is None:
            raise protocol_error("invalid integer value")
        return Integer(number)
    if kind == 95:  # '_'
        if line:
            raise protocol_error("invalid null value")
        return NULL
    if kind == 35:  # '#'
        if line == b"t":
            return _TRUE
        if line == b"f":
            return _FALSE
        raise protocol_error("invalid boolean value")
    if kind == 44:  # ','
        try:
            return Double(line)
        except LocalProtocolError:
            raise protocol_error("invalid double value") from None
    # '(' is the only line kind left.
    big = _parse_big_number(line)
    if big is None:
        raise protocol_error("invalid big number value")
    return BigNumber(big)


_TRUE: Final = Boolean(True)
_FALSE: Final = Boolean(False)


@final
class ReplyParser:
    """Pure-Python, exact RESP2/RESP3 reply parser.

    Use: ``feed(data)`` whenever bytes arrive, then ``next_value()`` until it returns
    :data:`NEED_DATA`. RESP2 and RESP3 types are always both accepted: a connection switches with
    ``HELLO 3`` mid-stream, and nothing RESP3-only is ambiguous in RESP2.

    Raises:
        RemoteProtocolError: from ``feed`` when ``max_buffer`` would be exceeded, from
            ``next_value`` on malformed input or a broken limit; raised again by every later call.
    """

    __slots__ = ("_buffer", "_error", "_limits", "_stack")

    def __init__(self, limits: ReplyLimits | None = None) -> None:
        self._limits = limits or DEFAULT_LIMITS
        self._buffer = ReceiveBuffer(self._limits.max_buffer, buffer_overflow_hint())
        self._stack: list[tuple[int, int, list[Any]]] = []
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet consumed (a reply in progress may have consumed some)."""
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the server.

        Raises:
            RemoteProtocolError: the bytes held (unconsumed plus the reply in progress) would
                exceed ``max_buffer``.
        """
        if self._error is not None:
            raise self._error
        try:
            self._buffer.feed(data)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def next_value(self) -> Value | NeedData:
        """The next complete reply, or :data:`NEED_DATA`.

        Raises:
            RemoteProtocolError: malformed input or a broken limit.
        """
        if self._error is not None:
            raise self._error
        buffer = self._buffer
        try:
            value, pos = _parse(buffer.data, buffer.start, self._stack, self._limits)
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if value is None:
            if self._stack:
                buffer.advance(pos)
            return NEED_DATA
        buffer.commit(pos)
        return value

    def values(self) -> list[Value]:
        """Every complete reply buffered so far (a convenience over :meth:`next_value`)."""
        out: list[Value] = []
        while True:
            value = self.next_value()
            if value is NEED_DATA:
                return out
            out.append(value)


class _HiredisProtocolError(Exception):
    """What hiredis raises for bad content (it instantiates the class with its message)."""


def _hiredis_reply_error(message: str) -> SimpleError:
    # hiredis has already decoded the text (UTF-8, with replacement): "types collapsed".
    return SimpleError(message.encode("utf-8", "replace"))


def _from_hiredis(obj: Any) -> Value:
    cls = obj.__class__
    if cls is bytes:
        return BulkString(obj)
    if cls is int:
        return Integer(obj)
    if obj is None:
        return NULL_BULK
    if cls is SimpleError:
        return obj  # type: ignore[no-any-return]
    return Array(tuple([BulkString(x) if x.__class__ is bytes else _from_hiredis(x) for x in obj]))


@final
class HiredisReplyParser:
    """RESP2 reply parser using hiredis for arrays: **values only, types collapsed**.

    Top-level replies other than non-empty arrays are parsed exactly, by the same code as
    :class:`ReplyParser`. Inside an array, hiredis' collapses apply: a simple string becomes a
    :class:`.BulkString`, a nested null array a ``$-1`` null, and error text is decoded as UTF-8
    with replacement. RESP3 type bytes are refused (hiredis mangles them; see the module
    docstring).

    An array is framed by :class:`~.framing.ReplyFramer` before hiredis sees it: that is what
    enforces :class:`~.framing.ReplyLimits` (hiredis' own reader has no byte cap, and its
    ``maxbuf`` is a compaction threshold, not a limit) and it keeps error reporting identical to
    the pure parser's for framing errors.

    Raises:
        RemoteProtocolError: as :class:`ReplyParser`; content errors inside arrays carry hiredis'
            wording (``ERR Protocol error: Bad integer value``).
    """

    __slots__ = ("_framer", "_limits", "_reader")

    def __init__(self, limits: ReplyLimits | None = None) -> None:
        if hiredis is None:  # pragma: no cover - hiredis is a pinned dependency
            raise RuntimeError("hiredis is not installed")
        self._limits = limits or DEFAULT_LIMITS
        self._framer = ReplyFramer(self._limits, resp2_only=True)
        # hiredis calls ``replyError`` to build each error reply and accepts any return value (its
        # stub says Exception), so errors come back as our own values with no second pass.
        self._reader = hiredis.Reader(
            protocolError=_HiredisProtocolError,
            replyError=_hiredis_reply_error,  # type: ignore[arg-type]
        )

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as values."""
        return self._framer.buffered

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the server (see :meth:`ReplyParser.feed`)."""
        self._framer.feed(data)

    def next_value(self) -> Value | NeedData:
        """The next complete reply, or :data:`NEED_DATA`."""
        framer = self._framer
        if framer._error is not None:
            raise framer._error
        buffer = framer.buffer
        data = buffer.data
        start = buffer.start
        if start >= len(data):
            return NEED_DATA
        try:
            kind = data[start]
            if framer._stack or (kind == _ARRAY and data[start + 1 : start + 2] not in b"-0"):
                # A non-empty array (possibly already partly framed): frame it, then hiredis.
                end = framer.next_end()
                if end < 0:
                    return NEED_DATA
                data = buffer.data
                # hiredis reads any buffer-protocol object; its stub only says bytes.
                self._reader.feed(data, start, end - start)  # type: ignore[arg-type]
                try:
                    value = _from_hiredis(self._reader.gets())
                except _HiredisProtocolError as exc:
                    raise protocol_error(str(exc)) from None
            else:
                # Anything else is one scalar (or an empty/null array): the exact parser reads
                # it in one pass, limits included, as fast as hiredis plus framing would.
                if kind not in _RESP2_KINDS:
                    raise bad_type_error(kind)
                parsed, end = _parse(data, start, [], self._limits)
                if parsed is None:
                    return NEED_DATA
                value = parsed
        except RemoteProtocolError as exc:
            framer._error = exc
            raise
        buffer.commit(end)
        return value

    def values(self) -> list[Value]:
        """Every complete reply buffered so far."""
        out: list[Value] = []
        while True:
            value = self.next_value()
            if value is NEED_DATA:
                return out
            out.append(value)


def make_reply_parser(
    limits: ReplyLimits | None = None, *, resp3: bool = False, exact_types: bool = True
) -> ReplyReader:
    """The right reply parser for a connection.

    Args:
        limits: bounds to enforce.
        resp3: the connection may carry RESP3 (``HELLO 3`` was or may be sent).
        exact_types: replies will be re-encoded or inspected by type, so ``+OK`` must stay
            distinct from ``$2\\r\\nOK`` (the gateway's default).

    Returns:
        :class:`HiredisReplyParser` only for RESP2 where collapsed types are acceptable and
        hiredis is installed; :class:`ReplyParser` otherwise. ``bench/codec.py`` shows where
        hiredis wins: large arrays, not the single small replies that dominate proxy traffic.
    """
    if not resp3 and not exact_types and HAVE_HIREDIS:
        return HiredisReplyParser(limits)
    return ReplyParser(limits)
