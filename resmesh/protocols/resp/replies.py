"""Replies the gateway composes itself (HELLO, CLIENT, AUTH, refusals...), for RESP2 or RESP3.

The encoders are the codec's (:mod:`~resmesh.protocols.resp.writer`), adapted to the session's
``resp`` number; this module adds the fixed replies and the error wording, which follows
redis-server 7 where the gateway answers in its place, so an app sees the same text either way.
The gateway's own errors start ``ERR resmesh:``, so an application log says who refused.
"""

from __future__ import annotations

from typing import Final

from . import writer

__all__ = [
    "OK",
    "array",
    "bulk",
    "error",
    "gateway_error",
    "integer",
    "map_reply",
    "null",
    "unavailable",
    "verbatim",
]

OK: Final = writer.OK
PONG: Final = writer.PONG
RESET: Final = b"+RESET\r\n"
QUEUED: Final = b"+QUEUED\r\n"

NOAUTH: Final = b"-NOAUTH Authentication required.\r\n"
WRONGPASS: Final = b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"
NOPASS_CONFIGURED: Final = (
    b"-ERR AUTH <password> called without any password configured for the default user. "
    b"Are you sure your configuration is correct?\r\n"
)
NOPROTO: Final = b"-NOPROTO unsupported protocol version\r\n"
NOT_INTEGER: Final = b"-ERR value is not an integer or out of range\r\n"
DB_OUT_OF_RANGE: Final = b"-ERR DB index is out of range\r\n"
EXECABORT: Final = b"-EXECABORT Transaction discarded because of previous errors.\r\n"
SYNTAX: Final = b"-ERR syntax error\r\n"
BAD_CLIENT_NAME: Final = (
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
)

integer = writer.integer
bulk = writer.bulk
array = writer.array


def error(text: str) -> bytes:
    """An error reply; ``text`` starts with its code (``ERR``, ``WRONGTYPE``...).

    CR and LF become spaces, as redis-server's ``addReplyErrorFormat`` does: these texts can
    carry a client's bytes or a backend's reason, which must not break the reply's framing.
    """
    clean = text.replace("\r", " ").replace("\n", " ")
    return writer.error(clean.encode("utf-8", "replace"))


def gateway_error(text: str) -> bytes:
    """An error the gateway itself raises (a limit, a switch, a refusal): ``ERR resmesh: ...``,
    so an application log says at once that it was the gateway, and why."""
    return error(f"ERR resmesh: {text}")


def unavailable(node: str | None, reason: str) -> bytes:
    """No node could answer: which node, and why (connection refused, breaker open...)."""
    if node is None:
        return gateway_error(reason)
    return gateway_error(f"backend {node} unavailable: {reason}")


def wrong_arity(name: bytes) -> bytes:
    command = name.decode(errors="replace").lower()
    return error(f"ERR wrong number of arguments for '{command}' command")


def null(resp: int) -> bytes:
    """The null bulk: ``$-1`` in RESP2, ``_`` in RESP3."""
    return writer.null(resp == 3)


def verbatim(text: bytes, resp: int) -> bytes:
    """A ``txt`` verbatim string in RESP3 (what CLIENT INFO returns), a bulk in RESP2."""
    return writer.verbatim(text, resp3=resp == 3)


def map_reply(pairs: list[tuple[bytes, bytes]], resp: int) -> bytes:
    """A map of already-encoded keys and values: ``%`` in RESP3, a flat array in RESP2."""
    return writer.map_(pairs, resp3=resp == 3)
