"""``Call``, ``Reply`` and ``Outcome``: the only things governance sees (DESIGN §3).

Every protocol frontend turns a request (a Redis command, a SQL query, a Motan2 RPC) into a
:class:`Call`; every policy is ``async (call, next) -> Reply``; the frontend renders the
:class:`Reply` back in its protocol. Keeping this vocabulary tiny is what lets one pipeline govern
all three protocols.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final, final

__all__ = [
    "REDIS_ERROR_OUTCOMES",
    "Call",
    "Next",
    "Outcome",
    "Policy",
    "Protocol",
    "Reply",
    "classify_redis_error",
]


class Protocol(enum.StrEnum):
    REDIS = "redis"
    MYSQL = "mysql"
    MOTAN2 = "motan2"


class Outcome(enum.IntEnum):
    """How a call ended, from the point of view of the node's health.

    Only ``UPSTREAM_ERROR`` and ``LOCAL_ERROR`` count against a node (breaker, outlier);
    ``APP_ERROR`` is the caller's fault and, like ``OK``, proves the node healthy.
    """

    OK = 0
    #: The caller's fault (WRONGTYPE, duplicate key, a Motan business exception).
    APP_ERROR = 1
    #: The node's fault (LOADING, READONLY, too many connections, a Motan service exception).
    UPSTREAM_ERROR = 2
    #: No answer from the node: connect failure, reset, timeout (Envoy's "local origin").
    LOCAL_ERROR = 3
    #: Refused by governance: limited, breaker open, degraded.
    REJECTED = 4

    @property
    def node_failure(self) -> bool:
        """Whether this outcome counts against the node that produced it."""
        return self in (Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR)


@final
@dataclass(frozen=True, slots=True)
class Call:
    """One governable unit of work.

    Attributes:
        protocol: which frontend made it.
        cluster: the configured cluster name (``feed-cache``).
        operation: what limits, stats and hedge delays key on: a Redis command name
            (``GET``), a SQL verb, a Motan ``service.method``.
        keys: routing/hashing keys (Redis keys from the command table; may be empty).
        idempotent: retry and hedge are allowed (Redis read-only commands, a plain SELECT,
            a Motan method configured so).
        pinned: the call belongs to a session pinned to one node (MULTI, WATCH, SUBSCRIBE,
            blocking pops, an SQL transaction): no retry, hedge or failover.
        deadline: absolute ``trio.current_time()`` by which an answer is useless.
        payload: the encoded request, opaque to policies.
        batch: calls from one client read (a pipeline) share a batch id; 0 for none.
    """

    protocol: Protocol
    cluster: str
    operation: str
    keys: tuple[bytes, ...] = ()
    idempotent: bool = False
    pinned: bool = False
    deadline: float = float("inf")
    payload: bytes = field(default=b"", repr=False)
    batch: int = 0


@final
@dataclass(frozen=True, slots=True)
class Reply:
    """The answer to a :class:`Call`.

    Attributes:
        payload: the encoded reply, ready for the client (for ``REJECTED`` the frontend
            renders ``reason`` instead, in its protocol's error form).
        outcome: see :class:`Outcome`.
        node: ``host:port`` of the node that answered, if any.
        reason: for errors and rejections, short text naming the cause ("rate limit
            feed-cache 1000/s", "breaker open for 10.0.0.1:6379", "degraded: miss").
    """

    payload: bytes
    outcome: Outcome = Outcome.OK
    node: str | None = None
    reason: str = ""


#: The rest of the pipeline, as a policy sees it.
Next = Callable[[Call], Awaitable[Reply]]
#: A governance policy.
Policy = Callable[[Call, Next], Awaitable[Reply]]


#: Redis error codes (the first word of an error reply) that are the *node's* fault; any other
#: error code is the caller's (WRONGTYPE, NOSCRIPT, syntax, EXECABORT...). Taken from the
#: codes redis-server 7 emits (``server.h`` shared replies, ``networking.c``, ``cluster.c``)
#: and what redis-py's error table treats as retryable/connection-level.
REDIS_ERROR_OUTCOMES: Final[Mapping[bytes, Outcome]] = {
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
    b"NOPERM": Outcome.UPSTREAM_ERROR,
}


def classify_redis_error(message: bytes) -> Outcome:
    """The :class:`Outcome` of a Redis error reply, given its text (``b"LOADING Redis is..."``).

    Why a table and not "every error is a failure": an app's WRONGTYPE must never eject a
    healthy node, while LOADING or READONLY mean that node cannot serve right now.
    """
    code = message.split(b" ", 1)[0]
    return REDIS_ERROR_OUTCOMES.get(code, Outcome.APP_ERROR)
