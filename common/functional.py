"""Parameters as plain dicts, and the two ways fedmeta differentiates a loss with respect to them.

`autograd_grad` uses `torch.autograd.grad` on leaf tensors: the fastest path on CPU for
second-order MAML. `func_grad` uses `torch.func.grad`: it composes with `vmap`, the fast path on
GPU. Both have the signature `(loss_fn, params, create_graph) -> grads`; with
`create_graph=False` the result is detached, which is what makes first-order MAML first-order.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

Params = dict[str, torch.Tensor]
LossFn = Callable[[Params], torch.Tensor]
GradFn = Callable[[LossFn, Params, bool], Params]


def tensor_sum(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Python's `sum` of tensors (0 plus each in turn), typed for the non-empty iterables it is given."""
    return cast(torch.Tensor, sum(tensors))


def autograd_grad(loss_fn: LossFn, params: Params, create_graph: bool) -> Params:
    leaves = {k: v if v.requires_grad else v.detach().requires_grad_() for k, v in params.items()}
    with torch.enable_grad():
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss, list(leaves.values()), create_graph=create_graph)
    return dict(zip(leaves, grads))


def func_grad(loss_fn: LossFn, params: Params, create_graph: bool) -> Params:
    grads = torch.func.grad(loss_fn)(params)
    return grads if create_graph else {k: g.detach() for k, g in grads.items()}


def forward(module: nn.Module, params: Params, x: torch.Tensor) -> torch.Tensor:
    """Run `module` with `params` in place of its own parameters; the module is never changed."""
    return functional_call(module, params, (x,))


def subset(params: Params, prefix: str, strip: bool = False) -> Params:
    """The entries whose name starts with `prefix` (e.g. ``"head."``), optionally without it."""
    cut = len(prefix) if strip else 0
    return {k[cut:]: v for k, v in params.items() if k.startswith(prefix)}


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return (logits.argmax(dim=-1) == labels).float().mean()
