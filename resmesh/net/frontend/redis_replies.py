"""Replies the gateway composes itself (HELLO, CLIENT, AUTH...), encoded for RESP2 or RESP3.

Kept apart from the session driver so that the driver reads as control flow, and so these
byte-level shapes are unit-testable without sockets. Wording follows redis-server 7 where the
gateway answers in its place, so an app sees the same text either way.
"""

from __future__ import annotations

from typing import Final

__all__ = [
    "OK",
    "array",
    "bulk",
    "error",
    "integer",
    "map_reply",
    "null",
    "verbatim",
]

OK: Final = b"+OK\r\n"
PONG: Final = b"+PONG\r\n"
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
SYNTAX: Final = b"-ERR syntax error\r\n"
BAD_CLIENT_NAME: Final = (
    b"-ERR Client names cannot contain spaces, newlines or special characters.\r\n"
)


def error(text: str) -> bytes:
    """An error reply; ``text`` starts with its code (``ERR``, ``WRONGTYPE``...)."""
    clean = text.replace("\r", " ").replace("\n", " ")
    return b"-" + clean.encode("utf-8", "replace") + b"\r\n"


def wrong_arity(name: bytes) -> bytes:
    return error(
        f"ERR wrong number of arguments for '{name.decode(errors='replace').lower()}' command"
    )


def integer(value: int) -> bytes:
    return b":%d\r\n" % value


def bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def null(resp: int) -> bytes:
    """The null bulk: ``$-1`` in RESP2, ``_`` in RESP3."""
    return b"_\r\n" if resp == 3 else b"$-1\r\n"


def verbatim(text: bytes, resp: int) -> bytes:
    """A ``txt`` verbatim string in RESP3 (what CLIENT INFO returns), a bulk in RESP2."""
    if resp == 3:
        return b"=%d\r\ntxt:%s\r\n" % (len(text) + 4, text)
    return bulk(text)


def array(items: list[bytes]) -> bytes:
    """An array of already-encoded replies."""
    return b"*%d\r\n%s" % (len(items), b"".join(items))


def map_reply(pairs: list[tuple[bytes, bytes]], resp: int) -> bytes:
    """A map of already-encoded keys and values: ``%`` in RESP3, a flat array in RESP2."""
    body = b"".join(k + v for k, v in pairs)
    if resp == 3:
        return b"%%%d\r\n%s" % (len(pairs), body)
    return b"*%d\r\n%s" % (2 * len(pairs), body)
