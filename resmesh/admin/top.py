"""``resmesh ctl top``: a live terminal view of what every call is doing.

Every interval it asks the gateway's admin API for its counters (``/metrics.json``) and state
(``/status``), and shows, per cluster and operation, what happened *in that interval*: calls
per second, the share that failed, refusals per second, and p50/p99/p99.9 latency computed
from the difference of two snapshots of the latency histograms (mergeable counts, so the
percentiles of an interval are exact to the histogram's ~3 %), with each cluster's degrade
switches and any node whose breaker is not closed or that is not up. Rendered with rich's
``Live`` display (https://rich.readthedocs.io/en/stable/live.html).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import httpx
import trio
from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from ..config import Config
from ..observe.metrics import by_operation, histogram_of, series_difference

__all__ = ["interval_rows", "run_top"]

_ERRORS = ("app_error", "upstream_error", "local_error")


def interval_rows(
    before: dict[str, Any] | None, after: dict[str, Any], seconds: float
) -> list[dict[str, Any]]:
    """Per cluster and operation, what the interval between two metrics documents saw: calls
    and refusals per second, error share, latency percentiles (seconds). Before the second
    document (``before`` ``None``) the counts since start are shown, per ``seconds``."""
    rows = []
    for cluster, counted in after["clusters"].items():
        previous = before["clusters"].get(cluster) if before is not None else None
        now_ops = by_operation(counted)
        then_ops = by_operation(previous) if previous is not None else {}
        for operation, series in sorted(now_ops.items()):
            delta = series_difference(then_ops.get(operation), series)
            outcomes = delta["outcomes"]
            calls = sum(outcomes.values())
            if calls == 0:
                continue
            histogram = histogram_of(delta)
            errors = sum(outcomes[name] for name in _ERRORS)
            rows.append(
                {
                    "cluster": cluster,
                    "operation": operation,
                    "qps": calls / seconds,
                    "error_share": errors / calls,
                    "rejected_qps": outcomes["rejected"] / seconds,
                    "p50": histogram.percentile(50),
                    "p99": histogram.percentile(99),
                    "p999": histogram.percentile(99.9),
                }
            )
    return rows


def _render(rows: list[dict[str, Any]], status: dict[str, Any] | None, where: str) -> Group:
    table = Table(title=f"resmesh top: {where}", title_justify="left")
    for column in ("cluster", "operation", "qps", "errors", "rejected/s", "p50", "p99", "p99.9"):
        table.add_column(column, justify="left" if column in ("cluster", "operation") else "right")
    for row in rows:
        table.add_row(
            row["cluster"],
            row["operation"],
            f"{row['qps']:.0f}",
            f"{row['error_share']:.1%}",
            f"{row['rejected_qps']:.0f}",
            _ms(row["p50"]),
            _ms(row["p99"]),
            _ms(row["p999"]),
        )
    notes = []
    if status is not None:
        for cluster, shown in status["clusters"].items():
            for operation, switch in shown["switches"].items():
                notes.append(f"{cluster}: degraded {operation} ({switch['mode']})")
            for group, nodes in shown["groups"].items():
                for node in nodes:
                    if node["health"] != "up" or node["breaker"] not in (None, "closed"):
                        notes.append(
                            f"{cluster}: node {node['address']} ({group}) {node['health']}, "
                            f"breaker {node['breaker']}"
                        )
    if not rows:
        notes.append("no calls in this interval")
    return Group(table, *(Text(note, style="yellow") for note in notes))


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


async def _fetch(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    response = await client.get(url)
    response.raise_for_status()
    document: dict[str, Any] = response.json()
    return document


def run_top(config: Config, interval: float, iterations: int | None) -> int:
    """Refresh every ``interval`` seconds, ``iterations`` times (``None``: until Ctrl-C)."""
    admin = config.gateway.admin
    if admin is None:
        print(f"resmesh ctl top: no admin API in {config.source} (gateway.admin)")
        return 2
    headers = {}
    if config.gateway.admin_token is not None:
        headers["authorization"] = f"Bearer {config.gateway.admin_token}"

    async def main() -> int:
        console = Console(width=None if sys.stdout.isatty() else 120)
        async with httpx.AsyncClient(
            base_url=f"http://{admin}", headers=headers, timeout=interval + 2
        ) as client:
            before: dict[str, Any] | None = None
            then = time.monotonic()
            done = 0
            with Live(console=console, auto_refresh=False) as live:
                while iterations is None or done < iterations:
                    try:
                        after = await _fetch(client, "/metrics.json")
                        status = await _fetch(client, "/status")
                    except httpx.HTTPError as exc:
                        live.update(Text(f"no gateway answers at {admin}: {exc}", style="red"))
                        live.refresh()
                        return 1
                    now = time.monotonic()
                    rows = interval_rows(before, after, max(now - then, 1e-9))
                    live.update(_render(rows, status, str(admin)))
                    live.refresh()
                    before, then = after, now
                    done += 1
                    if iterations is None or done < iterations:
                        await trio.sleep(interval)
        return 0

    try:
        return trio.run(main)
    except KeyboardInterrupt:
        return 0
