"""Find where one RESP reply ends without building it: the gateway's hot path.

The gateway forwards a backend's reply to the client as the bytes the backend sent, so it only
needs to know *where each reply ends*: no values, no copies per element. :func:`scan_reply` does
that for one reply in a buffer; :class:`ReplyFramer` does it for a stream, resuming a large
aggregate where it stopped instead of rescanning it on every chunk.

What is checked, and what is not: framing validates the *structure* (type bytes, length and count
headers in redis-server's ``string2ll`` form, the CRLF after every bulk payload, the limits) because
a framing mistake would desynchronise every later reply on the connection. It does not validate
the *content* of line-typed scalars (``:12x`` or ``#q`` pass): those bytes are forwarded unchanged
and judged by the client, exactly as they would be without the gateway. :class:`.parser.ReplyParser`
checks both, so on a valid stream the two agree on every boundary (the tests hold them to it).

Nesting is walked with a stack of remaining counts, never by recursion, so a deeply nested reply
cannot raise ``RecursionError``; depth is bounded by ``max_depth`` anyway. An attribute (``|``)
is part of the value it annotates and opens two levels: one for the annotated value and one for
the attribute's pairs (the parser counts it the same way). A push (``>``) frames as one reply.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, final

from .._buffer import ReceiveBuffer
from .._errors import RemoteProtocolError

try:
    from ._framer import scan_replies
except ImportError:  # installed without a C compiler: the Python scan does everything
    scan_replies = None  # type: ignore[assignment]

__all__ = [
    "NEED_DATA",
    "NeedData",
    "ReplyFramer",
    "ReplyLimits",
    "error_text",
    "is_error_reply",
    "scan_reply",
    "split_replies",
]

#: redis-server's ``proto-max-bulk-len`` default.
DEFAULT_MAX_BULK_LEN: Final = 512 * 1024 * 1024
#: hiredis' ``REDIS_READER_MAX_ARRAY_ELEMENTS``: the cap a real client already applies.
DEFAULT_MAX_AGGREGATE_LEN: Final = 2**32 - 1
#: Redis has no nesting cap for replies; Lua and module replies nest a few levels. 128 is far
#: beyond any real reply and keeps recursive consumers (``encode``, ``==``) far from Python's limit.
DEFAULT_MAX_DEPTH: Final = 128
#: Longest simple string, error or other line-typed scalar. Real ones are short; the cap stops a
#: peer from making us buffer an endless line.
DEFAULT_MAX_LINE_LEN: Final = 1024 * 1024
#: redis-server's ``client-query-buffer-limit`` default, used for the other direction too.
DEFAULT_MAX_BUFFER: Final = 1024 * 1024 * 1024

#: A length/count header is at most ``$`` + 20 characters (``-9223372036854775808``) + CRLF: a
#: longer one is refused as soon as that many bytes are buffered, never waited for.
_HEADER_SPAN: Final = 23


@dataclass(frozen=True, slots=True)
class ReplyLimits:
    """Bounds on what one backend reply may make us buffer or walk.

    Attributes:
        max_bulk_len: longest bulk string, blob error or verbatim string payload.
        max_aggregate_len: most elements (pairs, for maps and attributes) one aggregate declares.
        max_depth: most aggregates open at once (an attribute counts twice: its pairs and the
            value it annotates).
        max_line_len: longest simple string, error, integer, double, big number or boolean line.
        max_buffer: most bytes held at once: unconsumed input plus the reply in progress.
    """

    max_bulk_len: int = DEFAULT_MAX_BULK_LEN
    max_aggregate_len: int = DEFAULT_MAX_AGGREGATE_LEN
    max_depth: int = DEFAULT_MAX_DEPTH
    max_line_len: int = DEFAULT_MAX_LINE_LEN
    max_buffer: int = DEFAULT_MAX_BUFFER


DEFAULT_LIMITS: Final = ReplyLimits()


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA` (an enum so ``is`` checks narrow the type)."""

    NEED_DATA = "NEED_DATA"


#: Returned by ``next_reply``/``next_value`` when the buffered bytes end mid-reply (h11's
#: sentinel pattern): feed more bytes and ask again.
NEED_DATA: Final = NeedData.NEED_DATA


# Error constructors. Wording follows redis-server's networking.c where it has a message for the
# same condition (``invalid bulk length``, ``invalid multibulk length``); the others say what
# hiredis would complain about, in redis-server's ``Protocol error: ...`` form.
def protocol_error(detail: str) -> RemoteProtocolError:
    """A fatal RESP framing error with redis-server's ``ERR Protocol error: ...`` wording."""
    return RemoteProtocolError(f"ERR Protocol error: {detail}")


def bad_type_error(kind: int) -> RemoteProtocolError:
    """The error for a byte that starts no RESP type (hiredis' ``got ... as reply type byte``)."""
    shown = chr(kind) if 0x21 <= kind < 0x7F else f"\\x{kind:02x}"
    return protocol_error(f"got '{shown}' as reply type byte")


def bulk_length_error() -> RemoteProtocolError:
    return protocol_error("invalid bulk length")


def multibulk_length_error() -> RemoteProtocolError:
    return protocol_error("invalid multibulk length")


def line_too_long_error() -> RemoteProtocolError:
    return protocol_error("too big reply line")


def depth_error() -> RemoteProtocolError:
    return protocol_error("reply nested too deeply")


def verbatim_error() -> RemoteProtocolError:
    return protocol_error("invalid verbatim string")


def buffer_overflow_hint() -> str:
    return "ERR Protocol error: reply buffer limit exceeded"


#: Canonical decimal forms of small lengths, so the commonest headers need one dict lookup
#: instead of ``isdigit`` + ``int``; only canonical spellings are keys, so a hit is also a
#: validation (no sign, no leading zero). Holds ``bytes`` keys only: a ``bytearray`` is unhashable.
_SMALL_LENGTHS: Final[dict[bytes, int]] = {b"%d" % n: n for n in range(10000)}
_SMALL_LENGTHS[b"-1"] = -1
_SMALL_GET: Final = _SMALL_LENGTHS.get


def parse_length(digits: bytes | bytearray) -> int:
    """A length or count header as redis-server's ``string2ll`` reads it, or -2 if invalid.

    Accepts a canonical non-negative int64 (no sign, no leading zero, no blanks: stricter than
    ``int()``, which takes `` 1``, ``+1`` and ``1_0``) or exactly ``-1`` (the RESP2 null).
    """
    if digits.isdigit():
        if (digits[0] == 48 and len(digits) > 1) or len(digits) > 19:
            return -2
        value = int(digits)
        return value if value <= _INT64_MAX else -2
    return -1 if digits == b"-1" else -2


_INT64_MAX: Final = 2**63 - 1

# Type bytes, as ints (indexing bytes gives ints).
_LINE_KINDS: Final = frozenset(b"+-:_,#(")
_RESP2_LINE_KINDS: Final = frozenset(b"+-:")
_AGGREGATE_KINDS: Final = frozenset(b"*%~>|")
_RESP2_KINDS: Final = frozenset(b"+-:$*")


def scan_reply(
    buf: bytes | bytearray | memoryview,
    pos: int,
    max_depth: int = DEFAULT_MAX_DEPTH,
    *,
    max_bulk_len: int = DEFAULT_MAX_BULK_LEN,
    max_aggregate_len: int = DEFAULT_MAX_AGGREGATE_LEN,
    max_line_len: int = DEFAULT_MAX_LINE_LEN,
) -> int:
    """The end offset of the one complete RESP2/RESP3 reply starting at ``buf[pos]``, or -1.

    Stateless: a caller with an incomplete reply calls again from ``pos`` when more bytes arrive.
    That is cheap for scalars and bulks (the header is re-read, never the payload) but rescans
    the elements of an incomplete aggregate; :class:`ReplyFramer` resumes instead.

    Args:
        buf: the received bytes. A ``memoryview`` is copied once (it has no ``find``).
        pos: where the reply starts.
        max_depth: see :class:`ReplyLimits` (as are the keyword-only limits).

    Returns:
        The offset just past the reply's final CRLF, or -1 if ``buf`` ends before that.

    Raises:
        RemoteProtocolError: the bytes are not RESP, or break a limit.
    """
    try:
        kind = buf[pos]
    except IndexError:
        return -1
    # A memoryview has no ``find``: it fails over to the copy in the handler below. Typed as
    # bytes here so the hot path pays for no isinstance check.
    data: bytes | bytearray = buf  # type: ignore[assignment]
    try:
        if kind == 36:  # '$': GET and friends, the commonest reply
            size = len(data)
            nl = -1
            if pos + 6 < size:
                # Lengths of up to four digits: probe for the CR instead of calling find()
                # (about 100 ns less per reply on CPython 3.11).
                if data[pos + 2] == 13:
                    nl = pos + 2
                elif data[pos + 3] == 13:
                    nl = pos + 3
                elif data[pos + 4] == 13:
                    nl = pos + 4
                elif data[pos + 5] == 13:
                    nl = pos + 5
            if nl > 0:
                if data[nl + 1] != 10:
                    raise bulk_length_error()  # a CR inside the header
            else:
                nl = data.find(b"\r\n", pos + 1)
                if nl < 0 or nl - pos >= _HEADER_SPAN:
                    if size >= pos + _HEADER_SPAN:
                        raise bulk_length_error()
                    return -1
            digits = data[pos + 1 : nl]
            length = _SMALL_GET(digits) if digits.__class__ is bytes else None
            if length is None:
                length = parse_length(digits)
            if length >= 0:
                if length > max_bulk_len:
                    raise bulk_length_error()
                end = nl + 2 + length
                if end + 2 > size:
                    return -1
                if data[end] != 13 or data[end + 1] != 10:
                    raise bulk_length_error()
                return end + 2
            if length == -1:
                return nl + 2
            raise bulk_length_error()
        if kind in _LINE_KINDS:  # '+OK', ':1', '-ERR ...' and the RESP3 line scalars
            nl = data.find(b"\r\n", pos + 1)
            if nl >= 0:
                if nl - pos - 1 > max_line_len:
                    raise line_too_long_error()
                return nl + 2
            if len(data) - pos > max_line_len + 2:
                raise line_too_long_error()
            return -1
        end, _ = _scan(
            data,
            pos,
            [1],
            max_depth,
            max_bulk_len,
            max_aggregate_len,
            max_line_len,
            False,
        )
        return end
    except AttributeError:
        if isinstance(buf, memoryview):
            return scan_reply(
                buf.tobytes(),
                pos,
                max_depth,
                max_bulk_len=max_bulk_len,
                max_aggregate_len=max_aggregate_len,
                max_line_len=max_line_len,
            )
        raise


def _scan(
    buf: bytes | bytearray,
    pos: int,
    stack: list[int],
    max_depth: int,
    max_bulk_len: int,
    max_aggregate_len: int,
    max_line_len: int,
    resp2_only: bool,
) -> tuple[int, int]:
    """Walk elements from ``pos`` with ``stack`` holding each open level's remaining count.

    ``stack`` starts as ``[1]`` (one reply expected). It describes the state at the returned
    offset when the reply is incomplete, so calling again with the same stack from there
    continues where this call stopped. (Inside the loop the innermost count lives in the local
    ``remaining`` and is written back only when a level opens or the call returns: one list
    store less per element.)

    Returns:
        ``(end, end)`` when the reply is complete; ``(-1, resume)`` when more bytes are needed.
    """
    size = len(buf)
    find = buf.find
    remaining = stack[-1]
    while True:
        if pos >= size:
            stack[-1] = remaining
            return -1, pos
        kind = buf[pos]
        if kind == 36 or kind == 33 or kind == 61:  # '$' '!' '='
            if resp2_only and kind != 36:
                raise bad_type_error(kind)
            nl = -1
            if pos + 6 < size:  # probe short headers, as scan_reply does
                if buf[pos + 2] == 13:
                    nl = pos + 2
                elif buf[pos + 3] == 13:
                    nl = pos + 3
                elif buf[pos + 4] == 13:
                    nl = pos + 4
                elif buf[pos + 5] == 13:
                    nl = pos + 5
            if nl > 0:
                if buf[nl + 1] != 10:
                    raise bulk_length_error()
            else:
                nl = find(b"\r\n", pos + 1)
                if nl < 0 or nl - pos >= _HEADER_SPAN:
                    if size >= pos + _HEADER_SPAN:
                        raise bulk_length_error()
                    stack[-1] = remaining
                    return -1, pos
            digits = buf[pos + 1 : nl]
            length = _SMALL_GET(digits) if digits.__class__ is bytes else None
            if length is None:
                length = parse_length(digits)
            if length >= 0:
                if length > max_bulk_len:
                    raise bulk_length_error()
                end = nl + 2 + length
                if end + 2 > size:
                    stack[-1] = remaining
                    return -1, pos
                if buf[end] != 13 or buf[end + 1] != 10:
                    raise bulk_length_error()
                if kind == 61 and (length < 4 or buf[nl + 5] != 58):  # '=' needs 'fmt:'
                    raise verbatim_error()
                pos = end + 2
            elif kind == 36 and length == -1:
                pos = nl + 2
            else:
                raise bulk_length_error()
        elif kind in _LINE_KINDS:
            if resp2_only and kind not in _RESP2_LINE_KINDS:
                raise bad_type_error(kind)
            nl = find(b"\r\n", pos + 1)
            if nl < 0:
                if size - pos > max_line_len + 2:
                    raise line_too_long_error()
                stack[-1] = remaining
                return -1, pos
            if nl - pos - 1 > max_line_len:
                raise line_too_long_error()
            pos = nl + 2
        elif kind in _AGGREGATE_KINDS:
            if resp2_only and kind != 42:
                raise bad_type_error(kind)
            nl = find(b"\r\n", pos + 1)
            if nl < 0 or nl - pos >= _HEADER_SPAN:
                if size >= pos + _HEADER_SPAN:
                    raise multibulk_length_error()
                stack[-1] = remaining
                return -1, pos
            digits = buf[pos + 1 : nl]
            count = _SMALL_GET(digits) if digits.__class__ is bytes else None
            if count is None:
                count = parse_length(digits)
            if count >= 0:
                if count > max_aggregate_len:
                    raise multibulk_length_error()
                pos = nl + 2
                if kind == 37 or kind == 124:  # '%' '|': pairs
                    count *= 2
                if kind == 124:
                    # The annotated value's level: the attribute, then the value.
                    stack[-1] = remaining
                    stack.append(2)
                    remaining = 2
                if count:
                    stack[-1] = remaining
                    stack.append(count)
                    remaining = count
                    if len(stack) > max_depth + 1:
                        raise depth_error()
                    continue
                if len(stack) > max_depth + 1:
                    raise depth_error()
            elif kind == 42 and count == -1:
                pos = nl + 2
            else:
                raise multibulk_length_error()
        else:
            raise bad_type_error(kind)
        # One element is complete at ``pos``: close every level it completes.
        remaining -= 1
        while not remaining:
            stack.pop()
            if not stack:
                return pos, pos
            remaining = stack[-1] - 1


def is_error_reply(buf: bytes | bytearray | memoryview, start: int) -> bool:
    """Whether the reply at ``start`` is an error (``-`` simple error or ``!`` blob error).

    An attributed error (``|...`` then ``-ERR``) is not detected: attributes are RESP3-only and
    Redis never attaches them to errors.
    """
    return start < len(buf) and buf[start] in (45, 33)


def error_text(buf: bytes | bytearray | memoryview, start: int, end: int) -> bytes:
    """The message of the error reply ``buf[start:end]`` (as framed by :func:`scan_reply`).

    For ``-ERR x\\r\\n`` that is ``b"ERR x"``; for a blob error, its payload.
    """
    if buf[start] == 33:  # '!'
        header_end = bytes(buf[start : min(end, start + _HEADER_SPAN)]).find(b"\r\n")
        return bytes(buf[start + header_end + 2 : end - 2])
    return bytes(buf[start + 1 : end - 2])


def split_replies(blob: bytes, count: int) -> list[bytes]:
    """``count`` complete replies that sit back to back in ``blob``, one bytes object each.

    Raises:
        RemoteProtocolError: ``blob`` does not hold ``count`` complete replies.
    """
    replies: list[bytes] = []
    pos = 0
    for _ in range(count):
        end = scan_reply(blob, pos)
        if end < 0:
            raise protocol_error("incomplete reply")
        replies.append(blob[pos:end])
        pos = end
    return replies


@final
class ReplyFramer:
    """Splits a backend's byte stream into complete raw replies, resuming large aggregates.

    Use: ``feed(data)`` whenever bytes arrive, then ``next_reply()`` until it returns
    :data:`NEED_DATA`. Each reply comes back as the exact bytes received (attributes included
    with the value they annotate, a push as one reply), ready to forward.

    Raises:
        RemoteProtocolError: from ``feed`` when :attr:`ReplyLimits.max_buffer` would be exceeded,
            from ``next_reply`` on malformed input or a broken limit. The framer is unusable
            afterwards (the error is raised again), since the stream's boundaries are lost.
    """

    __slots__ = ("_error", "_limits", "_resp2_only", "_resume", "_stack", "buffer")

    def __init__(self, limits: ReplyLimits | None = None, *, resp2_only: bool = False) -> None:
        """Create a framer.

        Args:
            limits: bounds to enforce; redis-server's and hiredis' defaults if omitted.
            resp2_only: refuse RESP3-only type bytes (for a connection that never sent
                ``HELLO 3``, where such a byte means the stream is corrupt).
        """
        self._limits = limits or DEFAULT_LIMITS
        self._resp2_only = resp2_only
        self.buffer = ReceiveBuffer(self._limits.max_buffer, buffer_overflow_hint())
        #: Remaining counts of the reply in progress (empty between replies), and how far past
        #: the reply's start the scan got, so an incomplete aggregate resumes, not restarts.
        self._stack: list[int] = []
        self._resume = 0
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as replies."""
        return len(self.buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the backend.

        Raises:
            RemoteProtocolError: the buffer cap would be exceeded.
        """
        if self._error is not None:
            raise self._error
        try:
            self.buffer.feed(data)
        except RemoteProtocolError as exc:
            self._error = exc
            raise

    def next_reply(self) -> bytes | NeedData:
        """The next complete reply's raw bytes, or :data:`NEED_DATA`."""
        end = self.next_end()
        if end < 0:
            return NEED_DATA
        return self.buffer.take(end)

    def ends(self, limit: int) -> tuple[list[int], int]:
        """Where each of up to ``limit`` complete replies from ``buffer.start`` ends (offsets
        in ``buffer.data``, in order; none until the first is whole), and how many of them are
        error replies (``-`` or ``!``). The caller consumes them (``buffer.commit``, ``take``)
        and asks again for more.

        The compiled scanner (``_framer.c``) frames what it can in one call. Where it stops
        short (an aggregate in progress, which :meth:`next_end` resumes; a push; bytes that
        are not RESP, which the Python framer refuses in its own words), the Python scan
        frames on.

        Raises:
            RemoteProtocolError: the node sent something that is not RESP.
        """
        if limit <= 0:
            return [], 0
        buffer = self.buffer
        limits = self._limits
        if scan_replies is not None and not self._stack and self._error is None:
            framed, errors = scan_replies(
                buffer.data,
                buffer.start,
                limit,
                limits.max_bulk_len,
                limits.max_aggregate_len,
                limits.max_line_len,
                limits.max_depth,
                not self._resp2_only,
            )
            if framed:
                return framed, errors
        end = self.next_end()
        if end < 0:
            return [], 0
        data = buffer.data
        framed = [end]
        errors = 1 if is_error_reply(data, buffer.start) else 0
        while len(framed) < limit:
            next_end = self._scan_one(data, end)
            if next_end < 0:
                break
            if is_error_reply(data, end):
                errors += 1
            framed.append(next_end)
            end = next_end
        return framed, errors

    def _scan_one(self, data: bytes | bytearray, start: int) -> int:
        """:func:`scan_reply` under this framer's limits."""
        limits = self._limits
        return scan_reply(
            data,
            start,
            limits.max_depth,
            max_bulk_len=limits.max_bulk_len,
            max_aggregate_len=limits.max_aggregate_len,
            max_line_len=limits.max_line_len,
        )

    def next_end(self) -> int:
        """Frame the next reply without consuming it: its end offset in ``buffer.data``, or -1.

        The reply is ``buffer.data[buffer.start:end]``; the caller consumes it with
        ``buffer.commit(end)``. This lets a consumer (the hiredis parser, a zero-copy writer)
        use the bytes in place.
        """
        if self._error is not None:
            raise self._error
        buffer = self.buffer
        data = buffer.data
        start = buffer.start
        if start >= len(data):
            return -1
        limits = self._limits
        stack = self._stack
        try:
            if not stack:
                kind = data[start]
                if kind not in _AGGREGATE_KINDS:
                    # Scalars: a stateless rescan only re-reads a short header.
                    if self._resp2_only and kind not in _RESP2_KINDS:
                        raise bad_type_error(kind)
                    return self._scan_one(data, start)
                stack.append(1)
                self._resume = 0
            end, resume = _scan(
                data,
                start + self._resume,
                stack,
                limits.max_depth,
                limits.max_bulk_len,
                limits.max_aggregate_len,
                limits.max_line_len,
                self._resp2_only,
            )
        except RemoteProtocolError as exc:
            self._error = exc
            raise
        if end < 0:
            self._resume = resume - start
            return -1
        self._resume = 0
        return end
