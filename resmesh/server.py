"""Run the gateway: bind every listener, serve, and drain cleanly on SIGTERM/SIGINT.

Shutdown contract: on the first SIGTERM or SIGINT the gateway stops accepting, lets in-flight
batches finish and idle clients go, waits at most ``gateway.drain_timeout`` for the rest, then
cancels what remains and exits 0. A second signal (a second or more after the first) skips the
wait.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import typing
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path

import trio

from . import diagnostics
from .admin.app import AdminApp, AdminView
from .admin.serve import WorkersView, remove_socket, serve_admin, worker_socket
from .admin.status import LocalView, Served
from .call import Protocol
from .config import Address, Config
from .config.registry import UnreachableAtStart
from .net.listen import bind_tcp
from .net.motan2.agent import CLIENT_SIDE, SERVER_SIDE, ClientAgent, ServerAgent
from .net.mysql.runtime import MySQLRuntime
from .net.redis.runtime import RedisRuntime
from .net.runtime import ClusterRuntime
from .net.sockio import close_quietly
from .observe.access_log import AccessLog, AccessLogError
from .observe.graphite import GraphiteReporter
from .registry import open_registry
from .registry.follower import Follower, Target

__all__ = ["RUNTIMES", "build_runtimes", "listen_points", "run", "serve"]

log = logging.getLogger(__name__)

#: Exit code when the gateway cannot start: a listener cannot be bound (address in use...),
#: the access log cannot be opened, or the registry cannot be read and
#: ``registry.unreachable_at_start`` is ``refuse``. A runtime failure, unlike 2, which the CLI
#: reserves for bad configuration.
EXIT_CANNOT_START = 1


#: Set in worker processes' environment by the supervisor; its value is the worker's index.
WORKER_ENV = "RESMESH_WORKER"

#: Seconds after the first stop signal during which more copies count as the same one.
_SAME_SIGNAL_WINDOW = 1.0

#: The runtime that serves a cluster of each protocol with a listen address of its own
#: (``docs/architecture.md`` says how to add one). Motan2 clusters are served together by
#: the Motan2 agent (:func:`build_runtimes`).
RUNTIMES: typing.Final[Mapping[Protocol, Callable[..., ClusterRuntime]]] = {
    Protocol.REDIS: RedisRuntime,
    Protocol.MYSQL: MySQLRuntime,
}


def listen_points(config: Config) -> list[tuple[str, Address, str]]:
    """Every address the gateway listens on: (runtime name, address, the config key that
    sets it)."""
    points = [
        (name, cluster.listen, f"clusters.{name}.listen")
        for name, cluster in config.clusters.items()
        if cluster.protocol in RUNTIMES
    ]
    agent = config.motan2
    if agent is not None:
        points.append((CLIENT_SIDE, agent.client, "motan2.client"))
        if agent.server is not None:
            points.append((SERVER_SIDE, agent.server, "motan2.server"))
    return points


def _label(name: str) -> str:
    """How logs name a listen point."""
    return name if name in (CLIENT_SIDE, SERVER_SIDE) else f"cluster {name}"


def build_runtimes(config: Config, nursery: trio.Nursery) -> list[ClusterRuntime]:
    """The runtime of every listen point of ``config``, in :func:`listen_points` order."""
    workers = config.gateway.workers
    runtimes = [
        RUNTIMES[cluster.protocol](cluster, config.users, nursery, workers=workers)
        for cluster in config.clusters.values()
        if cluster.protocol in RUNTIMES
    ]
    agent = config.motan2
    if agent is not None:
        rpc = [c for c in config.clusters.values() if c.protocol is Protocol.MOTAN2]
        runtimes.append(
            ClientAgent(agent, rpc, nursery, source=config.gateway.app, workers=workers)
        )
        if agent.server is not None:
            runtimes.append(ServerAgent(agent, nursery, workers=workers))
    return runtimes


def run(config: Config) -> int:
    """Serve ``config`` until a signal asks to stop; returns the process exit code.

    With ``gateway.workers`` > 1 this process becomes a supervisor of that many worker
    processes, each binding every listen port with ``SO_REUSEPORT`` (the kernel spreads new
    connections across them): Trio runs on one core, and a proxied command's cost is mostly
    per-wakeup CPU, so more processes is the way to use more cores (``bench/README.md``
    measures a second worker: ``--workers 2``).
    """
    workers = config.gateway.workers
    worker = os.environ.get(WORKER_ENV)
    listeners: dict[str, socket.socket] = {}
    for name, address, key in listen_points(config):
        try:
            listeners[name] = bind_tcp(address.host, address.port, reuse_port=workers > 1)
        except OSError as exc:
            for listener in listeners.values():
                listener.close()
            fix = (
                f"another process listens there (another resmesh?): stop it, or change {key}"
                if exc.errno == errno.EADDRINUSE
                else f"check {key} in {config.source}"
            )
            log.error("%s cannot listen on %s: %s — fix: %s", _label(name), address, exc, fix)
            return EXIT_CANNOT_START
    admin = None
    if config.gateway.admin is not None and worker in (None, "0"):
        try:
            admin = bind_tcp(config.gateway.admin.host, config.gateway.admin.port)
        except OSError as exc:
            for listener in listeners.values():
                listener.close()
            log.error(
                "the admin API cannot listen on %s: %s — fix: stop what listens there, or "
                "change gateway.admin in %s",
                config.gateway.admin,
                exc,
                config.source,
            )
            return EXIT_CANNOT_START
    if workers > 1 and worker is None:
        for listener in listeners.values():
            listener.close()  # only checked that binding works: workers bind their own
        if admin is not None:
            admin.close()
        locks = _lock_listen_addresses(config)
        if locks is None:
            return EXIT_CANNOT_START
        try:
            return _supervise(config)
        finally:
            for lock in locks:
                lock.close()
    code = trio.run(functools.partial(serve, config, listeners, admin=admin))
    if worker is not None:
        # Drained: a signal the supervisor forwards now must not kill the exit with it.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
    return code


def _lock_listen_addresses(config: Config) -> list[typing.IO[bytes]] | None:
    """Hold a lock per listen address while the workers run; ``None`` if one is held.

    Workers bind with ``SO_REUSEPORT``, so a second multi-worker gateway started on the same
    ports would not get "address in use": the kernel would quietly split the clients between
    the two. The lock files make that second start fail as a plain bind would.
    """
    locks: list[typing.IO[bytes]] = []
    for name, listen, key in listen_points(config):
        address = f"{listen.host}-{listen.port}".replace("/", "_")
        path = Path(tempfile.gettempdir()) / f"resmesh-listen-{address}.lock"
        try:
            lock = path.open("ab")
        except OSError as exc:  # another user's file, a read-only /tmp: go on unguarded
            log.warning("cannot guard %s against a second gateway: %s", listen, exc)
            continue
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            for held in locks:
                held.close()
            log.error(
                "%s cannot listen on %s: another multi-worker gateway listens there "
                "(it holds %s) — fix: stop it, or change %s",
                _label(name),
                listen,
                path,
                key,
            )
            return None
        locks.append(lock)
    return locks


def _supervise(config: Config) -> int:
    """Run ``gateway.workers`` worker processes; forward SIGTERM/SIGINT; restart crashed ones.

    Exit code: 0 when every worker drained and exited 0 after a signal, else 1.
    """
    stopping = False
    children: dict[int, int] = {}  # pid -> worker index

    def spawn(index: int) -> None:
        env = {**os.environ, WORKER_ENV: str(index)}
        command = [sys.executable, "-m", "resmesh", "run", "-c", str(config.source)]
        proc = subprocess.Popen(command, env=env)
        children[proc.pid] = index

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in children:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for index in range(config.gateway.workers):
            spawn(index)
        log.info("supervising %d workers", len(children))
        failed = False
        restarts: list[float] = []
        while children:
            pid, status = os.waitpid(-1, 0)
            if pid not in children:
                continue
            index = children.pop(pid)
            code = os.waitstatus_to_exitcode(status)
            if stopping:
                failed = failed or code != 0
                continue
            log.error("worker %d (pid %d) exited with %d; restarting it", index, pid, code)
            now = time.monotonic()
            restarts = [t for t in restarts if now - t < 60] + [now]
            if len(restarts) > 10:
                log.error("workers keep crashing (more than 10 restarts a minute): stopping")
                forward(signal.SIGTERM, None)
                failed = True
                continue
            spawn(index)
        return 1 if failed else 0
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


async def serve(
    config: Config,
    listeners: dict[str, socket.socket],
    *,
    admin: socket.socket | None = None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> int:
    """Serve on already-bound ``listeners`` (cluster name → socket), and the admin API on
    ``admin`` if given, until SIGTERM/SIGINT."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as backend:
            runtimes = build_runtimes(config, backend)
            served = served_clusters(runtimes)
            follower = Follower(
                open_registry(config.registry),
                {name: config.clusters[name] for name in served},
                {name: target for name, (target, _, _) in served.items()},
            )
            access_log = None
            started = await _read_registry(config, follower)
            if started:
                try:
                    access_log = _open_access_log(config, served)
                except AccessLogError as exc:
                    log.error("%s — fix: change metrics.access_log.path in %s", exc, config.source)
                    started = False
            if not started:
                for sock in (*listeners.values(), admin):
                    if sock is not None:
                        close_quietly(sock)
                backend.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await follower.registry.aclose()
                return EXIT_CANNOT_START
            for runtime in runtimes:
                backend.start_soon(runtime.run)
            backend.start_soon(follower.run)
            view = LocalView(
                config,
                follower,
                {
                    name: Served(target.policies, clients, pools)
                    for name, (target, clients, pools) in served.items()
                },
                lambda: runtimes[0].draining if runtimes else False,
                worker=_worker_index(),
                access_log=access_log,
            )
            shown = await _start_admin(config, view, admin, backend)
            graphite = config.metrics.graphite
            if graphite is not None and config.metrics.enabled and _worker_index() in (None, 0):
                # One reporter for the whole gateway: worker 0 pushes every worker's counts
                # (several pushing the same keys would overwrite each other in carbon).
                backend.start_soon(GraphiteReporter(graphite, shown.metrics).run)
            steps_file = os.environ.get(diagnostics.ENV)
            if steps_file:
                backend.start_soon(diagnostics.report_steps, Path(steps_file))
            try:
                async with trio.open_nursery() as connections:
                    accepting = trio.CancelScope()
                    connections.start_soon(_accept_all, accepting, runtimes, listeners, connections)
                    for runtime in runtimes:
                        host, port = listeners[runtime.name].getsockname()[:2]
                        log.info(
                            "%s listening on %s (%s) -> %s",
                            _label(runtime.name),
                            f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                            runtime.protocol,
                            runtime.describe_backend(),
                        )
                    task_status.started()
                    async for signum in signals:
                        log.info("received %s: draining", signal.Signals(signum).name)
                        break
                    accepting.cancel()  # the accept tasks close the listeners as they exit
                    for runtime in runtimes:
                        runtime.start_drain()
                    with trio.move_on_after(config.gateway.drain_timeout):
                        async with trio.open_nursery() as waiters:
                            waiters.start_soon(_skip_on_signal, signals, waiters.cancel_scope)
                            await _wait_sessions_gone(runtimes)
                            waiters.cancel_scope.cancel()
                    connections.cancel_scope.cancel()
            finally:
                for runtime in runtimes:
                    runtime.close()
                backend.cancel_scope.cancel()
                with trio.CancelScope(shield=True):
                    await follower.registry.aclose()
                    if access_log is not None:
                        await trio.to_thread.run_sync(access_log.close)
    log.info("stopped")
    return 0


_Pools = typing.Callable[[], dict[str, dict[str, int]]]


def served_clusters(
    runtimes: list[ClusterRuntime],
) -> dict[str, tuple[Target, typing.Callable[[], int], _Pools]]:
    """Every cluster the runtimes serve: what applies its layout (and holds its policies),
    how many clients it has, and its backend connections per node."""
    served: dict[str, tuple[Target, typing.Callable[[], int], _Pools]] = {}
    for runtime in runtimes:
        clients = functools.partial(len, runtime.sessions)
        if isinstance(runtime, ClientAgent):
            for name, cluster in runtime.clusters.items():
                served[name] = (cluster, clients, cluster.transport.pool_statistics)
        elif isinstance(runtime, (RedisRuntime, MySQLRuntime)):
            served[runtime.name] = (runtime, clients, runtime.pool_statistics)
    return served


def _open_access_log(
    config: Config, served: dict[str, tuple[Target, typing.Callable[[], int], _Pools]]
) -> AccessLog | None:
    """Count the served clusters' calls as ``metrics`` says, and start the access log if it
    is configured (``None`` without one).

    Raises:
        AccessLogError: its file cannot be opened.
    """
    settings = config.metrics
    if not settings.enabled:
        for target, _, _ in served.values():
            if not target.policies.hedging:  # a measured hedge delay reads the latencies
                target.policies.metrics = None
    if settings.access_log is None:
        return None
    access_log = AccessLog(settings.access_log)
    access_log.start()
    for name, (target, _, _) in served.items():
        metrics = target.policies.metrics
        if metrics is not None:
            metrics.listener = access_log.listener(name)
    return access_log


async def _read_registry(config: Config, follower: Follower) -> bool:
    """Read the registry before serving; ``False`` when it cannot be read and the config
    says to refuse then."""
    where = config.registry.describe()
    if await follower.start():
        log.info("registry %s: version %d in force", where, follower.version)
        return True
    if config.registry.unreachable_at_start is UnreachableAtStart.REFUSE:
        log.error(
            "registry %s unreachable (%s): not starting, as registry.unreachable_at_start "
            "says — fix: start the registry, or set it to config",
            where,
            follower.error,
        )
        return False
    log.warning(
        "registry %s unreachable (%s): starting on the configuration's state; its changes "
        "apply once it answers",
        where,
        follower.error,
    )
    return True


def _worker_index() -> int | None:
    worker = os.environ.get(WORKER_ENV)
    return int(worker) if worker is not None else None


async def _start_admin(
    config: Config, view: LocalView, admin: socket.socket | None, nursery: trio.Nursery
) -> AdminView:
    """Serve the admin API: on ``admin``; with several workers also each worker's own view on
    its Unix socket, worker 0 answering the admin port for all of them. Returns the view of
    the whole gateway (every worker's, merged)."""
    token = config.gateway.admin_token
    worker = _worker_index()
    shown: AdminView = view
    if worker is not None:
        supervisor = os.getppid()
        own = worker_socket(supervisor, worker)
        await nursery.start(functools.partial(serve_admin, AdminApp(view), unix=own))
        nursery.start_soon(_remove_on_exit, own)
        peers = [worker_socket(supervisor, i) for i in range(config.gateway.workers) if i != worker]
        shown = WorkersView(view, peers)
    if admin is not None:
        await nursery.start(functools.partial(serve_admin, AdminApp(shown, token), listener=admin))
        log.info("admin API listening on %s", config.gateway.admin)
    return shown


async def _remove_on_exit(path: Path) -> None:
    try:
        await trio.sleep_forever()
    finally:
        remove_socket(path)


async def _accept_all(
    scope: trio.CancelScope,
    runtimes: list[ClusterRuntime],
    listeners: dict[str, socket.socket],
    connections: trio.Nursery,
) -> None:
    try:
        with scope:
            async with trio.open_nursery() as accept:
                for runtime in runtimes:
                    accept.start_soon(runtime.serve, listeners[runtime.name], connections)
    finally:
        # Closed here, once no accept task can touch them any more (closing under a parked
        # accept() would hand it a dead descriptor).
        for listener in listeners.values():
            close_quietly(listener)


async def _wait_sessions_gone(runtimes: list[ClusterRuntime]) -> None:
    """Poll until every client session has ended (bounded by the caller's drain deadline)."""
    while any(runtime.sessions for runtime in runtimes):
        await trio.sleep(0.02)


async def _skip_on_signal(signals: AsyncIterator[int], scope: trio.CancelScope) -> None:
    """A second SIGTERM/SIGINT during the drain: stop waiting for in-flight work.

    Copies within ``_SAME_SIGNAL_WINDOW`` of the first are the same request: with workers, a
    signal sent to the whole process group (Ctrl-C in a terminal, systemd's default
    KillMode=control-group) reaches each worker directly and again through the supervisor.
    """
    not_before = trio.current_time() + _SAME_SIGNAL_WINDOW
    async for _ in signals:
        if trio.current_time() < not_before:
            continue
        log.info("second signal: not waiting for in-flight work")
        scope.cancel()
        return
