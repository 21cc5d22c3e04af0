"""Prototypical Networks (Snell et al., 2017): classify by distance to class-mean embeddings.

Logits are negative squared Euclidean distances to the prototypes. `adapt` turns the prototypes
into the model's linear head (weight 2c, bias -|c|^2), which ranks classes exactly as the
distances do, so an adapted ProtoNet is an ordinary model a site can run and fine-tune.
"""

from __future__ import annotations

import torch

from common.algorithms.base import MetaAlgorithm
from common.functional import cross_entropy


def prototypes(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Class means (ways, D) of support embeddings (S, D) with labels in 0..ways-1, and which
    classes the support holds (ways,): with global labels (hospital tasks) a site has some of the
    label space only, and an absent class has no prototype."""
    classes = torch.arange(ways, device=labels.device)
    onehot = (labels.unsqueeze(1) == classes).to(embeddings.dtype)  # one_hot() does not vmap
    counts = onehot.sum(0)
    return (onehot.T @ embeddings) / counts.clamp(min=1).unsqueeze(1), counts > 0


ABSENT = -1e9  # the head bias of a class the support set does not hold


def prototype_head(embeddings: torch.Tensor, labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
    """The linear head that ranks classes as the nearest prototype does (weight 2c, bias
    -|c|^2). A class the support does not hold is never predicted (a finite bias, so the head
    can still be fine-tuned)."""
    protos, present = prototypes(embeddings, labels, ways)
    bias = (-(protos * protos).sum(-1)).masked_fill(~present, ABSENT)
    return {"head.weight": 2 * protos, "head.bias": bias}


def proto_logits(queries: torch.Tensor, protos: torch.Tensor) -> torch.Tensor:
    """-|q - c|^2 for every query q (Q, D) and prototype c (N, D)."""
    sq = (queries * queries).sum(-1, keepdim=True) - 2 * queries @ protos.T + (protos * protos).sum(-1)
    return -sq


class ProtoNet(MetaAlgorithm):
    name = "protonet"
    steps_adapt = False  # prototypes are class means: nothing to step
    head_from_support = True  # any number of classes: one prototype each

    def task_loss(self, meta, episode, grad_fn):  # noqa: ARG002 -- MetaAlgorithm's signature; no inner loop
        support_x, support_y, query_x, query_y = episode
        ways = max(self.model.config.num_classes, self.config.train_ways)  # training episodes may have more
        protos, present = prototypes(self.embed(meta, support_x), support_y, ways)
        logits = proto_logits(self.embed(meta, query_x), protos).masked_fill(~present, float("-inf"))
        return cross_entropy(logits, query_y), logits

    def adapt(self, meta, support_x, support_y, steps=None):  # noqa: ARG002 -- prototypes take no steps
        with torch.no_grad():
            head = prototype_head(self.embed(meta, support_x), support_y, self.model.config.num_classes)
        return {**self.model_params(meta), **head}
