"""The headline's held-out scores re-weighted by each new hospital's own case mix (2026-12-06).

The benchmark's episodes query up to 15 images of every class a hospital has, so its accuracy
weighs the classes about alike. A hospital sees its classes as often as it has them. This script
takes each method-seed's committed confusion counts at each new hospital (per-class recall over
all 600 episodes per shots) and averages the recalls two ways: alike (near what the benchmark
reports, where a class with fewer than 15 query images counts less) and weighted by the
hospital's own test-split class frequencies (what a hospital counting every case would see), for
each scenario's best FedMeta method and its centralized version against FedAvg + fine-tune.
Descriptive only: the counts pool the episodes, so there is no interval; the spread is over the
3 training seeds. Reads the committed scores and the hospitals' labels.

    .venv/bin/python docs/scripts/case_mix.py ../shared/data/medmnist
"""

import json
import sys
from pathlib import Path

import numpy as np

from common.scenario import load_scenario, load_site

SCORES = Path("docs/results/scores")
METHODS = {  # each scenario's best FedMeta method and its centralized version
    "new-hospital": ("fomaml", "centralized-fomaml"),
    "new-hospital-blood": ("fomaml", "centralized-fomaml"),
    "new-classes": ("protonet+finetune", "centralized-protonet+finetune"),
}
REFERENCE = "fedavg+finetune"


def recalls(method: str, scenario: str, shots: str, site: str, seed: int) -> np.ndarray:
    scores = json.loads((SCORES / scenario / "heldout" / f"{method}-{seed}.json").read_text())
    confusion = np.array(scores["site_confusion"][shots][site], dtype=float)
    confusion = confusion.reshape(int(np.sqrt(confusion.size)), -1)
    queried = confusion.sum(1)
    return np.divide(np.diag(confusion), queried, out=np.full(len(queried), np.nan), where=queried > 0)


def main(data_dir: str) -> None:
    print(
        "| scenario | hospital | shots | method | classes alike: − FedAvg + fine-tune | case mix: − FedAvg + fine-tune "
        "| case mix, per seed |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    both: dict[tuple, list[tuple[float, float]]] = {}  # (scenario, shots, method) -> per hospital
    for name in METHODS:
        scenario = load_scenario(name)
        for index in scenario.heldout_sites:
            site = load_site(scenario, index, data_dir)
            counts = np.bincount(site.test.labels.numpy(), minlength=scenario.num_labels).astype(float)
            shots_done = json.loads((SCORES / name / "heldout" / f"{REFERENCE}-0.json").read_text())["site_confusion"]
            for shots in sorted(shots_done, key=int):
                for method in METHODS[name]:
                    alike, mix = [], []
                    for seed in (0, 1, 2):
                        mine = recalls(method, name, shots, site.spec.name, seed)
                        base = recalls(REFERENCE, name, shots, site.spec.name, seed)
                        scored = ~np.isnan(mine) & ~np.isnan(base)
                        weights = counts[scored] / counts[scored].sum()
                        alike.append(100 * (mine[scored] - base[scored]).mean())
                        mix.append(100 * weights @ (mine[scored] - base[scored]))
                    print(
                        f"| {name} | {site.spec.name} | {shots} | {method} | {np.mean(alike):+.1f} "
                        f"| {np.mean(mix):+.1f} | {', '.join(f'{m:+.1f}' for m in mix)} |"
                    )
                    both.setdefault((name, shots, method), []).append((np.mean(alike), np.mean(mix)))
    # the headline weighs its two new hospitals alike (as many episodes each): so does this mean
    for (name, shots, method), values in both.items():
        alike, mix = np.mean(values, axis=0)
        print(f"| {name} | mean of the {len(values)} | {shots} | {method} | {alike:+.1f} | {mix:+.1f} | |")


if __name__ == "__main__":
    main(sys.argv[1])
