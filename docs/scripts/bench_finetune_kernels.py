"""FedAvg + fine-tuning with and without the fused C kernels (common/native), in one process:
the benchmark's baselines adapt with them since they exist for the meta-learners. Fine-tunes a
supervised new-hospital model for 100 steps at lr 3e-5 on 3 validation episodes per shots, the
two settings in turn, twice each (one thread), and prints the time ratio and the largest
difference between the two settings' query logits.

    .venv/bin/python docs/scripts/bench_finetune_kernels.py MODEL_DIR [DATA_DIR]

MODEL_DIR: e.g. docs/results/models/new-hospital/seed-0/fedavg-supervised/model.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

from simulation.adapters import FineTune
from simulation.benchmark import Protocol, draw_episodes


def main() -> None:
    model = Path(sys.argv[1])
    data = sys.argv[2] if len(sys.argv) > 2 else "../shared/data/medmnist"
    torch.set_num_threads(1)
    drawn = draw_episodes(Protocol("new-hospital", data, (1, 5), 15, 6, role="validation"))
    adapters = {k: FineTune(model, steps=100, lr=3e-5, kernels=k) for k in ("torch", "native")}
    classes = drawn.num_classes()
    for shots, by_site in drawn.batches.items():
        episodes = [e for batch in by_site.values() for e in batch][:3]
        seconds = dict.fromkeys(adapters, 0.0)
        for _ in range(2):
            for name, adapter in adapters.items():
                start = time.perf_counter()
                for episode in episodes:
                    adapter.logits(episode, classes)
                seconds[name] += time.perf_counter() - start
        gap = max(
            (adapters["torch"].logits(e, classes) - adapters["native"].logits(e, classes)).abs().max().item()
            for e in episodes
        )
        per = {k: v / (2 * len(episodes)) for k, v in seconds.items()}
        print(
            f"{shots}-shot: torch {per['torch']:.2f} s/episode, native {per['native']:.2f} s/episode, "
            f"native runs {seconds['torch'] / seconds['native']:.2f}x as fast; largest logit difference {gap:.1e}"
        )


if __name__ == "__main__":
    main()
