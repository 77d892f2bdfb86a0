"""Worker 0's view of a gateway of several workers (resmesh/admin/serve.py): a worker that
misses a metrics scrape keeps its last counts in the sum."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from resmesh.admin import serve
from resmesh.admin.serve import WorkersView
from resmesh.call import Call, Operation, Outcome
from resmesh.cluster.topology import Node
from resmesh.observe.metrics import ClusterMetrics

GET = Operation("GET", write=False, idempotent=True)
NODE = Node("127.0.0.1", 6379, "dc-a", 1)


def _document(calls: int) -> dict[str, Any]:
    """One worker's metrics document, ``calls`` GETs counted."""
    metrics = ClusterMetrics("feed-cache", "redis")
    call = Call()
    call.op = GET
    for _ in range(calls):
        metrics.run_ended([call], NODE, Outcome.OK, 0.001)
    cluster = {**metrics.snapshot(), "clients": 1, "hedge_delay": {}, "nodes": {}}
    return {
        "gateway": {"worker": 0},
        "registry": {"version": 1, "reachable": True},
        "access_log": None,
        "clusters": {"feed-cache": cluster},
    }


class _Local:
    def __init__(self) -> None:
        self.calls = 0

    async def metrics(self) -> dict[str, Any]:
        return _document(self.calls)


def _gets(document: dict[str, Any]) -> int:
    series = document["clusters"]["feed-cache"]["series"][NODE.address]["GET"]
    return int(series["outcomes"]["ok"])


async def test_a_worker_that_misses_scrapes_keeps_its_last_counts_for_a_while(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    peer = Path("/nonexistent/worker-1.sock")
    answers: list[dict[str, Any] | None] = [
        _document(5),
        None,
        _document(9),
        None,
        None,
        None,
        None,
    ]

    async def ask(path: Path, page: str) -> dict[str, Any] | None:
        assert (path, page) == (peer, "/metrics.json")
        return answers.pop(0)

    monkeypatch.setattr(serve, "_ask", ask)
    local = _Local()
    view = WorkersView(local, [peer])  # type: ignore[arg-type]
    local.calls = 2
    assert _gets(await view.metrics()) == 7
    local.calls = 3
    assert _gets(await view.metrics()) == 8  # the peer did not answer: its 5 still count
    assert _gets(await view.metrics()) == 12
    for _ in range(3):  # silent for three scrapes: its last counts still count
        assert _gets(await view.metrics()) == 12
    assert _gets(await view.metrics()) == 3  # then it is left out
