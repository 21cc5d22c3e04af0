"""How often fine-tuning and a meta-model predict a class the new hospital does not have, and what
restricting their predictions to the support set's classes would change, on a hospital-task
scenario's VALIDATION episodes (the held-out sites are never loaded).

In hospital tasks the benchmark scores fine-tuning and the meta-models on the scenario's whole
label space (their trained heads), while the linear probe and the prototypes only ever predict
the support set's classes. A hospital knows which classes it has, so both could be restricted at
no cost; this measures by how much that would move each method, with the settings tuned.json
chose, before anyone changes the protocol.

    .venv/bin/python docs/scripts/absent_classes.py new-hospital docs/results/models [DATA_DIR] [EPISODES]

MODELS_DIR holds <scenario>/seed-0/{fedavg-supervised,fomaml}/model and <scenario>/tuned.json.
EPISODES per shots over the validation sites (default 100); one thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from simulation.adapters import FineTune, MetaLearned, support_classes
from simulation.benchmark import Protocol, draw_episodes


def main() -> None:
    scenario, models = sys.argv[1], Path(sys.argv[2]) / sys.argv[1]
    data_dir = sys.argv[3] if len(sys.argv) > 3 else "../shared/data/medmnist"
    count = int(sys.argv[4]) if len(sys.argv) > 4 else 100
    torch.set_num_threads(1)
    tuned = json.loads((models / "tuned.json").read_text())
    seed0 = models / "seed-0"
    adapters = {
        "fedavg+finetune": FineTune(seed0 / "fedavg-supervised" / "model", **tuned["finetune"]["best"]),
        "fomaml": MetaLearned(seed0 / "fomaml" / "model", **tuned["fomaml"]["best"]),
    }
    episodes = draw_episodes(Protocol(scenario, data_dir, (1, 5), 15, count, role="validation"))
    print(f"{scenario}, validation sites, seed-0 models, {count} episodes per shots")
    print("| shots | method | accuracy % | restricted to the support's classes % | predicted an absent class % |")
    print("| --- | --- | --- | --- | --- |")
    for shots, by_site in episodes.batches.items():
        for name, adapter in adapters.items():
            correct = restricted = absent = total = 0
            for batch in by_site.values():
                for i in range(len(batch)):
                    episode = batch[i]
                    logits = adapter.logits(episode, episodes.num_classes())
                    present = support_classes(episode, episodes.num_classes())
                    predicted = logits.argmax(-1)
                    masked = logits.masked_fill(~present, float("-inf")).argmax(-1)
                    correct += int((predicted == episode.query_y).sum())
                    restricted += int((masked == episode.query_y).sum())
                    absent += int((~present[predicted]).sum())
                    total += episode.query_y.numel()
            print(
                f"| {shots} | {name} | {100 * correct / total:.1f} | {100 * restricted / total:.1f} "
                f"| {100 * absent / total:.1f} |"
            )


if __name__ == "__main__":
    main()
