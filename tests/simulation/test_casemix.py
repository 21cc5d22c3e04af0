"""Accuracy weighted by a site's case mix: the weights are the site's class counts in the split its
episodes come from, and a method that gains on rare classes and loses on common ones is shown
trailing there while it leads with the classes weighed alike."""

import json

import numpy as np
import pytest
import torch

from common.scenario import load_scenario, load_site
from simulation.benchmark import Protocol, Scores, draw_episodes
from simulation.casemix import MEAN, markdown, rows, weigh, write_case_mix


def confusion(recall: list[float], queries: int = 20) -> np.ndarray:
    """Counts with `queries` per class (none where recall is NaN), the misses on the next class."""
    n = len(recall)
    counts = np.zeros((n, n), dtype=int)
    for c, r in enumerate(recall):
        if not np.isnan(r):
            right = round(r * queries)
            counts[c, c], counts[c, (c + 1) % n] = right, queries - right
    return counts


def scores(name: str, by_site: dict[str, list[float]], shots: int = 1) -> Scores:
    per_site = {site: confusion(r) for site, r in by_site.items()}
    return Scores(name, {shots: np.zeros(2)}, site_confusion={shots: per_site})


def test_weigh_a_hand_computed_case():
    # recalls 1.0, 0.5 and an unqueried class; the site holds 90, 10 and 5 images of them
    w = weigh(confusion([1.0, 0.5, np.nan]), np.array([90, 10, 5]))
    assert w.alike == pytest.approx(0.75)
    assert w.case_mix == pytest.approx((90 * 1.0 + 10 * 0.5) / 100)  # the unqueried class weighs nothing


def test_weigh_refuses_counts_of_another_split():
    with pytest.raises(ValueError, match=r"classes \[1\] were queried but the site's counts hold none"):
        weigh(confusion([1.0, 0.5]), np.array([10, 0]))
    with pytest.raises(ValueError, match="no class was queried"):
        weigh(np.zeros((2, 2)), np.array([1, 1]))


def test_a_lead_on_rare_classes_is_a_loss_at_the_site():
    counts = {"a": np.array([80, 20]), "b": np.array([50, 50])}
    meta = [scores("meta", {"a": [0.65, 0.95], "b": [0.8, 0.8]}) for _ in range(2)]
    base = [scores("fedavg+finetune", {"a": [0.8, 0.5], "b": [0.8, 0.7]}) for _ in range(2)]
    table = rows({"meta": meta, "fedavg+finetune": base}, counts)
    at = {(r["site"], r["method"]): r for r in table}
    a = at["a", "meta"]
    assert a["diff_alike"] == pytest.approx(0.15)  # (0.8 - 0.65): ahead with the classes alike ...
    assert a["diff_case_mix"] == pytest.approx((0.8 * 0.65 + 0.2 * 0.95) - (0.8 * 0.8 + 0.2 * 0.5))  # ... -3 behind
    assert a["diff_case_mix_seeds"] == pytest.approx([a["diff_case_mix"]] * 2)
    assert at["b", "meta"]["diff_case_mix"] == pytest.approx(0.05)  # balanced site: both views agree
    mean = at[MEAN, "meta"]
    assert mean["diff_case_mix"] == pytest.approx((a["diff_case_mix"] + 0.05) / 2)  # sites alike
    assert "diff_alike" not in at["a", "fedavg+finetune"]  # the reference against itself: nothing
    text = markdown(table, "t")
    assert "| a | meta | 80.0 | 71.0 | +15.0 | -3.0 | -3.0, -3.0 |" in text


def test_unequal_seeds_give_the_difference_of_means_only():
    counts = {"a": np.array([1, 3])}
    local = [scores("local", {"a": [0.5, 0.5]})]
    base = [scores("fedavg+finetune", {"a": [1.0, 0.0]}), scores("fedavg+finetune", {"a": [0.0, 1.0]})]
    (row,) = [r for r in rows({"local": local, "fedavg+finetune": base}, counts) if r["method"] == "local"]
    assert row["diff_case_mix"] == pytest.approx(0.0) and "diff_case_mix_seeds" not in row


def test_no_counts_per_site_writes_nothing(tmp_path):
    old = Scores("m", {1: np.array([0.5])}, confusion={1: np.eye(2, dtype=int)})
    assert write_case_mix({"m": [old]}, {"a": np.array([1, 1])}, tmp_path, "s", "s") is None
    assert not list(tmp_path.iterdir())
    path = write_case_mix({"m": [scores("m", {"a": [1.0, 0.5]})]}, {"a": np.array([1, 1])}, tmp_path, "s", "s")
    assert path == tmp_path / "case-mix-s.md" and json.loads(path.with_suffix(".json").read_text())[0]["alike"] == 0.75


def test_episodes_carry_each_sites_test_counts(scenario):
    episodes = draw_episodes(Protocol(scenario, shots=(1,), queries=3, episodes=6))
    sc = load_scenario(scenario)
    assert sorted(episodes.counts) == sorted(episodes.batches[1])
    for index in sc.heldout_sites:
        site = load_site(sc, index)
        counts = episodes.counts[site.spec.name]
        assert counts.sum() == len(site.test.labels)  # the test split, whose images the episodes query
        assert np.array_equal(counts, np.bincount(site.test.labels.numpy(), minlength=sc.num_labels))
        batch = episodes.batches[1][site.spec.name]
        assert (counts[torch.unique(batch.classes).numpy()] > 0).all()


def test_a_site_without_counts_in_one_run_is_left_out():
    counts = {"a": np.array([1, 1]), "b": np.array([1, 1])}
    kept_before = scores("m", {"a": [1.0, 0.5], "b": [0.5, 0.5]})
    kept_before.site_confusion[1]["b"] = np.zeros((2, 2), dtype=int)  # a progress file from before counts
    table = rows({"m": [kept_before, scores("m", {"a": [0.5, 0.5], "b": [0.5, 0.5]})]}, counts)
    assert {r["site"] for r in table} == {"a"}  # one site: no mean row either
