"""The receive buffer shared by the sans-IO parsers: offset-based, commit/rollback, hard cap.

Why offsets rather than slicing consumed bytes off the front: a parser that deletes what it read
after every message copies the rest of the buffer each time, which is quadratic when many small
messages sit behind each other; and a parser that restarts from the beginning of an incomplete
message on every ``feed`` is quadratic when one large message arrives in many chunks. So the
buffer keeps a ``start`` offset and parsers read ``data`` in place with a local cursor: finishing a
message *commits* the cursor, and running out of bytes simply does not commit (the rollback is
free). The consumed prefix is dropped only when that is cheap (wsproto's pattern).

Why an *anchor* as well as ``start``: a resumable parser may consume the first elements of a large
reply (moving ``start``) long before the reply is complete. Those bytes left the buffer but the
values built from them are still held, so they must keep counting against the cap; the anchor
marks where the message in progress began. The cap therefore bounds memory per connection, not
just per ``feed``: h11's ``max_incomplete_event_size``, made to work for streamed aggregates.
"""

from __future__ import annotations

from typing import Final, final

from ._errors import RemoteProtocolError

__all__ = ["ReceiveBuffer"]

#: Compact (drop the consumed prefix) once at least this much is consumed and it is over half the
#: buffer: each byte is then moved at most once on average, so compaction stays O(n) overall.
_COMPACT_AT: Final = 64 * 1024


@final
class ReceiveBuffer:
    """Bytes received but not yet consumed, read in place by a parser.

    Attributes:
        data: the underlying buffer. Parsers read ``data[start:]`` directly (no copies); it is
            replaced or compacted by :meth:`feed`, :meth:`commit` and :meth:`advance`, so do not
            keep a reference across those calls.
        start: offset of the first unconsumed byte in ``data``.
        max_size: the hard cap on :attr:`pending` bytes.
    """

    __slots__ = ("_anchor", "_overflow_hint", "data", "max_size", "start")

    def __init__(self, max_size: int, overflow_hint: str) -> None:
        """Create an empty buffer.

        Args:
            max_size: most bytes that may be pending (unconsumed, or consumed into the message
                still in progress) at once.
            overflow_hint: the wire reply hint of the error raised when the cap is hit, in the
                protocol's own words.
        """
        self.data: bytes | bytearray = b""
        self.start = 0
        self._anchor = 0
        self.max_size = max_size
        self._overflow_hint = overflow_hint

    def __len__(self) -> int:
        """Unconsumed bytes."""
        return len(self.data) - self.start

    @property
    def pending(self) -> int:
        """Bytes counted against the cap: unconsumed plus those of the message in progress."""
        return len(self.data) - self._anchor

    def feed(self, chunk: bytes | bytearray | memoryview) -> None:
        """Append received bytes.

        When everything before was consumed, a ``bytes`` chunk becomes the buffer as is: no copy,
        and parsers get hashable ``bytes`` slices (see ``framing._SMALL_LENGTHS``). Only a chunk
        that must be joined to leftover bytes turns the buffer into a ``bytearray``.

        Raises:
            RemoteProtocolError: with the overflow hint when the cap would be exceeded. The buffer
                is left unchanged, but the stream is unusable (bytes were lost).
        """
        data = self.data
        size = len(data)
        if size - self._anchor + len(chunk) > self.max_size:
            raise RemoteProtocolError(self._overflow_hint)
        start = self.start
        if start == size:
            # Everything was consumed: start afresh instead of growing.
            self._anchor -= start
            self.data = chunk if chunk.__class__ is bytes else bytes(chunk)
            self.start = 0
        elif isinstance(data, bytes):
            # Leftover bytes plus a new chunk: from now on append in place.
            self._anchor -= start
            joined = bytearray(data[start:] if start else data)
            joined += chunk
            self.data = joined
            self.start = 0
        else:
            data += chunk

    def commit(self, end: int) -> None:
        """Consume ``data[start:end]`` and end the message in progress there."""
        self.start = end
        self._anchor = end
        if end >= _COMPACT_AT and end * 2 >= len(self.data):
            self._compact()

    def advance(self, end: int) -> None:
        """Consume ``data[start:end]`` as part of a message that is still in progress.

        The bytes are released, but keep counting against the cap until :meth:`commit`.
        """
        self.start = end
        if end >= _COMPACT_AT and end * 2 >= len(self.data):
            self._compact()

    def take(self, end: int) -> bytes:
        """Return ``data[start:end]`` as bytes and :meth:`commit` it.

        A message that is a whole received ``bytes`` chunk comes back as that object: no copy.
        """
        data = self.data
        start = self.start
        if isinstance(data, bytes):
            chunk = data if start == 0 and end == len(data) else data[start:end]
        else:
            chunk = bytes(memoryview(data)[start:end])
        self.start = end
        self._anchor = end
        if end >= _COMPACT_AT and end * 2 >= len(data):
            self._compact()
        return chunk

    def _compact(self) -> None:
        data = self.data
        if isinstance(data, bytes):
            # Immutable: slicing would copy, and the object is dropped once fully consumed.
            return
        start = self.start
        # ``del bytearray[:n]`` only moves CPython's internal start pointer: cheap.
        del data[:start]
        self.start = 0
        self._anchor -= start
