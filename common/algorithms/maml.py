"""MAML (Finn et al., 2017): learn an initialization from which a few SGD steps adapt to a task.

The meta-gradient differentiates through every inner step (second order), so it includes the
Hessian terms that a copy-and-step implementation silently drops.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch

from common.algorithms.base import MetaAlgorithm
from common.functional import GradFn, Params, autograd_grad, cross_entropy


class MAML(MetaAlgorithm):
    name = "maml"
    first_order = False
    rate_scale = 1.0  # times the inner rate at adaptation (with_rate_scale); meta-training keeps 1

    def with_rate_scale(self, factor: float) -> MAML:
        """The same algorithm stepping at `factor` times its rate (Meta-SGD: its learned rates)."""
        if not (math.isfinite(factor) and factor > 0):
            raise ValueError(f"an inner-rate scale of {factor}: give a positive, finite factor (1 keeps the rate)")
        if factor == self.rate_scale:
            return self
        twin = copy.copy(self)
        twin.rate_scale = factor
        return twin

    def first_order_twin(self) -> MAML:
        """The same algorithm (Meta-SGD's rates, ANIL's frozen body included) with first-order
        meta-gradients: the inner-loop gradients treated as constants."""
        if self.first_order:
            return self
        twin = copy.copy(self)
        twin.first_order = True
        return twin

    # Hooks that FOMAML, Meta-SGD and ANIL override; MAML adapts every weight of the model.
    def features(self, meta: Params, x: torch.Tensor) -> Any:  # noqa: ARG002 -- hook: ANIL reads meta
        """What the adaptable part of the model sees: the backbone's prepared input for MAML."""
        return self.prepare(x)

    def adaptable(self, meta: Params) -> Params:
        return self.model_params(meta)

    def logits(self, fast: Params, features: Any) -> torch.Tensor:
        return self.model.logits(fast, features, self.kernels)

    def step_size(self, meta: Params, name: str) -> torch.Tensor | float:  # noqa: ARG002 -- hook: Meta-SGD reads both
        return self.rate_scale * self.config.inner_lr

    def inner_loop(
        self, meta: Params, features: Any, labels: torch.Tensor, steps: int, grad_fn: GradFn, create_graph: bool
    ) -> Params:
        fast = self.adaptable(meta)
        for _ in range(steps):
            grads = grad_fn(lambda p: cross_entropy(self.logits(p, features), labels), fast, create_graph)
            fast = {k: p - self.step_size(meta, k) * grads[k] for k, p in fast.items()}
        return fast

    def task_loss(self, meta, episode, grad_fn):
        support_x, support_y, query_x, query_y = episode
        fast = self.inner_loop(
            meta, self.features(meta, support_x), support_y, self.config.inner_steps, grad_fn, not self.first_order
        )
        query = self.features(meta, query_x)
        logits = self.logits(fast, query)
        loss = cross_entropy(logits, query_y)
        if self.config.start_loss_weight:  # the start must classify too, not only adapt fast
            start = self.logits(self.adaptable(meta), query)
            loss = loss + self.config.start_loss_weight * cross_entropy(start, query_y)
        return loss, logits

    def adapt(self, meta, support_x, support_y, steps=None):
        steps = self.config.eval_inner_steps if steps is None else steps
        with torch.enable_grad():
            fast = self.inner_loop(meta, self.features(meta, support_x), support_y, steps, autograd_grad, False)
        return {**self.model_params(meta), **{k: v.detach() for k, v in fast.items()}}
