"""Sans-IO parser for the client → server direction of RESP: commands.

A client sends either *multibulk* commands (``*<n>\\r\\n`` then ``n`` bulk strings) or *inline*
commands (a line of space-separated words, the telnet form). ``redis-server`` accepts both, mixed
on one connection, and so does this parser.

Why a hand-written parser rather than hiredis here: the gateway forwards the client's bytes
unchanged whenever it can, which needs each command's byte span, and hiredis' reader exposes no
offsets. Requests are the simplest RESP shape (arrays of bulk strings), so a tight loop over
``bytes.find`` costs about a microsecond per command (``bench/codec.py`` measures it).

Limits mirror redis-server's own (``proto-max-bulk-len``, ``client-query-buffer-limit``, the
1 Mi-element multibulk cap and the 64 KiB inline cap) so an app sees the same errors through the
gateway as it would directly. Errors carry redis-server's wording (``networking.c``), and every
one of them is fatal to the connection, as it is in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from .._errors import RemoteProtocolError

__all__ = ["Command", "RequestLimits", "RequestParser"]

#: redis-server's PROTO_INLINE_MAX_SIZE: an inline command, or a multibulk/bulk header line,
#: longer than this without a newline is an error rather than something to wait for.
INLINE_MAX_SIZE: Final = 64 * 1024
#: Before AUTH, redis-server refuses multibulk counts above 10 and bulks above 16 KiB, so an
#: unauthenticated peer cannot make it buffer much (Redis 7, ``processMultibulkBuffer``).
UNAUTH_MAX_MULTIBULK: Final = 10
UNAUTH_MAX_BULK: Final = 16 * 1024


@dataclass(frozen=True, slots=True)
class RequestLimits:
    """Bounds on what one client may make the gateway buffer.

    Defaults are redis-server's: ``proto-max-bulk-len`` 512 MiB, multibulk length 1 Mi elements,
    ``client-query-buffer-limit`` 1 GiB.
    """

    max_bulk_len: int = 512 * 1024 * 1024
    max_multibulk_len: int = 1024 * 1024
    max_buffer: int = 1024 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class Command:
    """One parsed command.

    Attributes:
        args: the command name and its arguments, exactly as sent (binary-safe).
        raw: the command's bytes in multibulk form, ready to forward unchanged. For a multibulk
            command it is the client's own bytes; an inline command is re-encoded.
    """

    args: list[bytes]
    raw: bytes

    @property
    def name(self) -> bytes:
        """The upper-cased command name (``b"GET"``), the command table's key."""
        return self.args[0].upper() if self.args else b""


def encode_command(args: list[bytes]) -> bytes:
    """Encode ``args`` as one multibulk command (the form every client library sends)."""
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        out.append(b"$%d\r\n%s\r\n" % (len(arg), arg))
    return b"".join(out)


def _protocol_error(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"ERR Protocol error: {detail}")


class RequestParser:
    """Turns a client's byte stream into :class:`Command` objects.

    Use: ``feed(data)`` whenever bytes arrive, then ``commands()`` for every complete command so
    far. Incomplete input stays buffered; ``buffered`` tells how much.

    Raises:
        RemoteProtocolError: from ``feed`` when the buffer would exceed ``max_buffer``, and from
            ``commands`` on malformed input. The parser is unusable afterwards, as the stream's
            framing is lost; the frontend answers with ``reply_hint`` and closes.
    """

    __slots__ = ("_buf", "_error", "_limits", "_pos", "authenticated")

    def __init__(self, limits: RequestLimits | None = None, *, authenticated: bool = True) -> None:
        self._limits = limits or RequestLimits()
        self._buf = bytearray()
        self._pos = 0
        self._error: RemoteProtocolError | None = None
        #: Until the client authenticates, Redis' tighter pre-auth limits apply.
        self.authenticated = authenticated

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as commands."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes) -> None:
        """Append bytes from the client."""
        if len(self._buf) - self._pos + len(data) > self._limits.max_buffer:
            raise _protocol_error("client query buffer limit exceeded")
        if self._pos and self._pos == len(self._buf):
            # Everything so far was consumed: start over instead of growing.
            self._buf = bytearray(data)
            self._pos = 0
        else:
            self._buf += data

    def commands(self) -> list[Command]:
        """Every complete command buffered so far, in order (possibly none).

        When malformed input follows complete commands, those commands are returned first and
        the error is raised by the next call: redis-server, too, executes what precedes a
        protocol error in the same read before answering the error.

        Raises:
            RemoteProtocolError: the input is malformed (see the class docstring).
        """
        if self._error is not None:
            raise self._error
        out: list[Command] = []
        buf = self._buf
        end = len(buf)
        while self._pos < end:
            try:
                if buf[self._pos] == 0x2A:  # '*'
                    command = self._multibulk()
                else:
                    command = self._inline()
            except RemoteProtocolError as exc:
                self._error = exc
                if out:
                    return out
                raise
            if command is None:
                break
            if command.args:
                out.append(command)
        if self._pos > 65536 and self._pos * 2 > end:
            del buf[: self._pos]
            self._pos = 0
        return out

    def _multibulk(self) -> Command | None:
        buf = self._buf
        start = self._pos
        line_end = buf.find(b"\r\n", start)
        if line_end < 0:
            if len(buf) - start > INLINE_MAX_SIZE:
                raise _protocol_error("too big mbulk count string")
            return None
        try:
            count = int(buf[start + 1 : line_end])
        except ValueError:
            raise _protocol_error("invalid multibulk length") from None
        max_count = (
            self._limits.max_multibulk_len if self.authenticated else UNAUTH_MAX_MULTIBULK
        )
        if count > max_count:
            if not self.authenticated:
                raise _protocol_error("unauthenticated multibulk length")
            raise _protocol_error("invalid multibulk length")
        pos = line_end + 2
        if count <= 0:
            # redis-server ignores ``*0`` and ``*-1``: an empty command.
            self._pos = pos
            return Command([], b"")
        max_bulk = self._limits.max_bulk_len if self.authenticated else UNAUTH_MAX_BULK
        args: list[bytes] = []
        total = len(buf)
        for _ in range(count):
            if pos >= total:
                return None
            if buf[pos] != 0x24:  # '$'
                raise _protocol_error(f"expected '$', got '{chr(buf[pos])}'")
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if total - pos > INLINE_MAX_SIZE:
                    raise _protocol_error("too big bulk count string")
                return None
            try:
                length = int(buf[pos + 1 : line_end])
            except ValueError:
                raise _protocol_error("invalid bulk length") from None
            if length < 0 or length > max_bulk:
                if not self.authenticated and length >= 0:
                    raise _protocol_error("unauthenticated bulk length")
                raise _protocol_error("invalid bulk length")
            data_start = line_end + 2
            data_end = data_start + length
            if data_end + 2 > total:
                return None
            if buf[data_end : data_end + 2] != b"\r\n":
                # redis-server trusts the length and then skips two bytes blindly; a gateway
                # cannot, because it forwards the bytes: refuse a bulk without its terminator.
                raise _protocol_error("invalid bulk length")
            args.append(bytes(buf[data_start:data_end]))
            pos = data_end + 2
        raw = bytes(buf[start:pos])
        self._pos = pos
        return Command(args, raw)

    def _inline(self) -> Command | None:
        buf = self._buf
        start = self._pos
        newline = buf.find(b"\n", start)
        if newline < 0:
            if len(buf) - start > INLINE_MAX_SIZE:
                raise _protocol_error("too big inline request")
            return None
        line_end = newline - 1 if newline > start and buf[newline - 1] == 0x0D else newline
        args = split_inline(bytes(buf[start:line_end]))
        self._pos = newline + 1
        return Command(args, encode_command(args) if args else b"")


_ESCAPES: Final = {
    ord("n"): b"\n",
    ord("r"): b"\r",
    ord("t"): b"\t",
    ord("b"): b"\b",
    ord("a"): b"\a",
}
_HEX: Final = frozenset(b"0123456789abcdefABCDEF")


def split_inline(line: bytes) -> list[bytes]:
    """Split an inline command the way redis-server's ``sdssplitargs`` does.

    Words are separated by blanks; ``"..."`` supports ``\\n``-style and ``\\xHH`` escapes;
    ``'...'`` supports only ``\\'``. A closing quote must be followed by a blank or the end.

    Raises:
        RemoteProtocolError: ``unbalanced quotes in request``, as redis-server answers.
    """
    args: list[bytes] = []
    i = 0
    n = len(line)
    blanks = b" \n\r\t\v\f\x00"
    while True:
        while i < n and line[i] in blanks:
            i += 1
        if i >= n:
            return args
        word = bytearray()
        quote = 0
        while True:
            if quote == 0x22:  # inside "..."
                if i >= n:
                    raise _protocol_error("unbalanced quotes in request")
                ch = line[i]
                if (
                    ch == 0x5C
                    and i + 3 < n
                    and line[i + 1] == ord("x")
                    and line[i + 2] in _HEX
                    and line[i + 3] in _HEX
                ):
                    word.append(int(line[i + 2 : i + 4], 16))
                    i += 4
                    continue
                if ch == 0x5C and i + 1 < n:
                    nxt = line[i + 1]
                    word += _ESCAPES.get(nxt, bytes([nxt]))
                    i += 2
                    continue
                if ch == 0x22:
                    if i + 1 < n and line[i + 1] not in blanks:
                        raise _protocol_error("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                word.append(ch)
                i += 1
            elif quote == 0x27:  # inside '...'
                if i >= n:
                    raise _protocol_error("unbalanced quotes in request")
                ch = line[i]
                if ch == 0x5C and i + 1 < n and line[i + 1] == 0x27:
                    word.append(0x27)
                    i += 2
                    continue
                if ch == 0x27:
                    if i + 1 < n and line[i + 1] not in blanks:
                        raise _protocol_error("unbalanced quotes in request")
                    quote = 0
                    i += 1
                    break
                word.append(ch)
                i += 1
            else:
                if i >= n or line[i] in blanks:
                    break
                ch = line[i]
                if ch in (0x22, 0x27):
                    quote = ch
                else:
                    word.append(ch)
                i += 1
        args.append(bytes(word))
