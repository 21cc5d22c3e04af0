"""Correctness of the meta-gradients: finite differences, closed forms, execution paths."""

import pytest
import torch
from torch import nn

from common.algorithms import build_algorithm
from common.config import ALGORITHMS
from common.functional import autograd_grad
from common.models import MetaNet
from common.tasks import TaskBatch
from tests.common.conftest import meta_config


def flat(params):
    return torch.cat([v.reshape(-1) for v in params.values()])


def mean_task_loss(algo, meta, batch: TaskBatch) -> torch.Tensor:
    return torch.stack([algo.task_loss(meta, ep.tensors(), autograd_grad)[0] for ep in batch]).mean()


def finite_difference(algo, meta, batch, eps=1e-6):
    out = {}
    for name, value in meta.items():
        grad = torch.zeros_like(value).reshape(-1)
        for i in range(value.numel()):
            shifted = []
            for sign in (1, -1):
                v = value.clone().reshape(-1)
                v[i] += sign * eps
                shifted.append(mean_task_loss(algo, {**meta, name: v.reshape(value.shape)}, batch).item())
            grad[i] = (shifted[0] - shifted[1]) / (2 * eps)
        out[name] = grad.reshape(value.shape)
    return out


def rel_err(a, b):
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd"])
def test_second_order_meta_gradient_matches_finite_differences(tiny_model, tiny_batch, algorithm):
    # Prepare
    algo = build_algorithm(tiny_model, meta_config(algorithm, execution="loop"))
    meta = algo.init_meta_params()
    # Execute
    analytic = algo.meta_gradient(meta, tiny_batch).grads
    numeric = finite_difference(algo, meta, tiny_batch)
    # Assert: exact to FD precision; the first-order gradient is not, so this test has teeth
    assert rel_err(analytic, numeric) < 1e-4
    first_order = build_algorithm(tiny_model, meta_config("fomaml", execution="loop"))
    fo = first_order.meta_gradient(meta, tiny_batch).grads
    assert rel_err({k: fo[k] for k in fo}, {k: numeric[k] for k in fo}) > 1e-2


def test_meta_sgd_learning_rates_get_their_own_gradient(tiny_model, tiny_batch):
    algo = build_algorithm(tiny_model, meta_config("meta-sgd", execution="loop"))
    meta = algo.init_meta_params()
    grads = algo.meta_gradient(meta, tiny_batch).grads
    rates = [k for k in grads if k.startswith("inner_lr.")]
    assert len(rates) == len(dict(tiny_model.named_parameters()))
    assert all(grads[k].abs().sum() > 0 for k in rates)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("execution", ["vmap", "threads"])
def test_batched_paths_equal_per_task_loop(tiny_model, tiny_batch, algorithm, execution):
    loop = build_algorithm(tiny_model, meta_config(algorithm, execution="loop"))
    other = build_algorithm(tiny_model, meta_config(algorithm, execution=execution, chunk_size=2))
    meta = loop.init_meta_params()
    expected, got = loop.meta_gradient(meta, tiny_batch), other.meta_gradient(meta, tiny_batch)
    assert got.grads.keys() == expected.grads.keys()
    for k in expected.grads:
        torch.testing.assert_close(got.grads[k], expected.grads[k], rtol=1e-9, atol=1e-12)
    assert got.loss == pytest.approx(expected.loss, rel=1e-12)


def test_chunk_size_does_not_change_the_result(tiny_model, tiny_batch):
    whole = build_algorithm(tiny_model, meta_config("maml", execution="vmap", chunk_size=8))
    chunked = build_algorithm(tiny_model, meta_config("maml", execution="vmap", chunk_size=1))
    meta = whole.init_meta_params()
    a, b = whole.meta_gradient(meta, tiny_batch).grads, chunked.meta_gradient(meta, tiny_batch).grads
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-10, atol=1e-12)


# -- closed form on a linear softmax classifier --------------------------------------------
def softmax_grad_and_hessian(w, x, y):
    """Gradient and Hessian of mean cross-entropy of logits z @ w.T, z = [x, 1], in closed form."""
    z = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
    p = torch.softmax(z @ w.T, 1)
    onehot = torch.eye(w.shape[0], dtype=x.dtype)[y]
    grad = (p - onehot).T @ z / len(x)
    hess = sum(torch.kron(torch.diag(pi) - torch.outer(pi, pi), torch.outer(zi, zi)) for pi, zi in zip(p, z)) / len(x)
    return grad, hess


class LinearNet(MetaNet):
    """A backbone with no body: the head alone, a linear softmax classifier on flat inputs."""

    def __init__(self, dim: int, ways: int) -> None:
        nn.Module.__init__(self)
        self.config = None
        self.body = nn.Flatten()
        self.head = nn.Linear(dim, ways)

    def features(self, params, inp, kernels=None):
        return inp.flatten(1)


def test_first_and_second_order_match_closed_form_on_linear_model():
    # Prepare: one inner step of MAML on a linear softmax classifier, weights [W | b]
    torch.manual_seed(3)
    ways, dim, lr = 3, 4, 0.5
    model = LinearNet(dim, ways).double()
    sx, qx = torch.randn(6, dim, dtype=torch.float64), torch.randn(9, dim, dtype=torch.float64)
    sy, qy = torch.arange(ways).repeat(2), torch.arange(ways).repeat(3)
    from common.tasks import Episode

    batch = TaskBatch.stack([Episode(sx, sy, qx, qy, torch.arange(ways))])
    w0 = torch.cat([model.head.weight, model.head.bias.unsqueeze(1)], 1).detach()
    # closed form
    gs, hs = softmax_grad_and_hessian(w0, sx, sy)
    w1 = w0 - lr * gs
    gq, _ = softmax_grad_and_hessian(w1, qx, qy)
    first = gq
    second = ((torch.eye(hs.shape[0], dtype=hs.dtype) - lr * hs) @ gq.reshape(-1)).reshape(gq.shape)
    # Execute
    results = {}
    for name in ("maml", "fomaml"):
        algo = build_algorithm(model, meta_config(name, inner_steps=1, inner_lr=lr, execution="loop"))
        g = algo.meta_gradient(algo.init_meta_params(), batch).grads
        results[name] = torch.cat([g["head.weight"], g["head.bias"].unsqueeze(1)], 1)
    # Assert
    torch.testing.assert_close(results["fomaml"], first, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(results["maml"], second, rtol=1e-10, atol=1e-12)
    assert (results["maml"] - results["fomaml"]).abs().max() > 1e-3


@pytest.mark.parametrize("algorithm", ["maml", "fomaml", "anil"])
def test_the_start_loss_adds_its_weight_times_the_gradient_at_the_start(tiny_model, tiny_batch, algorithm):
    """start-loss-weight w: meta-gradient = MAML's + w * the gradient of the query loss of the start
    itself, on every execution path."""
    plain = build_algorithm(tiny_model, meta_config(algorithm, execution="loop"))
    meta = plain.init_meta_params()
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in meta.items()}
    start = torch.stack(
        [
            torch.nn.functional.cross_entropy(plain.logits(plain.adaptable(leaves), plain.features(leaves, qx)), qy)
            for _, _, qx, qy in (ep.tensors() for ep in tiny_batch)
        ]
    ).mean()
    at_start = dict(zip(leaves, torch.autograd.grad(start, list(leaves.values()), allow_unused=True), strict=True))
    expected = {
        k: g + 0.5 * (at_start[k] if at_start[k] is not None else 0)
        for k, g in plain.meta_gradient(meta, tiny_batch).grads.items()
    }
    for execution in ("loop", "vmap"):
        weighted = build_algorithm(tiny_model, meta_config(algorithm, execution=execution, start_loss_weight=0.5))
        got = weighted.meta_gradient(meta, tiny_batch).grads
        for k in expected:
            torch.testing.assert_close(got[k], expected[k], rtol=1e-9, atol=1e-12)
    assert any((got[k] - plain.meta_gradient(meta, tiny_batch).grads[k]).abs().max() > 1e-6 for k in got)


def test_the_start_loss_is_refused_where_there_is_no_inner_loop():
    with pytest.raises(ValueError, match=r"algorithm='protonet'.*maml, fomaml, meta-sgd, anil, or leave it at 0"):
        meta_config("protonet", start_loss_weight=0.5)
    with pytest.raises(ValueError, match="finite number >= 0"):
        meta_config("fomaml", start_loss_weight=-1.0)
