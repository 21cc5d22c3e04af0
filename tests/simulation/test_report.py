"""Results summaries pool the sites' episodes correctly; comparisons and CSVs are complete."""

import csv

import pytest

from simulation.report import Recorder, compare, summarize

SITES = [{"name": "a", "role": "train"}, {"name": "b", "role": "heldout"}, {"name": "c", "role": "heldout"}]


def metrics(acc, ci, n):
    return {"acc-after": acc, "acc-after-ci": ci, "acc-before": 0.5, "acc-before-ci": 0.0, "auc-after": acc, "auc-after-ci": ci,
            "loss-after": 1.0, "loss-after-ci": 0.1, "num-tasks": n}


def test_summary_pools_only_heldout_sites_for_the_heldout_figure():
    summary = summarize({"a": metrics(0.9, 0.01, 10), "b": metrics(0.6, 0.0, 10), "c": metrics(0.8, 0.0, 30)}, {s["name"]: s["role"] for s in SITES})
    mean, half, n = summary["heldout"]["acc-after"]
    assert mean == pytest.approx(0.75) and n == 40 and half > 0  # the spread between b and c widens the CI
    assert summary["train-sites"]["acc-after"][0] == pytest.approx(0.9)


def test_recorder_and_comparison_files(tmp_path):
    runs = {}
    for name, acc in (("maml", 0.7), ("fedavg", 0.6)):
        rec = Recorder(tmp_path / name, {"out-dir": str(tmp_path / name)}, "toy", name, SITES)
        for r in (1, 2):
            rec.train(r, {"a": {"meta-loss": 1.0, "query-acc": 0.5, "num-tasks": 4}}, 100, 100)
            rec.evaluate(r, {"a": metrics(acc, 0.02, 5), "b": metrics(acc - 0.1 * (2 - r), 0.02, 5), "c": metrics(acc, 0.02, 5)})
        runs[name] = rec.finish(1.0)
    rows = compare(runs, tmp_path)
    assert [r["algorithm"] for r in rows] == ["maml", "fedavg"]
    assert rows[0]["heldout acc-after"] == pytest.approx(0.7)
    assert "| maml | 0.700 ±" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison.png").stat().st_size > 0
    with open(tmp_path / "maml" / "metrics.csv") as f:
        lines = list(csv.DictReader(f))
    assert {(l["round"], l["phase"], l["site"]) for l in lines} >= {("1", "train", "a"), ("2", "evaluate", "b")}


def test_comparison_by_shots(tmp_path):
    runs = {}
    for name, acc in (("maml", 0.7), ("local", 0.6)):
        rec = Recorder(tmp_path / name, {"shots": 5}, "toy", name, SITES)
        rec.evaluate(1, {"b": metrics(acc, 0.02, 5), "c": metrics(acc, 0.02, 5)})
        rec.evaluate_shots(1, {"b": metrics(acc - 0.2, 0.02, 5), "c": metrics(acc - 0.2, 0.02, 5)})
        if name == "maml":  # local could not make 10-shot episodes: its column says so
            rec.evaluate_shots(10, {"b": metrics(acc + 0.1, 0.02, 5), "c": metrics(acc + 0.1, 0.02, 5)})
        runs[name] = rec.finish(1.0)
    assert set(runs["maml"]["shots"]) == {"1", "10"}
    rows = compare(runs, tmp_path)
    assert rows[0]["heldout acc-after 1-shot"] == pytest.approx(0.5) and rows[0]["heldout acc-after 10-shot"] == pytest.approx(0.8)
    table = (tmp_path / "comparison.md").read_text()
    assert "| algorithm | 1-shot | 5-shot | 10-shot |" in table
    assert "| maml | 0.500 ± 0.0" in table and "| local | 0.400 ± 0.0" in table and table.rstrip().endswith("| n/a |")
    with open(tmp_path / "comparison.csv") as f:
        assert "heldout acc-after 10-shot" in next(csv.reader(f))
    assert (tmp_path / "comparison_shots.png").stat().st_size > 0
