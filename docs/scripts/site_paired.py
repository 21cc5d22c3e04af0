"""Paired comparison against FedAvg + fine-tune on ONE held-out hospital, from the committed
per-episode scores (docs/results/scores/SCENARIO/heldout/NAME-SEED.json), seeds averaged per
episode as the headline does. For when the two hospitals cannot be pooled yet: each method's
episodes of SITE are checked byte-identical (their digests) to fine-tuning's, or it stops.

    .venv/bin/python docs/scripts/site_paired.py new-hospital-blood new-hospital-b [METHOD ...]
"""

import sys
from pathlib import Path

import numpy as np

from common.stats import paired_interval, t_interval
from simulation.benchmark import Scores, mean_over_seeds, read_scores, split_sites

REFERENCE = "fedavg+finetune"


def site_accuracy(runs: list[Scores], shots: int, site: str) -> np.ndarray:
    """The seed-averaged accuracy of SITE's episodes."""
    return split_sites(mean_over_seeds(runs, shots, "acc"), runs[0].digests[shots])[site]


def main(scenario: str, site: str, methods: list[str]) -> None:
    directory = Path("docs/results/scores", scenario, "heldout")
    runs = {m: [read_scores(p) for p in sorted(directory.glob(f"{m}-[0-9].json"))] for m in methods}
    reference = [read_scores(p) for p in sorted(directory.glob(f"{REFERENCE}-[0-9].json"))]
    print(f"| shots | method | {site} accuracy % (95% CI) | vs {REFERENCE}, points (95% CI) | seeds | episodes |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shots in reference[0].acc:
        digest = reference[0].digests[shots][site]
        base = site_accuracy(reference, shots, site)
        for name, scored in runs.items():
            if any(r.digests[shots][site] != digest for r in scored):
                sys.exit(f"{name}: its {shots}-shot episodes of {site} are not those {REFERENCE} was scored on")
            acc = site_accuracy(scored, shots, site)
            a, d = t_interval(acc), paired_interval(acc, base)
            print(
                f"| {shots} | {name} | {100 * a.mean:.1f} ± {100 * (a.high - a.mean):.1f} | "
                f"{d.points()} | {len(scored)} | {len(acc)} |"
            )


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:] or ["fomaml", "centralized-fomaml"])
