"""Micro-benchmark of the governance policies' synchronous per-call methods, in ns per call.

These run once per Redis command (tens of thousands per second in one Python process), so each
must cost well under a microsecond. Every case runs its loop ``--n`` times, ``--repeat`` times,
and reports the best run; the first row is the cost of the bare loop (``for`` plus advancing a
float clock), which is included in every other row.

    python bench/policies.py
    python bench/policies.py --n 500000 --repeat 7 --json bench/out/policies.json
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from time import perf_counter_ns

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from resmesh.call import Outcome
from resmesh.policies.balance import (
    Balancer,
    ConsistentHashBalancer,
    LeastLoadedBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedBalancer,
)
from resmesh.policies.breaker import CircuitBreaker
from resmesh.policies.hedge import HedgeBudget, HedgeDelay
from resmesh.policies.limit import LimitConfig, Limiter, LimiterConfig, TokenBucket
from resmesh.policies.outlier import OutlierDetector
from resmesh.policies.retry import RetryBudget
from resmesh.policies.route import GroupRouter
from resmesh.policies.switch import Switch, Switchboard, SwitchMode
from resmesh.policies.window import LatencyHistogram, RollingCounter, RollingHistogram

#: The clock advances 1 µs per call: a million calls per simulated second, so windows rotate.
TICK = 1e-6


@dataclass(frozen=True, eq=False)
class Node:
    """Hashed by identity: a frozen dataclass's generated field-tuple ``__hash__`` costs ~100 ns
    per dict lookup, and balancers and detectors key their state by node."""

    address: str
    weight: int = 10

    def __str__(self) -> str:
        return self.address


NODES = tuple(Node(f"10.0.0.{i}:6379") for i in range(1, 4))


def bare_loop(n: int) -> int:
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
    return perf_counter_ns() - start


def limiter_admit_done(n: int) -> int:
    limiter = Limiter(
        "feed-cache",
        LimiterConfig(
            cluster=LimitConfig(rate=1e12, concurrency=1 << 30),
            operations={"GET": LimitConfig(rate=1e12, concurrency=1 << 30)},
        ),
    )
    admit, done = limiter.admit, limiter.done
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        if admit("GET", now) is None:
            done("GET")
    return perf_counter_ns() - start


def limiter_unlimited(n: int) -> int:
    limiter = Limiter("feed-cache", LimiterConfig())
    admit, done = limiter.admit, limiter.done
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        if admit("GET", now) is None:
            done("GET")
    return perf_counter_ns() - start


def token_bucket(n: int) -> int:
    take = TokenBucket(rate=1e12).try_take
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        take(now)
    return perf_counter_ns() - start


def breaker_allow_record(n: int) -> int:
    breaker = CircuitBreaker()
    allow, record = breaker.allow, breaker.record
    ok = Outcome.OK
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        if allow(now):
            record(ok, 0.0002, now)
    return perf_counter_ns() - start


def outlier_record_available(n: int) -> int:
    detector = OutlierDetector(NODES)
    record, available = detector.record, detector.available
    ok = Outcome.OK
    node = NODES[0]
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        available(NODES, now)
        record(node, ok, now)
    return perf_counter_ns() - start


def _pick(balancer: Balancer[Node], key: bytes | None) -> Callable[[int], int]:
    def run(n: int) -> int:
        pick = balancer.pick
        now = 0.0
        start = perf_counter_ns()
        for _ in range(n):
            now += TICK
            pick(NODES, key)
        return perf_counter_ns() - start

    return run


def least_loaded_pick_start_finish(n: int) -> int:
    balancer: LeastLoadedBalancer[Node] = LeastLoadedBalancer(random.Random(1))
    pick, begin, finish = balancer.pick, balancer.start, balancer.finish
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        node = pick(NODES)
        assert node is not None
        begin(node)
        finish(node)
    return perf_counter_ns() - start


def histogram_record(n: int) -> int:
    record = LatencyHistogram().record
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        record(0.000234)
    return perf_counter_ns() - start


def rolling_histogram_record(n: int) -> int:
    record = RollingHistogram().record
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        record(0.000234, now)
    return perf_counter_ns() - start


def hedge_delay_record_read(n: int) -> int:
    hedge = HedgeDelay()
    record, delay = hedge.record, hedge.delay
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        delay(now)
        record(0.000234, now)
    return perf_counter_ns() - start


def rolling_counter_add(n: int) -> int:
    add = RollingCounter().add
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        add(now, False, False)
    return perf_counter_ns() - start


def switch_decide_unswitched(n: int) -> int:
    decide = Switchboard([Switch("other", SwitchMode.MISS)]).decide
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        decide("feed-cache", "GET", False)
    return perf_counter_ns() - start


def switch_decide_switched(n: int) -> int:
    decide = Switchboard([Switch("feed-cache", SwitchMode.MISS)]).decide
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        decide("feed-cache", "GET", False)
    return perf_counter_ns() - start


def router_choose_split(n: int) -> int:
    choose = GroupRouter({"dc-a": 80, "dc-b": 20}, rng=random.Random(1)).choose
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        choose()
    return perf_counter_ns() - start


def router_choose_local(n: int) -> int:
    choose = GroupRouter({"dc-a": 50, "dc-b": 50}, local="dc-a").choose
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        choose()
    return perf_counter_ns() - start


def hedge_budget(n: int) -> int:
    budget = HedgeBudget()
    record_call, try_hedge = budget.record_call, budget.try_hedge
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        record_call()
        try_hedge()
    return perf_counter_ns() - start


def retry_budget(n: int) -> int:
    budget = RetryBudget()
    started, finished = budget.request_started, budget.request_finished
    now = 0.0
    start = perf_counter_ns()
    for _ in range(n):
        now += TICK
        started()
        finished()
    return perf_counter_ns() - start


CASES: dict[str, Callable[[int], int]] = {
    "(bare loop + clock)": bare_loop,
    "limit: admit+done (cluster+op rate+cap)": limiter_admit_done,
    "limit: admit+done (no limits)": limiter_unlimited,
    "limit: TokenBucket.try_take": token_bucket,
    "breaker: allow+record (closed, OK)": breaker_allow_record,
    "outlier: available+record (none ejected)": outlier_record_available,
    "balance: random pick (3 nodes)": _pick(RandomBalancer(random.Random(1)), None),
    "balance: round-robin pick": _pick(RoundRobinBalancer(), None),
    "balance: weighted pick": _pick(WeightedBalancer(), None),
    "balance: least-loaded pick+start+finish": least_loaded_pick_start_finish,
    "balance: consistent-hash pick (md5 key)": _pick(ConsistentHashBalancer(), b"user:12345"),
    "window: LatencyHistogram.record": histogram_record,
    "window: RollingHistogram.record": rolling_histogram_record,
    "window: RollingCounter.add": rolling_counter_add,
    "hedge: HedgeDelay delay+record": hedge_delay_record_read,
    "hedge: HedgeBudget record_call+try_hedge": hedge_budget,
    "retry: request_started+finished": retry_budget,
    "route: choose (80/20 split)": router_choose_split,
    "route: choose (local healthy)": router_choose_local,
    "switch: decide (cluster not switched)": switch_decide_unswitched,
    "switch: decide (switched)": switch_decide_switched,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200_000, help="calls per run (200000)")
    parser.add_argument("--repeat", type=int, default=5, help="runs per case; best kept (5)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    results: dict[str, float] = {}
    width = max(map(len, CASES))
    print(f"{'case':<{width}}  ns/call  (best of {args.repeat} x {args.n})")
    for name, case in CASES.items():
        best = min(case(args.n) for _ in range(args.repeat))
        results[name] = best / args.n
        print(f"{name:<{width}}  {results[name]:7.0f}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"python": sys.version, "ns_per_call": results}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
