"""Governance on vs off, counted in CPU instructions per command (valgrind's callgrind).

Why instructions: on this 2-core box the wall-clock benchmark (``bench/governance.py``) swings
±20 % in µs/op between identical runs, more than the difference being measured. Callgrind
counts the instructions the gateway process executes, which repeat to within about 1 % whatever
else the machine does. Each config's gateway runs under callgrind; after a warm-up, each
workload runs between a counter reset (``callgrind_control -z``) and a dump
(``callgrind_control -d``), so a dump holds exactly that workload's instructions.

    python bench/governance_callgrind.py [--requests 20000]

Workloads: redis-benchmark GET/SET at -P 1 and -P 16 (-c 4), and a mixed pipeline of 16
(GET, SET, INCR, HGET repeated) from one connection, which the limiter admits with
per-operation counts. Prints instructions per command off and on and the ratio off/on: the
throughput ratio governance would cost on a CPU-bound gateway (target >= 0.9).
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    BenchError,
    Gateway,
    RespClient,
    cluster_config,
    exit_code,
    free_port,
    ping,
    start_redis,
    wait_until,
)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

#: (name, redis-benchmark test or None for the mixed client, pipeline depth, share of N)
WORKLOADS: tuple[tuple[str, str | None, int, float], ...] = (
    ("GET", "get", 1, 0.1),
    ("SET", "set", 1, 0.1),
    ("GET", "get", 16, 1.0),
    ("SET", "set", 16, 1.0),
    ("mixed", None, 16, 0.5),
)


def _mixed(port: int, commands: int) -> None:
    """Pipelines of 16 mixed commands, one after another on one connection."""
    batch = [("GET", "k"), ("SET", "k", "v"), ("INCR", "n"), ("HGET", "h", "f")] * 4
    with RespClient(port) as client:
        for _ in range(commands // len(batch)):
            client.pipeline(batch)


def _redis_benchmark(port: int, test: str, pipeline: int, commands: int, clients: int) -> None:
    subprocess.run(
        [
            "redis-benchmark",
            "-q",
            "-c",
            "4",
            "-p",
            str(port),
            "-t",
            test,
            "-n",
            str(commands),
            "-P",
            str(pipeline),
        ],
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _load(port: int, test: str | None, pipeline: int, commands: int, clients: int) -> None:
    if test is None:
        _mixed(port, commands)
    else:
        _redis_benchmark(port, test, pipeline, commands, clients)


def _control(pid: int, action: str) -> None:
    """Zero (``-z``) or dump (``-d``) the counters of the callgrind run ``pid``."""
    subprocess.run(["callgrind_control", action, str(pid)], check=True, stdout=subprocess.DEVNULL)


def _summary(path: Path) -> int:
    match = re.search(r"^summary: (\d+)", path.read_text(), re.MULTILINE)
    if match is None:
        raise BenchError(f"no instruction summary in {path}")
    return int(match.group(1))


def measure(
    source: str, backends: list[int], requests: int, clients: int, work: Path
) -> dict[str, float]:
    """Instructions per command for each workload, for the gateway config ``source``."""
    port = free_port()
    prefix = work / Path(source).stem
    callgrind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={prefix}.%p"]
    results: dict[str, float] = {}
    with ExitStack() as stack:
        gateway = Gateway(
            stack, work / f"{Path(source).name}.run.yaml", port, name=prefix.name, stop_timeout=120
        )
        config = cluster_config(HERE / source, port, backends)
        gateway.start(config, ping, "answer PING under callgrind", timeout=120, wrapper=callgrind)
        pid = gateway.pid
        for dumps, (name, test, pipeline, share) in enumerate(WORKLOADS, 1):
            commands = max(int(requests * share), 320)
            _load(
                port, test, pipeline, commands, clients
            )  # warm-up: connections, caches, hedge delays
            _control(pid, "-z")
            _load(port, test, pipeline, commands, clients)
            _control(pid, "-d")
            dump = Path(f"{prefix}.{pid}.{dumps}")
            wait_until(dump.exists, 30, f"callgrind dump {dump}")
            results[f"{name} P{pipeline}"] = _summary(dump) / commands
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000, help="commands at -P 16")
    parser.add_argument("--off", default="governance-off.yaml", help="config with governance off")
    parser.add_argument("--on", default="governance-on.yaml", help="config with governance on")
    parser.add_argument("--clients", type=int, default=4, help="redis-benchmark -c")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="Redis nodes in the cluster (2+: reads are balanced, so node choice and backup "
        "requests are measured too)",
    )
    args = parser.parse_args(argv)
    for tool in ("valgrind", "callgrind_control", "redis-benchmark"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} not found (apt-get install valgrind redis-tools)")
            return 2
    with ExitStack() as stack:
        backends = [start_redis(stack) for _ in range(args.nodes)]
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        off = measure(args.off, backends, args.requests, args.clients, work)
        on = measure(args.on, backends, args.requests, args.clients, work)
    print(f"\ngovernance on vs off, instructions per command (callgrind, {args.nodes} node(s))")
    print(f"{'workload':>10} {'off':>9} {'on':>9} {'off/on':>7}")
    for name in off:
        print(f"{name:>10} {off[name]:>9.0f} {on[name]:>9.0f} {off[name] / on[name]:>6.3f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code(main))
