"""Results summaries pool the sites' episodes correctly."""

import pytest

from server.report import summarize

SITES = [{"name": "a", "role": "train"}, {"name": "b", "role": "heldout"}, {"name": "c", "role": "heldout"}]


def metrics(acc, ci, n):
    return {
        "acc-after": acc,
        "acc-after-ci": ci,
        "acc-before": 0.5,
        "acc-before-ci": 0.0,
        "auc-after": acc,
        "auc-after-ci": ci,
        "loss-after": 1.0,
        "loss-after-ci": 0.1,
        "num-tasks": n,
    }


def test_summary_pools_only_heldout_sites_for_the_heldout_figure():
    summary = summarize(
        {"a": metrics(0.9, 0.01, 10), "b": metrics(0.6, 0.0, 10), "c": metrics(0.8, 0.0, 30)},
        {s["name"]: s["role"] for s in SITES},
    )
    mean, half, n = summary["heldout"]["acc-after"]
    assert mean == pytest.approx(0.75) and n == 40 and half > 0  # the spread between b and c widens the CI
    assert summary["train-sites"]["acc-after"][0] == pytest.approx(0.9)
