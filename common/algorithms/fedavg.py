"""FedAvg on episodes: the non-meta-learning baseline the meta-learners must beat.

Each site takes one plain SGD step per task on the task's labelled examples (support and query
together, episode labels), starting from the global weights, and reports `global - local` as
its update. With the server's SGD at learning rate 1 (what the coordinator uses for this
algorithm) the weighted average of these updates is exactly FedAvg's weighted model average.
Evaluation is MAML's: accuracy before adaptation is FedAvg as is, after adaptation it is FedAvg
fine-tuned on the K shots, which is how Chen et al. (2018) evaluate FedAvg(Meta).
"""

from __future__ import annotations

import torch

from common.algorithms.execution import MetaStep
from common.algorithms.maml import MAML
from common.functional import Params, accuracy, cross_entropy
from common.tasks import TaskBatch


class FedAvg(MAML):
    name = "fedavg"
    first_order = True
    # sites send `global - local`: SGD at rate 1 on their average is FedAvg's model average
    outer_step = ("sgd", 1.0)

    def meta_gradient(self, meta: Params, batch: TaskBatch) -> MetaStep:
        device = next(iter(meta.values())).device
        local = {k: v.detach().clone() for k, v in self.model_params(meta).items()}
        losses, accs = [], []
        for episode in batch.to(device):
            x = torch.cat([episode.support_x, episode.query_x])
            y = torch.cat([episode.support_y, episode.query_y])
            leaves = {k: v.requires_grad_() for k, v in local.items()}
            with torch.enable_grad():
                logits = self.predict(leaves, x)
                loss = cross_entropy(logits, y)
                grads = torch.autograd.grad(loss, list(leaves.values()))
            local = {k: (v - self.config.local_lr * g).detach() for (k, v), g in zip(leaves.items(), grads)}
            losses.append(loss.detach())
            accs.append(accuracy(logits.detach(), y))
        mean_loss = torch.stack(losses).mean().item()
        update = {k: meta[k].detach() - local[k] for k in local}
        return MetaStep(
            loss=mean_loss,
            grads=update,
            metrics={"meta_loss": mean_loss, "query_acc": torch.stack(accs).mean().item()},
            num_tasks=len(batch),
        )
