"""``Call``, ``Run``, ``Outcome``: the only things governance sees.

Every protocol frontend turns a request (a Redis command, a SQL query, a Motan2 RPC) into a
:class:`Call` and the calls it sends to one node together into a :class:`Run`; the governance
pipeline (``resmesh/policies``) decides per call (degrade switch, limits) and per run (node,
breaker, failover, backup request), and judges every answer by its :class:`Outcome`. Keeping
this vocabulary tiny is what lets one pipeline govern every protocol.

A ``Call`` is made for every command of a pipeline, so it costs two attribute sets on the
protocol's own request event (a ``Call`` subclass), and everything that is the same for every
call of one kind (its operation's name, whether it writes, whether it may be retried) lives in
a shared :class:`Operation`, made once per kind. The cluster and protocol are not repeated per
call: a call is only ever governed by its own cluster's pipeline, which knows both.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import final

__all__ = ["Call", "Operation", "Outcome", "Protocol", "Run", "Unavailable"]


class Protocol(enum.StrEnum):
    """The wire protocol a cluster speaks.

    A ``StrEnum`` so that ``cluster.protocol == "redis"`` and f-strings keep working while the
    type checker still sees a closed set.
    """

    REDIS = "redis"
    MYSQL = "mysql"
    MOTAN2 = "motan2"


class Outcome(enum.IntEnum):
    """How a call ended, from the point of view of the node's health.

    Only ``UPSTREAM_ERROR`` and ``LOCAL_ERROR`` count against a node (breaker, outlier);
    ``APP_ERROR`` is the caller's fault and, like ``OK``, proves the node healthy. Envoy's
    outlier detection makes the same split between "local origin" and upstream errors.
    """

    OK = 0
    #: The caller's fault (WRONGTYPE, duplicate key, a Motan business exception).
    APP_ERROR = 1
    #: The node's fault (LOADING, READONLY, too many connections, a Motan service exception).
    UPSTREAM_ERROR = 2
    #: No answer from the node: connect failure, reset, timeout (Envoy's "local origin").
    LOCAL_ERROR = 3
    #: Refused by governance: limited, breaker open, degraded, no node left.
    REJECTED = 4

    @property
    def node_failure(self) -> bool:
        """Whether this outcome counts against the node that produced it."""
        return self is Outcome.UPSTREAM_ERROR or self is Outcome.LOCAL_ERROR


@final
class Operation:
    """What every call of one kind shares: limits, switches and hedge delays key on it.

    Attributes:
        name: the operation's name: a Redis command (``GET``), a SQL verb, a Motan
            ``service.method``.
        write: the call changes data (a degrade switch in ``miss`` mode acknowledges it,
            ``readonly`` refuses it; reads are answered empty or served).
        idempotent: the call may be sent twice: retried on another node after a node failure,
            backed up by a hedge, spread over replicas (Redis reads unless configured
            otherwise, a plain SELECT, a Motan method configured so).
    """

    __slots__ = ("idempotent", "name", "write")

    def __init__(self, name: str, *, write: bool, idempotent: bool) -> None:
        self.name = name
        self.write = write
        self.idempotent = idempotent

    def __repr__(self) -> str:
        kind = "write" if self.write else "read"
        return f"Operation({self.name}, {kind}, idempotent={self.idempotent})"


class Call:
    """One governable unit of work: a command, a query, an RPC.

    Each protocol's request event *is* a call (a subclass: the RESP codec's ``Command``...),
    so a pipeline of 16 commands is 16 calls without a second object per command: the
    frontend classifies each event once and sets its :class:`Operation` and batch id.

    Attributes:
        op: its :class:`Operation`.
        batch: calls from one client read (a pipeline) share a batch id.
        keys: routing keys (a Redis command's keys), for placing calls by key; empty here,
            computed by a protocol's event that has them.
    """

    __slots__ = ("batch", "op")

    op: Operation
    batch: int
    #: The call's routing keys; a protocol's event computes its own.
    keys: Sequence[bytes] = ()

    @property
    def operation(self) -> str:
        return self.op.name


@final
class Run:
    """Calls that go to one node together, in one write: a pipelined batch, or a query or an
    RPC on its own (a run of one).

    Node choice, the breaker, failover and backup requests act per run: a 16-command pipeline
    is one decision, one write and one wait, not sixteen.

    Attributes:
        calls: the calls, in order.
        payload: their requests, encoded as one write (the transport sends it as it is).
        idempotent: every call may be sent twice (then the run may be spread, retried
            elsewhere and hedged).
        deadline: absolute ``trio.current_time()`` by which an answer is useless: no attempt
            starts after it and the transport fails an attempt still unanswered then.
        operation: the operation all its calls share, when the frontend knows they share one
            (its own hedge settings apply, and the metrics count the run under it without
            looking at each call), else ``None``.
        key: the first routing key, for ``balance: hash`` (``None``: any node).
        shape: what the transport needs to know of the session to send it (for Redis: the
            selected database and protocol version), opaque here.
        request_id: the end-to-end id the app gave its calls (Motan2 ``M_rid``, a Redis
            client name, a MySQL comment), for the access log; ``None``: none.
    """

    __slots__ = (
        "calls",
        "deadline",
        "idempotent",
        "key",
        "operation",
        "payload",
        "request_id",
        "shape",
    )

    def __init__(
        self,
        calls: Sequence[Call],
        payload: bytes,
        *,
        idempotent: bool,
        deadline: float,
        operation: Operation | None = None,
        key: bytes | None = None,
        shape: object = None,
        request_id: str | None = None,
    ) -> None:
        self.calls = calls
        self.payload = payload
        self.idempotent = idempotent
        self.deadline = deadline
        self.operation = operation
        self.key = key
        self.shape = shape
        self.request_id = request_id

    def __len__(self) -> int:
        return len(self.calls)

    def __repr__(self) -> str:
        return f"Run({len(self.calls)} calls, idempotent={self.idempotent})"


class Unavailable(Exception):
    """No node answered a run: every frontend renders this as its protocol's error.

    Attributes:
        node: ``host:port`` of the node the failure is about, if one.
        reason: short human text ("connection refused", "circuit breaker open (...)").
        outcome: ``LOCAL_ERROR`` (the node gave no answer) or ``REJECTED`` (governance
            refused to send: breaker open, no node left).
    """

    def __init__(
        self, node: str | None, reason: str, outcome: Outcome = Outcome.LOCAL_ERROR
    ) -> None:
        super().__init__(f"backend {node}: {reason}" if node else reason)
        self.node = node
        self.reason = reason
        self.outcome = outcome
