"""How the tasks of a meta-batch are run: one after the other (`loop`), side by side on a few
CPU threads (`threads`), or batched into one program with `vmap` (`vmap`). All three give the same
meta-gradient (tested in float64); `chunk_size` bounds how many tasks are in memory at once.

Each task's meta-gradient is the gradient of the algorithm's `task_loss` with respect to the
meta-parameters: by reverse-mode autograd on leaf copies (loop, threads), or by `torch.func.grad`
under `vmap`, which cannot run the C kernels and so uses the algorithm without them.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol

import torch
from torch.func import grad, vmap

from common.config import MetaConfig
from common.functional import GradFn, Params, accuracy, autograd_grad, func_grad
from common.tasks import Episode, TaskBatch


@dataclass(frozen=True)
class MetaStep:
    """Result of one meta-batch: mean query loss, mean meta-gradient per meta-parameter."""

    loss: float
    grads: Params
    metrics: dict[str, float]
    num_tasks: int


class MetaAlgorithm(Protocol):
    """What running a meta-batch needs of an algorithm (`common.algorithms.base`)."""

    config: MetaConfig

    def task_loss(
        self, meta: Params, episode: tuple[torch.Tensor, ...], grad_fn: GradFn
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def without_kernels(self) -> MetaAlgorithm: ...


TaskResult = tuple[Params, torch.Tensor, torch.Tensor]  # gradients, query loss, query accuracy


def execution_mode(choice: str, device: torch.device) -> str:
    """`auto` is vmap on CUDA (one program for the batch) and threads on the CPU."""
    if choice != "auto":
        return choice
    return "vmap" if device.type == "cuda" else "threads"


def meta_gradient(algorithm: MetaAlgorithm, meta: Params, batch: TaskBatch) -> MetaStep:
    """Mean query loss over the batch's tasks and its gradient for every meta-parameter."""
    device = next(iter(meta.values())).device
    mode = execution_mode(algorithm.config.execution, device)
    grads = {k: torch.zeros_like(v) for k, v in meta.items()}
    losses, accs = [], []
    for chunk in batch.chunks(algorithm.config.chunk_size):
        chunk = chunk.to(device)
        results = (
            vmap_chunk(algorithm, meta, chunk)
            if mode == "vmap"
            else map_chunk(algorithm, meta, chunk, mode == "threads")
        )
        for task_grads, loss, acc in results:
            for k, g in task_grads.items():
                grads[k] += g
            losses.append(loss)
            accs.append(acc)
    n = len(batch)
    mean_loss = torch.stack(losses).mean().item()
    metrics = {"meta_loss": mean_loss, "query_acc": torch.stack(accs).mean().item()}
    return MetaStep(loss=mean_loss, grads={k: g / n for k, g in grads.items()}, metrics=metrics, num_tasks=n)


def task_gradient(algorithm: MetaAlgorithm, meta: Params, episode: Episode) -> TaskResult:
    """Meta-gradient of one task by reverse-mode autograd on leaf copies of `meta`."""
    leaves = {k: v.detach().requires_grad_() for k, v in meta.items()}
    with torch.enable_grad():
        loss, logits = algorithm.task_loss(leaves, episode.tensors(), autograd_grad)
        grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    grads_by_name = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
    return grads_by_name, loss.detach(), accuracy(logits.detach(), episode.query_y)


def map_chunk(algorithm: MetaAlgorithm, meta: Params, chunk: TaskBatch, threaded: bool) -> list[TaskResult]:
    if not threaded or len(chunk) == 1 or torch.get_num_threads() == 1:
        return [task_gradient(algorithm, meta, ep) for ep in chunk]
    # Second-order MAML on a few CPU cores is a long chain of small kernels that parallelize
    # poorly inside one task; running tasks side by side, one intra-op thread each, keeps every
    # core busy. The backbone's function never touches its module, so the threads share one
    # algorithm. Results come back in task order, so sums are deterministic.
    threads = torch.get_num_threads()

    def run(episode: Episode) -> TaskResult:
        torch.set_num_threads(1)
        return task_gradient(algorithm, meta, episode)

    try:
        with ThreadPoolExecutor(max_workers=min(threads, len(chunk)), thread_name_prefix="fedmeta-task") as pool:
            return list(pool.map(run, chunk))
    finally:
        torch.set_num_threads(threads)


def vmap_chunk(algorithm: MetaAlgorithm, meta: Params, chunk: TaskBatch) -> list[TaskResult]:
    portable = algorithm.without_kernels()

    def loss_and_aux(m: Params, *episode: torch.Tensor) -> tuple[torch.Tensor, tuple]:
        loss, logits = portable.task_loss(m, episode, func_grad)
        return loss, (loss, accuracy(logits, episode[3]))

    batched = vmap(grad(loss_and_aux, has_aux=True), in_dims=(None, 0, 0, 0, 0), randomness="error")
    grads, (loss, acc) = batched({k: v.detach() for k, v in meta.items()}, *chunk.tensors())
    return [({k: g[i] for k, g in grads.items()}, loss[i], acc[i]) for i in range(len(chunk))]
