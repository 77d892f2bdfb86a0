"""A scripted group of nodes for the async policy tests: each node answers after a set delay
with a set outcome, and the fake records which attempts started, finished or were cancelled."""

from __future__ import annotations

from collections.abc import Mapping

import trio

from resmesh.call import Call, Outcome, Protocol, Reply

READ = Call(Protocol.REDIS, "feed-cache", "GET", keys=(b"k",), idempotent=True)
WRITE = Call(Protocol.REDIS, "feed-cache", "SET", keys=(b"k",))
PINNED = Call(Protocol.REDIS, "feed-cache", "GET", keys=(b"k",), idempotent=True, pinned=True)


class FakeNodes:
    """``script`` maps node name -> (seconds to answer, outcome), tried in that order."""

    def __init__(self, script: Mapping[str, tuple[float, Outcome]]) -> None:
        self.script = dict(script)
        self.started: list[str] = []
        self.finished: list[str] = []
        self.cancelled: list[str] = []

    async def attempt(self, tried: set[str]) -> Reply:
        node = next((n for n in self.script if n not in tried), None)
        if node is None:
            return Reply(b"", Outcome.REJECTED, reason="no untried node")
        tried.add(node)
        self.started.append(node)
        delay, outcome = self.script[node]
        try:
            await trio.sleep(delay)
        except trio.Cancelled:
            self.cancelled.append(node)
            raise
        self.finished.append(node)
        return Reply(node.encode(), outcome, node=node)
