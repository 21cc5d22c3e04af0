"""A training run's own evaluations, round by round: the mean accuracy after adaptation on the
training, validation and held-out sites (each run's metrics.csv, written by `fedmeta simulate`
every `eval-every` rounds on `eval-tasks` tasks per site). For reading how a recipe trains; the
held-out column is a diagnosis, never a reported figure or a reason to choose a setting.

    .venv/bin/python docs/scripts/eval_curves.py docs/results/models/new-classes/seed-2/protonet \\
        docs/results/models/new-classes/seed-2/centralized-protonet
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

ROLES = ("train", "validation", "heldout")


def curves(run_dir: Path) -> dict[int, dict[str, float]]:
    """{round: {role: mean acc-after over that role's sites}} from `run_dir`/metrics.csv."""
    path = run_dir / "metrics.csv"
    if not path.is_file():
        sys.exit(f"{path} does not exist: give a run directory of `fedmeta simulate` (it holds metrics.csv)")
    values: dict[int, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["phase"] == "evaluate" and row["metric"] == "acc-after":
                values[int(row["round"])][row["role"]].append(float(row["value"]))
    return {r: {role: sum(v) / len(v) for role, v in by_role.items()} for r, by_role in sorted(values.items())}


def main(run_dirs: list[Path]) -> None:
    print("| run | round | " + " | ".join(f"{role} %" for role in ROLES) + " |")
    print("| --- | --- | " + " | ".join("---" for _ in ROLES) + " |")
    for run_dir in run_dirs:
        for server_round, by_role in curves(run_dir).items():
            cells = " | ".join(f"{100 * by_role[r]:.1f}" if r in by_role else "" for r in ROLES)
            print(f"| {run_dir} | {server_round} | {cells} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main([Path(a) for a in sys.argv[1:]])
