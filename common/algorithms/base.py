"""The interface every meta-learning algorithm implements.

An algorithm is defined by one pure function, `task_loss(meta_params, episode, grad_fn)`: the
query loss after adapting to the episode's support set, and by `adapt` (the adapted weights for
a labelled support set). Everything else follows from them: the meta-gradient is the gradient of
`task_loss` with respect to the meta-parameters, averaged over tasks (how the tasks of a
meta-batch are run is `common.algorithms.execution`'s business), and evaluation adapts and
scores each episode.

The model is a backbone (`common.models.MetaNet`) whose function takes the parameters as an
argument, so nothing here mutates a module: an algorithm can be shared by threads.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from typing import Any

import torch

from common.algorithms import execution
from common.algorithms.execution import MetaStep
from common.config import MetaConfig
from common.functional import GradFn, Params, accuracy, cross_entropy
from common.metrics import auc
from common.models import MetaNet, init_params
from common.native.build import NativeKernels
from common.tasks import TaskBatch


class MetaAlgorithm(ABC):
    name: str = ""
    # how the coordinator applies the averaged update: None keeps the run's outer optimizer;
    # ("sgd", 1.0) for algorithms whose sites send `global - local` weights (FedAvg)
    outer_step: tuple[str, float] | None = None
    steps_adapt = True  # `adapt` takes gradient steps (their count is a setting); False: it has none
    head_from_support = False  # `adapt` builds the head from the support set alone, never reading the trained one

    def __init__(self, model: MetaNet, config: MetaConfig, kernels: NativeKernels | None = None) -> None:
        self.model = model
        self.config = config
        self.kernels = kernels  # the fused C ops for CPU tensors (common.native), or None

    @property
    def kernels_name(self) -> str:
        """Which norm/pool/ReLU implementation CPU tensors get: "native" or "torch"."""
        return "native" if self.kernels is not None else "torch"

    def kernels_on(self, device: torch.device) -> str:
        """What tensors on `device` get: the C kernels run on the CPU only."""
        return self.kernels_name if device.type == "cpu" else "torch"

    def without_kernels(self) -> MetaAlgorithm:
        """This algorithm on PyTorch's operators only: C kernels cannot run under torch.func."""
        if self.kernels is None:
            return self
        twin = copy.copy(self)
        twin.kernels = None
        return twin

    def for_round(self, server_round: int) -> MetaAlgorithm:
        """What computes round `server_round`'s meta-gradient: this algorithm, or during a
        first-order warm start (rounds <= `first_order_rounds`) its first-order twin."""
        return self.first_order_twin() if server_round <= self.config.first_order_rounds else self

    def first_order_twin(self) -> MetaAlgorithm:
        """This algorithm without second-order terms (itself when it has none)."""
        return self

    def with_rate_scale(self, factor: float) -> MetaAlgorithm:
        """This algorithm adapting at `factor` times its inner rate (a setting chosen at the new
        site, as fine-tuning's rate is); algorithms whose adaptation takes no steps have none."""
        if factor == 1.0:
            return self
        raise ValueError(f"{self.name} adapts without gradient steps: it has no inner rate to scale")

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

    # -- the backbone's function, with this algorithm's kernels ----------------------------
    def prepare(self, x: torch.Tensor) -> Any:
        """The backbone's per-batch input (computed once per task's support or query set)."""
        return self.model.prepare(x)

    def predict(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.model.logits(params, self.prepare(x), self.kernels)

    def embed(self, meta: Params, x: torch.Tensor) -> torch.Tensor:
        """Body features of `x` (the input of the linear head)."""
        return self.model.features(meta, self.prepare(x), self.kernels)

    # -- meta-training --------------------------------------------------------------------
    def meta_gradient(self, meta: Params, batch: TaskBatch) -> MetaStep:
        """Mean query loss over the batch's tasks and its gradient for every meta-parameter."""
        return execution.meta_gradient(self, meta, batch)

    def execution_mode(self, device: torch.device) -> str:
        return execution.execution_mode(self.config.execution, device)

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
