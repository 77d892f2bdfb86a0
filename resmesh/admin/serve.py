"""Serve the admin API with Hypercorn on Trio, for one process or for a gateway of several.

With ``gateway.workers`` > 1 every worker serves its own view on a Unix socket in a directory
named after the supervisor; worker 0 also serves the admin port, and answers it with the merge
of every worker's view (:func:`~resmesh.admin.status.merge_statuses`), so whichever worker the
kernel would have given a request, the answer is the whole gateway's.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import tempfile
from pathlib import Path
from typing import Any, Final

import httpx
import trio
from hypercorn.config import Config as HypercornConfig
from hypercorn.trio import serve

from .app import AdminApp, AdminView
from .status import merge_metrics, merge_statuses, operation_summary

__all__ = ["WorkersView", "serve_admin", "worker_socket"]

log = logging.getLogger("resmesh.admin")

#: How long worker 0 waits for another worker's view.
_PEER_TIMEOUT: Final = 2.0


def worker_socket(supervisor: int, worker: int) -> Path:
    """Where worker ``worker`` of the gateway supervised by process ``supervisor`` serves its
    own view."""
    return Path(tempfile.gettempdir()) / f"resmesh-{supervisor}" / f"worker-{worker}.sock"


async def serve_admin(
    app: AdminApp,
    *,
    listener: socket.socket | None = None,
    unix: Path | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve ``app`` on a bound TCP ``listener`` (taken over) or on the Unix socket ``unix``,
    until cancelled."""
    config = HypercornConfig()
    if listener is not None:
        config.bind = [f"fd://{listener.detach()}"]
    else:
        assert unix is not None
        unix.parent.mkdir(mode=0o700, exist_ok=True)
        config.bind = [f"unix:{unix}"]
    config.accesslog = None
    config.errorlog = log
    config.graceful_timeout = 0.5
    config.include_server_header = False
    await serve(app, config, task_status=task_status)  # type: ignore[arg-type]


#: Scrapes a silent worker is summed with its last document for (then left out).
_STALE_SCRAPES: Final = 3


class WorkersView:
    """The view of a gateway of several workers, from worker 0: its own, merged with the
    others' (asked over their Unix sockets).

    A worker that does not answer a metrics scrape is counted with the last document it
    gave: its counters stay where they were rather than drop out of the sum, which a
    Prometheus scrape would read as a reset and a Graphite push as a burst of calls at the
    next answer. After :data:`_STALE_SCRAPES` scrapes in a row without an answer it is left
    out (it is gone, and its gauges must not stay frozen in the sum).
    """

    def __init__(self, local: AdminView, peers: list[Path]) -> None:
        self._local = local
        self._peers = peers
        self._last_metrics: dict[Path, tuple[dict[str, Any], int]] = {}

    async def health(self) -> tuple[bool, str]:
        return await self._local.health()

    async def status(self) -> dict[str, Any]:
        statuses = [await self._local.status()]
        for index, path in enumerate(self._peers, start=1):
            status = await _ask(path, "/status")
            if status is None:
                status = {"gateway": {"worker": index, "error": "did not answer"}, "clusters": {}}
            statuses.append(status)
        answered = [s for s in statuses if s["clusters"] or s is statuses[0]]
        merged = merge_statuses(answered)
        merged["workers"] = statuses
        counted = await self.metrics()
        for name, cluster in merged["clusters"].items():
            cluster["operations"] = operation_summary(counted["clusters"][name])
        return merged

    async def config(self) -> dict[str, Any]:
        return await self._local.config()

    async def metrics(self) -> dict[str, Any]:
        documents = [await self._local.metrics()]
        for path in self._peers:
            document = await _ask(path, "/metrics.json")
            if document is not None:
                self._last_metrics[path] = (document, 0)
            elif path in self._last_metrics:
                document, missed = self._last_metrics[path]
                if missed < _STALE_SCRAPES:
                    self._last_metrics[path] = (document, missed + 1)
                else:
                    document = None
            if document is not None:
                documents.append(document)
        return merge_metrics(documents)


async def _ask(path: Path, page: str) -> dict[str, Any] | None:
    transport = httpx.AsyncHTTPTransport(uds=str(path))
    try:
        async with httpx.AsyncClient(transport=transport, timeout=_PEER_TIMEOUT) as client:
            with trio.move_on_after(_PEER_TIMEOUT):
                response = await client.get(f"http://worker{page}")
                document: dict[str, Any] = response.json()
                return document
    except (httpx.HTTPError, OSError, ValueError) as exc:
        log.warning("worker at %s did not answer %s: %s", path, page, exc)
    return None


def remove_socket(path: Path) -> None:
    """Remove a worker's socket file (and its directory once empty) on exit."""
    path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        os.rmdir(path.parent)
