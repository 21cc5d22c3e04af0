"""Paired differences to FedAvg + fine-tune from an evaluation that stopped midway: every
method-seed's finished scores (NAME-SEED.json) and stopped ones (NAME-SEED.progress.json, the
episodes scored so far), per shots and site over the episodes EVERY method-seed has (the first n,
the same for all: episodes are scored in order), seed-averaged per episode, with a t interval.
For reports of an unfinished run only; the headline comes from `fedmeta benchmark evaluate`.

    .venv/bin/python docs/scripts/progress_paired.py RESULTS_DIR/scores/new-hospital/heldout

(e.g. a `docs/scripts/gpu_score.sh` run's RESULTS_DIR while its workers are still scoring)
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np

from common.stats import paired_interval
from simulation.benchmark import REFERENCE, read_scores, split_sites
from simulation.progress import Progress


def episodes_scored(path: Path) -> dict[tuple[int, str], np.ndarray]:
    """(shots, site) -> accuracy per episode scored, sites in name order, from either file kind."""
    if path.name.endswith(".progress.json"):
        return {where: np.array(parts[0].acc) for where, parts in Progress.scored(path).items()}
    scores = read_scores(path)
    return {
        (shots, site): part
        for shots, acc in scores.acc.items()
        for site, part in split_sites(acc, scores.digests[shots]).items()
    }


def main(directory: Path) -> None:
    runs: dict[str, list[dict]] = {}
    for path in sorted(directory.iterdir()):
        match = re.fullmatch(r"(.+)-(\d+)(\.progress)?\.json", path.name)
        if match:
            runs.setdefault(match.group(1), []).append(episodes_scored(path))
    print("| shots | site(s) | episodes | method | seeds | accuracy % | vs FedAvg + fine-tune, points (95% CI) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for shots in sorted({k for run in runs[REFERENCE] for k, _ in run}):
        # the sites every seed of the reference has begun; the methods that have them in every seed
        sites = sorted(set.intersection(*({s for k, s in run if k == shots} for run in runs[REFERENCE])))
        names = [n for n, seeds in runs.items() if all((shots, s) in run for run in seeds for s in sites)]
        count = {s: min(len(run[shots, s]) for n in names for run in runs[n]) for s in sites}
        means = {n: seed_mean(runs[n], shots, count) for n in names}
        for name in sorted(names, key=lambda n: -means[n].mean()):
            diff = paired_interval(means[name], means[REFERENCE])
            text = (
                "reference"
                if name == REFERENCE
                else f"{100 * diff.mean:+.1f} ({100 * diff.low:+.1f} to {100 * diff.high:+.1f})"
            )
            print(
                f"| {shots} | {', '.join(sites)} | {sum(count.values())} | {name} | {len(runs[name])} "
                f"| {100 * means[name].mean():.1f} | {text} |"
            )


def seed_mean(seeds: list[dict], shots: int, count: dict[str, int]) -> np.ndarray:
    """Per episode, the mean over seeds of the first `count[site]` episodes of each site."""
    return np.mean([np.concatenate([run[shots, s][:n] for s, n in count.items()]) for run in seeds], axis=0)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
