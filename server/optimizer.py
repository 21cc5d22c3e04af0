"""The coordinator's meta-parameters and the outer optimizer that moves them.

Sites send meta-gradients, not weights, so the coordinator owns the meta-parameters (a float32
master copy) and an optimizer (Adam by default) whose state persists across rounds and into the
checkpoint. Meta-SGD's learned inner learning rates are entries of the same dict and are updated
like any weight.
"""

from __future__ import annotations

import torch

from common.functional import Params

OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


class OuterOptimizer:
    def __init__(self, params: Params, kind: str = "adam", lr: float = 1e-3) -> None:
        if kind not in OPTIMIZERS:
            raise ValueError(f"outer-optimizer={kind!r}: choose one of {', '.join(OPTIMIZERS)}")
        self._params = {k: v.detach().clone().float() for k, v in params.items()}
        self._optimizer = OPTIMIZERS[kind](self._params.values(), lr=lr)
        self._lr = lr

    @property
    def params(self) -> Params:
        """The current meta-parameters (the optimizer's own tensors: do not modify)."""
        return self._params

    def step(self, grads: Params, lr_factor: float = 1.0) -> Params:
        """One step with the averaged meta-gradient, at `lr_factor` times the learning rate (the
        round's place in the schedule); returns a copy of the new meta-parameters."""
        missing = self._params.keys() ^ grads.keys()
        if missing:
            raise ValueError(f"meta-gradient keys differ from the meta-parameters: {sorted(missing)}")
        for group in self._optimizer.param_groups:
            group["lr"] = self._lr * lr_factor
        for name, p in self._params.items():
            p.grad = grads[name].to(p.dtype)
        self._optimizer.step()
        return self.snapshot()

    def snapshot(self) -> Params:
        return {k: p.detach().clone() for k, p in self._params.items()}

    def state(self) -> tuple[Params, dict]:
        """Meta-parameters and optimizer state (moments, step counts), for a checkpoint."""
        return self.snapshot(), self._optimizer.state_dict()

    def restore(self, params: Params, optimizer_state: dict) -> None:
        """Continue from a checkpoint: same meta-parameters, same moments and step counts."""
        missing = self._params.keys() ^ params.keys()
        if missing:
            raise ValueError(f"the checkpoint's meta-parameters differ from this model's: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, p in self._params.items():
                p.copy_(params[name])
        self._optimizer.load_state_dict(optimizer_state)
