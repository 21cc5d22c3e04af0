"""`fedmeta adapt --against` at the benchmark's held-out hospitals: the committed `new-hospital`
FOMAML model (seed 0) against its FedAvg model fine-tuned, both with the settings tuned.json
chose on the validation hospitals, each hospital's own organs, 10 support draws per shots. What
a hospital running the command would read, set beside the benchmark's per-hospital figures
(docs/RESULTS.md), which score other episodes (15 queries per class, every head output).

    OMP_NUM_THREADS=1 .venv/bin/python docs/scripts/site_against.py ../shared/data/medmnist
"""

import json
import sys
from pathlib import Path

import torch

from common.personalize import personalize
from common.scenario import load_scenario, load_site
from common.stats import points
from simulation import site_compare
from simulation.adapters import best_settings

MODELS = Path("docs/results/models/new-hospital")
DRAWS = 10


def main(data_dir: str) -> None:
    torch.set_num_threads(1)
    tuned = json.loads((MODELS / "tuned.json").read_text())
    meta, finetune = best_settings(tuned, "fomaml"), best_settings(tuned, "finetune")
    model, against = MODELS / "seed-0" / "fomaml" / "model", MODELS / "seed-0" / "fedavg-supervised" / "model"
    scenario = load_scenario("new-hospital")
    print(f"FOMAML {meta}, FedAvg + fine-tune {finetune}; {DRAWS} support draws (--seed 0 to {DRAWS - 1})")
    print(
        "| hospital | classes | shots | FOMAML | FedAvg + fine-tune | difference (95% CI over draws) "
        "| balanced: FOMAML | FedAvg + fine-tune | difference |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for index in scenario.heldout_sites:
        site = load_site(scenario, index, data_dir)
        data = site.test.only(site.test.classes_with(6))  # the organs it holds, as head_by_name.py
        for shots in (1, 5):
            seeds = list(range(DRAWS))
            adapted = [
                personalize(model, data, shots, meta["steps"], s, lr_scale=meta.get("lr_scale", 1.0)) for s in seeds
            ]
            base = [site_compare.against(a, against, data, shots, s, finetune) for a, s in zip(adapted, seeds)]
            over = site_compare.over_draws([a.report for a in adapted], base, seeds)
            d, b = over["difference"], over["balanced_difference"]
            mean = lambda values: 100 * sum(values) / len(values)
            print(
                f"| {site.spec.name} | {len(data.classes)} | {shots} | {mean(over['meta_accuracy']):.1f}% "
                f"| {mean(over['against_accuracy']):.1f}% | {points(d['mean'], d['low'], d['high'])} "
                f"| {mean(over['meta_balanced_accuracy']):.1f}% | {mean(over['against_balanced_accuracy']):.1f}% "
                f"| {points(b['mean'], b['low'], b['high'])} |"
            )


if __name__ == "__main__":
    main(sys.argv[1])
