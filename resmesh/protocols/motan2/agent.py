"""What a Motan2 mesh agent does to the frames it relays, sans-IO: the call a request is, the
request it sends upstream, the reply it hands back, how an answer counts for the node, and the
answers the agent makes itself.

The rules are the motan-go agent's (https://github.com/weibocom/motan-go, ``agent.go`` and
``protocol/motanProtocol.go``), as ``protocols/motan2.md`` §2, §3 and §7 record them:

* **Per-hop request ids.** A request id is chosen by the sender of each hop, so the agent
  numbers what it sends on each upstream connection itself and puts the caller's id back on
  the reply. The end-to-end id travels in meta ``M_rid`` (signed decimal int64): added from
  the caller's header id when the request has none, kept when it has one.
* **Source.** ``M_s`` names the calling application; the agent fills it with its own app name
  when the caller left it out, so the serving side can count calls per caller.
* **Proxy flag.** What the agent forwards carries flag 0x02, as motan-go's agent marks it.
* **Bodies pass through.** The agent never deserializes a body to forward it; only a policy
  that needs a value (a fallback reply) encodes one (:mod:`.bodies`).
* **Outcome.** A normal response and a business exception (errtype 2) prove the node healthy;
  any other exception is the node's fault (motan-go's failover and backup requests count
  errtype 2 as success).
* **The agent's own errors** are exception responses with errtype 1 (a service exception):
  errcode 400 when no cluster serves the request or no node answered (motan-go's agent uses
  400 for "cluster not found" and its HA failures), 503 when governance refused the call (a
  limit, an open breaker, a degrade switch: the service is unavailable by decision).
"""

from __future__ import annotations

import struct
from dataclasses import replace
from typing import Final

from ...call import Call, Outcome
from .._errors import ProtocolError
from . import bodies
from .frames import (
    ERRTYPE_BUSINESS,
    ERRTYPE_SERVICE,
    META_GROUP,
    META_METHOD,
    META_PATH,
    META_REQUEST_ID,
    META_SOURCE,
    META_VERSION,
    STATUS_EXCEPTION,
    Frame,
    RawFrame,
    encode_frame,
    exception_response,
    heartbeat_response,
    response,
)

__all__ = [
    "ERRCODE_AGENT",
    "ERRCODE_NOT_EXPORTED",
    "ERRCODE_REFUSED",
    "Request",
    "agent_error",
    "empty_reply",
    "fallback_reply",
    "heartbeat_reply",
    "meta_size",
    "raw_outcome",
    "set_request_id",
    "with_request_id",
]

#: errcode of an agent's own failure: no cluster for the request, no node answered.
ERRCODE_AGENT: Final = 400
#: errcode of a call governance refused: a limit, an open breaker, a degrade switch.
ERRCODE_REFUSED: Final = 503
#: errcode of a call for a service the server side does not export (motan-go's 404).
ERRCODE_NOT_EXPORTED: Final = 404

#: Where the request id sits in a frame: after magic (2), flags, version/status and
#: serialization (1 each).
_ID_AT: Final = 5
_ID: Final = struct.Struct(">Q")
_I64_LIMIT: Final = 1 << 63


class Request(Call):
    """One RPC a client sent the agent: a :class:`~resmesh.call.Call` of its method.

    Attributes:
        frame: the request as decoded (meta and opaque body).
        service, method, group, version: what it names (``M_p``, ``M_m``, ``M_g``, ``M_v``;
            empty when absent).
    """

    __slots__ = ("frame", "group", "method", "service", "version")

    def __init__(self, frame: Frame) -> None:
        self.frame = frame
        meta = frame.meta
        self.service = meta.get(META_PATH, "")
        self.method = meta.get(META_METHOD, "")
        self.group = meta.get(META_GROUP, "")
        self.version = meta.get(META_VERSION, "")

    @property
    def end_to_end_id(self) -> str:
        """The id the call carries end to end: its ``M_rid``, or (a call that starts here)
        the one :meth:`upstream` gives it."""
        rid = self.frame.meta.get(META_REQUEST_ID)
        if rid:
            return rid
        request_id = self.frame.request_id
        return str(request_id - (1 << 64) if request_id >= _I64_LIMIT else request_id)

    def upstream(self, source: str) -> bytes:
        """The request as the agent sends it on: proxy flag set, ``M_rid`` and ``M_s`` filled
        when missing, request id 0 (each attempt writes its connection's own id over it:
        :func:`with_request_id`)."""
        frame = self.frame
        meta = frame.meta
        # An empty value is an absent key: the wire cannot carry it (frames.encode_meta).
        if not meta.get(META_REQUEST_ID) or (source and not meta.get(META_SOURCE)):
            meta = dict(meta)
            if not meta.get(META_REQUEST_ID):
                meta[META_REQUEST_ID] = self.end_to_end_id
            if source and not meta.get(META_SOURCE):
                meta[META_SOURCE] = source
        return encode_frame(replace(frame, request_id=0, proxy=True, meta=meta))


def meta_size(frame: bytes) -> int:
    """The size of an encoded frame's meta block (from its header)."""
    return int.from_bytes(frame[_ID_AT + 8 : _ID_AT + 12], "big")


def set_request_id(buffer: bytearray, at: int, request_id: int) -> None:
    """Write ``request_id`` over the id of the frame that starts at ``at`` in ``buffer``."""
    _ID.pack_into(buffer, at + _ID_AT, request_id)


def with_request_id(frame: bytes | bytearray, request_id: int) -> bytes:
    """The encoded ``frame`` with its header's request id replaced (meta and body untouched)."""
    return b"".join((frame[:_ID_AT], _ID.pack(request_id), frame[_ID_AT + 8 :]))


def raw_outcome(reply: RawFrame) -> Outcome:
    """How an answer counts for the node that gave it: a normal response and a business
    exception prove it healthy, any other exception (or one whose ``M_e`` cannot be read) is
    its fault."""
    if reply.status != STATUS_EXCEPTION:
        return Outcome.OK
    try:
        info = reply.decoded().exception()
    except ProtocolError:
        return Outcome.UPSTREAM_ERROR
    if info is not None and info.errtype == ERRTYPE_BUSINESS:
        return Outcome.APP_ERROR
    return Outcome.UPSTREAM_ERROR


def agent_error(request_id: int, errmsg: str, errcode: int = ERRCODE_AGENT) -> bytes:
    """An exception response the agent makes itself."""
    return encode_frame(
        exception_response(request_id, errcode, errmsg, ERRTYPE_SERVICE, proxy=True)
    )


def empty_reply(request_id: int, serialization: int) -> bytes:
    """A normal response holding null (the empty body): a degrade switch's ``miss``."""
    return encode_frame(response(request_id, serialization=serialization, proxy=True))


def fallback_reply(request_id: int, serialization: int, value: bytes) -> bytes:
    """A normal response holding the configured fallback ``value`` as a string, in the
    request's serialization; an exception response when the agent cannot encode that one."""
    try:
        body = bodies.encode_result(serialization, value.decode("utf-8", "replace"))
    except bodies.SerializationNotFound as exc:
        return agent_error(request_id, str(exc), exc.errcode)
    return encode_frame(response(request_id, body, serialization=serialization, proxy=True))


def heartbeat_reply(request_id: int) -> bytes:
    return encode_frame(heartbeat_response(request_id))
