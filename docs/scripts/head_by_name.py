"""What taking a global-label model's head outputs by class name is worth to a new hospital
(`fedmeta adapt`, 2026-12-06): the committed `new-hospital` FOMAML model adapted at each held-out
hospital to the organs it holds, its head's outputs taken by name (now) or, as before, the first
C outputs whatever the classes (a copy of the model whose model.json names no scenario, so
nothing says its outputs are organs). The same support images, steps and rate for both; the
hospital's other images are scored. Numbers go in docs/SIMULATION.md (`fedmeta adapt`).

    OMP_NUM_THREADS=1 .venv/bin/python docs/scripts/head_by_name.py ../shared/data/medmnist
"""

import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch

from common.personalize import personalize
from common.scenario import load_scenario, load_site

MODEL = Path("docs/results/models/new-hospital/seed-0/fomaml/model")
TUNED = Path("docs/results/models/new-hospital/tuned.json")


def main(data_dir: str) -> None:
    torch.set_num_threads(1)
    best = json.loads(TUNED.read_text())["fomaml"]["best"]
    scenario = load_scenario("new-hospital")
    with tempfile.TemporaryDirectory() as tmp:
        unnamed = Path(tmp, "model")
        shutil.copytree(MODEL, unnamed)
        info = json.loads((unnamed / "model.json").read_text())
        info.pop("scenario")
        (unnamed / "model.json").write_text(json.dumps(info))
        print(f"{MODEL}, {best['steps']} steps at {best.get('lr_scale', 1.0)}x its inner rate (tuned.json)")
        print("| hospital | classes | shots | by name | first C outputs | difference |")
        print("| --- | --- | --- | --- | --- | --- |")
        for index in scenario.heldout_sites:
            site = load_site(scenario, index, data_dir)
            data = site.test.only(site.test.classes_with(6))  # the organs it holds, relabelled
            for shots in (1, 5):
                acc = {}
                for how, model in (("name", MODEL), ("slot", unnamed)):
                    runs = [
                        personalize(model, data, shots, best["steps"], seed, lr_scale=best.get("lr_scale", 1.0))
                        for seed in (0, 1, 2)
                    ]
                    acc[how] = 100 * sum(r.report["accuracy"] for r in runs) / len(runs)
                print(
                    f"| {site.spec.name} | {len(data.classes)} | {shots} | {acc['name']:.1f}% | {acc['slot']:.1f}% "
                    f"| {acc['name'] - acc['slot']:+.1f} |"
                )
    print("(mean over support draws --seed 0, 1, 2; each scored on every other image of the hospital's test split)")


if __name__ == "__main__":
    main(sys.argv[1])
