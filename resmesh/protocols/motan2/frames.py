"""Motan2 frames, sans-IO: bytes in, :class:`Frame` objects out, and back.

A Motan2 connection carries back-to-back frames in both directions, many requests in flight,
replies matched by request id. Each frame is a 13-byte header (magic ``0xF1F1``, a flag byte, a
version/status byte, a serialization byte, a u64 request id), a u32-sized *meta* block (a flat
string map written as ``key\\nvalue\\n...``) and a u32-sized *body* (the serialized arguments or
result, possibly gzip'd). ``protocols/motan2.md`` describes the wire; the three implementations this
module is compatible with are motan-go (https://github.com/weibocom/motan-go,
``protocol/motanProtocol.go``), Java motan (https://github.com/weibocom/motan, ``MotanV2Codec`` and
the netty ``NettyDecoder``) and motan-php (https://github.com/weibocom/motan-php).

Why frames keep the body opaque: a gateway routes on the meta (service path, method, group) and
forwards the body as received, so decoding it would cost CPU for nothing. The Simple serialization
lives in its own module; gzip is undone only on request (:meth:`Frame.gunzip_body`), with a size
cap, because a peer chooses how much a few compressed bytes expand to.

Why the limits are checked on the *declared* sizes: the meta and body sizes arrive before the
bytes they announce, so an over-limit frame is refused as soon as its size field is read, never
buffered first (motan-go and Java's netty decoder both check ``maxContentLength`` there). Errors
carry the request id once the header has been read (:class:`FrameError`), so a server can answer an
over-limit request with an exception response before closing, as Java motan does.

Where the implementations disagree, the decoder takes the strict reading that none of them would
misread differently: an odd number of meta items, an empty key and meta that is not UTF-8 are
refused (motan-go closes on the first; the others would pair or decode them in ways that differ);
a single trailing newline in the meta block is tolerated (motan-go ignores it). Only protocol
version 1 (Motan2) is accepted; version 0 is Motan1, which shares the magic number.
"""

from __future__ import annotations

import enum
import json
import struct
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, final

from .._buffer import ReceiveBuffer
from .._errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_BODY",
    "DEFAULT_MAX_META",
    "DEFAULT_PROXY_PROTOCOL",
    "DEFAULT_READ_AHEAD",
    "ERRTYPE_BUSINESS",
    "ERRTYPE_FRAMEWORK",
    "ERRTYPE_SERVICE",
    "FLAG_GZIP",
    "FLAG_HEARTBEAT",
    "FLAG_ONEWAY",
    "FLAG_PROXY",
    "FLAG_RESPONSE",
    "FRAME_OVERHEAD",
    "GZIP_LEVEL",
    "MAGIC",
    "META_EXCEPTION",
    "META_GROUP",
    "META_METHOD",
    "META_METHOD_DESC",
    "META_MODULE",
    "META_PATH",
    "META_PROCESS_TIME",
    "META_PROXY_PROTOCOL",
    "META_REQUEST_ID",
    "META_SOURCE",
    "META_TIMEOUT",
    "META_VERSION",
    "NEED_DATA",
    "STATUS_EXCEPTION",
    "STATUS_NORMAL",
    "VERSION_MOTAN1",
    "VERSION_MOTAN2",
    "ErrorInfo",
    "Frame",
    "FrameDecoder",
    "FrameError",
    "NeedData",
    "RawFrame",
    "Serialization",
    "decode_meta",
    "encode_frame",
    "encode_meta",
    "exception_response",
    "gunzip",
    "gzip_compress",
    "heartbeat_request",
    "heartbeat_response",
    "request",
    "response",
]

# -- wire constants ----------------------------------------------------------------------------

#: The first two bytes of every frame (Motan1 uses the same magic; the version bits differ).
MAGIC: Final = 0xF1F1

# Byte 2, the message type: independent flag bits. Bits 0xE0 are unused: written as 0, ignored.
#: Set on responses, clear on requests.
FLAG_RESPONSE: Final = 0x01
#: Set by a mesh agent on what it forwards (informational; motan-go also sets it on heartbeats).
FLAG_PROXY: Final = 0x02
#: The sender will not wait for a reply (motan-go servers reply anyway).
FLAG_ONEWAY: Final = 0x04
#: The body is a gzip stream (RFC 1952).
FLAG_GZIP: Final = 0x08
#: A heartbeat; receivers key on this bit alone.
FLAG_HEARTBEAT: Final = 0x10

# Byte 3: ``version << 3 | status``.
#: Motan1 shares the magic number and is told apart by this version.
VERSION_MOTAN1: Final = 0
VERSION_MOTAN2: Final = 1
STATUS_NORMAL: Final = 0
#: The only status with a meaning besides normal: the meta holds ``M_e``, the body is empty.
STATUS_EXCEPTION: Final = 1

#: ``errtype`` values of an exception (``M_e``): a framework failure (no provider, decode error),
#: a service failure (timeouts, no endpoint), a business exception thrown by the service itself.
#: motan-go's failover and backup-request strategies count a business exception as a success.
ERRTYPE_FRAMEWORK: Final = 0
ERRTYPE_SERVICE: Final = 1
ERRTYPE_BUSINESS: Final = 2


class Serialization(enum.IntEnum):
    """Serialization numbers (high 5 bits of byte 4), a registry shared by every implementation.

    A frame may carry any number from 0 to 31; the decoder returns one of these members when it
    knows the number and a plain ``int`` otherwise (an unknown serialization is a valid frame:
    motan-go answers it with an exception response).
    """

    HESSIAN2 = 0  # Java motan's default
    GRPC_PB = 1
    JSON = 2
    MSGPACK = 3
    HPROSE = 4
    PB = 5
    SIMPLE = 6  # motan-go's and motan-php's default
    GRPC_PB_JSON = 7
    BREEZE = 8


_SERIALIZATIONS: Final[dict[int, int]] = {int(s): s for s in Serialization}

#: Bytes before the meta block: the 13-byte header plus the u32 meta size.
_PREFIX: Final = 17
#: Bytes of a frame besides its meta and body: header, meta size, body size.
FRAME_OVERHEAD: Final = 21
_U32_MAX: Final = 2**32 - 1
_U64_MAX: Final = 2**64 - 1

#: motan-go's and Java motan's ``maxContentLength`` default, applied to meta and body separately.
DEFAULT_MAX_META: Final = 10 * 1024 * 1024
DEFAULT_MAX_BODY: Final = 10 * 1024 * 1024
#: How far the receive buffer may run past the largest allowed frame: the bytes of the next
#: frames that arrive in the same reads. Generous next to a 64 KiB socket read.
DEFAULT_READ_AHEAD: Final = 1024 * 1024

#: motan-go compresses with ``gzip.BestSpeed``.
GZIP_LEVEL: Final = 1

_HEADER: Final = struct.Struct(">HBBBQI")  # magic .. meta size: the first 17 bytes
_U32: Final = struct.Struct(">I")

# Well-known meta keys (protocols/motan2.md §3). Anything else is a user attachment.
META_PATH: Final = "M_p"
META_METHOD: Final = "M_m"
META_METHOD_DESC: Final = "M_md"
META_GROUP: Final = "M_g"
META_VERSION: Final = "M_v"
META_PROXY_PROTOCOL: Final = "M_pp"
META_MODULE: Final = "M_mdu"
META_SOURCE: Final = "M_s"
META_REQUEST_ID: Final = "M_rid"
META_TIMEOUT: Final = "M_tmo"
META_PROCESS_TIME: Final = "M_pt"
META_EXCEPTION: Final = "M_e"
#: What motan-go puts in ``M_pp`` when the caller did not say.
DEFAULT_PROXY_PROTOCOL: Final = "motan2"


class NeedData(enum.Enum):
    """The type of :data:`NEED_DATA` (an enum so ``is`` checks narrow the type)."""

    NEED_DATA = "NEED_DATA"


#: Returned by :meth:`FrameDecoder.next_frame` when the buffered bytes end mid-frame (h11's
#: sentinel pattern): feed more bytes and ask again.
NEED_DATA: Final = NeedData.NEED_DATA


# -- errors ------------------------------------------------------------------------------------


class FrameError(RemoteProtocolError):
    """A frame the peer sent cannot be accepted.

    The ``reply_hint`` is worded like motan-go's decoder errors (``message magic number not
    correct``, ``decode meta data fail``) or, for sizes, like Java motan's (``... content length
    over of limit, size: N > M``): the ``errmsg`` a server would put in an exception response.

    Attributes:
        request_id: the frame's request id, or ``None`` when the error came before the header was
            read (bad magic, bad version).
        is_request: the frame's header said it is a request (flag bit 0 clear). With a known
            ``request_id`` that is the case where a server can answer with an exception response
            before closing, as Java motan does for an over-limit request; motan-go just closes.
    """

    def __init__(
        self,
        reply_hint: str,
        *,
        request_id: int | None = None,
        is_request: bool = False,
        close: bool = True,
    ) -> None:
        super().__init__(reply_hint, close=close)
        self.request_id: Final = request_id
        self.is_request: Final = is_request


def _over_limit_hint(size: int, limit: int) -> str:
    return f"transport data content length over of limit, size: {size} > {limit}"


# -- frames ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorInfo:
    """An exception response's ``M_e``: ``{"errcode": int, "errmsg": str, "errtype": int}``.

    ``errtype`` is one of :data:`ERRTYPE_FRAMEWORK`, :data:`ERRTYPE_SERVICE`,
    :data:`ERRTYPE_BUSINESS`.
    """

    errcode: int = 0
    errmsg: str = ""
    errtype: int = ERRTYPE_FRAMEWORK

    @classmethod
    def from_json(cls, text: str) -> ErrorInfo | None:
        """Parse ``M_e`` by member name, in any order (motan-go and motan-php write
        errcode, errmsg, errtype; Java's fastjson writes errcode, errtype, errmsg).

        Returns:
            ``None`` if ``text`` is not a JSON object: the caller still has the raw text (Java
            motan substitutes a generic remote exception there; motan-go fails the call). A
            member that is missing or of the wrong type takes its default, the zero value
            motan-go's ``json.Unmarshal`` would leave.
        """
        try:
            value: Any = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: absurdly nested JSON
            return None
        if not isinstance(value, dict):
            return None
        errcode = value.get("errcode")
        errmsg = value.get("errmsg")
        errtype = value.get("errtype")
        return cls(
            errcode=errcode if type(errcode) is int else 0,
            errmsg=errmsg if isinstance(errmsg, str) else "",
            errtype=errtype if type(errtype) is int else ERRTYPE_FRAMEWORK,
        )

    def to_json(self) -> str:
        """``M_e`` as motan-go's ``json.Marshal`` writes it: members in the order errcode,
        errmsg, errtype, no spaces, non-ASCII kept as UTF-8, and ``<``, ``>``, ``&``, U+2028,
        U+2029 escaped (Go's HTML-safe default), so our bytes match a motan-go server's."""
        text = json.dumps(
            {"errcode": self.errcode, "errmsg": self.errmsg, "errtype": self.errtype},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        # Only the errmsg string can hold these characters, so replacing them is escaping.
        return text.translate(_GO_JSON_ESCAPES)


_GO_JSON_ESCAPES: Final = {
    ord("<"): "\\u003c",
    ord(">"): "\\u003e",
    ord("&"): "\\u0026",
    0x2028: "\\u2028",
    0x2029: "\\u2029",
}


@dataclass(frozen=True, slots=True, kw_only=True)
class Frame:
    """One Motan2 frame, as on the wire.

    Attributes:
        request_id: the u64 chosen by the requester and echoed by the reply. It is a per-hop id
            (motan-go clients number the requests of each connection); the end-to-end id
            travels in meta ``M_rid``.
        response: flag 0x01; a request when clear.
        heartbeat: flag 0x10.
        oneway: flag 0x04.
        proxy: flag 0x02.
        gzip: flag 0x08: :attr:`body` is gzip'd as on the wire (see :meth:`gunzip_body`).
        version: the protocol version, 1 for Motan2 (the only one the decoder returns).
        status: 0 normal, 1 exception (:data:`STATUS_EXCEPTION`); 2..7 carry no meaning but
            round-trip.
        serialization: the body's serialization number (:class:`Serialization`, 0..31).
        meta: the meta map in wire order. Duplicate keys on the wire: the last value wins.
            Excluded from the hash, so a frame is hashable although a dict is not.
        body: the body bytes as on the wire.

    Unused bits (0xE0 of the flags, the low 3 bits of the serialization byte) are not kept:
    every implementation writes them as 0 and ignores them.
    """

    request_id: int
    response: bool = False
    heartbeat: bool = False
    oneway: bool = False
    proxy: bool = False
    gzip: bool = False
    version: int = VERSION_MOTAN2
    status: int = STATUS_NORMAL
    serialization: int = Serialization.SIMPLE
    meta: dict[str, str] = field(default_factory=dict, hash=False)
    body: bytes = b""

    @property
    def is_request(self) -> bool:
        return not self.response

    @property
    def is_exception(self) -> bool:
        """Status 1. Only then is ``M_e`` meaningful (motan-go reads it only then, and only
        deserializes the body of a status-0 frame)."""
        return self.status == STATUS_EXCEPTION

    @property
    def flags(self) -> int:
        """The message type byte (byte 2)."""
        return (
            (FLAG_RESPONSE if self.response else 0)
            | (FLAG_PROXY if self.proxy else 0)
            | (FLAG_ONEWAY if self.oneway else 0)
            | (FLAG_GZIP if self.gzip else 0)
            | (FLAG_HEARTBEAT if self.heartbeat else 0)
        )

    def exception(self) -> ErrorInfo | None:
        """The parsed ``M_e`` of an exception frame.

        Returns:
            ``None`` when the status is not exception, ``M_e`` is missing, or it is not a JSON
            object (see :meth:`ErrorInfo.from_json`); the raw text stays in :attr:`meta`.
            Never raises: a malformed exception is the peer's problem to report, not a reason
            to drop the connection.
        """
        if self.status != STATUS_EXCEPTION:
            return None
        text = self.meta.get(META_EXCEPTION)
        return None if text is None else ErrorInfo.from_json(text)

    def gunzip_body(self, max_size: int = DEFAULT_MAX_BODY) -> bytes:
        """The body uncompressed (the body itself when the gzip flag is clear).

        Args:
            max_size: most bytes the body may expand to (decompression-bomb guard).

        Raises:
            FrameError: the body is not a valid gzip stream or expands past ``max_size``. It
                carries the frame's request id and does not ``close``: the framing is intact,
                only this frame is unusable (Java motan fails the call; motan-go logs and uses
                the raw bytes, which then fail to deserialize).
        """
        if not self.gzip:
            return self.body
        try:
            return gunzip(self.body, max_size)
        except RemoteProtocolError as exc:
            raise FrameError(
                exc.reply_hint, request_id=self.request_id, is_request=self.is_request, close=False
            ) from None

    def compressed(self, mingz_size: int, level: int = GZIP_LEVEL) -> Frame:
        """This frame with its body gzip'd if it is longer than ``mingz_size`` bytes.

        motan-go's rule for its ``mingzSize`` URL parameter: ``mingz_size <= 0`` turns
        compression off, and a body is compressed only when strictly longer. A frame that is
        already gzip'd comes back unchanged.
        """
        if self.gzip or mingz_size <= 0 or len(self.body) <= mingz_size:
            return self
        return replace(self, gzip=True, body=gzip_compress(self.body, level))

    def decompressed(self, max_size: int = DEFAULT_MAX_BODY) -> Frame:
        """This frame with the gzip flag cleared and the body uncompressed (see
        :meth:`gunzip_body`). What motan-go does on receipt before forwarding."""
        if not self.gzip:
            return self
        return replace(self, gzip=False, body=self.gunzip_body(max_size))


# -- meta --------------------------------------------------------------------------------------


def encode_meta(meta: Mapping[str, str]) -> bytes:
    """The meta block: ``key\\nvalue`` pairs joined by ``\\n``, no trailing newline, UTF-8.

    Pairs with an empty key or an empty value are dropped, as motan-go's encoder does: the
    format cannot carry an empty key, and an empty value is indistinguishable from an absent
    one for every reader (and a decoded frame may hold one, so forwarding must not fail).

    Raises:
        LocalProtocolError: a key or value contains ``\\n`` (it would shift the pairing; motan-go
            drops such pairs with an error log, which would hide the bug) or a lone surrogate
            (not encodable as UTF-8).
    """
    parts: list[str] = []
    for key, value in meta.items():
        if not key or not value:
            continue
        if "\n" in key or "\n" in value:
            raise LocalProtocolError(f"meta key or value contains a newline: {key!r}")
        parts.append(key)
        parts.append(value)
    try:
        return "\n".join(parts).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise LocalProtocolError(f"meta is not encodable as UTF-8: {exc.reason}") from None


def decode_meta(block: bytes) -> dict[str, str]:
    """Parse a meta block into a map, in wire order (for a duplicate key, the last value wins).

    Raises:
        RemoteProtocolError: the block is not UTF-8, has an odd number of items (motan-go closes
            the connection on that; Java ignores the dangling key), or has an empty key (motan-go
            then pairs the following items differently than Java and motan-php do). One trailing
            ``\\n`` is tolerated, as in motan-go.
    """
    if not block:
        return {}
    try:
        text = block.decode("utf-8")
    except UnicodeDecodeError:
        raise RemoteProtocolError("decode meta data fail: meta is not UTF-8") from None
    if text.endswith("\n"):
        text = text[:-1]
        if not text:
            return {}
    items = text.split("\n")
    if len(items) % 2:
        raise RemoteProtocolError("decode meta data fail: metadata not paired")
    keys = items[0::2]
    if "" in keys:
        raise RemoteProtocolError("decode meta data fail: empty key")
    return dict(zip(keys, items[1::2], strict=True))


# -- encoding ----------------------------------------------------------------------------------


def encode_frame(frame: Frame) -> bytes:
    """The wire bytes of ``frame``; meta pairs in the map's order (see :func:`encode_meta`).

    Raises:
        LocalProtocolError: a field is out of its wire range (request id u64, version 0..31,
            status 0..7, serialization 0..31, meta and body sizes u32) or the meta is invalid.
    """
    if not 0 <= frame.request_id <= _U64_MAX:
        raise LocalProtocolError(f"request id out of range: {frame.request_id}")
    if not 0 <= frame.version <= 31:
        raise LocalProtocolError(f"version out of range: {frame.version}")
    if not 0 <= frame.status <= 7:
        raise LocalProtocolError(f"status out of range: {frame.status}")
    if not 0 <= frame.serialization <= 31:
        raise LocalProtocolError(f"serialization number out of range: {frame.serialization}")
    meta = encode_meta(frame.meta)
    body = frame.body
    if len(meta) > _U32_MAX or len(body) > _U32_MAX:
        raise LocalProtocolError("meta or body longer than 4 GiB")
    head = _HEADER.pack(
        MAGIC,
        frame.flags,
        frame.version << 3 | frame.status,
        frame.serialization << 3,
        frame.request_id,
        len(meta),
    )
    return b"".join((head, meta, _U32.pack(len(body)), body))


def request(
    request_id: int,
    service: str,
    method: str,
    body: bytes = b"",
    *,
    method_desc: str = "",
    group: str = "",
    version: str = "",
    source: str = "",
    meta: Mapping[str, str] | None = None,
    serialization: int = Serialization.SIMPLE,
    oneway: bool = False,
    proxy: bool = False,
) -> Frame:
    """A request frame for ``service.method`` with an already serialized ``body``.

    The meta is ``M_p``, ``M_m`` and, when given, ``M_md``, ``M_g``, ``M_v``, ``M_s``; then the
    attachments in ``meta`` (which cannot override those keys); then ``M_pp=motan2`` unless
    ``meta`` set it, as motan-go's client does.
    """
    out = {META_PATH: service, META_METHOD: method}
    for key, value in (
        (META_METHOD_DESC, method_desc),
        (META_GROUP, group),
        (META_VERSION, version),
        (META_SOURCE, source),
    ):
        if value:
            out[key] = value
    for key, value in (meta or {}).items():
        out.setdefault(key, value)
    out.setdefault(META_PROXY_PROTOCOL, DEFAULT_PROXY_PROTOCOL)
    return Frame(
        request_id=request_id,
        oneway=oneway,
        proxy=proxy,
        serialization=serialization,
        meta=out,
        body=body,
    )


def response(
    request_id: int,
    body: bytes = b"",
    *,
    process_time: int | None = None,
    meta: Mapping[str, str] | None = None,
    serialization: int = Serialization.SIMPLE,
    proxy: bool = False,
) -> Frame:
    """A normal response carrying an already serialized ``body`` (empty: a null value, as
    motan-go writes it), with ``M_pt`` (the processing time in ms) first when given."""
    return Frame(
        request_id=request_id,
        response=True,
        proxy=proxy,
        serialization=serialization,
        meta=_response_meta({}, process_time, meta),
        body=body,
    )


def exception_response(
    request_id: int,
    errcode: int,
    errmsg: str,
    errtype: int = ERRTYPE_SERVICE,
    *,
    serialization: int = Serialization.SIMPLE,
    process_time: int | None = None,
    meta: Mapping[str, str] | None = None,
    proxy: bool = False,
) -> Frame:
    """An exception response: status 1, empty body, ``M_e`` as motan-go writes it (see
    :meth:`ErrorInfo.to_json`), then ``M_pt`` when given, then ``meta``.

    ``serialization`` defaults to Simple, motan-go's ``BuildExceptionResponse``; readers ignore
    it on an exception.
    """
    first = {META_EXCEPTION: ErrorInfo(errcode, errmsg, errtype).to_json()}
    return Frame(
        request_id=request_id,
        response=True,
        proxy=proxy,
        status=STATUS_EXCEPTION,
        serialization=serialization,
        meta=_response_meta(first, process_time, meta),
    )


def _response_meta(
    first: dict[str, str], process_time: int | None, meta: Mapping[str, str] | None
) -> dict[str, str]:
    """A response's meta: ``first``, then ``M_pt`` when given, then ``meta`` (keys already
    set win)."""
    if process_time is not None:
        first[META_PROCESS_TIME] = str(process_time)
    for key, value in (meta or {}).items():
        first.setdefault(key, value)
    return first


def heartbeat_request(request_id: int) -> Frame:
    """motan-go's heartbeat request: flags 0x12 (heartbeat, proxy), Simple, no meta or body."""
    return Frame(request_id=request_id, heartbeat=True, proxy=True)


def heartbeat_response(request_id: int) -> Frame:
    """The heartbeat reply: bytes 2..4 ``13 08 30``, what a motan-go server answers to any
    heartbeat request (Java's ``10 08 08`` style included), with the request's id."""
    return Frame(request_id=request_id, response=True, heartbeat=True, proxy=True)


# -- gzip --------------------------------------------------------------------------------------


def gzip_compress(data: bytes, level: int = GZIP_LEVEL) -> bytes:
    """``data`` as one RFC 1952 gzip member (https://www.rfc-editor.org/rfc/rfc1952).

    The bytes differ from motan-go's (another deflate implementation), which is fine: any
    valid member decodes the same. The header carries no name and a zero mtime, so the output
    is deterministic.
    """
    compressor = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


def gunzip(data: bytes, max_size: int = DEFAULT_MAX_BODY) -> bytes:
    """Uncompress a gzip body: one or more RFC 1952 members, as Go's multistream reader reads.

    The output is bounded: zlib is asked for at most ``max_size + 1`` bytes, so a small body that
    expands to gigabytes costs at most ``max_size`` bytes of memory before it is refused. An
    empty body stays empty (motan-go skips decompression for it).

    Raises:
        RemoteProtocolError: (``close`` false: the framing is intact) not a gzip stream,
            truncated, followed by garbage, or expanding to more than ``max_size`` bytes.
    """
    if not data:
        return b""
    out = bytearray()
    rest = data
    while rest:
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)  # gzip wrapper only
        try:
            out += decompressor.decompress(rest, max_size - len(out) + 1)
        except zlib.error as exc:
            raise RemoteProtocolError(f"decode gzip body fail: {exc}", close=False) from None
        if len(out) > max_size:
            raise RemoteProtocolError(
                f"decode gzip body fail: uncompressed body over {max_size} bytes", close=False
            )
        if not decompressor.eof:
            raise RemoteProtocolError("decode gzip body fail: truncated gzip body", close=False)
        rest = decompressor.unused_data
    return bytes(out)


# -- decoding ----------------------------------------------------------------------------------

#: The meta of a frame read raw (:meth:`FrameDecoder.next_raw`): not decoded.
_UNREAD: Final[dict[str, str]] = {}


@final
class RawFrame:
    """A whole frame's bytes and the header fields a relay needs (:meth:`FrameDecoder.next_raw`).

    Attributes:
        flags: the message type byte (:data:`FLAG_RESPONSE`, :data:`FLAG_HEARTBEAT`...).
        status: 0 normal, 1 exception.
        request_id: the header's request id.
        data: the frame as received; empty for a frame whose body was over the limit and
            skipped (``skip_big_bodies``).
    """

    __slots__ = ("data", "flags", "request_id", "status")

    def __init__(self, flags: int, status: int, request_id: int, data: bytes) -> None:
        self.flags = flags
        self.status = status
        self.request_id = request_id
        self.data = data

    def decoded(self) -> Frame:
        """The frame with its meta read (for an exception's ``M_e``).

        Raises:
            FrameError: the meta block is malformed.
        """
        decoder = FrameDecoder(max_meta=len(self.data), max_body=len(self.data))
        decoder.feed(self.data)
        frame = decoder.next_frame()
        assert isinstance(frame, Frame)
        return frame


@final
class FrameDecoder:
    """Splits a Motan2 byte stream into :class:`Frame` objects.

    Use: ``feed(data)`` whenever bytes arrive, then ``next_frame()`` until it returns
    :data:`NEED_DATA` (or iterate over the decoder, which does the same). Works the same however
    the stream is cut into chunks. Errors are final: the stream's boundaries are lost, so the
    error is raised again on every later call.

    Memory: a frame's declared meta and body sizes are checked as soon as they are read, so the
    buffer never holds more than one allowed frame plus the bytes of the frames behind it that
    arrived in the same reads (bounded by ``max_buffer``).

    Raises:
        FrameError: from ``feed`` when the buffer cap would be exceeded (the caller did not drain
            frames between reads); from ``next_frame`` on a bad magic, a version other than
            Motan2, an over-limit meta or body size, or a malformed meta block.
    """

    __slots__ = (
        "_body_size",
        "_discard",
        "_error",
        "_head",
        "_max_body",
        "_max_meta",
        "_meta",
        "_skip_big_bodies",
        "buffer",
    )

    def __init__(
        self,
        max_meta: int = DEFAULT_MAX_META,
        max_body: int = DEFAULT_MAX_BODY,
        *,
        max_buffer: int | None = None,
        skip_big_bodies: bool = False,
    ) -> None:
        """Create a decoder.

        Args:
            max_meta: largest meta block accepted (``maxContentLength``, 10 MiB).
            max_body: largest body accepted, compressed size (``maxContentLength``, 10 MiB).
            max_buffer: most bytes buffered at once; by default one largest frame plus
                :data:`DEFAULT_READ_AHEAD`.
            skip_big_bodies: a frame whose body is over ``max_body`` is dropped as it comes
                (never buffered) and :meth:`next_raw` gives its header with empty ``data``,
                instead of an error that ends the stream: for a relay whose connection
                carries other callers' frames.
        """
        self._max_meta = max_meta
        self._max_body = max_body
        self._skip_big_bodies = skip_big_bodies
        #: Bytes of a skipped body still to drop.
        self._discard = 0
        if max_buffer is None:
            max_buffer = FRAME_OVERHEAD + max_meta + max_body + DEFAULT_READ_AHEAD
        self.buffer = ReceiveBuffer(max_buffer, "transport data buffer over of limit")
        #: The frame in progress: its header fields once the first 17 bytes are in, then its
        #: meta and body size once the meta block and the body size are.
        self._head: tuple[int, int, int, int, int] | None = None
        self._meta: dict[str, str] | None = None
        self._body_size = 0
        self._error: FrameError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self.buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append bytes from the peer.

        Raises:
            FrameError: the buffer cap would be exceeded, or an earlier error.
        """
        if self._error is not None:
            raise self._error
        try:
            self.buffer.feed(data)
        except RemoteProtocolError as exc:
            head = self._head
            self._error = FrameError(
                exc.reply_hint,
                request_id=None if head is None else head[3],
                is_request=head is not None and not head[0] & FLAG_RESPONSE,
            )
            raise self._error from None

    def next_frame(self) -> Frame | NeedData:
        """The next complete frame, or :data:`NEED_DATA`.

        Raises:
            FrameError: the stream is not Motan2 or breaks a limit (see the class).
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame(True)  # type: ignore[return-value]
        except FrameError as exc:
            self._error = exc
            raise

    def next_raw(self) -> RawFrame | NeedData:
        """The next complete frame as its bytes and header, its meta not decoded (a relay
        that forwards a frame reads its meta only when it must: an exception's ``M_e``). A
        decoder gives either raw frames or frames, not both.

        Raises:
            FrameError: as :meth:`next_frame`, except for a malformed meta block, which is
                the final receiver's to refuse.
        """
        if self._error is not None:
            raise self._error
        try:
            return self._next_frame(False)  # type: ignore[return-value]
        except FrameError as exc:
            self._error = exc
            raise

    def __iter__(self) -> Iterator[Frame]:
        """Every complete frame buffered so far."""
        while (frame := self.next_frame()) is not NEED_DATA:
            yield frame

    def _next_frame(self, whole: bool) -> Frame | RawFrame | NeedData:
        buffer = self.buffer
        data = buffer.data
        start = buffer.start
        available = len(data) - start
        if self._discard:
            dropped = min(available, self._discard)
            buffer.commit(start + dropped)
            self._discard -= dropped
            if self._discard:
                return NEED_DATA
            data = buffer.data
            start = buffer.start
            available = len(data) - start
        head = self._head
        if head is None:
            if available < _PREFIX:
                self._check_prefix(data, start, available)
                return NEED_DATA
            magic, flags, version_status, serialize, request_id, meta_size = _HEADER.unpack_from(
                data, start
            )
            if magic != MAGIC or version_status >> 3 != VERSION_MOTAN2:
                self._check_prefix(data, start, available)
            is_request = not flags & FLAG_RESPONSE
            if meta_size > self._max_meta:
                raise FrameError(
                    _over_limit_hint(meta_size, self._max_meta),
                    request_id=request_id,
                    is_request=is_request,
                )
            head = self._head = (flags, version_status, serialize, request_id, meta_size)
        flags, version_status, serialize, request_id, meta_size = head
        meta_end = start + _PREFIX + meta_size
        meta = self._meta
        if meta is None:
            if len(data) < meta_end + 4:
                return NEED_DATA
            if not whole:
                meta = _UNREAD
            else:
                try:
                    meta = decode_meta(bytes(data[start + _PREFIX : meta_end]))
                except RemoteProtocolError as exc:
                    raise FrameError(
                        exc.reply_hint,
                        request_id=request_id,
                        is_request=not flags & FLAG_RESPONSE,
                    ) from None
            (body_size,) = _U32.unpack_from(data, meta_end)
            if body_size > self._max_body and self._skip_big_bodies and not whole:
                buffer.commit(meta_end + 4)
                self._head = None
                self._discard = body_size
                return RawFrame(flags, version_status & 0x07, request_id, b"")
            if body_size > self._max_body:
                raise FrameError(
                    _over_limit_hint(body_size, self._max_body),
                    request_id=request_id,
                    is_request=not flags & FLAG_RESPONSE,
                )
            self._meta = meta
            self._body_size = body_size
        body_start = meta_end + 4
        end = body_start + self._body_size
        if len(data) < end:
            return NEED_DATA
        if not whole:
            raw = data[start:end] if isinstance(data, bytes) else bytes(data[start:end])
            buffer.commit(end)
            self._head = None
            self._meta = None
            return RawFrame(flags, version_status & 0x07, request_id, raw)
        if isinstance(data, bytes):
            body = data[body_start:end]
        else:
            with memoryview(data) as view:
                body = bytes(view[body_start:end])
        buffer.commit(end)
        self._head = None
        self._meta = None
        return Frame(
            request_id=request_id,
            response=bool(flags & FLAG_RESPONSE),
            heartbeat=bool(flags & FLAG_HEARTBEAT),
            oneway=bool(flags & FLAG_ONEWAY),
            proxy=bool(flags & FLAG_PROXY),
            gzip=bool(flags & FLAG_GZIP),
            version=VERSION_MOTAN2,
            status=version_status & 0x07,
            serialization=_SERIALIZATIONS.get(serialize >> 3, serialize >> 3),
            meta=meta,
            body=body,
        )

    @staticmethod
    def _check_prefix(data: bytes | bytearray, start: int, available: int) -> None:
        """Refuse a bad magic or version as soon as its bytes are in, before the request id:
        a peer speaking another protocol (an HTTP client on the port, say) is told at once."""
        if available >= 1 and data[start] != 0xF1:
            raise FrameError("message magic number not correct")
        if available >= 2 and data[start + 1] != 0xF1:
            raise FrameError("message magic number not correct")
        if available >= 4:
            version = data[start + 3] >> 3
            if version == VERSION_MOTAN1:
                raise FrameError(
                    "message version not correct: Motan1 (version 0) is not supported, "
                    "only Motan2 (version 1)"
                )
            if version != VERSION_MOTAN2:
                raise FrameError(f"message version not correct: {version}")
