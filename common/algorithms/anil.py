"""ANIL (Raghu et al., 2020): adapt only the head in the inner loop; the body is meta-learned.

Because the body does not change while adapting, support and query features are computed once
per task and the inner loop runs on the linear head alone: exact, and far cheaper than MAML.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from common.algorithms.maml import MAML
from common.functional import Params, subset


class ANIL(MAML):
    name = "anil"

    def features(self, meta: Params, x: torch.Tensor) -> torch.Tensor:
        return self.embed(meta, x)

    def adaptable(self, meta: Params) -> Params:
        return subset(meta, "head.")

    def logits(self, fast: Params, features: torch.Tensor) -> torch.Tensor:
        return F.linear(features, fast["head.weight"], fast["head.bias"])
