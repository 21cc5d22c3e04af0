"""The scores a headline evaluation has finished so far, before every method and seed is in:
per method and shots, the mean accuracy over the seeds scored (each seed's too), and the paired
difference to FedAvg + fine-tune over the seeds *it* has so far, on the same episodes. For
progress reports only: the headline tables come from `fedmeta benchmark evaluate` once every
method-seed is scored.

    .venv/bin/python docs/scripts/partial_scores.py docs/results/rerun/scores/new-hospital/heldout
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from common.stats import paired_interval
from simulation.benchmark import REFERENCE, Scores, read_scores


def main() -> None:
    directory = Path(sys.argv[1])
    runs: dict[str, dict[int, Scores]] = {}
    for path in sorted(directory.glob("*.json")):
        match = re.fullmatch(r"(.+)-(\d+)\.json", path.name)
        if match and not path.name.endswith(".progress.json"):
            runs.setdefault(match[1], {})[int(match[2])] = read_scores(path)
    if REFERENCE not in runs:
        raise SystemExit(f"{directory}: no {REFERENCE} scores yet, nothing to compare with")
    for shots in sorted(next(iter(runs[REFERENCE].values())).acc):
        reference = np.mean([s.acc[shots] for s in runs[REFERENCE].values()], axis=0)
        print(f"{shots} shot(s); {REFERENCE} seeds {sorted(runs[REFERENCE])}")
        for name, seeds in sorted(runs.items()):
            acc = np.mean([s.acc[shots] for s in seeds.values()], axis=0)
            each = " / ".join(f"{100 * s.acc[shots].mean():.1f}" for s in seeds.values())
            diff = paired_interval(acc, reference)
            print(
                f"  {name:24s} seeds {sorted(seeds)}: {100 * acc.mean():.1f}% ({each}); vs {REFERENCE} "
                f"{100 * diff.mean:+.1f} points ({100 * diff.low:+.1f} to {100 * diff.high:+.1f})"
            )


if __name__ == "__main__":
    main()
