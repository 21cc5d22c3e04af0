"""AUC, ROC and clinical rates against hand-worked cases; confidence intervals against direct
computation and published values; AUC memory linear in the number of images."""

import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from common.clinical import clinical_summary, markdown, roc_curves
from common.metrics import (
    auc,
    binary_auc,
    bootstrap_auc,
    mean_ci,
    per_class_rates,
    pooled_mean_ci,
    roc_curve,
    weighted_auc,
)
from common.stats import t_quantile, wilson_interval


def test_binary_auc_matches_hand_count():
    # positives' scores 0.9, 0.4; negatives' 0.5, 0.1: pairs won 1+1+0+1 = 3 of 4
    p = torch.tensor([0.9, 0.4, 0.5, 0.1])
    logits = torch.stack([torch.zeros(4), torch.log(p / (1 - p))], 1)
    assert auc(logits, torch.tensor([1, 1, 0, 0])).item() == pytest.approx(0.75)


def test_ties_count_one_half_as_in_the_pairwise_definition():
    g = torch.Generator().manual_seed(1)
    scores = torch.randint(0, 4, (60,), generator=g).double()  # many ties
    positive = torch.rand(60, generator=g) < 0.4
    diff = scores[positive][:, None] - scores[~positive][None, :]
    pairwise = ((diff > 0).double() + 0.5 * (diff == 0).double()).mean().item()
    assert binary_auc(scores, positive) == pytest.approx(pairwise)


def test_multiclass_auc_is_macro_one_vs_rest_and_perfect_when_separable():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert auc(torch.eye(3)[labels] * 5, labels).item() == 1.0
    assert auc(-torch.eye(3)[labels] * 5, labels).item() == 0.0
    assert math.isnan(auc(torch.zeros(3, 2), torch.tensor([1, 1, 1])).item())


def test_auc_of_20k_images_stays_within_100_mb():
    # the old pairwise AUC built a positives x negatives matrix: 10k x 10k floats is 400 MB
    script = """
import resource, torch
from common.metrics import auc
g = torch.Generator().manual_seed(0)
logits, labels = torch.randn(20000, 2, generator=g), torch.arange(20000) % 2
auc(logits[:10], labels[:10])  # imports and first-call allocations before the baseline
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
value = auc(logits, labels).item()
print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, value)
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True)
    grown_mb, value = map(float, out.stdout.split())
    assert grown_mb < 100, f"AUC of 20k scores grew the peak memory by {grown_mb:.0f} MB"
    assert 0.45 < value < 0.55  # random scores


def test_roc_curve_steps_through_every_threshold_to_one():
    fpr, tpr = roc_curve(torch.tensor([0.9, 0.8, 0.7, 0.7, 0.1]), torch.tensor([1, 0, 1, 0, 1]))
    # thresholds 0.9, 0.8, 0.7 (a tie: one step), 0.1
    assert fpr.tolist() == pytest.approx([0, 0, 0.5, 1, 1])
    assert tpr.tolist() == pytest.approx([0, 1 / 3, 1 / 3, 2 / 3, 1])
    area = float(np.trapezoid(tpr.numpy(), fpr.numpy()))
    assert area == pytest.approx(binary_auc(torch.tensor([0.9, 0.8, 0.7, 0.7, 0.1]), torch.tensor([1, 0, 1, 0, 1])))


def test_sensitivity_specificity_ppv_from_a_hand_confusion_matrix():
    # rows true, columns predicted: 40 sick found, 10 missed; 5 healthy flagged, 45 cleared
    rates = per_class_rates(torch.tensor([[45, 5], [10, 40]]))
    assert rates["sensitivity"][1].item() == pytest.approx(0.8)
    assert rates["specificity"][1].item() == pytest.approx(0.9)
    assert rates["ppv"][1].item() == pytest.approx(40 / 45)


def test_wilson_interval_matches_published_values_and_stays_honest_at_zero():
    # Newcombe (1998), Statistics in Medicine 17:857, Table I: 81/263 -> 0.2553 to 0.3662
    interval = wilson_interval(81, 263)
    assert (interval.low, interval.high) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    none_found = wilson_interval(0, 10)  # the normal approximation gives 0 +- 0
    assert none_found.low == 0 and none_found.high == pytest.approx(0.2775, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_mean_ci_uses_t_with_n_minus_1_degrees_of_freedom():
    x = torch.tensor([0.5, 0.6, 0.7, 0.4, 0.55] * 4)  # 20 episodes
    mean, half = mean_ci(x)
    assert t_quantile(19) == pytest.approx(2.093, abs=1e-3)  # not 1.96
    assert half == pytest.approx(2.093 * x.double().std().item() / math.sqrt(20), rel=1e-3)
    assert mean == pytest.approx(x.double().mean().item())


def test_pooling_agrees_with_direct_computation():
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(40, generator=g), torch.rand(25, generator=g) + 0.3
    pooled = pooled_mean_ci([(*mean_ci(a), 40), (*mean_ci(b), 25)])
    direct = mean_ci(torch.cat([a, b]))
    assert pooled[0] == pytest.approx(direct[0]) and pooled[1] == pytest.approx(direct[1]) and pooled[2] == 65


def test_a_weighted_auc_equals_the_auc_of_the_replicated_sample():
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 6, (40,), generator=g).double()  # ties across and within classes
    positive = torch.arange(40) % 3 == 0
    weights = np.random.default_rng(0).integers(0, 4, size=(5, 40))
    fast = weighted_auc(scores, positive, weights)
    for row, value in zip(weights, fast):
        index = torch.as_tensor(np.repeat(np.arange(40), row))
        assert value == pytest.approx(binary_auc(scores[index], positive[index]))


def test_bootstrap_auc_is_seeded_and_brackets_the_estimate():
    g = torch.Generator().manual_seed(2)
    labels = torch.arange(300) % 3
    logits = torch.nn.functional.one_hot(labels, 3).double() + torch.randn(300, 3, generator=g, dtype=torch.float64)
    first = bootstrap_auc(logits, labels, resamples=300, seed=3)
    assert first == bootstrap_auc(logits, labels, resamples=300, seed=3)
    assert first[0] == pytest.approx(auc(logits, labels).item())
    assert first[1] < first[0] < first[2] and first[2] - first[1] < 0.15


def test_clinical_summary_of_a_binary_site():
    truth = torch.tensor([0] * 50 + [1] * 50)
    predicted = torch.tensor([0] * 45 + [1] * 5 + [0] * 10 + [1] * 40)
    logits = torch.nn.functional.one_hot(predicted, 2).double() * 2
    summary = clinical_summary(logits, truth, ("normal", "malignant"), resamples=100)
    assert summary["positive_class"] == "malignant"
    assert summary["sensitivity"] == pytest.approx(0.8) and summary["specificity"] == pytest.approx(0.9)
    assert summary["accuracy"] == pytest.approx(0.85) and summary["balanced_accuracy"] == pytest.approx(0.85)
    low, high = summary["accuracy_ci"]
    assert low < 0.85 < high
    assert summary["per_class"]["malignant"]["cases"] == 50 and summary["confusion"] == [[45, 5], [10, 40]]
    page = markdown(summary, "test")
    assert "| sensitivity (malignant) | 80.0% |" in page and "| malignant | 50 | 45 |" in page
    assert list(roc_curves(logits, truth, ("normal", "malignant"))) == ["malignant"]
