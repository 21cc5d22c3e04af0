"""FedMeta: average the sites' meta-gradients (weighted by tasks) and take an outer optimizer step.

Flower's FedAvg averages what sites send; here sites send meta-gradients, not weights, so the
average is a gradient and the strategy owns the meta-parameters and an optimizer (Adam by
default) whose state persists across rounds. Meta-SGD's learned inner rates are entries of the
same dict and are updated like any weight.
"""

from __future__ import annotations

from collections.abc import Iterable
from logging import WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

WEIGHT_KEY = "num-tasks"


def _finite(message: Message) -> bool:
    return all(torch.isfinite(t).all() for r in message.content.array_records.values() for t in r.to_torch_state_dict().values())


class FedMeta(FedAvg):
    def __init__(self, outer_optimizer: str = "adam", outer_lr: float = 1e-3, eval_every: int = 1, **kwargs) -> None:
        super().__init__(weighted_by_key=WEIGHT_KEY, **kwargs)
        self.outer_optimizer = outer_optimizer
        self.outer_lr = outer_lr
        self.eval_every = eval_every
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None

    def initialize(self, arrays: ArrayRecord) -> None:
        """Take the meta-parameters to optimize (once: the optimizer state then persists)."""
        self.params = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        cls = torch.optim.Adam if self.outer_optimizer == "adam" else torch.optim.SGD
        self.optimizer = cls(self.params.values(), lr=self.outer_lr)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.optimizer is None:
            self.initialize(arrays)
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if server_round % self.eval_every:
            return []
        return super().configure_evaluate(server_round, arrays, config, grid)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        good = []
        for message in replies:
            if message.has_content() and not _finite(message):
                node = message.metadata.src_node_id
                log(WARNING, "round %s: dropped node %s's meta-gradient: it has non-finite values", server_round, node)
            else:
                good.append(message)
        grads, metrics = super().aggregate_train(server_round, good)
        if grads is None:
            return None, metrics
        return ArrayRecord(self.step(grads.to_torch_state_dict())), metrics

    def step(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One outer-optimizer step with the averaged meta-gradient; returns the new meta-parameters."""
        if self.optimizer is None:
            raise RuntimeError("FedMeta.step before initialize(): no meta-parameters to update")
        missing = self.params.keys() ^ grads.keys()
        if missing:
            raise ValueError(f"meta-gradient keys differ from the meta-parameters: {sorted(missing)}")
        for name, p in self.params.items():
            p.grad = grads[name].to(p.dtype)
        self.optimizer.step()
        return {k: p.detach().clone() for k, p in self.params.items()}
