"""The interface every meta-learning algorithm implements, and how a meta-batch is executed.

An algorithm is defined by one pure function, `task_loss(meta_params, episode, grad_fn)`: the
query loss after adapting to the episode's support set. Everything else follows from it: the
meta-gradient is its gradient with respect to the meta-parameters, averaged over tasks, and the
tasks of a meta-batch can be run one by one, on a few threads, or batched with `vmap`.
"""

from __future__ import annotations

import copy
import queue
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch.func import grad, vmap

from common.config import MetaConfig
from common.functional import GradFn, Params, accuracy, autograd_grad, cross_entropy, forward, func_grad, subset
from common.fastforward import FastForward
from common.metrics import auc
from common.models import MetaNet, init_params
from common.native.build import NativeKernels, NativeKernelsUnavailable, load_kernels
from common.tasks import Episode, TaskBatch

TaskResult = tuple[Params, torch.Tensor, torch.Tensor]  # gradients, query loss, query accuracy


@dataclass(frozen=True)
class MetaStep:
    """Result of one meta-batch: mean query loss, mean meta-gradient per meta-parameter."""

    loss: float
    grads: Params
    metrics: dict[str, float]
    num_tasks: int


class MetaAlgorithm(ABC):
    name: str = ""

    def __init__(self, model: MetaNet, config: MetaConfig) -> None:
        self.model = model
        self.config = config
        # the same function as the module, cheaper to differentiate twice (see fastforward.py)
        self.fast = FastForward(model, resolve_kernels(config.kernels)) if isinstance(model, MetaNet) else None
        self._replicas: list[MetaAlgorithm] = []  # per-thread copies: functional_call is not thread-safe
        self._transformable: MetaAlgorithm | None = None  # this algorithm without C kernels, for vmap

    @property
    def kernels(self) -> str:
        """Which norm/pool/ReLU implementation CPU tensors get: "native" or "torch"."""
        return "native" if self.fast is not None and self.fast.kernels is not None else "torch"

    def kernels_on(self, device: torch.device) -> str:
        """What tensors on `device` get: the C kernels run on the CPU only."""
        return self.kernels if device.type == "cpu" else "torch"

    # -- what each algorithm defines ------------------------------------------------------
    @abstractmethod
    def task_loss(
        self, meta: Params, episode: tuple[torch.Tensor, ...], grad_fn: GradFn
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(query loss, query logits) after adapting `meta` to the episode's support set."""

    @abstractmethod
    def adapt(self, meta: Params, support_x: torch.Tensor, support_y: torch.Tensor, steps: int | None = None) -> Params:
        """Model parameters adapted to a labelled support set (evaluation, personalization)."""

    def init_meta_params(self) -> Params:
        """The meta-parameters to learn, starting from the model's initial weights."""
        return init_params(self.model)

    def model_params(self, meta: Params) -> Params:
        """The entries of `meta` that are model weights (drops e.g. Meta-SGD's learning rates)."""
        names = dict(self.model.named_parameters())
        return {k: v for k, v in meta.items() if k in names}

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            return self.fast(params, self.fast.prepare(x))
        return forward(self.model, self.model_params(params), x)

    def embed(self, meta: Params, x: torch.Tensor) -> torch.Tensor:
        """Body features of `x` (the input of the linear head)."""
        if self.fast is not None:
            return self.fast.embed(meta, self.fast.prepare(x))
        return forward(self.model.body, subset(meta, "body.", strip=True), x)

    # -- meta-training --------------------------------------------------------------------
    def meta_gradient(self, meta: Params, batch: TaskBatch) -> MetaStep:
        """Mean query loss over the batch's tasks and its gradient for every meta-parameter."""
        device = next(iter(meta.values())).device
        mode = self.execution_mode(device)
        grads = {k: torch.zeros_like(v) for k, v in meta.items()}
        losses, accs = [], []
        for chunk in batch.chunks(self.config.chunk_size):
            chunk = chunk.to(device)
            results = (
                self._vmap_chunk(meta, chunk) if mode == "vmap" else self._map_chunk(meta, chunk, mode == "threads")
            )
            for task_grads, loss, acc in results:
                for k, g in task_grads.items():
                    grads[k] += g
                losses.append(loss)
                accs.append(acc)
        n = len(batch)
        loss = torch.stack(losses).mean().item()
        metrics = {"meta_loss": loss, "query_acc": torch.stack(accs).mean().item()}
        return MetaStep(loss=loss, grads={k: g / n for k, g in grads.items()}, metrics=metrics, num_tasks=n)

    def execution_mode(self, device: torch.device) -> str:
        mode = self.config.execution
        if mode != "auto":
            return mode
        return "vmap" if device.type == "cuda" else "threads"

    def task_gradient(self, meta: Params, episode: Episode) -> TaskResult:
        """Meta-gradient of one task by reverse-mode autograd on leaf copies of `meta`."""
        leaves = {k: v.detach().requires_grad_() for k, v in meta.items()}
        with torch.enable_grad():
            loss, logits = self.task_loss(leaves, episode.tensors(), autograd_grad)
            grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
        grads_by_name = {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(leaves.items(), grads)}
        return grads_by_name, loss.detach(), accuracy(logits.detach(), episode.query_y)

    def _map_chunk(self, meta: Params, chunk: TaskBatch, threaded: bool) -> list[TaskResult]:
        if not threaded or len(chunk) == 1 or torch.get_num_threads() == 1:
            return [self.task_gradient(meta, ep) for ep in chunk]
        # Second-order MAML on a few CPU cores is a long chain of small kernels that parallelize
        # poorly inside one task; running tasks side by side, one intra-op thread each, keeps
        # every core busy. Results come back in task order, so sums are deterministic.
        threads = torch.get_num_threads()
        workers = min(threads, len(chunk))
        idle: queue.SimpleQueue[MetaAlgorithm] = queue.SimpleQueue()
        for replica in self._thread_replicas(workers):
            idle.put(replica)

        def run(episode: Episode) -> TaskResult:
            torch.set_num_threads(1)
            replica = idle.get()
            try:
                return replica.task_gradient(meta, episode)
            finally:
                idle.put(replica)

        try:
            with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fedmeta-task") as pool:
                return list(pool.map(run, chunk))
        finally:
            torch.set_num_threads(threads)

    def _thread_replicas(self, workers: int) -> list[MetaAlgorithm]:
        """One algorithm per worker thread. FastForward never touches the module, so all can
        share `self`; `functional_call` swaps a module's parameters while it runs, so the
        generic path needs a private copy of the module per thread."""
        if self.fast is not None:
            return [self] * workers
        while len(self._replicas) < workers:
            replica = copy.copy(self)
            replica.model = copy.deepcopy(self.model)
            self._replicas.append(replica)
        return self._replicas[:workers]

    def _without_kernels(self) -> MetaAlgorithm:
        """This algorithm with PyTorch's operators only: C kernels cannot run under torch.func."""
        if self.kernels == "torch":
            return self
        if self._transformable is None:
            self._transformable = copy.copy(self)
            self._transformable.fast = self.fast.without_kernels()
        return self._transformable

    def _vmap_chunk(self, meta: Params, chunk: TaskBatch) -> list[TaskResult]:
        portable = self._without_kernels()

        def loss_and_aux(m: Params, *episode: torch.Tensor) -> tuple[torch.Tensor, tuple]:
            loss, logits = portable.task_loss(m, episode, func_grad)
            return loss, (loss, accuracy(logits, episode[3]))

        batched = vmap(grad(loss_and_aux, has_aux=True), in_dims=(None, 0, 0, 0, 0), randomness="error")
        grads, (loss, acc) = batched({k: v.detach() for k, v in meta.items()}, *chunk.tensors())
        return [({k: g[i] for k, g in grads.items()}, loss[i], acc[i]) for i in range(len(chunk))]

    # -- evaluation -----------------------------------------------------------------------
    def evaluate(self, meta: Params, batch: TaskBatch, steps: int | None = None) -> dict[str, torch.Tensor]:
        """Per-episode query accuracy, loss and AUC before and after adaptation, and the support
        set's accuracy before and after (how well the K shots themselves are fitted). CIs upstream."""
        device = next(iter(meta.values())).device
        keys = ("acc_before", "acc_after", "loss_after", "auc_after", "support_acc_before", "support_acc_after")
        rows: dict[str, list[torch.Tensor]] = {k: [] for k in keys}
        for episode in batch.to(device):
            adapted = self.adapt(meta, episode.support_x, episode.support_y, steps)
            with torch.no_grad():
                before = self.predict(meta, episode.query_x)
                after = self.predict(adapted, episode.query_x)
                rows["acc_before"].append(accuracy(before, episode.query_y))
                rows["acc_after"].append(accuracy(after, episode.query_y))
                rows["loss_after"].append(cross_entropy(after, episode.query_y))
                rows["auc_after"].append(auc(after, episode.query_y))
                rows["support_acc_before"].append(accuracy(self.predict(meta, episode.support_x), episode.support_y))
                rows["support_acc_after"].append(accuracy(self.predict(adapted, episode.support_x), episode.support_y))
        return {k: torch.stack(v).cpu() for k, v in rows.items()}


def resolve_kernels(choice: str) -> NativeKernels | None:
    """The C kernels for `MetaConfig.kernels`: "native" must load them (the error says what to
    install), "auto" loads them where this machine can build them, "torch" never does."""
    if choice == "torch":
        return None
    try:
        return load_kernels()
    except NativeKernelsUnavailable:
        if choice == "native":
            raise
        return None
