"""What a meta-model predicts before and after it adapts, on a scenario's VALIDATION episodes (the
held-out sites are never loaded): per number of inner steps, the accuracy and how many distinct
classes it predicts per episode, against how many the episode holds. A meta-learned start that
scores at chance with one distinct prediction is not a classifier until its inner loop fits one.

    .venv/bin/python docs/scripts/start_predictions.py new-hospital \
        docs/results/models/new-hospital/seed-0/fomaml/model [DATA_DIR] [EPISODES]

DATA_DIR defaults to ../shared/data/medmnist, EPISODES (per site, 1 shot) to 10. One thread:
about 30 s on the new-hospital models.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from simulation.adapters import MetaLearned
from simulation.benchmark import Protocol, draw_episodes

STEPS = (0, 1, 2, 5, 40)


def main() -> None:
    scenario, model_dir = sys.argv[1], Path(sys.argv[2])
    data_dir = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/medmnist"
    per_site = int(sys.argv[4]) if len(sys.argv) > 4 else 10
    torch.set_num_threads(1)
    episodes = draw_episodes(Protocol(scenario, data_dir, (1,), 15, 2 * per_site, role="validation"))
    model = MetaLearned(model_dir)
    print("| site | steps | accuracy % | distinct predictions per episode | classes per episode |")
    print("| --- | --- | --- | --- | --- |")
    for site, batch in episodes.batches[1].items():
        correct, total = dict.fromkeys(STEPS, 0), 0
        distinct, held = dict.fromkeys(STEPS, 0), 0
        for i in range(len(batch)):
            episode = batch[i]
            logits = model.logits_at(episode, episodes.num_classes(), STEPS)
            total += episode.query_y.numel()
            held += episode.support_y.unique().numel()
            for steps, out in logits.items():
                predicted = out.argmax(-1)
                correct[steps] += int((predicted == episode.query_y).sum())
                distinct[steps] += predicted.unique().numel()
        for steps in STEPS:
            print(
                f"| {site} | {steps} | {100 * correct[steps] / total:.1f} | "
                f"{distinct[steps] / len(batch):.1f} | {held / len(batch):.1f} |"
            )


if __name__ == "__main__":
    main()
