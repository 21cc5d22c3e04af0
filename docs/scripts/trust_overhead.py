"""What secure aggregation and differential privacy cost per training round: the same federation
(synthetic scenario, 6 training sites, width-32 Conv-4) run plain, with secure aggregation, and
with secure aggregation + site-noise DP, one after the other in this process. Prints a
markdown table: seconds per round (median over rounds), bytes sent up per round, ratios to plain.

    .venv/bin/python docs/scripts/trust_overhead.py [--rounds 4]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from common.runconfig import parse_run_config
from simulation.run import simulate

BASE = {
    "scenario": "synthetic",
    "ways": 5,
    "shots": 5,
    "queries": 15,
    "tasks-per-round": 4,
    "model-width": 32,
    "eval-every": 1000,
    "eval-tasks": 5,
    "outer-lr": 0.01,
}
MODES = {
    "plain": {},
    "secure aggregation": {"secure-aggregation": True},
    "secure aggregation + DP (site noise)": {"secure-aggregation": True, "dp-clip": 5.0, "dp-noise": "sites"},
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=4)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in MODES.items():
            out = Path(tmp) / name.replace(" ", "-")
            cfg = parse_run_config(
                {**BASE, **extra, "num-server-rounds": args.rounds, "eval-every": args.rounds, "out-dir": str(out)}
            )
            results = simulate(cfg)
            rounds = results["rounds"]
            rows.append(
                (
                    name,
                    statistics.median(r["seconds"] for r in rounds),
                    statistics.median(r["bytes"]["up"] for r in rounds),
                )
            )
    plain_s, plain_b = rows[0][1], rows[0][2]
    print("| mode | s / round | ratio | bytes up / round | ratio |\n| --- | --- | --- | --- | --- |")
    for name, seconds, up in rows:
        print(f"| {name} | {seconds:.2f} | {seconds / plain_s:.2f}x | {up:,.0f} | {up / plain_b:.2f}x |")


if __name__ == "__main__":
    main()
