"""Per-class results: the confusion counts kept with every method's scores (in the scenario's label
space, relabelled episodes mapped back) and the per-class tables built from them."""

import json

import numpy as np
import pytest
import torch

from simulation.adapters import Adapter
from simulation.benchmark import Protocol, Scores, draw_episodes, read_scores, score, write_scores
from simulation.perclass import markdown, per_class_rows, pooled, top_mistakes, write_per_class


class Fixed(Adapter):
    """Knows the answers (`right`) or always says the episode's first label."""

    def __init__(self, right: bool) -> None:
        self.right, self.name = right, "fixed"

    def _settings(self) -> dict:
        return {"right": self.right}

    def _move(self, device):
        pass

    def logits(self, episode, num_classes):
        said = episode.query_y if self.right else torch.zeros_like(episode.query_y)
        return torch.nn.functional.one_hot(said, num_classes).float()


def test_confusion_counts_every_query_in_the_label_space(scenario):
    episodes = draw_episodes(Protocol(scenario, shots=(1, 2), queries=3, episodes=6))
    batches = list(episodes.batches[2].values())
    true_classes = torch.cat([b.classes.gather(1, b.query_y) for b in batches]).flatten()
    first_classes = torch.cat([b.classes[:, :1].expand_as(b.query_y) for b in batches]).flatten()
    right, wrong = score(Fixed(True), episodes), score(Fixed(False), episodes)
    labels = 4  # the synthetic sites' label space; episodes are 3-way, relabelled
    for scores in (right, wrong):
        assert scores.confusion[2].shape == (labels, labels)
        assert scores.confusion[2].sum() == true_classes.numel()
        # the true class of each query, mapped back from the episode's labels
        assert np.array_equal(scores.confusion[2].sum(axis=1), np.bincount(true_classes, minlength=labels))
    assert np.array_equal(np.diag(right.confusion[2]), np.bincount(true_classes, minlength=labels))
    # always the episode's first label: every prediction is that episode's first class
    assert np.array_equal(wrong.confusion[2].sum(axis=0), np.bincount(first_classes, minlength=labels))
    # equal queries per episode: the pooled share right is the mean accuracy
    assert np.trace(wrong.confusion[2]) / wrong.confusion[2].sum() == pytest.approx(wrong.acc[2].mean())
    # per site: each site's own queries, in site order, summing to the pooled counts
    for shots in (1, 2):
        by_site = wrong.site_confusion[shots]
        assert list(by_site) == sorted(episodes.batches[shots])
        assert np.array_equal(sum(by_site.values()), wrong.confusion[shots])
    for site, batch in episodes.batches[2].items():
        truth = batch.classes.gather(1, batch.query_y).flatten()
        assert np.array_equal(wrong.site_confusion[2][site].sum(axis=1), np.bincount(truth, minlength=labels))


def test_confusion_is_kept_with_the_scores(tmp_path):
    scores = Scores("m", {1: np.array([0.5])}, {1: np.array([0.6])}, {1: {"a": "x"}}, {1: np.eye(3, dtype=int)})
    write_scores(tmp_path / "s.json", scores)
    assert np.array_equal(read_scores(tmp_path / "s.json").confusion[1], np.eye(3))
    older = json.loads((tmp_path / "s.json").read_text())
    del older["confusion"]  # scores written before confusion existed still read
    (tmp_path / "old.json").write_text(json.dumps(older))
    assert read_scores(tmp_path / "old.json").confusion == {}
    assert read_scores(tmp_path / "old.json").site_confusion == {}
    per_site = Scores("m", {1: np.array([0.5])}, site_confusion={1: {"a": np.eye(2, dtype=int), "b": np.ones((2, 2))}})
    write_scores(tmp_path / "sites.json", per_site)
    again = read_scores(tmp_path / "sites.json").site_confusion[1]
    assert list(again) == ["a", "b"] and np.array_equal(again["b"], np.ones((2, 2)))


NAMES = ("kidney-left", "kidney-right (gloss)", "liver")
COUNTS = np.array([[8, 2, 0], [1, 9, 0], [0, 0, 0]])  # by hand: liver has no queries


def test_per_class_recall_and_mistakes_by_hand():
    runs = [
        Scores("ft", {1: np.array([0.85])}, confusion={1: COUNTS}),
        Scores("ft", {1: np.array([0.85])}, confusion={1: COUNTS}),
    ]
    assert np.array_equal(pooled(runs, 1), 2 * COUNTS)  # summed over seeds
    rows = per_class_rows({"ft": runs}, NAMES)
    assert [(r["class"], r["queries"], r["recall"], r["mistaken_for"]) for r in rows] == [
        ("kidney-left", 20, 0.8, "kidney-right"),
        ("kidney-right", 20, 0.9, "kidney-left"),
    ]
    assert rows[0]["mistaken_share"] == pytest.approx(0.2)
    assert top_mistakes(COUNTS, NAMES) == [("kidney-left", "kidney-right", 0.2), ("kidney-right", "kidney-left", 0.1)]
    text = markdown({"ft": runs}, NAMES, "tiny")
    assert "| kidney-left | 20 | 80.0 |" in text and "| kidney-right | 20 | 90.0 |" in text and "liver" not in text
    assert "kidney-left → kidney-right 20%" in text


def test_methods_without_counts_are_named_not_guessed(tmp_path):
    old = [Scores("proto", {1: np.array([0.5])})]
    new = [Scores("ft", {1: np.array([0.85])}, confusion={1: COUNTS})]
    path = write_per_class({"proto": old, "ft": new}, NAMES, tmp_path, "s-heldout", "s")
    text = path.read_text()
    assert "No confusion counts for proto" in text and "--rescore" in text and "| class | queries | ft |" in text
    assert {r["method"] for r in json.loads(path.with_suffix(".json").read_text())} == {"ft"}
    assert write_per_class({"proto": old}, NAMES, tmp_path, "none", "s") is None  # no counts: no file
    assert not (tmp_path / "per-class-none.md").exists()


def test_per_site_recall_by_hand():
    """Two sites holding different classes: each site's table shows its own recall, which the pooled
    table mixes (site a: kidney-left 4 of 5; site b: kidney-left 4 of 5 plus kidney-right 9 of 10)."""
    a = np.array([[4, 1, 0], [0, 0, 0], [0, 0, 0]])
    b = COUNTS - a
    seed = Scores("ft", {1: np.array([0.85])}, confusion={1: COUNTS}, site_confusion={1: {"a": a, "b": b}})
    assert np.array_equal(pooled([seed, seed], 1, "a"), 2 * a)
    rows = per_class_rows({"ft": [seed]}, NAMES)
    assert {r["site"] for r in rows} == {"all", "a", "b"}
    at_a = [(r["class"], r["queries"], r["recall"]) for r in rows if r["site"] == "a"]
    assert at_a == [("kidney-left", 5, 0.8)]
    text = markdown({"ft": [seed]}, NAMES, "tiny")
    assert "### 1-shot at a" in text and "### 1-shot at b" in text
    after_b = text.split("### 1-shot at b")[1]
    assert "| kidney-left | 5 | 80.0 |" in after_b and "| kidney-right | 10 | 90.0 |" in after_b
    # a method kept from before counts were kept per site: named, left out of the site tables
    old = Scores("proto", {1: np.array([0.5])}, confusion={1: COUNTS})
    text = markdown({"ft": [seed], "proto": [old]}, NAMES, "tiny")
    assert "| class | queries | ft | proto |" in text and "no counts per site for proto" in text
    assert "| class | queries | ft |\n" in text.split("### 1-shot at a")[1]
    assert pooled([old], 1, "a") is None
    assert "### 1-shot at" not in markdown({"proto": [old]}, NAMES, "tiny")
