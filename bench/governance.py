"""Governance on vs off on the same Redis load, wall clock: throughput and gateway CPU per op.

Two gateways run side by side on one Redis, one per config (``governance-off.yaml``: the
passthrough preset; ``governance-on.yaml``: the cache preset plus cluster and per-command
limits, so every command pays for the limiter, the switchboard check, the breaker and the
outlier detector). Each round runs every workload against both, in alternating order, so
drift on a shared box (turbo, other tenants) hits both alike; medians over the rounds are
printed with the on/off ratio (target >= 0.9x). ``bench/governance_callgrind.py`` counts
instructions instead, for a comparison that does not move with the machine's load.

    python bench/governance.py [--rounds 5] [--pipelines 1,16] [--tests get,set]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import Gateway, cluster_config, cpu_seconds, exit_code, free_port, ping, start_redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CONFIGS = "off=governance-off.yaml,on=governance-on.yaml"


def start_gateway(
    stack: ExitStack, source: str, backends: list[int], work: Path
) -> tuple[int, int]:
    """The gateway for config ``source`` pointed at ``backends``: (its port, its pid)."""
    port = free_port()
    name = Path(source).stem
    gateway = Gateway(stack, work / Path(source).name, port, name=name, stop_timeout=10)
    gateway.start(cluster_config(HERE / source, port, backends), ping, "answer PING", timeout=20)
    return port, gateway.pid


def load(port: int, test: str, pipeline: int, requests: int, clients: int) -> float:
    """Run redis-benchmark; return the seconds it took."""
    started = time.perf_counter()
    subprocess.run(
        ["redis-benchmark", "-q", "-p", str(port), "-t", test, "-n", str(requests),
         "-P", str(pipeline), "-c", str(clients), "-r", "100000"],
        check=True,
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="runs per workload and config")
    parser.add_argument("--pipelines", default="1,16", help="pipeline depths (default 1,16)")
    parser.add_argument("--tests", default="get,set", help="redis-benchmark tests")
    parser.add_argument("--clients", type=int, default=50, help="redis-benchmark -c")
    parser.add_argument(
        "--nodes",
        type=int,
        default=1,
        help="Redis nodes in the cluster (2+: reads are balanced and hedged)",
    )
    parser.add_argument(
        "--configs",
        default=DEFAULT_CONFIGS,
        help="NAME=FILE,... gateway configs (in bench/ or a path); ratios are against the "
        f"first (default: {DEFAULT_CONFIGS})",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    configs = dict(item.split("=", 1) for item in args.configs.split(","))
    baseline = next(iter(configs))
    if shutil.which("redis-benchmark") is None:
        print("bench: redis-benchmark not found (apt-get install redis-tools)")
        return 2
    pipelines = [int(p) for p in args.pipelines.split(",")]
    workloads = [(t, p) for p in pipelines for t in args.tests.split(",")]
    # (config, test, pipeline) -> [(ops/s, gateway CPU µs/op)] per round
    samples: dict[tuple[str, str, int], list[tuple[float, float]]] = {}
    with ExitStack() as stack:
        backends = [start_redis(stack) for _ in range(args.nodes)]
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        gateways = {
            name: start_gateway(stack, src, backends, work) for name, src in configs.items()
        }
        for round_ in range(args.rounds):
            order = list(gateways) if round_ % 2 == 0 else list(reversed(gateways))
            for test, pipeline in workloads:
                requests = 100_000 if pipeline == 1 else 400_000
                for name in order:
                    port, pid = gateways[name]
                    cpu = cpu_seconds(pid)
                    seconds = load(port, test, pipeline, requests, args.clients)
                    used = cpu_seconds(pid) - cpu
                    sample = (requests / seconds, used / requests * 1e6)
                    samples.setdefault((name, test, pipeline), []).append(sample)
                    print(
                        f"round {round_ + 1} {name:>8} {test} -P {pipeline:<2} "
                        f"{sample[0]:>9.0f} ops/s {sample[1]:>6.2f} µs/op",
                        flush=True,
                    )
    rows = []
    print(f"\n{args.nodes} node(s), medians of {args.rounds} interleaved rounds")
    print(f"{'test':>5} {'P':>3} " + " ".join(
        f"{name + ' ops/s':>14} {'ratio':>6} {'µs/op':>6}" for name in configs
    ))  # fmt: skip
    for test, pipeline in workloads:
        row: dict[str, object] = {"test": test, "pipeline": pipeline}
        cells = []
        base_rps = statistics.median(s[0] for s in samples[(baseline, test, pipeline)])
        for name in configs:
            rps = statistics.median(s[0] for s in samples[(name, test, pipeline)])
            us_per_op = statistics.median(s[1] for s in samples[(name, test, pipeline)])
            row[name] = {"rps": rps, "us_per_op": us_per_op, "ratio": rps / base_rps}
            cells.append(f"{rps:>14.0f} {rps / base_rps:>5.2f}x {us_per_op:>6.2f}")
        rows.append(row)
        print(f"{test:>5} {pipeline:>3} " + " ".join(cells))
    if args.json is not None:
        summary = {"rounds": args.rounds, "nodes": args.nodes, "rows": rows}
        args.json.write_text(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(exit_code(main))
