"""FedMeta's outer step: the optimizer sees the averaged meta-gradient and keeps its state."""

import pytest
import torch
from flwr.app import ArrayRecord

from server.fedmeta import FedMeta


def params():
    g = torch.Generator().manual_seed(0)
    return {"w": torch.randn(3, 2, generator=g), "inner_lr.w": torch.full((3, 2), 0.1)}


@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_outer_steps_match_torch_optimizer_with_persistent_state(name):
    strategy = FedMeta(outer_optimizer=name, outer_lr=0.05)
    strategy.initialize(ArrayRecord(params()))
    reference = {k: v.clone() for k, v in params().items()}
    ref_opt = (torch.optim.Adam if name == "adam" else torch.optim.SGD)(reference.values(), lr=0.05)
    for step in range(3):
        grads = {k: torch.full_like(v, step + 1.0) * (1 if k == "w" else -1) for k, v in reference.items()}
        new = strategy.step(grads)
        for k, p in reference.items():
            p.grad = grads[k]
        ref_opt.step()
        for k in reference:
            torch.testing.assert_close(new[k], reference[k])


def test_mismatched_gradient_keys_are_rejected():
    strategy = FedMeta()
    strategy.initialize(ArrayRecord(params()))
    with pytest.raises(ValueError, match=r"\['inner_lr.w'\]"):
        strategy.step({"w": torch.zeros(3, 2)})
