"""``resmesh ctl``: the operator's commands, written to the registry, obeyed by every gateway.

Every change is a compare-and-swap update of one cluster's registry entry
(:meth:`~resmesh.registry.base.Registry.update`); the gateways watching the registry apply it
within a second. ``ctl`` reads the same config file as ``run`` to find the registry, the
clusters (a cluster the registry has no entry for yet starts from its configured layout) and
the admin API that ``status`` asks for live health.

Each command prints what changed and the registry version it is at; a name that does not
exist gets an error listing the valid ones, and exit code 2 (bad input), as every ``resmesh``
command does.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from typing import Any, Final

import httpx
import trio
from rich.console import Console
from rich.table import Table

from ..call import Protocol
from ..config import ClusterConfig, Config
from ..policies.limit import LimitConfig
from ..policies.switch import SwitchMode
from ..registry import open_registry
from ..registry.base import Registry, RegistryUnavailable
from ..registry.edits import (
    EditRefused,
    degrade,
    limit,
    node_add,
    node_enable,
    node_remove,
    primary,
    restore,
    shift,
)
from ..registry.follower import describe_entry
from ..registry.state import (
    ClusterEntry,
    Snapshot,
    entry_document,
    entry_from_config,
    has_primary,
)

__all__ = ["run_ctl"]

EXIT_USAGE: Final = 2
EXIT_UNAVAILABLE: Final = 1

#: What ``degrade`` does without ``--mode``: a cache answers misses (the app falls back to its
#: database), a database refuses writes, a service answers errors.
_DEFAULT_MODE: Final = {
    Protocol.REDIS: SwitchMode.MISS,
    Protocol.MYSQL: SwitchMode.READONLY,
    Protocol.MOTAN2: SwitchMode.ERROR,
}


def run_ctl(config: Config, args: argparse.Namespace) -> int:
    """Run one ``ctl`` command; the process exit code."""
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request otherwise
    if args.ctl_command == "top":
        from .top import run_top

        return run_top(config, args.interval, args.iterations)
    try:
        code: int = trio.run(_run, config, args)
    except RegistryUnavailable as exc:
        print(f"resmesh ctl: registry unavailable: {exc}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    return code


async def _run(config: Config, args: argparse.Namespace) -> int:
    registry = open_registry(config.registry)
    try:
        if args.ctl_command == "status":
            return await _status(config, registry, as_json=args.json)
        return await _change(config, registry, args)
    finally:
        await registry.aclose()


async def _change(config: Config, registry: Registry, args: argparse.Namespace) -> int:
    cluster = config.clusters.get(args.cluster)
    if cluster is None:
        print(
            f"resmesh ctl: no cluster {args.cluster!r} in {config.source} "
            f"(clusters: {', '.join(config.clusters)})",
            file=sys.stderr,
        )
        return EXIT_USAGE
    try:
        change, what = _edit_of(cluster, args)
    except EditRefused as exc:
        print(f"resmesh ctl: {exc}", file=sys.stderr)
        return EXIT_USAGE
    before: list[ClusterEntry] = []

    def edit(current: ClusterEntry | None) -> ClusterEntry | None:
        entry = current or entry_from_config(cluster)
        before[:] = [entry]
        return change(entry)

    try:
        version, entry = await registry.update(cluster.name, edit)
    except EditRefused as exc:
        print(f"resmesh ctl: {cluster.name}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    assert entry is not None
    if before and entry == before[0]:
        print(f"{cluster.name}: {what}: nothing to change (registry version {version})")
    else:
        print(f"{cluster.name}: {what} (registry version {version})")
        print(f"  now: {describe_entry(entry)}")
    return 0


def _edit_of(
    cluster: ClusterConfig, args: argparse.Namespace
) -> tuple[Callable[[ClusterEntry], ClusterEntry], str]:
    """The change a command asks for, and how to say it."""
    roles = has_primary(cluster)
    command = args.ctl_command
    if command == "degrade":
        mode = SwitchMode(args.mode) if args.mode else _DEFAULT_MODE[cluster.protocol]
        scope = f"operation {args.op.upper()}" if args.op else "every operation"
        return (
            lambda e: degrade(e, mode, args.op, args.value, args.reason),
            f"degraded, mode {mode}, for {scope}",
        )
    if command == "restore":
        scope = f"operation {args.op.upper()}" if args.op else "every operation"
        return lambda e: restore(e, args.op), f"restored {scope}"
    if command == "limit":
        scope = f"operation {args.op.upper()}" if args.op else "the cluster"
        if args.reset:
            return lambda e: limit(e, args.op, None), f"limits of {scope} back to the config's"
        settings = LimitConfig(rate=args.rate, burst=args.burst, concurrency=args.concurrency)
        for name in ("rate", "burst", "concurrency"):
            value = getattr(settings, name)
            if value is not None and not 1 <= value <= 1e9:
                raise EditRefused(f"--{name} {value:g} is outside 1..1e9")
        return lambda e: limit(e, args.op, settings), f"limits of {scope} set"
    if command == "shift":
        weights: dict[str, int] = {}
        for item in args.weights:
            group, sep, weight = item.partition("=")
            if not sep or not group or not weight.isdigit():
                raise EditRefused(f"{item!r} is not GROUP=WEIGHT (e.g. dc-b=100)")
            weights[group] = int(weight)
        shown = " ".join(f"{g}={w}" for g, w in weights.items())
        return lambda e: shift(e, weights), f"route shifted: {shown}"
    if command == "primary":
        return (
            lambda e: primary(e, args.address, has_primary=roles),
            f"primary is now {args.address}",
        )
    action, address = args.action, args.address
    if action == "add":
        group, weight = args.group, args.weight
        return (
            lambda e: node_add(e, address, has_primary=roles, group=group, weight=weight),
            f"node {address} added",
        )
    if action == "remove":
        return lambda e: node_remove(e, address), f"node {address} removed"
    enabled = action == "enable"
    return lambda e: node_enable(e, address, enabled), f"node {address} {action}d"


# ----------------------------------------------------------------------------------------------
# status


async def _status(config: Config, registry: Registry, *, as_json: bool) -> int:
    snapshot = await registry.read()
    live, problem = await _ask_admin(config)
    if as_json:
        document = {
            "registry": {
                "where": registry.describe(),
                "version": snapshot.version,
                "clusters": {n: entry_document(e) for n, e in snapshot.clusters.items()},
                "errors": dict(snapshot.errors),
            },
            "gateway": live,
            "gateway_error": problem,
        }
        print(json.dumps(document, indent=1))
        return 0
    console = Console(width=None if sys.stdout.isatty() else 160, highlight=False)
    console.print(f"registry: {registry.describe()}, version {snapshot.version}")
    for name, error in snapshot.errors.items():
        console.print(f"  [red]cluster {name}: entry refused: {error}[/red]")
    if live is not None:
        gateway = live["gateway"]
        workers = f", {gateway['workers']} workers" if gateway.get("workers") else ""
        registry_seen = live["registry"]
        reach = (
            "reachable" if registry_seen["reachable"] else f"UNREACHABLE ({registry_seen['error']})"
        )
        console.print(
            f"gateway {gateway['app']} at {config.gateway.admin}{workers}: runs registry "
            f"version {registry_seen['version']}; registry {reach}"
        )
    else:
        console.print(f"gateway: {problem}; showing the registry's state only")
    console.print(_table(config, snapshot, live))
    if live is not None:
        console.print(_operations_table(live))
    return 0


def _operations_table(live: dict[str, Any]) -> Table:
    """Per cluster and operation since the gateway started: calls, errors, latency."""
    table = Table(title="calls since start", title_justify="left", pad_edge=False)
    for column in ("cluster", "operation", "calls", "errors", "rejected", "p50", "p99", "p99.9"):
        table.add_column(column, justify="left" if column in ("cluster", "operation") else "right")
    for name, cluster in live["clusters"].items():
        for operation, counted in cluster.get("operations", {}).items():
            calls = counted["calls"]
            table.add_row(
                name,
                operation,
                str(calls),
                f"{counted['errors'] / calls:.1%}" if calls else "-",
                str(counted["rejected"]),
                *(f"{counted[q] * 1000:.2f} ms" for q in ("p50", "p99", "p999")),
            )
    return table


def _table(config: Config, snapshot: Snapshot, live: dict[str, Any] | None) -> Table:
    table = Table(show_lines=False, pad_edge=False)
    for column in ("cluster", "group", "route", "node", "role", "weight", "health", "breaker"):
        table.add_column(column)
    for name, cluster in config.clusters.items():
        shown = live["clusters"].get(name) if live is not None else None
        if shown is not None:
            groups, route, switches = shown["groups"], shown["route"], shown["switches"]
            limits = shown["limits"]
            title = (
                f"{name}\n{shown['protocol']} {shown['listen']}\n{shown['clients']} clients, "
                f"v{shown['version']}"
            )
        else:
            entry = snapshot.clusters.get(name) or entry_from_config(cluster)
            document = entry_document(entry)
            groups, route, switches = document["groups"], document["route"], document["switches"]
            limits = document["limits"]
            title = f"{name}\n{cluster.protocol} {cluster.listen}"
        if switches:
            title += "\n" + "\n".join(
                f"[yellow]degraded {op}: {s['mode']}[/yellow]" for op, s in switches.items()
            )
        if limits:
            title += "\n" + "\n".join(
                f"limit {op}: " + " ".join(f"{k} {v:g}" for k, v in lim.items())
                for op, lim in limits.items()
            )
        first = True
        for group, nodes in groups.items():
            for index, node in enumerate(nodes):
                health = node.get("health", "-")
                color = "green" if health == "up" else "red"
                table.add_row(
                    title if first else "",
                    group if index == 0 else "",
                    str(route.get(group, 0)) if index == 0 else "",
                    node["address"],
                    node.get("role") or "-",
                    str(node["weight"]) + ("" if node.get("enabled", True) else " (disabled)"),
                    f"[{color}]{health}[/{color}]" if health != "-" else "-",
                    node.get("breaker") or "-",
                )
                first = False
        table.add_section()
    return table


async def _ask_admin(config: Config) -> tuple[dict[str, Any] | None, str | None]:
    """The gateway's live status from its admin API, or why it could not be had."""
    admin = config.gateway.admin
    if admin is None:
        return None, f"no admin API in {config.source} (gateway.admin)"
    headers = {}
    if config.gateway.admin_token is not None:
        headers["authorization"] = f"Bearer {config.gateway.admin_token}"
    url = f"http://{admin}/status"
    try:
        async with httpx.AsyncClient(timeout=config.registry.timeout) as client:
            response = await client.get(url, headers=headers)
    except httpx.HTTPError as exc:
        return None, f"no gateway answers at {url} ({exc.__class__.__name__})"
    if response.status_code != 200:
        return None, f"{url} answered {response.status_code}"
    document: dict[str, Any] = response.json()
    return document, None
