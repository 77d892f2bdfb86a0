"""Benchmark the resmesh MySQL gateway against MariaDB itself, in the same run.

**What it measures.** sysbench's ``oltp_point_select`` and ``oltp_read_only`` (``--threads``
connections, default 8; 4 tables of 10 000 rows in a database ``sbtest``), run against MariaDB
directly and through the gateway, interleaved (direct, gateway, direct, gateway, ...
``--repeat`` times, default 3; medians are reported). For each test and path it prints queries/s,
sysbench's p95 latency, the gateway/direct throughput ratio and the gateway's CPU per query:
user+sys of the gateway process (its whole process tree, from ``/proc/PID/stat``) over the
measured sysbench run, divided by the queries sysbench counted. MariaDB's CPU per query is
printed too. Each gateway path is one gateway with one policy (``--policies``, default
``passthrough`` and ``default``: the cluster without a ``policy:`` line, governance on).

**How.** It needs a MariaDB (``--mysql-port``, default 127.0.0.1:3306) where ``--admin-user``
(root, empty password) may create a database ``sbtest`` and a user ``sbtest``/``sbtest``
(mysql_native_password, all grants on ``sbtest``), used by both paths: sysbench logs in to the
gateway with it too (it is the gateway's ``users:`` entry) and the gateway logs in to MariaDB as
the admin user. The tables are created once with ``sysbench ... prepare`` when ``sbtest4`` is
missing. Each gateway is started as ``python -m resmesh run -c bench/out/mysql-POLICY-PORT.yaml``
on a free port and is ready when it sends a MySQL handshake. Before the measurements, a 2 s
probe of each test through each gateway with ``--db-ps-mode=auto`` (server-side prepared
statements) and ``disable`` (plain COM_QUERY) shows whether the gateway handles both; the
measured runs use ``--ps-mode`` (``auto``), falling back to ``disable`` if ``auto`` fails
through a gateway. Every measured run is preceded by a ``--warmup`` (2 s) sysbench run on the
same path. A run in which other processes used more than ``--max-noise`` of the machine's CPU
(its busy time minus sysbench's, MariaDB's, the gateways', this script's and interrupt time,
where loopback TCP is processed) is retried (``--retries``) and the quietest attempt kept. At
the end each gateway gets SIGTERM and must exit 0. ``--profile`` adds one more point-select
run through the first gateway under ``py-spy record`` and prints its top functions by self
time.

**Why.** The targets of the issue: at least 0.7x the direct throughput on point selects, and at
most 40 µs of gateway CPU per query. Anchors for MySQL proxies: MySQL Router about 0.9x,
kingshard about 0.8x, Gaea 0.5-0.7x direct. Prefer the CPU per query when comparing versions:
throughput on a 2-core box that also runs MariaDB and sysbench moves with everything else.

Run it (see bench/README.md, "MySQL")::

    python bench/mysql.py --repeat 3
    python bench/mysql.py --tests point_select --policies passthrough --profile
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

from _common import (
    ROOT,
    BenchError,
    Gateway,
    busiest_others,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    git_revision,
    interrupt_on_signals,
    note,
    print_profile,
    process_cpu_snapshot,
    process_tree,
    quietest,
    spawn,
    start_profiler,
    stop,
    system_cpu_seconds,
)

DEFAULT_OUT: Final = ROOT / "bench" / "out"
DIRECT: Final = "direct"
TESTS: Final = ("point_select", "read_only")
DB: Final = "sbtest"
USER: Final = "sbtest"
PASSWORD: Final = "sbtest"
TABLES: Final = 4
TABLE_SIZE: Final = 10_000

TARGET_RATIO: Final = 0.7
TARGET_US: Final = 40.0
ANCHORS: Final = "MySQL Router ~0.9x, kingshard ~0.8x, Gaea 0.5-0.7x"

"""Other load below this many CPU-seconds never causes a retry: /proc counts in 10 ms ticks."""


# --- sysbench --------------------------------------------------------------------------------


@dataclass
class Sysbench:
    """sysbench's figures for one run."""

    queries: int
    qps: float
    p95_ms: float
    errors: int
    seconds: float


_QUERIES = re.compile(r"^\s*queries:\s+(\d+)\s+\(([\d.]+) per sec")
_P95 = re.compile(r"^\s*95th percentile:\s+([\d.]+)")
_ERRORS = re.compile(r"^\s*ignored errors:\s+(\d+)")
_TIME = re.compile(r"^\s*total time:\s+([\d.]+)s")


def parse_sysbench(text: str) -> Sysbench:
    found: dict[str, tuple[str, ...]] = {}
    for line in text.splitlines():
        for key, pattern in (("q", _QUERIES), ("p", _P95), ("e", _ERRORS), ("t", _TIME)):
            match = pattern.match(line)
            if match:
                found[key] = match.groups()
    if "q" not in found or "p" not in found:
        raise BenchError(f"could not read sysbench's output:\n{text[-1500:]}")
    queries, qps = found["q"]
    return Sysbench(
        queries=int(queries),
        qps=float(qps),
        p95_ms=float(found["p"][0]),
        errors=int(found.get("e", ("0",))[0]),
        seconds=float(found.get("t", ("0",))[0]),
    )


# --- results ---------------------------------------------------------------------------------


@dataclass
class Run:
    test: str
    path: str
    ps_mode: str
    queries: int
    qps: float
    p95_ms: float
    errors: int
    window_s: float
    gateway_cpu_s: float | None
    mariadb_cpu_s: float
    sysbench_cpu_s: float
    other_cpu_s: float
    busy_cpu_s: float
    irq_cpu_s: float
    other_top: list[tuple[str, float]]
    profiled: bool = False
    discarded: bool = False

    @property
    def noise(self) -> float:
        """Share of the machine's CPU that other processes used during the run."""
        return max(0.0, self.other_cpu_s) / (self.window_s * (os.cpu_count() or 1))

    def per_query(self, cpu_s: float | None) -> float | None:
        return None if cpu_s is None or not self.queries else 1e6 * cpu_s / self.queries

    @property
    def gateway_us(self) -> float | None:
        return self.per_query(self.gateway_cpu_s)

    @property
    def mariadb_us(self) -> float:
        return self.per_query(self.mariadb_cpu_s) or 0.0


@dataclass
class Row:
    """The medians of the repeats for one (test, path)."""

    test: str
    path: str
    repeats: int
    qps: float
    ratio: float | None
    p95_ms: float
    gateway_us: float | None
    mariadb_us: float
    max_noise: float
    errors: int
    qps_all: list[float]
    gateway_us_all: list[float]


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def summarize(test: str, path: str, runs: list[Run], direct_qps: float | None) -> Row:
    qps = median([r.qps for r in runs])
    gateway = [us for r in runs if (us := r.gateway_us) is not None]
    return Row(
        test=test,
        path=path,
        repeats=len(runs),
        qps=qps,
        ratio=qps / direct_qps if direct_qps and path != DIRECT else None,
        p95_ms=median([r.p95_ms for r in runs]),
        gateway_us=median(gateway) if gateway else None,
        mariadb_us=median([r.mariadb_us for r in runs]),
        max_noise=max(r.noise for r in runs),
        errors=sum(r.errors for r in runs),
        qps_all=[r.qps for r in runs],
        gateway_us_all=gateway,
    )


# --- the benchmark ---------------------------------------------------------------------------


def mysql_handshake(port: int, timeout: float = 0.5) -> bool:
    """True when something on ``port`` sends a MySQL v10 handshake packet."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
            head = sock.recv(5)
    except OSError:
        return False
    return len(head) == 5 and head[4] == 10


def mariadb_pids() -> list[int]:
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                name = Path(f"/proc/{entry.name}/comm").read_text().strip()
            except OSError:
                continue
            if name in ("mariadbd", "mysqld"):
                pids.append(int(entry.name))
    return pids


class Bench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.out: Path = args.out
        self.sysbench = shutil.which("sysbench") or ""
        self.ports: dict[str, int] = {}
        self.gateways: dict[str, Gateway] = {}
        self.ps_mode: dict[str, str] = {}
        self.ps_support: dict[str, dict[str, str]] = {}
        self.discarded: list[Run] = []
        self.mariadb = mariadb_pids()

    # -- MariaDB

    def admin_sql(self, sql: str) -> str:
        client = shutil.which("mariadb") or shutil.which("mysql")
        if client is None:
            raise BenchError("the mysql client is not installed (apt-get install mariadb-client)")
        argv = [client, "-h", "127.0.0.1", "-P", str(self.args.mysql_port)]
        argv += ["-u", self.args.admin_user, "-N", "-B", "-e", sql]
        env = {**os.environ, "MYSQL_PWD": self.args.admin_password}
        done = subprocess.run(argv, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise BenchError(f"{sql!r} failed on MariaDB: {done.stderr.strip()}")
        return done.stdout

    def prepare(self) -> None:
        if not mysql_handshake(self.args.mysql_port, timeout=2):
            raise BenchError(f"no MySQL server on 127.0.0.1:{self.args.mysql_port}")
        statements = [f"CREATE DATABASE IF NOT EXISTS {DB}"]
        for host in ("127.0.0.1", "localhost"):
            statements += [
                f"CREATE USER IF NOT EXISTS '{USER}'@'{host}' IDENTIFIED VIA "
                f"mysql_native_password USING PASSWORD('{PASSWORD}')",
                f"GRANT ALL ON {DB}.* TO '{USER}'@'{host}'",
            ]
        self.admin_sql("; ".join(statements))
        tables = self.admin_sql(
            "SELECT COUNT(*) FROM information_schema.tables "
            f"WHERE table_schema = '{DB}' AND table_name = 'sbtest{TABLES}'"
        )
        if tables.strip() != "1":
            note(f"preparing {TABLES} tables of {TABLE_SIZE} rows in {DB} (sysbench prepare)")
            port = self.args.mysql_port
            done = subprocess.run(
                [*self.sysbench_argv("point_select", port, 1, "disable"), "prepare"],
                capture_output=True,
                text=True,
            )
            if done.returncode != 0:
                raise BenchError(f"sysbench prepare failed: {done.stdout}{done.stderr}")

    # -- gateways

    def gateway_config(self, policy: str, port: int) -> dict[str, Any]:
        cluster: dict[str, Any] = {
            "protocol": "mysql",
            "listen": f"127.0.0.1:{port}",
            "groups": {"dc-a": [f"127.0.0.1:{self.args.mysql_port}"]},
            "backend": {
                "username": self.args.admin_user,
                "password": self.args.admin_password,
            },
        }
        if policy != "default":
            cluster["policy"] = policy
        return {
            "gateway": {"app": "bench", "workers": self.args.workers, "admin": None},
            "users": {USER: {"password": PASSWORD, "clusters": ["bench-db"]}},
            "clusters": {"bench-db": cluster},
        }

    @property
    def exits(self) -> dict[str, int]:
        return {policy: g.exit for policy, g in self.gateways.items() if g.exit is not None}

    def start_gateway(self, policy: str) -> None:
        port = free_port()
        config_path = self.out / f"mysql-{policy}-{port}.yaml"
        gateway = Gateway(self.stack, config_path, port, name=policy, tail_lines=20)
        self.gateways[policy] = gateway
        self.ports[policy] = port
        gateway.start(self.gateway_config(policy, port), mysql_handshake, "greet")

    def stop_gateway(self, policy: str) -> None:
        self.gateways[policy].stop()

    def port_of(self, path: str) -> int:
        return self.args.mysql_port if path == DIRECT else self.ports[path]

    # -- sysbench runs

    def sysbench_argv(self, test: str, port: int, seconds: float, ps_mode: str) -> list[str]:
        return [
            self.sysbench, f"oltp_{test}", "--db-driver=mysql",
            "--mysql-host=127.0.0.1", f"--mysql-port={port}",
            f"--mysql-user={USER}", f"--mysql-password={PASSWORD}", f"--mysql-db={DB}",
            f"--tables={TABLES}", f"--table-size={TABLE_SIZE}",
            f"--threads={self.args.threads}", f"--time={seconds:g}",
            f"--db-ps-mode={ps_mode}", "--percentile=95", "--rand-type=uniform",
        ]  # fmt: skip

    def sysbench_run(self, test: str, path: str, seconds: float, ps_mode: str) -> tuple[int, str]:
        """One ``sysbench ... run``: its exit code and output."""
        argv = [*self.sysbench_argv(test, self.port_of(path), seconds, ps_mode), "run"]
        proc = spawn(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        try:
            out, _ = proc.communicate(timeout=seconds + 60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()
            raise BenchError(f"sysbench {test} against {path} did not finish") from None
        return proc.returncode, out.decode(errors="replace")

    def probe_ps_modes(self, path: str) -> None:
        """2 s of each test in both ps modes through ``path``; pick the mode to measure."""
        support: dict[str, str] = {}
        for mode in ("auto", "disable"):
            for test in self.args.tests:
                code, out = self.sysbench_run(test, path, 2, mode)
                key = f"{test}/{mode}"
                if code == 0:
                    result = parse_sysbench(out)
                    support[key] = f"ok ({result.qps:.0f} q/s, {result.errors} ignored errors)"
                else:
                    lines = [ln for ln in out.splitlines() if "FATAL" in ln or "error" in ln]
                    support[key] = "FAILED: " + (" | ".join(lines[:3]) or out[-300:])
                note(f"  probe {path:12} {key:22} {support[key]}")
        self.ps_support[path] = support
        wanted = self.args.ps_mode
        if any(v.startswith("FAILED") for k, v in support.items() if k.endswith("/" + wanted)):
            other = "disable" if wanted == "auto" else "auto"
            note(f"  {path}: --db-ps-mode={wanted} fails through the gateway; using {other}")
            wanted = other
        self.ps_mode[path] = wanted

    def run_once(self, test: str, path: str, *, profile: Path | None = None) -> Run:
        ps_mode = self.ps_mode.get(path, self.args.ps_mode)
        if self.args.warmup > 0:
            code, out = self.sysbench_run(test, path, self.args.warmup, ps_mode)
            if code != 0:
                raise BenchError(f"warm-up {test} against {path} failed:\n{out[-1500:]}")
        gateway_pids = process_tree(self.gateways[path].pid) if path != DIRECT else []
        all_gateway_pids = [p for g in self.gateways.values() for p in process_tree(g.pid)]
        spy = self.start_profiler(self.gateways[path].pid, profile) if profile else None
        ours = {os.getpid(), *all_gateway_pids, *self.mariadb}
        before_snapshot = process_cpu_snapshot()
        before_busy, before_irq = system_cpu_seconds()
        before_children = children_cpu_seconds()
        before_gw = sum(cpu_seconds(p) for p in gateway_pids)
        before_db = sum(cpu_seconds(p) for p in self.mariadb)
        before_all_gw = sum(cpu_seconds(p) for p in all_gateway_pids)
        started = time.monotonic()
        code, out = self.sysbench_run(test, path, self.args.seconds, ps_mode)
        window = time.monotonic() - started
        gw = sum(cpu_seconds(p) for p in gateway_pids) - before_gw
        db = sum(cpu_seconds(p) for p in self.mariadb) - before_db
        all_gw = sum(cpu_seconds(p) for p in all_gateway_pids) - before_all_gw
        after_busy, after_irq = system_cpu_seconds()
        sysbench_cpu = children_cpu_seconds() - before_children
        after_snapshot = process_cpu_snapshot()
        if spy is not None:
            stop(spy, signal.SIGINT, timeout=60)  # py-spy writes its output on SIGINT
        if code != 0:
            raise BenchError(f"sysbench {test} against {path} failed:\n{out[-1500:]}")
        result = parse_sysbench(out)
        top, _ = busiest_others(before_snapshot, after_snapshot, ours)
        own = os.getpid()
        self_cpu = (after_snapshot.get(own, ("", 0))[1] - before_snapshot.get(own, ("", 0))[1]) / (
            os.sysconf("SC_CLK_TCK")
        )
        # Loopback TCP is processed in softirq, charged to no process: it is ours, not noise.
        irq = after_irq - before_irq
        other = (after_busy - before_busy) - irq - all_gw - db - sysbench_cpu - self_cpu
        run = Run(
            test=test,
            path=path,
            ps_mode=ps_mode,
            queries=result.queries,
            qps=result.qps,
            p95_ms=result.p95_ms,
            errors=result.errors,
            window_s=window,
            gateway_cpu_s=gw if path != DIRECT else None,
            mariadb_cpu_s=db,
            sysbench_cpu_s=sysbench_cpu,
            other_cpu_s=other,
            busy_cpu_s=after_busy - before_busy,
            irq_cpu_s=irq,
            other_top=top,
            profiled=profile is not None,
        )
        gateway = "" if run.gateway_us is None else f"  gateway {run.gateway_us:.1f} µs/q"
        note(
            f"  {test:12} {path:12} {run.qps:8.0f} q/s  p95 {run.p95_ms:6.2f} ms{gateway}  "
            f"mariadb {run.mariadb_us:.1f} µs/q  (ps {ps_mode}, noise {100 * run.noise:.0f}%"
            f"{', profiled' if profile else ''})"
        )
        if run.errors:
            note(f"    ANOMALY: {run.errors} ignored errors")
        if run.noise > 0.05:
            busiest = ", ".join(f"{name} {cpu:.1f}s" for name, cpu in top if cpu >= 0.05)
            note(f"    other load: {run.other_cpu_s:.1f} cpu-s: {busiest or 'no live process'}")
        return run

    def measured(self, test: str, path: str) -> Run:
        """``run_once``, retried while other processes load the box more than --max-noise."""
        best, discarded = quietest(
            lambda: self.run_once(test, path), self.args.max_noise, self.args.retries
        )
        self.discarded += discarded
        return best

    def start_profiler(self, pid: int, path: Path) -> subprocess.Popen[bytes]:
        return start_profiler(pid, path, self.stack, rate=200, subprocesses=self.args.workers > 1)


# --- reporting -------------------------------------------------------------------------------


def _opt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[Row], ps_modes: dict[str, str]) -> str:
    header = (
        "test", "path", "ps", "q/s", "p95 ms", "x direct", "gateway µs/q", "mariadb µs/q",
        "noise", "errors",
    )  # fmt: skip
    lines = [
        (
            row.test,
            row.path,
            ps_modes.get(row.path, "-"),
            f"{row.qps:.0f}",
            f"{row.p95_ms:.2f}",
            _opt(row.ratio, ".2f") + ("x" if row.ratio is not None else ""),
            _opt(row.gateway_us),
            f"{row.mariadb_us:.1f}",
            f"{100 * row.max_noise:.0f}%",
            str(row.errors),
        )
        for row in rows
    ]
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def verdicts(rows: list[Row]) -> list[str]:
    out = [
        f"targets: >= {TARGET_RATIO}x direct on point selects, <= {TARGET_US:.0f} µs gateway CPU "
        f"per query; anchors: {ANCHORS}"
    ]
    for row in rows:
        if row.path == DIRECT or row.ratio is None or row.gateway_us is None:
            continue
        ok_ratio = row.ratio >= TARGET_RATIO or row.test != "point_select"
        ok_us = row.gateway_us <= TARGET_US
        out.append(
            f"  {row.test:12} {row.path:12} {row.ratio:.2f}x direct"
            f"{'' if ok_ratio else ' (below target)'}, {row.gateway_us:.1f} µs/query"
            f"{'' if ok_us else f' ({row.gateway_us / TARGET_US:.1f}x the target)'}"
        )
    return out


# --- main ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--repeat", type=int, default=3, help="runs per path (default: 3)")
    parser.add_argument("--threads", type=int, default=8, help="sysbench threads (default: 8)")
    parser.add_argument("--seconds", type=float, default=10, help="per measured run (10)")
    parser.add_argument("--warmup", type=float, default=2, help="warm-up run before each (2)")
    parser.add_argument(
        "--tests",
        type=lambda s: [t.strip().removeprefix("oltp_") for t in s.split(",")],
        default=list(TESTS),
        help="sysbench tests (default: point_select,read_only)",
    )
    parser.add_argument(
        "--policies",
        type=lambda s: [p.strip() for p in s.split(",")],
        default=["passthrough", "default"],
        help="one gateway per policy; 'default' = no policy line (default: passthrough,default)",
    )
    parser.add_argument("--ps-mode", choices=("auto", "disable"), default="auto")
    parser.add_argument("--no-probe", action="store_true", help="skip the ps-mode probes")
    parser.add_argument("--workers", type=int, default=1, help="gateway.workers (default: 1)")
    parser.add_argument("--mysql-port", type=int, default=3306)
    parser.add_argument("--admin-user", default="root")
    parser.add_argument("--admin-password", default="")
    parser.add_argument("--max-noise", type=float, default=0.10, help="(default: 0.10)")
    parser.add_argument("--retries", type=int, default=2, help="(default: 2)")
    parser.add_argument("--profile", action="store_true", help="a py-spy run, point_select")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--json", type=Path, default=None, help="save everything there")
    return parser


def run(args: argparse.Namespace) -> int:
    if args.repeat < 1 or args.seconds <= 0 or args.threads < 1:
        raise BenchError("--repeat and --threads must be at least 1, --seconds above 0")
    if any(t not in TESTS for t in args.tests):
        raise BenchError(f"--tests: pick from {', '.join(TESTS)}")
    if shutil.which("sysbench") is None:
        raise BenchError("sysbench not found (apt-get install sysbench)")
    args.out.mkdir(parents=True, exist_ok=True)
    gitignore = args.out / ".gitignore"
    if args.out == DEFAULT_OUT and not gitignore.exists():
        gitignore.write_text("*\n")
    revision = git_revision()
    paths = [DIRECT, *args.policies]
    rows: list[Row] = []
    runs: list[Run] = []
    profile_file: Path | None = None
    with ExitStack() as stack:
        bench = Bench(args, stack)
        if not bench.mariadb:
            note("note: no mariadbd/mysqld process found: MariaDB's CPU reads as 0")
        bench.prepare()
        for policy in args.policies:
            bench.start_gateway(policy)
        note(
            f"resmesh {revision}; MariaDB :{args.mysql_port}, "
            + ", ".join(f"{p} gateway :{bench.ports[p]}" for p in args.policies)
            + f"; {os.cpu_count()} CPUs; {args.threads} threads; "
            f"{args.warmup:g} s warm-up + {args.seconds:g} s measured per run"
        )
        if not args.no_probe:
            for policy in args.policies:
                bench.probe_ps_modes(policy)
        for test in args.tests:
            by_path: dict[str, list[Run]] = {path: [] for path in paths}
            for _ in range(args.repeat):
                for path in paths:
                    by_path[path].append(bench.measured(test, path))
            direct_qps = median([r.qps for r in by_path[DIRECT]])
            for path in paths:
                runs += by_path[path]
                rows.append(summarize(test, path, by_path[path], direct_qps))
        if args.profile and args.policies:
            policy = args.policies[0]
            profile_file = args.out / f"mysql-profile-{bench.ports[policy]}-{policy}.txt"
            runs.append(bench.run_once("point_select", policy, profile=profile_file))
        for policy in args.policies:
            bench.stop_gateway(policy)

    print()
    print(table(rows, {DIRECT: args.ps_mode, **bench.ps_mode}))
    print()
    for line in verdicts(rows):
        print(line)
    if bench.ps_support:
        print("prepared statements (2 s probes through each gateway, --db-ps-mode):")
        for path, support in bench.ps_support.items():
            for key, verdict in support.items():
                print(f"  {path:12} {key:22} {verdict}")
    if profile_file is not None:
        print()
        print_profile(f"{args.policies[0]} point_select", profile_file)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "git": revision,
            "cpus": os.cpu_count(),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "ps_support": bench.ps_support,
            "gateway_exit": bench.exits,
            "rows": [asdict(row) for row in rows],
            "runs": [
                {**asdict(r), "gateway_us": r.gateway_us, "noise": r.noise}
                for r in [*runs, *bench.discarded]
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        note(f"results saved to {args.json}")
    errors = sum(row.errors for row in rows)
    clean_exit = all(code == 0 for code in bench.exits.values())
    return 0 if clean_exit and not errors else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    interrupt_on_signals()
    try:
        return run(args)
    except BenchError as error:
        note(f"bench/mysql.py: {error}")
        return 1
    except KeyboardInterrupt:
        note("interrupted: stopped the gateways")
        return 130


if __name__ == "__main__":
    sys.exit(main())
