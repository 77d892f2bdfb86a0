"""A scripted transport for the HA engine's tests: each node answers after a set delay with a
set outcome, on Trio's MockClock, and the fake records what was sent, cancelled and dropped."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from types import MappingProxyType
from typing import Any, Final

import trio

from resmesh.call import Call, Operation, Outcome, Run, Unavailable
from resmesh.cluster.topology import Node, Topology
from resmesh.config import GovernanceConfig
from resmesh.policies.chain import ClusterPolicies
from resmesh.policies.engine import Attempt, HAEngine
from resmesh.policies.waiting import Waiter

OK, APP = Outcome.OK, Outcome.APP_ERROR
UPSTREAM, LOCAL, REJECTED = Outcome.UPSTREAM_ERROR, Outcome.LOCAL_ERROR, Outcome.REJECTED
CLUSTER = "c"
#: A script entry that makes the connect itself fail (the transport raises at once).
CONNECT_FAILS: Final = (0.0, None)

GET = Operation("GET", write=False, idempotent=True)
SET = Operation("SET", write=True, idempotent=False)


def nodes(count: int = 3, group: str = "dc1") -> tuple[Node, ...]:
    return tuple(Node(f"10.0.0.{i}", 6379, group, 1) for i in range(1, count + 1))


def governance(**changes: Any) -> GovernanceConfig:
    return dataclasses.replace(GovernanceConfig(), **changes)


def policies(
    gov: GovernanceConfig | None = None,
    members: Sequence[Node] | None = None,
    primary: Node | None = None,
    **kwargs: Any,
) -> ClusterPolicies:
    members = tuple(members or nodes())
    groups, route = MappingProxyType({"dc1": members}), MappingProxyType({"dc1": 100})
    topology = Topology(1, groups, route, primary or members[0])
    return ClusterPolicies(
        CLUSTER, topology, gov or GovernanceConfig(), trio.current_time(), **kwargs
    )


def run(op: Operation = GET, *, deadline: float = 10.0, key: bytes | None = None) -> Run:
    """A run of one call, its deadline ``deadline`` seconds from now."""
    call = Call()
    call.op, call.batch = op, 1
    return Run(
        [call],
        b"payload",
        idempotent=op.idempotent,
        deadline=trio.current_time() + deadline,
        operation=op,
        key=key,
    )


class FakeAttempt(Attempt):
    __slots__ = ("_done", "_outcome", "cancelled", "node_sent")

    def __init__(self, waiter: Waiter, node: Node) -> None:
        super().__init__(waiter)
        self._done = False
        self._outcome = OK
        self.cancelled = False
        self.node_sent = node

    @property
    def done(self) -> bool:
        return self._done

    def outcome(self) -> Outcome:
        return self._outcome

    def cancel(self) -> None:
        self.cancelled = True


class FakeTransport:
    """``plan`` answers the attempts in order as (seconds, outcome), then each node's
    ``script`` entry, else an instant OK. ``math.inf`` seconds: no answer until the run's
    deadline, when the attempt fails as a real transport's would. An outcome of ``None``: the
    node cannot take the run at all. ``LOCAL_ERROR``: the connection breaks after the
    delay."""

    def __init__(
        self,
        nursery: trio.Nursery,
        plan: Sequence[tuple[float, Outcome | None]] = (),
        script: dict[Node, tuple[float, Outcome | None]] | None = None,
    ) -> None:
        self.nursery = nursery
        self.plan = list(plan)
        self.script = script or {}
        self.sent: list[Node] = []
        self.sent_at: list[float] = []
        self.attempts: list[FakeAttempt] = []

    def submit(self, node: Node, run: Run, waiter: Waiter) -> FakeAttempt:
        delay, outcome = self.plan.pop(0) if self.plan else self.script.get(node, (0.0, OK))
        self.sent.append(node)
        self.sent_at.append(trio.current_time())
        if outcome is None:
            raise Unavailable(node.address, "connection refused")
        attempt = FakeAttempt(waiter, node)
        self.attempts.append(attempt)
        self.nursery.start_soon(self._answer, attempt, delay, outcome, run.deadline)
        return attempt

    async def _answer(
        self, attempt: FakeAttempt, delay: float, outcome: Outcome, deadline: float
    ) -> None:
        answer_at = trio.current_time() + delay
        await trio.sleep_until(min(answer_at, deadline))
        if answer_at > deadline:
            attempt.error = Unavailable(attempt.node_sent.address, "no reply in time")
        elif outcome is LOCAL:
            attempt.error = Unavailable(attempt.node_sent.address, "connection reset")
        else:
            attempt._outcome = outcome
        attempt._done = True
        attempt.finish()

    @property
    def cancelled(self) -> list[Node]:
        return [a.node_sent for a in self.attempts if a.cancelled]


def engine(pol: ClusterPolicies, transport: FakeTransport) -> HAEngine[FakeAttempt]:
    return HAEngine(pol, transport)


def in_flight(pol: ClusterPolicies, node: Node) -> int:
    balancer = pol.balancers[node.group]
    return balancer.in_flight(node)  # type: ignore[attr-defined, no-any-return]


__all__ = [
    "APP",
    "CLUSTER",
    "CONNECT_FAILS",
    "GET",
    "LOCAL",
    "OK",
    "REJECTED",
    "SET",
    "UPSTREAM",
    "FakeAttempt",
    "FakeTransport",
    "engine",
    "governance",
    "in_flight",
    "nodes",
    "policies",
    "run",
]
