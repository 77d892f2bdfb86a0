"""Benchmark the resmesh Redis gateway against Redis itself, in the same run.

Starts a redis-server (unless --redis-port is given) and a gateway in front of it, then for every
pipeline depth and test runs ``redis-benchmark`` first directly against Redis and then through
the gateway (alternating when --repeat > 1) and prints ops/s, latency, the gateway/direct ratio
and the gateway's own CPU per operation. With ``--reference nutcracker`` a twemproxy runs in
front of the same Redis too, measured in the same rounds, and the table gives the gateway's CPU
per operation as a multiple of twemproxy's. ``--counters`` adds one more run per test and depth
that counts syscalls (``strace -c``) and the gateway's task steps per operation. See
bench/README.md.

    python bench/redis.py                          # GET and SET, -P 1 and -P 16, 50 clients
    python bench/redis.py --repeat 3 --json bench/out/today.json
    python bench/redis.py --pipelines 16 --tests get --profile
    python bench/redis.py --reference nutcracker --workers 2 --repeat 3 --counters
"""

from __future__ import annotations

import argparse
import csv
import datetime
import io
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml
from _common import (
    CLK_TCK,
    ROOT,
    BenchError,
    Gateway,
    RespClient,
    busiest_others,
    children_cpu_seconds,
    cpu_seconds,
    free_port,
    git_revision,
    info,
    interrupt_on_signals,
    note,
    ping,
    print_profile,
    process_cpu_snapshot,
    process_tree,
    quietest,
    spawn,
    start_profiler,
    stop,
    system_cpu_seconds,
    wait_until,
)

DEFAULT_OUT = ROOT / "bench" / "out"
CSV_COLUMNS = (
    "test",
    "rps",
    "avg_latency_ms",
    "min_latency_ms",
    "p50_latency_ms",
    "p95_latency_ms",
    "p99_latency_ms",
    "max_latency_ms",
)
VALUE_SIZE = 16
"""Other load below this many CPU-seconds never causes a retry: /proc counts in 10 ms ticks."""
INSTALL_BENCHMARK = "redis-benchmark not found: install redis-tools (apt-get install redis-tools)"
INSTALL_SERVER = (
    "redis-server not found: install redis-server (apt-get install redis-server), "
    "or point the benchmark at a running one with --redis-port"
)
INSTALL_NUTCRACKER = "nutcracker not found: install twemproxy (apt-get install nutcracker)"
INSTALL_STRACE = "strace not found: install it (apt-get install strace)"


# --- results ---------------------------------------------------------------------------------


@dataclass
class Run:
    target: str  # "direct", "gateway" or "reference"
    test: str
    pipeline: int
    requests: int
    rps: float
    avg_ms: float
    min_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    wall_s: float
    benchmark_cpu_s: float
    redis_cpu_s: float | None
    gateway_cpu_s: float | None
    """The CPU of the proxy measured: the gateway's tree, or the reference proxy's."""
    gateway_processes: int | None
    other_cpu_s: float
    """Busy CPU on the box not charged to redis, redis-benchmark, the gateway or py-spy."""
    irq_cpu_s: float
    """CPU in hard/soft interrupts (loopback TCP); with tick accounting most of it is also
    charged to the process that was interrupted, so it is part of the figures above."""
    other_top: list[tuple[str, float]]
    """The live processes (besides ours) that used the most CPU during the run."""
    redis_calls: int | None
    """How many GET/SET calls Redis counted during the run (INFO commandstats)."""
    profiler_cpu_s: float = 0.0
    profiled: bool = False
    discarded: bool = False
    """Thrown out because other processes loaded the box (see --max-noise)."""

    @property
    def noise(self) -> float:
        """Share of the machine's CPU that other processes used during the run."""
        return max(0.0, self.other_cpu_s) / (self.wall_s * (os.cpu_count() or 1))

    @property
    def gateway_us_per_op(self) -> float | None:
        if self.gateway_cpu_s is None:
            return None
        return 1e6 * self.gateway_cpu_s / self.requests

    @property
    def redis_us_per_op(self) -> float | None:
        if self.redis_cpu_s is None:
            return None
        return 1e6 * self.redis_cpu_s / self.requests


@dataclass
class Row:
    """The median of the repeats for one (test, pipeline depth)."""

    test: str
    pipeline: int
    requests: int
    repeats: int
    direct_rps: float
    gateway_rps: float
    ratio: float
    direct_p50_ms: float
    direct_p99_ms: float
    gateway_p50_ms: float
    gateway_p99_ms: float
    gateway_us_per_op: float
    direct_redis_us_per_op: float | None
    gateway_redis_us_per_op: float | None
    max_noise: float
    """Largest share of the box other processes used during the runs kept (see Run.noise)."""
    reference_rps: float | None = None
    reference_us_per_op: float | None = None
    counters: dict[str, Any] | None = None
    profile: dict[str, Any] | None = None
    direct_rps_all: list[float] = field(default_factory=list)
    gateway_rps_all: list[float] = field(default_factory=list)


# --- arguments -------------------------------------------------------------------------------


def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _tests(text: str) -> list[str]:
    tests = [part.strip().lower() for part in text.split(",") if part.strip()]
    unknown = [t for t in tests if t not in ("get", "set")]
    if not tests or unknown:
        raise argparse.ArgumentTypeError(f"tests are get and/or set, got {text!r}")
    return tests


def _requests(text: str) -> dict[int, int] | int:
    """``100000`` (every depth) or ``1:100000,16:400000`` (per depth)."""
    try:
        if ":" not in text:
            return int(text)
        return {int(p): int(n) for p, n in (part.split(":") for part in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or P:N,P:N, got {text!r}") from None


def requests_for(spec: dict[int, int] | int | None, pipeline: int) -> int:
    if isinstance(spec, int):
        return spec
    if spec and pipeline in spec:
        return spec[pipeline]
    return 100_000 if pipeline == 1 else 400_000


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="redis-benchmark directly against Redis and through the resmesh gateway, "
        "in the same run; prints ops/s, p50/p99, the gateway/direct ratio and the gateway's "
        "CPU per op.",
    )
    parser.add_argument(
        "--requests",
        "-n",
        type=_requests,
        default=None,
        help="requests per run: N, or P:N,P:N per pipeline depth "
        "(default: 100000 at -P 1, 400000 at deeper pipelines)",
    )
    parser.add_argument(
        "--clients", "-c", type=int, default=50, help="parallel connections (default: %(default)s)"
    )
    parser.add_argument(
        "--keyspace", "-r", type=int, default=100_000, help="random keys, -r (default: %(default)s)"
    )
    parser.add_argument(
        "--pipelines", "-P", type=_csv_ints, default=[1, 16], help="pipeline depths (default: 1,16)"
    )
    parser.add_argument(
        "--tests", "-t", type=_tests, default=["get", "set"], help="get, set or get,set (default)"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="gateway.workers (default: 1, or the config's)"
    )
    parser.add_argument(
        "--gateway-config",
        type=Path,
        default=None,
        metavar="FILE",
        help="base gateway config: its first cluster is pointed at the benchmark's Redis and "
        "a free port, the admin port is turned off; everything else (backend, limits, other "
        "gateway settings) is kept",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="runs per target, alternating direct and gateway; medians are reported (default: 1)",
    )
    parser.add_argument(
        "--max-noise",
        type=float,
        default=0.10,
        metavar="SHARE",
        help="retry a run when other processes used more than this share of the machine's CPU "
        "during it (the box may be shared; default: %(default)s); a negative value keeps every run",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries per run for --max-noise (default: %(default)s)",
    )
    parser.add_argument(
        "--redis-port",
        type=int,
        default=None,
        help="use the redis-server already on 127.0.0.1:PORT instead of starting one",
    )
    parser.add_argument(
        "--no-prefill",
        dest="prefill",
        action="store_false",
        help="do not SET every key of the keyspace first (GETs then mostly miss)",
    )
    parser.add_argument("--json", type=Path, default=None, metavar="FILE", help="save results")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="after the measured runs of each test and depth, do one more gateway run under "
        "py-spy; the profile and its top functions go to --out",
    )
    parser.add_argument(
        "--profile-format",
        choices=("raw", "speedscope", "flamegraph"),
        default="raw",
        help="py-spy output: raw (collapsed stacks, text; top functions are printed), "
        "speedscope (JSON) or flamegraph (SVG) (default: raw)",
    )
    parser.add_argument(
        "--profile-rate",
        type=int,
        default=200,
        help="py-spy samples per second (default: %(default)s)",
    )
    parser.add_argument(
        "--profile-args", default="", help="extra py-spy record arguments, e.g. '--native'"
    )
    parser.add_argument(
        "--reference",
        choices=("none", "nutcracker"),
        default="none",
        help="also run a reference proxy in front of the same Redis, in the same rounds: "
        "nutcracker is twemproxy (apt-get install nutcracker); the table gives the gateway's "
        "CPU per op as a multiple of its (default: none)",
    )
    parser.add_argument(
        "--counters",
        action="store_true",
        help="after the measured runs of each test and depth, one more run per proxy under "
        "strace -c (syscalls per op) that also counts the gateway's task steps per op",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="where configs, logs and profiles go (default: bench/out)",
    )
    parser.add_argument(
        "--run-timeout",
        type=float,
        default=600,
        help="seconds one redis-benchmark run may take (default: %(default)s)",
    )
    return parser


# --- processes -------------------------------------------------------------------------------


class Bench:
    def __init__(self, args: argparse.Namespace, stack: ExitStack) -> None:
        self.args = args
        self.stack = stack
        self.out: Path = args.out
        self.redis_port: int = 0
        self.redis_pid: int | None = None
        self.gateway: Gateway | None = None
        self.gateway_port = 0
        self.workers = 1
        self.gateway_processes = 0
        self.drain_timeout = 5.0
        self.benchmark = shutil.which("redis-benchmark") or ""
        self.last_profile: Path | None = None
        self.discarded: list[Run] = []
        self.reference: subprocess.Popen[bytes] | None = None
        self.reference_port = 0
        self.steps_file = self.out / f"task-steps-{os.getpid()}.txt"

    # redis ---------------------------------------------------------------------------------

    def start_redis(self) -> None:
        if self.args.redis_port is not None:
            self.redis_port = self.args.redis_port
            if not ping(self.redis_port):
                raise BenchError(f"no Redis answers PING on 127.0.0.1:{self.redis_port}")
        else:
            binary = shutil.which("redis-server")
            if binary is None:
                raise BenchError(INSTALL_SERVER)
            self.redis_port = free_port()
            workdir = self.stack.enter_context(tempfile.TemporaryDirectory(prefix="resmesh-bench-"))
            argv = [
                binary,
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", workdir,
            ]  # fmt: skip
            proc = spawn(
                argv,
                death_signal=signal.SIGKILL,
            )
            self.stack.callback(stop, proc, signal.SIGKILL)

            def ready() -> bool:
                if proc.poll() is not None:
                    raise BenchError(f"redis-server exited with code {proc.returncode}")
                return ping(self.redis_port)

            wait_until(ready, 10, f"redis-server on port {self.redis_port}")
        pid = int(info(self.redis_port, "server").get("process_id", "0"))
        self.redis_pid = pid if pid and Path(f"/proc/{pid}/stat").exists() else None

    def prefill(self) -> None:
        """SET every key redis-benchmark -r can pick (key:%012d), so GETs always hit."""
        value = b"x" * VALUE_SIZE
        with RespClient(self.redis_port, timeout=60) as client:
            for start in range(0, self.args.keyspace, 2000):
                batch = range(start, min(start + 2000, self.args.keyspace))
                client.pipeline([("SET", f"key:{i:012d}", value) for i in batch])

    def redis_calls(self, test: str) -> int | None:
        try:
            stats = info(self.redis_port, "commandstats").get(f"cmdstat_{test}", "")
        except (OSError, BenchError):
            return None
        fields = dict(part.split("=", 1) for part in stats.split(",") if "=" in part)
        return int(fields.get("calls", 0))

    # gateway -------------------------------------------------------------------------------

    def gateway_config(self) -> dict[str, Any]:
        node = f"127.0.0.1:{self.redis_port}"
        listen = f"127.0.0.1:{self.gateway_port}"
        if self.args.gateway_config is not None:
            base = yaml.safe_load(self.args.gateway_config.read_text()) or {}
            clusters = base.get("clusters") or {}
            if not clusters:
                raise BenchError(f"{self.args.gateway_config}: no clusters to start from")
            name, cluster = next(iter(clusters.items()))
            cluster = dict(cluster or {})
            cluster.update(
                protocol="redis", listen=listen, groups={"dc-a": [node]}, route={"dc-a": 100}
            )
            cluster.setdefault("mode", "replicated")
            gateway = dict(base.get("gateway") or {})
            config = {**base, "gateway": gateway, "clusters": {name: cluster}}
        else:
            gateway = {"app": "resmesh-bench", "admin": None, "drain_timeout": "5s"}
            config = {
                "gateway": gateway,
                "users": {},
                "clusters": {
                    "bench": {
                        "protocol": "redis",
                        "listen": listen,
                        "mode": "replicated",
                        "groups": {"dc-a": [node]},
                        "route": {"dc-a": 100},
                    }
                },
            }
        if self.args.workers is not None:
            gateway["workers"] = self.args.workers
        gateway.setdefault("workers", 1)
        gateway["admin"] = None  # never fight another gateway for the admin port
        self.workers = int(gateway["workers"])
        return config

    def start_gateway(self) -> None:
        self.gateway_port = free_port()
        config = self.gateway_config()
        config_path = self.out / f"gateway-{self.gateway_port}.yaml"
        env = {}
        if self.args.counters:
            env["RESMESH_TASK_STEPS"] = str(self.steps_file)  # resmesh/diagnostics.py
        port, stop_timeout = self.gateway_port, self.drain_timeout + 15
        self.gateway = Gateway(self.stack, config_path, port, stop_timeout=stop_timeout)
        self.gateway.start(config, ping, "answer PING", env=env)
        self.gateway_processes = len(process_tree(self.gateway.pid))
        if self.gateway_processes < self.workers:
            note(
                f"note: gateway.workers={self.workers} but the gateway runs only "
                f"{self.gateway_processes} process(es)"
            )

    def start_reference(self) -> None:
        """twemproxy in front of the same Redis: one pool, one server, one connection to it
        (its own default), hashing as it would for a sharded pool of one."""
        nutcracker = shutil.which("nutcracker") or shutil.which("nutcracker", path="/usr/sbin")
        if nutcracker is None:
            raise BenchError(INSTALL_NUTCRACKER)
        self.reference_port = free_port()
        conf = self.out / f"nutcracker-{self.reference_port}.yml"
        conf.write_text(
            yaml.safe_dump(
                {
                    "bench": {
                        "listen": f"127.0.0.1:{self.reference_port}",
                        "hash": "fnv1a_64",
                        "distribution": "ketama",
                        "redis": True,
                        "auto_eject_hosts": False,
                        "servers": [f"127.0.0.1:{self.redis_port}:1"],
                    }
                }
            )
        )
        log = conf.with_suffix(".log")
        proc = spawn(
            [nutcracker, "-c", str(conf), "-s", str(free_port()), "-o", str(log)],
            stdout=subprocess.DEVNULL,
        )
        self.reference = proc
        self.stack.callback(lambda: stop(proc, signal.SIGTERM, timeout=10))
        wait_until(lambda: ping(self.reference_port), 15, "nutcracker to answer PING")

    @property
    def gateway_exit(self) -> int | None:
        return None if self.gateway is None else self.gateway.exit

    def log_tail(self) -> str:
        return "" if self.gateway is None else self.gateway.log_tail()

    # one redis-benchmark run ---------------------------------------------------------------

    def run_once(self, target: str, test: str, pipeline: int, *, profile: bool = False) -> Run:
        port = {
            "direct": self.redis_port,
            "gateway": self.gateway_port,
            "reference": self.reference_port,
        }[target]
        gateway = None if self.gateway is None else self.gateway.proc
        proxy = {"gateway": gateway, "reference": self.reference}.get(target)
        gateway_pid = proxy.pid if proxy is not None else None
        requests = requests_for(self.args.requests, pipeline)
        argv = [
            self.benchmark,
            "-h", "127.0.0.1",
            "-p", str(port),
            "-c", str(self.args.clients),
            "-n", str(requests),
            "-r", str(self.args.keyspace),
            "-d", str(VALUE_SIZE),
            "-t", test,
            "-P", str(pipeline),
            "--csv",
        ]  # fmt: skip
        spy = None
        profile_path = None
        if profile:
            assert gateway_pid is not None
            spy, profile_path = self.start_profiler(gateway_pid, test, pipeline)

        calls0 = self.redis_calls(test)
        procs = len(process_tree(gateway_pid)) if gateway_pid else None
        procs0 = process_cpu_snapshot()
        busy0, irq0 = system_cpu_seconds()
        redis0 = cpu_seconds(self.redis_pid) if self.redis_pid else None
        gw0 = cpu_seconds(gateway_pid, tree=True) if gateway_pid else None
        bench0 = children_cpu_seconds()
        t0 = time.monotonic()
        try:
            result = subprocess.run(
                argv,
                capture_output=True,
                timeout=self.args.run_timeout,
                start_new_session=True,
                check=False,
            )
            wall = time.monotonic() - t0
            bench_cpu = children_cpu_seconds() - bench0
            gw_cpu = None if gw0 is None else cpu_seconds(gateway_pid or 0, tree=True) - gw0
            redis_cpu = None if redis0 is None else cpu_seconds(self.redis_pid or 0) - redis0
            busy1, irq1 = system_cpu_seconds()
            procs1 = process_cpu_snapshot()
        except subprocess.TimeoutExpired:
            raise BenchError(
                f"redis-benchmark against {target} ({test} -P {pipeline}) took more than "
                f"{self.args.run_timeout:g}s; gateway log:\n{self.log_tail()}"
            ) from None
        finally:
            if spy is not None:
                self.stop_profiler(spy)
        busy, irq = busy1 - busy0, irq1 - irq0
        profiler_cpu = 0.0
        if spy is not None and spy.pid in procs1:
            profiler_cpu = (procs1[spy.pid][1] - procs0.get(spy.pid, ("", 0))[1]) / CLK_TCK
        calls1 = self.redis_calls(test)

        row = parse_csv(result.stdout.decode(errors="replace"), test)
        if result.returncode != 0 or row is None:
            raise BenchError(
                f"redis-benchmark against {target} ({test} -P {pipeline}) failed "
                f"(exit {result.returncode}): {result.stderr.decode(errors='replace')[-2000:]}"
                f"{result.stdout.decode(errors='replace')[-2000:]}"
                + (f"\ngateway log:\n{self.log_tail()}" if target == "gateway" else "")
            )
        ours = {os.getpid(), *(process_tree(gateway_pid) if gateway_pid else ())}
        if self.redis_pid:
            ours.add(self.redis_pid)
        if spy is not None:
            ours.add(spy.pid)
        others, others_live = busiest_others(procs0, procs1, ours)
        other = busy - bench_cpu - (gw_cpu or 0) - (redis_cpu or 0) - profiler_cpu
        run = Run(
            target=target,
            test=test,
            pipeline=pipeline,
            requests=requests,
            rps=row["rps"],
            avg_ms=row["avg_latency_ms"],
            min_ms=row["min_latency_ms"],
            p50_ms=row["p50_latency_ms"],
            p95_ms=row["p95_latency_ms"],
            p99_ms=row["p99_latency_ms"],
            max_ms=row["max_latency_ms"],
            wall_s=wall,
            benchmark_cpu_s=bench_cpu,
            redis_cpu_s=redis_cpu,
            gateway_cpu_s=gw_cpu,
            gateway_processes=procs,
            other_cpu_s=other,
            irq_cpu_s=irq,
            other_top=others,
            profiler_cpu_s=profiler_cpu,
            redis_calls=calls1 - calls0 if calls0 is not None and calls1 is not None else None,
            profiled=profile,
        )
        extra = ""
        if run.gateway_us_per_op is not None:
            extra = f"  gateway {run.gateway_us_per_op:.1f} µs/op"
        if run.redis_calls is not None and run.redis_calls < requests:
            note(
                f"WARNING: Redis counted only {run.redis_calls} {test.upper()} calls of "
                f"{requests} sent to the {target}"
            )
        note(
            f"  {test.upper():3} -P {pipeline:<3} {target:7} {fmt_rps(run.rps):>7} ops/s  "
            f"p50/p99 {run.p50_ms:.2f}/{run.p99_ms:.2f} ms{extra}  "
            f"(noise {100 * run.noise:.0f}%{', profiled' if profile else ''})"
        )
        if run.noise > 0.05:
            busiest = ", ".join(f"{name} {cpu:.1f}s" for name, cpu in others if cpu >= 0.05)
            exited = run.other_cpu_s - others_live
            note(
                f"    other load: {run.other_cpu_s:.1f} cpu-s: {busiest or 'no live process'}"
                + (f"; {exited:.1f}s in processes that exited meanwhile" if exited >= 0.1 else "")
            )
        if profile_path is not None:
            self.last_profile = profile_path
        return run

    def measured(self, target: str, test: str, pipeline: int, *, profile: bool = False) -> Run:
        """``run_once``, retried while other processes load the box more than --max-noise."""
        max_noise = -1.0 if self.args.max_noise is None else self.args.max_noise
        best, discarded = quietest(
            lambda: self.run_once(target, test, pipeline, profile=profile),
            max_noise,
            self.args.retries,
        )
        self.discarded += discarded
        return best

    # syscalls and task steps ---------------------------------------------------------------

    def workers_pids(self, proc: subprocess.Popen[bytes]) -> list[int]:
        """The processes that serve: the workers (not a supervisor, which has no handler
        for the step-count signal)."""
        tree = process_tree(proc.pid)
        return [pid for pid in tree if pid != proc.pid] or [proc.pid]

    def task_steps(self, pids: list[int]) -> int:
        """The task steps the gateway's workers have counted so far (resmesh/diagnostics.py)."""
        before = self.steps_file.read_text() if self.steps_file.exists() else ""
        for pid in pids:
            os.kill(pid, signal.SIGUSR2)

        def reported() -> bool:
            text = self.steps_file.read_text() if self.steps_file.exists() else ""
            return len(text.splitlines()) >= len(before.splitlines()) + len(pids)

        wait_until(reported, 10, "the gateway's task-step counts")
        lines = self.steps_file.read_text().splitlines()[len(before.splitlines()) :]
        return sum(int(line.split()[1]) for line in lines)

    def count(self, target: str, test: str, pipeline: int) -> dict[str, Any]:
        """Task steps per op for the gateway (a plain run, counted by the gateway itself),
        then syscalls per op, by name too, in one more run under ``strace -c`` (which slows
        the process it traces, so its proxy batches more than in the measured runs: compare
        syscall figures with one another, not with the CPU columns)."""
        strace = shutil.which("strace")
        if strace is None:
            raise BenchError(INSTALL_STRACE)
        proc = self.gateway.proc if target == "gateway" and self.gateway else self.reference
        assert proc is not None
        pids = self.workers_pids(proc) if target == "gateway" else [proc.pid]
        steps: float | None = None
        if target == "gateway":
            before = self.task_steps(pids)
            run = self.run_once(target, test, pipeline)
            steps = (self.task_steps(pids) - before) / run.requests
        out = self.out / f"strace-{target}-{test}-P{pipeline}.txt"
        argv = [strace, "-c", "-f", "-o", str(out)]
        for pid in pids:
            argv += ["-p", str(pid)]
        tracer = spawn(argv, stdout=subprocess.DEVNULL, death_signal=signal.SIGINT)
        time.sleep(0.5)  # strace attaches (it prints nothing to wait for)
        run = self.run_once(target, test, pipeline)
        stop(tracer, signal.SIGINT, timeout=30)
        calls = _strace_calls(out.read_text())
        return {
            "syscalls_per_op": sum(calls.values()) / run.requests,
            "by_syscall": {name: count / run.requests for name, count in sorted(calls.items())},
            "task_steps_per_op": steps,
        }

    # py-spy --------------------------------------------------------------------------------

    def start_profiler(
        self, pid: int, test: str, pipeline: int
    ) -> tuple[subprocess.Popen[bytes], Path]:
        suffix = {"raw": "txt", "speedscope": "speedscope.json", "flamegraph": "svg"}
        name = f"profile-{self.gateway_port}-{test}-P{pipeline}"  # next to gateway-PORT.log
        path = self.out / f"{name}.{suffix[self.args.profile_format]}"
        proc = start_profiler(
            pid,
            path,
            self.stack,
            rate=self.args.profile_rate,
            subprocesses=self.workers > 1,
            fmt=self.args.profile_format,
            extra=self.args.profile_args.split(),
        )
        return proc, path

    def stop_profiler(self, proc: subprocess.Popen[bytes]) -> None:
        stop(proc, signal.SIGINT, timeout=60)  # py-spy writes its output on SIGINT


# --- parsing and reporting -------------------------------------------------------------------


def _strace_calls(text: str) -> dict[str, int]:
    """Calls per syscall from ``strace -c``'s table."""
    calls: dict[str, int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[0][0].isdigit() and parts[-1] != "total":
            calls[parts[-1]] = int(parts[3])
    return calls


def parse_csv(text: str, test: str) -> dict[str, float] | None:
    reader = csv.reader(io.StringIO(text))
    for record in reader:
        if len(record) == len(CSV_COLUMNS) and record[0].upper() == test.upper():
            return {col: float(val) for col, val in zip(CSV_COLUMNS[1:], record[1:], strict=True)}
    return None


def fmt_rps(value: float) -> str:
    return f"{value / 1000:.1f}k" if value < 1_000_000 else f"{value / 1e6:.2f}M"


def median(values: list[float]) -> float:
    return float(statistics.median(values))


def summarize(
    test: str, pipeline: int, direct: list[Run], gateway: list[Run], reference: list[Run]
) -> Row:
    def opt_median(values: list[float | None]) -> float | None:
        present = [v for v in values if v is not None]
        return median(present) if present else None

    direct_rps = median([r.rps for r in direct])
    gateway_rps = median([r.rps for r in gateway])
    return Row(
        test=test,
        pipeline=pipeline,
        requests=direct[0].requests,
        repeats=len(direct),
        direct_rps=direct_rps,
        gateway_rps=gateway_rps,
        ratio=gateway_rps / direct_rps,
        direct_p50_ms=median([r.p50_ms for r in direct]),
        direct_p99_ms=median([r.p99_ms for r in direct]),
        gateway_p50_ms=median([r.p50_ms for r in gateway]),
        gateway_p99_ms=median([r.p99_ms for r in gateway]),
        gateway_us_per_op=median([r.gateway_us_per_op or 0.0 for r in gateway]),
        direct_redis_us_per_op=opt_median([r.redis_us_per_op for r in direct]),
        gateway_redis_us_per_op=opt_median([r.redis_us_per_op for r in gateway]),
        max_noise=max(r.noise for r in [*direct, *gateway]),
        direct_rps_all=[r.rps for r in direct],
        gateway_rps_all=[r.rps for r in gateway],
        reference_rps=median([r.rps for r in reference]) if reference else None,
        reference_us_per_op=(
            median([r.gateway_us_per_op or 0.0 for r in reference]) if reference else None
        ),
    )


def print_table(rows: list[Row]) -> None:
    header = (
        "test",
        "P",
        "direct ops/s",
        "gateway ops/s",
        "ratio",
        "direct p50/p99 ms",
        "gateway p50/p99 ms",
        "gateway µs/op",
        *(("twemproxy µs/op", "gw/tw CPU") if any(r.reference_us_per_op for r in rows) else ()),
        "noise",
    )
    lines = [
        (
            row.test.upper(),
            str(row.pipeline),
            fmt_rps(row.direct_rps),
            fmt_rps(row.gateway_rps),
            f"{100 * row.ratio:.1f}%",
            f"{row.direct_p50_ms:.2f} / {row.direct_p99_ms:.2f}",
            f"{row.gateway_p50_ms:.2f} / {row.gateway_p99_ms:.2f}",
            f"{row.gateway_us_per_op:.1f}",
            *(
                (f"{row.reference_us_per_op:.1f}", _ratio(row))
                if any(r.reference_us_per_op for r in rows)
                else ()
            ),
            f"{100 * row.max_noise:.0f}%",
        )
        for row in rows
    ]
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    print("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)))
    for line in lines:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    print()
    for pipeline in dict.fromkeys(row.pipeline for row in rows):
        group = [row for row in rows if row.pipeline == pipeline]
        ratios = ", ".join(f"{row.test.upper()} {100 * row.ratio:.1f}%" for row in group)
        mean_ratio = statistics.fmean(row.ratio for row in group)
        mean_us = statistics.fmean(row.gateway_us_per_op for row in group)
        versus = ""
        if all(row.reference_us_per_op for row in group):
            mean_ref = statistics.fmean(row.reference_us_per_op or 0.0 for row in group)
            versus = f"; twemproxy {mean_ref:.1f} µs/op: {mean_us / mean_ref:.2f}x"
        print(
            f"P{pipeline}: mean gateway/direct ratio {100 * mean_ratio:.1f}% ({ratios}); "
            f"gateway CPU {mean_us:.1f} µs/op{versus}"
        )
    counted = [row for row in rows if row.counters]
    if counted:
        print()
        print("per op, one more run under strace -c:")
        for row in counted:
            assert row.counters is not None
            for target, numbers in row.counters.items():
                steps = numbers["task_steps_per_op"]
                top = ", ".join(
                    f"{name} {per:.2f}"
                    for name, per in sorted(numbers["by_syscall"].items(), key=lambda kv: -kv[1])[
                        :4
                    ]
                )
                print(
                    f"  {row.test.upper():3} -P {row.pipeline:<3} {target:9} "
                    f"syscalls {numbers['syscalls_per_op']:.2f}"
                    + (f", task steps {steps:.2f}" if steps is not None else "")
                    + f"  ({top})"
                )


def _ratio(row: Row) -> str:
    if not row.reference_us_per_op:
        return "-"
    return f"{row.gateway_us_per_op / row.reference_us_per_op:.2f}x"


def machine() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_at_start": os.getloadavg(),
    }


# --- main ------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    if shutil.which("redis-benchmark") is None:
        raise BenchError(INSTALL_BENCHMARK)
    if args.profile and args.profile_format != "raw":
        note("note: top functions are printed only for --profile-format raw")
    args.out.mkdir(parents=True, exist_ok=True)
    gitignore = args.out / ".gitignore"
    if args.out == DEFAULT_OUT and not gitignore.exists():
        gitignore.write_text("*\n")

    rows: list[Row] = []
    runs: list[Run] = []
    with ExitStack() as stack:
        bench = Bench(args, stack)
        bench.start_redis()
        if args.prefill:
            bench.prefill()
        bench.start_gateway()
        if args.reference != "none":
            bench.start_reference()
        redis_version = info(bench.redis_port, "server").get("redis_version", "?")
        benchmark_version = subprocess.run(
            [bench.benchmark, "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        revision = git_revision()
        note(
            f"resmesh {revision}; redis {redis_version} on :{bench.redis_port}, "
            f"gateway on :{bench.gateway_port} "
            f"(workers={bench.workers}, {bench.gateway_processes} processes), "
            f"{benchmark_version}, {os.cpu_count()} CPUs"
        )
        for pipeline in args.pipelines:
            for test in args.tests:
                direct: list[Run] = []
                gateway: list[Run] = []
                reference: list[Run] = []
                for _ in range(args.repeat):
                    direct.append(bench.measured("direct", test, pipeline))
                    gateway.append(bench.measured("gateway", test, pipeline))
                    if bench.reference is not None:
                        reference.append(bench.measured("reference", test, pipeline))
                runs += direct + gateway + reference
                row = summarize(test, pipeline, direct, gateway, reference)
                if args.counters:
                    row.counters = {"gateway": bench.count("gateway", test, pipeline)}
                    if bench.reference is not None:
                        row.counters["twemproxy"] = bench.count("reference", test, pipeline)
                if args.profile:
                    profiled = bench.measured("gateway", test, pipeline, profile=True)
                    runs.append(profiled)
                    row.profile = {"rps": profiled.rps, "file": str(bench.last_profile)}
                rows.append(row)
        assert bench.gateway is not None
        bench.gateway.stop()

    print()
    print_table(rows)
    if args.profile:
        for row in rows:
            if row.profile is None:
                continue
            print()
            path = Path(row.profile["file"])
            label = f"{row.test.upper()} -P {row.pipeline} ({fmt_rps(row.profile['rps'])} ops/s)"
            if args.profile_format == "raw":
                row.profile.update(print_profile(label, path))
            else:
                print(f"py-spy {label}: {path}")

    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "git": revision,
            "redis_version": redis_version,
            "benchmark_version": benchmark_version,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "gateway_workers": bench.workers,
            "gateway_exit": bench.gateway_exit,
            "rows": [asdict(row) for row in rows],
            "runs": [
                {
                    **asdict(run),
                    "gateway_us_per_op": run.gateway_us_per_op,
                    "redis_us_per_op": run.redis_us_per_op,
                    "noise": run.noise,
                }
                for run in [*runs, *bench.discarded]
            ],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        note(f"results saved to {args.json}")
    return 0 if bench.gateway_exit == 0 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.max_noise is not None and args.max_noise < 0:
        args.max_noise = None
    interrupt_on_signals()
    try:
        return run(args)
    except BenchError as error:
        note(f"bench/redis.py: {error}")
        return 1
    except KeyboardInterrupt:
        note("interrupted: stopped the gateway and redis-server")
        return 130


if __name__ == "__main__":
    sys.exit(main())
