"""Governance on vs off on the same Redis load: runs ``bench/redis.py`` once per config and
prints the gateway throughput and CPU per op of each, and the on/off ratio (target >= 0.9x).

    python bench/governance.py [--workers 1] [extra bench/redis.py options]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run(config: str, extra: list[str]) -> list[dict[str, object]]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "results.json"
        command = [
            sys.executable,
            str(HERE / "redis.py"),
            "--gateway-config",
            str(HERE / config),
            "--json",
            str(out),
            *extra,
        ]
        subprocess.run(command, check=True)
        data = json.loads(out.read_text())
    rows: list[dict[str, object]] = data["rows"]
    return rows


def main() -> int:
    extra = sys.argv[1:]
    off = run("governance-off.yaml", extra)
    on = run("governance-on.yaml", extra)
    print("\ngovernance on vs off (gateway ops/s and CPU per op)")
    print(
        f"{'test':>5} {'P':>3} {'off ops/s':>11} {'on ops/s':>11} {'on/off':>7} "
        f"{'off µs/op':>10} {'on µs/op':>9}"
    )
    for before, after in zip(off, on, strict=True):
        ratio = float(str(after["gateway_rps"])) / float(str(before["gateway_rps"]))
        print(
            f"{before['test']:>5} {before['pipeline']:>3} {before['gateway_rps']:>11.0f} "
            f"{after['gateway_rps']:>11.0f} {ratio:>6.2f}x "
            f"{before['gateway_us_per_op']:>10.1f} {after['gateway_us_per_op']:>9.1f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
