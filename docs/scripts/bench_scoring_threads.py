"""How to spend 2 CPU cores on the benchmark's scoring: one process with two threads, or two
processes with one thread each (what `headline.sh` can run side by side: the meta-models' and
the baselines' scoring). Times FedAvg + fine-tune (100 steps, lr 3e-5) on 5 one-shot validation
episodes of new-hospital, after one warm-up episode, in four settings run in turn: 2 threads,
1 thread, two 1-thread processes at once, and the mistake to avoid: a 2-thread process beside a
1-thread one (kept busy until it is done), as when a 2-thread training or scoring runs beside a
one-thread scorer. Prints seconds per episode, the throughput ratio of two 1-thread processes
to one 2-thread process, and how much slower the 2-thread process is beside a busy core.

    .venv/bin/python docs/scripts/bench_scoring_threads.py MODEL_DIR [DATA_DIR]

MODEL_DIR: a supervised FedAvg model trained on new-hospital (e.g.
docs/results/models/new-hospital/seed-0/fedavg-supervised/model). Run it with nothing else busy.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

EPISODES = 5


def one(model: str, data: str, threads: int, episodes_: int = EPISODES) -> float:
    """Seconds per episode, in this process at `threads` threads, over `episodes_` episodes."""
    import torch

    from simulation.adapters import FineTune
    from simulation.benchmark import Protocol, draw_episodes

    torch.set_num_threads(threads)
    drawn = draw_episodes(Protocol("new-hospital", data, (1,), 15, 2 * (EPISODES + 1), role="validation"))
    episodes = [e for batch in drawn.batches[1].values() for e in batch][: EPISODES + 1]
    adapter = FineTune(Path(model), steps=100, lr=3e-5)
    adapter.logits(episodes[0], drawn.num_classes())  # warm-up
    start = time.perf_counter()
    for i in range(episodes_):
        adapter.logits(episodes[1 + i % EPISODES], drawn.num_classes())
    return (time.perf_counter() - start) / episodes_


def run(model: str, data: str, threads: int, copies: int = 1) -> list[float]:
    command = [sys.executable, __file__, model, data, "--child", str(threads)]
    children = [subprocess.Popen(command, stdout=subprocess.PIPE, text=True) for _ in range(copies)]
    return [float(child.communicate()[0]) for child in children]


def beside_busy_core(model: str, data: str) -> float:
    """Seconds per episode of a 2-thread process while a 1-thread one scores beside it throughout."""
    neighbour = subprocess.Popen(
        [sys.executable, __file__, model, data, "--child", "1", "100000"], stdout=subprocess.DEVNULL
    )
    try:
        return run(model, data, 2)[0]
    finally:
        neighbour.kill()
        neighbour.wait()


def main() -> None:
    if "--child" in sys.argv:
        print(one(sys.argv[1], sys.argv[2], int(sys.argv[4]), *(int(a) for a in sys.argv[5:6])))
        return
    model, data = sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "../shared/data/medmnist"
    two_threads = run(model, data, 2)[0]
    one_thread = run(model, data, 1)[0]
    side_by_side = run(model, data, 1, copies=2)
    oversubscribed = beside_busy_core(model, data)
    print(f"one process, 2 threads: {two_threads:.2f} s/episode")
    print(f"one process, 1 thread:  {one_thread:.2f} s/episode")
    print(f"two 1-thread processes at once: {side_by_side[0]:.2f} and {side_by_side[1]:.2f} s/episode")
    throughput = sum(1 / s for s in side_by_side) / (1 / two_threads)
    print(f"throughput, two 1-thread processes / one 2-thread process: {throughput:.2f}x")
    print(f"a 2-thread process beside a busy 1-thread one: {oversubscribed:.2f} s/episode")
    print(f"slowdown, 2 threads beside a busy core / 2 threads alone: {oversubscribed / two_threads:.1f}x")


if __name__ == "__main__":
    main()
