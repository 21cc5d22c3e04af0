"""How much faster the benchmark's training adapters are when they fit a batch of episodes at once
(vmapped, `simulation.adapters._trained_logits`) than one episode at a time with torch.optim.Adam,
in the same process on the same episodes; and how far apart their query logits end up.

    .venv/bin/python docs/scripts/bench_batched_fit.py MODEL_DIR [DATA_DIR] [--scenario S] [--steps N]

MODEL_DIR: a supervised FedAvg model (e.g. runs/headline/new-hospital/seed-0/fedavg-supervised/model).
Episodes come from the scenario's validation sites (never the held-out ones)."""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from common.tasks import TaskBatch
from simulation.adapters import Loaded, _batched, _trained_logits
from simulation.benchmark import Protocol, draw_episodes


def one_at_a_time(loaded: Loaded, batch: TaskBatch, steps: int, lr: float) -> torch.Tensor:
    model, out = loaded.model, []
    for i in range(len(batch)):
        episode = batch[i]
        leaves = {k: v.detach().clone().requires_grad_() for k, v in loaded.params.items()}
        optimizer = torch.optim.Adam(leaves.values(), lr=lr)
        support = model.prepare(episode.support_x)
        for _ in range(steps):
            optimizer.zero_grad()
            F.cross_entropy(model.logits(leaves, support), episode.support_y).backward()
            optimizer.step()
        with torch.no_grad():
            out.append(model.logits(leaves, model.prepare(episode.query_x)))
    return torch.stack(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir")
    parser.add_argument("data_dir", nargs="?", default="../shared/data/medmnist")
    parser.add_argument("--scenario", default="new-hospital")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--lr", type=float, default=3e-5)
    parser.add_argument("--episodes", type=int, default=32)
    args = parser.parse_args()
    torch.manual_seed(0)
    loaded = Loaded.from_dir(args.model_dir)
    print("| shots | episodes | one at a time (s) | batched (s) | speed-up | max logit difference |")
    print("| --- | --- | --- | --- | --- | --- |")
    for shots in (1, 5):
        protocol = Protocol(args.scenario, args.data_dir, (shots,), 15, 2 * args.episodes, role="validation")
        batch = next(iter(draw_episodes(protocol).batches[shots].values()))
        start = time.perf_counter()
        alone = one_at_a_time(loaded, batch, args.steps, args.lr)
        sequential = time.perf_counter() - start
        start = time.perf_counter()
        params = _batched(loaded.params, len(batch))
        together = _trained_logits(loaded.model, params, batch, [args.steps], args.lr)[args.steps]
        batched = time.perf_counter() - start
        gap = (together - alone).abs().max().item()
        print(
            f"| {shots} | {len(batch)} | {sequential:.1f} | {batched:.1f} | {sequential / batched:.2f}x | {gap:.1e} |"
        )


if __name__ == "__main__":
    main()
