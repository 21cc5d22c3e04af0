"""Meta-SGD (Li et al., 2017): MAML whose inner learning rate is a learned tensor per weight.

The rates are meta-parameters named ``inner_lr.<weight name>``, start at `inner_lr` and get
their own meta-gradient, so a federation averages and updates them like any other weight.
"""

from __future__ import annotations

import torch

from common.algorithms.maml import MAML
from common.functional import Params

PREFIX = "inner_lr."


class MetaSGD(MAML):
    name = "meta-sgd"

    def init_meta_params(self) -> Params:
        weights = super().init_meta_params()
        rates = {PREFIX + k: torch.full_like(v, self.config.inner_lr) for k, v in weights.items()}
        return {**weights, **rates}

    def step_size(self, meta: Params, name: str) -> torch.Tensor:
        rates = meta[PREFIX + name]
        return rates if self.rate_scale == 1.0 else self.rate_scale * rates
