"""Whose fault a Redis error reply is: the node's, or the caller's.

Governance judges a node by its answers (:class:`~resmesh.call.Outcome`): an app's WRONGTYPE must
never trip a breaker or eject a healthy node, while LOADING or READONLY mean that node cannot
serve right now. Redis says which by the first word of the error (its *error code*), so the rule
is a table, in the spirit of redis-py's error-prefix table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from ...call import Outcome
from .framing import error_text, is_error_reply, scan_reply

__all__ = ["NODE_ERROR_CODES", "classify_error", "replies_outcome", "reply_outcomes"]

#: Error codes that are the *node's* fault; any other code is the caller's (WRONGTYPE,
#: NOSCRIPT, syntax, EXECABORT...). From the codes redis-server 7 emits (``server.h`` shared
#: replies, ``networking.c``, ``cluster.c``) and what redis-py treats as connection-level.
NODE_ERROR_CODES: Final[Mapping[bytes, Outcome]] = {
    b"LOADING": Outcome.UPSTREAM_ERROR,  # loading the dataset in memory
    b"BUSY": Outcome.UPSTREAM_ERROR,  # a script is running too long
    b"READONLY": Outcome.UPSTREAM_ERROR,  # a write reached a replica (after a failover)
    b"MASTERDOWN": Outcome.UPSTREAM_ERROR,  # replica with replica-serve-stale-data no
    b"MISCONF": Outcome.UPSTREAM_ERROR,  # RDB snapshot failing; writes refused
    b"OOM": Outcome.UPSTREAM_ERROR,  # maxmemory reached
    b"NOREPLICAS": Outcome.UPSTREAM_ERROR,  # min-replicas-to-write not met
    b"CLUSTERDOWN": Outcome.UPSTREAM_ERROR,
    b"TRYAGAIN": Outcome.UPSTREAM_ERROR,
    b"MOVED": Outcome.UPSTREAM_ERROR,  # topology changed under us
    b"ASK": Outcome.UPSTREAM_ERROR,
    b"NOAUTH": Outcome.UPSTREAM_ERROR,  # the gateway's own backend login is wrong
    b"WRONGPASS": Outcome.UPSTREAM_ERROR,
}
# NOPERM is the caller's: it answers one command or key the gateway's backend user may not
# touch, and counting it against the node would let any client open the node's breaker.


def classify_error(message: bytes) -> Outcome:
    """The :class:`Outcome` of an error reply, given its text (``b"LOADING Redis is..."``)."""
    return NODE_ERROR_CODES.get(message.split(b" ", 1)[0], Outcome.APP_ERROR)


def replies_outcome(replies: list[bytes]) -> Outcome:
    """The outcome of a run's raw replies (each item one reply or several concatenated): an
    error that is the node's fault makes the run ``UPSTREAM_ERROR``; anything else is ``OK``
    (the caller's own errors say nothing about the node)."""
    for blob in replies:
        if blob[:1] not in b"-!" and b"\r\n-" not in blob and b"\r\n!" not in blob:
            continue  # the common case: no error reply at all in this blob
        pos = 0
        while pos < len(blob):
            end = scan_reply(blob, pos)
            if end < 0:
                break
            if is_error_reply(blob, pos) and classify_error(error_text(blob, pos, end)) is (
                Outcome.UPSTREAM_ERROR
            ):
                return Outcome.UPSTREAM_ERROR
            pos = end
    return Outcome.OK


def reply_outcomes(replies: list[bytes]) -> list[Outcome]:
    """The outcome of each reply in a run's raw replies, in order: ``OK``, or the error's
    (``APP_ERROR``, ``UPSTREAM_ERROR``); for the metrics, which count every call."""
    outcomes: list[Outcome] = []
    for blob in replies:
        pos = 0
        while pos < len(blob):
            end = scan_reply(blob, pos)
            if end < 0:
                break
            if is_error_reply(blob, pos):
                outcomes.append(classify_error(error_text(blob, pos, end)))
            else:
                outcomes.append(Outcome.OK)
            pos = end
    return outcomes
