"""AUC against hand-worked cases; confidence intervals against direct computation."""

import math

import pytest
import torch

from common.metrics import Z95, auc, mean_ci, pooled_mean_ci


def test_binary_auc_matches_hand_count():
    # positives' scores 0.9, 0.4; negatives' 0.5, 0.1: pairs won 1+1+0+1 = 3 of 4
    p = torch.tensor([0.9, 0.4, 0.5, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))], 1)
    assert auc(logits, torch.tensor([1, 1, 0, 0])).item() == pytest.approx(0.75)


def test_multiclass_auc_is_macro_one_vs_rest_and_perfect_when_separable():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert auc(torch.eye(3)[labels] * 5, labels).item() == 1.0
    assert auc(-torch.eye(3)[labels] * 5, labels).item() == 0.0
    assert math.isnan(auc(torch.zeros(3, 2), torch.tensor([1, 1, 1])).item())


def test_mean_ci_and_pooling_agree_with_direct_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=g), torch.rand(25, generator=g) + 0.3
    mean, half = mean_ci(a)
    assert mean == pytest.approx(a.double().mean().item())
    assert half == pytest.approx(Z95 * a.double().std().item() / math.sqrt(40))
    pooled = pooled_mean_ci([(*mean_ci(a), 40), (*mean_ci(b), 25)])
    direct = mean_ci(torch.cat([a, b]))
    assert pooled[0] == pytest.approx(direct[0]) and pooled[1] == pytest.approx(direct[1]) and pooled[2] == 65
