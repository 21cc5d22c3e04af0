"""One round's accepted meta-gradients into the step the coordinator takes.

The plain rule is the task-weighted mean (exact FedMeta); `median` and `trimmed-mean` are robust
to a faulty or hostile site (`server.robust`); with differential privacy (`server.privacy`) the
mean is uniform, clipped and noised, and every round is accounted. With fewer than
`min_train_sites` acceptable meta-gradients the meta-model does not move.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from common.functional import Params
from server.privacy import Privacy
from server.replies import TrainReply
from server.robust import combine


@dataclass(frozen=True)
class Aggregate:
    grads: Params | None  # None: too few acceptable meta-gradients, no step this round
    privacy: dict[str, float] | None = None  # the (epsilon, delta) spent so far, when private


@dataclass(frozen=True)
class Aggregation:
    rule: str = "mean"
    trim_fraction: float = 0.1
    min_train_sites: int = 1
    privacy: Privacy | None = None

    def enough(self, accepted: int) -> bool:
        return accepted >= max(1, self.min_train_sites)

    def combine(self, accepted: list[TrainReply], sampled: int) -> Aggregate:
        """The aggregate of the accepted replies of a round that sampled `sampled` sites."""
        if not self.enough(len(accepted)):
            return Aggregate(None)
        updates = [(r.update, r.weight) for r in accepted]
        if self.privacy is None:
            return Aggregate(combine(updates, self.rule, self.trim_fraction))
        sampled = max(sampled, len(updates))
        grads, multiplier = self.privacy.aggregate([u for u, _ in updates], sampled)
        return Aggregate(grads, self.privacy.account(multiplier, sampled))

    def secure_sum(self, sums: Params, weight: float, survivors: int, sampled: int) -> Aggregate:
        """The mean from a secure-aggregation sum: task-weighted, or under DP uniform over the
        sampled sites (the sites noised their shares) and accounted with the noise that arrived."""
        if not self.enough(survivors):
            return Aggregate(None)
        if self.privacy is None:
            return Aggregate({k: (v / weight).float() for k, v in sums.items()})
        grads = {k: (v / sampled).float() for k, v in sums.items()}
        return Aggregate(grads, self.privacy.account(self.privacy.received_multiplier(survivors, sampled), sampled))


def finite(grads: Params) -> bool:
    return all(bool(torch.isfinite(g).all()) for g in grads.values())
