"""Sans-IO parser for the client → server direction of RESP: commands.

A client sends either *multibulk* commands (``*<n>\\r\\n`` then ``n`` bulk strings) or *inline*
commands (a line of space-separated words, the telnet form). ``redis-server`` accepts both, mixed
on one connection, and so does this parser.

Two engines, one interface (:class:`RequestParser`):

* a compiled framer (``_framer.c``), for speed, on authenticated multibulk traffic (what
  client libraries send): it takes only the canonical encoding, returns each command with its
  own bytes (so a batch is forwarded unchanged), and stops at the first byte that is anything
  else. It is the one piece of the request path in C: at 16 pipelined commands, parsing in
  Python cost a third of the gateway's CPU per command.
* a hand-written pure parser (a tight loop over ``bytes.find``) for everything else: it tracks
  each command's byte span itself, reads inline commands, applies redis-server's tighter limits
  before AUTH, and reports every error in redis-server's words. It takes over from the framer
  for an inline command or a command still incomplete after 64 KiB (until the next command
  boundary), and for good after bytes the framer does not take. It is also the reference the
  framer is tested against, and the fallback where the framer was not built.

``bench/codec.py`` measures both.

Limits mirror redis-server's own (``proto-max-bulk-len``, ``client-query-buffer-limit``, the
1 Mi-element multibulk cap and the 64 KiB inline cap) so an app sees the same errors through the
gateway as it would directly. Errors carry redis-server's wording (``networking.c``), and every
one of them is fatal to the connection, as it is in Redis.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import hiredis

from ...call import Call
from .._errors import RemoteProtocolError
from .commands import lookup
from .parser import parse_integer

try:
    from ._framer import frame
except ImportError:  # installed without a C compiler: the pure parser does everything
    frame = None  # type: ignore[assignment]

#: Whether the compiled framer is installed.
COMPILED: Final = frame is not None

__all__ = ["Command", "RequestLimits", "RequestParser", "encode_command", "split_inline"]

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


class Command(Call):
    """One parsed command: a :class:`~resmesh.call.Call` once the frontend has classified it
    (set its operation and batch).

    Attributes:
        args: the command name and its arguments, exactly as sent (binary-safe).
    """

    __slots__ = ("_raw", "args")

    def __init__(self, args: list[bytes], raw: bytes | None = None) -> None:
        self.args = args
        self._raw = raw

    @property
    def raw(self) -> bytes:
        """The command in multibulk form, ready to forward: the client's own bytes when the
        parser kept them, else encoded on first use (the hiredis path keeps none per command).
        """
        if self._raw is None:
            self._raw = encode_command(self.args)
        return self._raw

    @property
    def name(self) -> bytes:
        """The upper-cased command name (``b"GET"``), the command table's key."""
        return self.args[0].upper() if self.args else b""

    @property
    def keys(self) -> list[bytes]:  # type: ignore[override]
        """The keys the command touches (``COMMAND GETKEYS``'s answer), found on demand: only
        calls placed by key (``balance: hash``, sharding) need them."""
        spec = lookup(self.args)
        return spec.extract_keys(self.args) if spec is not None else []

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Command):
            return NotImplemented
        return self.args == other.args and self.raw == other.raw

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Command(args={self.args!r})"


def encode_command(args: list[bytes]) -> bytes:
    """Encode ``args`` as one multibulk command (the form every client library sends)."""
    packed: bytes = hiredis.pack_command(tuple(args))  # type: ignore[arg-type]
    return packed


def _protocol_error(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(f"ERR Protocol error: {detail}")


class _PureRequestParser:
    """Turns a client's byte stream into :class:`Command` objects (pure Python).

    Use: ``feed(data)`` whenever bytes arrive, then ``commands()`` for every complete command so
    far. Incomplete input stays buffered; ``buffered`` tells how much.

    Raises:
        RemoteProtocolError: from ``feed`` when the buffer would exceed ``max_buffer``, and from
            ``commands`` on malformed input. The parser is unusable afterwards, as the stream's
            framing is lost; the frontend answers with ``reply_hint`` and closes.
    """

    __slots__ = ("_buf", "_limits", "_partial", "_pos", "authenticated", "error")

    def __init__(self, limits: RequestLimits | None = None, *, authenticated: bool = True) -> None:
        self._limits = limits or RequestLimits()
        self._buf = bytearray()
        self._pos = 0
        #: An incomplete multibulk command: (count, args so far, offset past them from
        #: ``_pos``), so the next call resumes instead of re-parsing every argument (a large
        #: MSET arriving in small reads would otherwise cost O(n^2)).
        self._partial: tuple[int, list[bytes], int] | None = None
        self.error: RemoteProtocolError | None = None
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
        if self.error is not None:
            raise self.error
        out: list[Command] = []
        buf = self._buf
        end = len(buf)
        while self._pos < end:
            try:
                # '*' starts a multibulk command; anything else is an inline one.
                command = self._multibulk() if buf[self._pos] == 0x2A else self._inline()
            except RemoteProtocolError as exc:
                self.error = exc
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
        partial = self._partial
        if partial is None:
            line_end = buf.find(b"\r\n", start)
            if line_end < 0:
                if len(buf) - start > INLINE_MAX_SIZE:
                    raise _protocol_error("too big mbulk count string")
                return None
            # string2ll, as redis-server: no sign, blank or leading zero (``int()`` takes them,
            # and the raw bytes are forwarded to a server that would not).
            count = parse_integer(buf[start + 1 : line_end])
            if count is None or count > self._limits.max_multibulk_len:
                raise _protocol_error("invalid multibulk length")
            if count > UNAUTH_MAX_MULTIBULK and not self.authenticated:
                raise _protocol_error("unauthenticated multibulk length")
            pos = line_end + 2
            if count <= 0:
                # redis-server ignores ``*0`` and ``*-1``: an empty command.
                self._pos = pos
                return Command([], b"")
            args: list[bytes] = []
        else:
            count, args, resume = partial
            pos = start + resume
        total = len(buf)
        while len(args) < count:
            if pos >= total:
                break
            if buf[pos] != 0x24:  # '$'
                raise _protocol_error(f"expected '$', got '{chr(buf[pos])}'")
            line_end = buf.find(b"\r\n", pos)
            if line_end < 0:
                if total - pos > INLINE_MAX_SIZE:
                    raise _protocol_error("too big bulk count string")
                break
            length = parse_integer(buf[pos + 1 : line_end])
            if length is None or length < 0 or length > self._limits.max_bulk_len:
                raise _protocol_error("invalid bulk length")
            if length > UNAUTH_MAX_BULK and not self.authenticated:
                raise _protocol_error("unauthenticated bulk length")
            data_start = line_end + 2
            data_end = data_start + length
            if data_end + 2 > total:
                break
            if buf[data_end : data_end + 2] != b"\r\n":
                # redis-server trusts the length and then skips two bytes blindly; a gateway
                # cannot, because it forwards the bytes: refuse a bulk without its terminator.
                raise _protocol_error("invalid bulk length")
            args.append(bytes(buf[data_start:data_end]))
            pos = data_end + 2
        else:
            self._partial = None
            raw = bytes(buf[start:pos])
            self._pos = pos
            return Command(args, raw)
        self._partial = (count, args, pos - start)
        return None

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
    nul = line.find(b"\x00")
    if nul >= 0:
        # sdssplitargs reads a C string: redis-server ignores everything from a NUL on.
        line = line[:nul]
    args: list[bytes] = []
    i = 0
    n = len(line)
    # isspace(): skipped between words and allowed after a closing quote. Only these four end
    # an unquoted word, so ``a\vb`` is one word to redis-server.
    blanks = b" \t\n\v\f\r"
    separators = b" \n\r\t"
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
                if i >= n or line[i] in separators:
                    break
                ch = line[i]
                if ch in (0x22, 0x27):
                    quote = ch
                else:
                    word.append(ch)
                i += 1
        args.append(bytes(word))


class RequestParser:
    """Turns a client's byte stream into :class:`Command` objects.

    Use: ``feed(data)`` whenever bytes arrive, then ``commands()`` for every complete command so
    far; ``batch_raw`` then holds the exact bytes of that batch, so a batch that is forwarded
    whole goes out as the client sent it, with no re-encoding.

    Two engines behind one interface: the compiled framer (:data:`frame`) for authenticated
    multibulk traffic, and the pure parser for the rest: inline commands, the pre-AUTH
    limits, and exact redis-server error wording. The framer stops at the first byte it does
    not take; the pure parser reads on from there, and stays in charge for the rest of the
    connection. An inline command, or one still incomplete after 64 KiB (a large value), goes
    to the pure parser too, but only until the next command boundary: then the framer takes
    over again. Without the compiled framer (no C compiler at install) the pure parser does
    everything.

    Raises:
        RemoteProtocolError: from ``feed`` past the buffer cap, and from ``commands`` on
            malformed input. When complete commands precede the bad bytes they are returned
            first and ``failed`` turns true: the next ``commands()`` call raises.
    """

    __slots__ = ("_fast", "_fast_ok", "_limits", "_pending", "_pure", "batch_raw")

    def __init__(self, limits: RequestLimits | None = None, *, authenticated: bool = True) -> None:
        self._limits = limits or RequestLimits()
        self._pure = _PureRequestParser(self._limits, authenticated=authenticated)
        #: Whether the framer has the stream now (else the pure parser has).
        self._fast = False
        #: False once the client sent bytes the framer does not take (for good).
        self._fast_ok = frame is not None
        #: Bytes the framer has not returned as commands (an incomplete command).
        self._pending = b""
        self.batch_raw: bytes | None = None

    @property
    def authenticated(self) -> bool:
        return self._pure.authenticated

    @authenticated.setter
    def authenticated(self, value: bool) -> None:
        self._pure.authenticated = value

    @property
    def failed(self) -> bool:
        """True when malformed input is waiting to be reported by the next ``commands()``."""
        return not self._fast and self._pure.error is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as commands."""
        return len(self._pending) if self._fast else self._pure.buffered

    def feed(self, data: bytes) -> None:
        """Append bytes from the client."""
        if not data:
            return
        if not self._fast:
            pure = self._pure
            if not (self._fast_ok and pure.authenticated and pure.buffered == 0):
                pure.feed(data)
                return
            if pure.error is not None:
                raise pure.error
            self._fast = True  # authenticated: the pre-AUTH limits are behind us
        pending = self._pending
        if len(pending) + len(data) > self._limits.max_buffer:
            raise _protocol_error("client query buffer limit exceeded")
        if pending:
            self._pending = pending + data
        elif data[0] == 0x2A:  # '*'
            self._pending = data
        else:
            self._fall_back(data, resume=True)  # an inline command: the pure parser's job

    def commands(self) -> list[Command]:
        """Every complete command buffered so far, in order (possibly none)."""
        self.batch_raw = None
        if not self._fast:
            return self._pure.commands()
        pending = self._pending
        if not pending:
            return []
        limits = self._limits
        assert frame is not None  # _fast is never set without it
        out, end, stopped = frame(pending, limits.max_multibulk_len, limits.max_bulk_len, Command)
        try:
            if stopped:
                raise _NotARequest
            # What the framer left is a canonical prefix within the limits (it stops at
            # anything else), so redis-server would not refuse it yet either.
            if len(pending) - end > INLINE_MAX_SIZE:
                raise _TooLong
        except _NotARequest as exc:
            self._pending = b""
            self._fall_back(pending[end:], resume=isinstance(exc, _TooLong))
            try:
                rest = self._pure.commands()
            except RemoteProtocolError:
                if not out:
                    raise
                rest = []  # the next call raises it: ``failed`` is set
            return out + rest
        if end == len(pending):
            self._pending = b""
            self.batch_raw = pending
        elif end:
            # Mid-command: keep only the command in progress (and count only it in the cap).
            self._pending = pending[end:]
            self.batch_raw = pending[:end]
        return out

    def _fall_back(self, data: bytes, *, resume: bool) -> None:
        """Hand ``data`` (from a command boundary on) to the pure parser: for good, or with
        ``resume`` until the pure parser is at a command boundary again."""
        self._fast = False
        self._fast_ok = resume
        self._pure.feed(data)


class _NotARequest(Exception):
    """The framer stopped at bytes it does not take: the pure parser reads them."""


class _TooLong(_NotARequest):
    """A command still incomplete after 64 KiB: the pure parser takes it (it resumes a large
    command where it left off rather than re-reading it on every read), then hands back."""
