"""Sans-IO parser for the client → server direction of RESP: commands.

A client sends either *multibulk* commands (``*<n>\\r\\n`` then ``n`` bulk strings) or *inline*
commands (a line of space-separated words, the telnet form). ``redis-server`` accepts both, mixed
on one connection, and so does this parser.

Two engines, one interface (:class:`RequestParser`):

* hiredis' C reader, for speed, on authenticated multibulk traffic (what client libraries
  send). It reads replies, not requests, and exposes no byte offsets, so every command it
  returns is checked against its canonical multibulk encoding: that proves the client sent a
  well-formed request, and says where the command ended, so the client's own bytes can be
  forwarded unchanged.
* a hand-written pure parser (a tight loop over ``bytes.find``) for everything else: it tracks
  each command's byte span itself, reads inline commands, applies redis-server's tighter limits
  before AUTH, and reports every error in redis-server's words. It takes over from hiredis for
  an inline command or a command still incomplete after 64 KiB (until the next command
  boundary), and for good after bytes hiredis rejects or that are not a canonical request.

``bench/codec.py`` measures both.

Limits mirror redis-server's own (``proto-max-bulk-len``, ``client-query-buffer-limit``, the
1 Mi-element multibulk cap and the 64 KiB inline cap) so an app sees the same errors through the
gateway as it would directly. Errors carry redis-server's wording (``networking.c``), and every
one of them is fatal to the connection, as it is in Redis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final

import hiredis

from ...call import Call
from .._errors import RemoteProtocolError
from .commands import lookup
from .parser import parse_integer

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
    far; ``batch_raw`` then holds the exact bytes of that batch when known, so a batch that is
    forwarded whole goes out as the client sent it, with no re-encoding.

    Two engines behind one interface: hiredis' C reader for authenticated multibulk traffic
    (about 0.2 µs a command against 2.5 µs in Python: ``bench/codec.py``), and the pure parser
    for the rest: inline commands, the pre-AUTH limits, and exact redis-server error wording.
    On anything hiredis rejects, the bytes it had not finished are re-parsed by the pure parser,
    which stays in charge for the rest of the connection. An inline command, or one still
    incomplete after 64 KiB (a large value), goes to the pure parser too, but only until the
    next command boundary: then hiredis takes over again.

    Raises:
        RemoteProtocolError: from ``feed`` past the buffer cap, and from ``commands`` on
            malformed input. When complete commands precede the bad bytes they are returned
            first and ``failed`` turns true: the next ``commands()`` call raises.
    """

    __slots__ = (
        "_fast",
        "_fast_ok",
        "_limits",
        "_pending",
        "_pending_used",
        "_pure",
        "_returned",
        "batch_raw",
    )

    def __init__(self, limits: RequestLimits | None = None, *, authenticated: bool = True) -> None:
        self._limits = limits or RequestLimits()
        self._pure = _PureRequestParser(self._limits, authenticated=authenticated)
        self._fast: hiredis.Reader | None = None
        #: False once the client sent something hiredis cannot take (inline, bad bytes).
        self._fast_ok = True
        #: Bytes given to hiredis since it was last at a command boundary.
        self._pending = bytearray()
        #: Whether commands from ``_pending`` were already returned (then ``batch_raw`` is
        #: unknown for the batch that finishes it).
        self._pending_used = False
        #: Non-empty commands hiredis returned since the last boundary (skipped on fallback).
        self._returned = 0
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
        return self._fast is None and self._pure.error is not None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as commands."""
        return len(self._pending) if self._fast is not None else self._pure.buffered

    def feed(self, data: bytes) -> None:
        """Append bytes from the client."""
        if self._fast is None:
            pure = self._pure
            if not (self._fast_ok and pure.authenticated and pure.buffered == 0):
                pure.feed(data)
                return
            if pure.error is not None:
                raise pure.error
            self._fast = hiredis.Reader()  # authenticated: the pre-AUTH limits are behind us
        if len(self._pending) + len(data) > self._limits.max_buffer:
            raise _protocol_error("client query buffer limit exceeded")
        if not self._pending and data[:1] != b"*":
            self._fall_back(data, resume=True)  # an inline command: the pure parser's job
            return
        pending = self._pending
        scan_from = max(0, len(pending) - _LONG_HEADER_SPAN)
        pending += data
        if _LONG_NESTED_HEADER.search(pending, scan_from) is not None:
            self._fall_back(b"", resume=True)  # the pure parser refuses it, in redis' words
            return
        self._fast.feed(data)

    def commands(self) -> list[Command]:
        """Every complete command buffered so far, in order (possibly none)."""
        fast = self._fast
        self.batch_raw = None
        if fast is None:
            return self._pure.commands()
        out: list[Command] = []
        limits = self._limits
        pending = self._pending
        verified = 0
        try:
            while True:
                # hiredis allocates a declared array as soon as it reads the header, so a
                # header over the limit (``*2147483648``) must be refused before gets() sees
                # it. Six digits or fewer is always within bounds: one find() per command.
                if verified < len(pending):
                    header_end = pending.find(b"\r\n", verified, verified + 9)
                    if header_end < 0 or header_end - verified > 7:
                        _check_in_progress(pending, verified, limits)
                args = fast.gets()
                if args is False:
                    break
                if type(args) is not list or len(args) > limits.max_multibulk_len:
                    raise _NotARequest
                # join() is the cheapest "every element is bytes" test there is (a TypeError
                # otherwise), and its size bounds every element's size.
                if len(b"".join(args)) > limits.max_bulk_len and any(
                    len(a) > limits.max_bulk_len for a in args
                ):
                    raise _NotARequest
                # hiredis reads replies, not requests: it takes ``+x`` or ``(1`` elements as
                # bytes and skips a bulk's CRLF unchecked. A command counts only if the client
                # sent exactly its canonical encoding, which also says where it ended (hiredis'
                # has_data() cannot: it is false mid-command once the type byte is read).
                raw = encode_command(args)
                if not pending.startswith(raw, verified):
                    raise _NotARequest
                verified += len(raw)
                if args:
                    self._returned += 1
                    out.append(Command(args, raw))
            if verified < len(pending):
                _check_in_progress(pending, verified, limits)
        except (hiredis.ProtocolError, _NotARequest, TypeError, MemoryError) as exc:
            # MemoryError: hiredis allocates a declared array up front (``*4000000000``).
            self._fall_back(b"", resume=isinstance(exc, _TooLong))
            try:
                rest = self._pure.commands()[self._returned :]
            except RemoteProtocolError:
                rest = []  # nothing before the error: ``failed`` is set, raised below
            self._returned = 0
            if not out and not rest and self._pure.error is not None:
                raise self._pure.error from None
            return out + rest
        self._returned = 0
        if verified == len(pending):
            # hiredis consumed exactly the verified bytes: a command boundary.
            if not self._pending_used:
                self.batch_raw = bytes(pending)
            self._pending = bytearray()
            self._pending_used = False
        elif verified:
            # Mid-command: drop what was returned, so ``_pending`` (and the cap) only holds
            # the command in progress and a fallback re-parses from a boundary.
            del pending[:verified]
            self._pending_used = True
        return out

    def _fall_back(self, data: bytes, *, resume: bool = False) -> None:
        """Hand what hiredis holds (plus ``data``) to the pure parser: for good, or with
        ``resume`` until the pure parser is at a command boundary again.

        The pure parser re-reads the bytes since hiredis' last command boundary, so its own
        errors, in redis-server's words, are what the client sees; the caller skips the
        commands among them that hiredis had already returned.
        """
        pending = bytes(self._pending) + data
        self._fast = None
        self._fast_ok = resume
        self._pending = bytearray()
        self._pending_used = False
        self._pure.feed(pending)


#: An aggregate header (array, push, map, set, attribute) with seven characters or more after
#: its type byte, at the start of a line. A request's elements are bulk strings, never
#: aggregates, but hiredis reads replies: it allocates the declared size as soon as it reads
#: such a header inside a command (``*1\r\n>2147483648\r\n`` would make it allocate 16 GB,
#: stalling the worker for tens of seconds). Input holding one goes to the pure parser, which
#: refuses nested aggregates as redis-server does. A value that happens to contain the
#: pattern only costs that batch the slower parser. (Top-level headers are checked by count
#: separately; a long one matches here too, which is harmless.)
_LONG_NESTED_HEADER: Final = re.compile(rb"\r\n[*>%~|][^\r]{7}")
#: How far back into bytes already scanned a match could start (``\r\n``, type, 7 more).
_LONG_HEADER_SPAN: Final = 9


class _NotARequest(Exception):
    """hiredis parsed a valid RESP value that is not a valid request (or breaks a limit)."""


class _TooLong(_NotARequest):
    """A command still incomplete after 64 KiB: the pure parser takes it, then hands back."""


def _check_in_progress(pending: bytearray, start: int, limits: RequestLimits) -> None:
    """Refuse now what redis-server would refuse before a command is complete.

    hiredis waits for the whole command, while redis-server rejects a bad count as soon as the
    header line is in (and hiredis allocates the declared array at once), and a header line
    over 64 KiB without waiting for the rest. So: check the count, and leave any command still
    incomplete after 64 KiB to the pure parser, which applies redis-server's line limits with
    its wording (and resumes large commands without re-parsing them).

    Raises:
        _NotARequest: the pure parser must take over (:class:`_TooLong`: for this command).
    """
    if pending[start] != 0x2A:  # '*'
        raise _NotARequest
    if len(pending) - start > INLINE_MAX_SIZE:
        raise _TooLong
    header_end = pending.find(b"\r\n", start + 1, start + 24)
    if header_end < 0:
        if len(pending) - start >= 24:
            raise _NotARequest
        return
    count = parse_integer(pending[start + 1 : header_end])
    if count is None or count > limits.max_multibulk_len:
        raise _NotARequest
    # The bulk headers received so far: redis-server refuses a bad length on sight.
    pos = header_end + 2
    for _ in range(count):
        if pos >= len(pending):
            return
        if pending[pos] != 0x24:  # '$'
            raise _NotARequest
        line_end = pending.find(b"\r\n", pos + 1, pos + 24)
        if line_end < 0:
            if len(pending) - pos >= 24:
                raise _NotARequest
            return
        length = parse_integer(pending[pos + 1 : line_end])
        if length is None or length < 0 or length > limits.max_bulk_len:
            raise _NotARequest
        pos = line_end + 2 + length + 2
