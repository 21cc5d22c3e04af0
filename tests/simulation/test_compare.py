"""Comparisons of several methods' runs: tables, CSVs and plots are complete."""

import csv

import pytest

from server.report import Recorder
from simulation.compare import compare
from tests.server.test_report import SITES, metrics


def test_recorder_and_comparison_files(tmp_path):
    runs = {}
    for name, acc in (("maml", 0.7), ("fedavg", 0.6)):
        rec = Recorder(tmp_path / name, {"out-dir": str(tmp_path / name)}, "toy", name, SITES)
        for r in (1, 2):
            rec.train(r, {"a": {"meta-loss": 1.0, "query-acc": 0.5, "num-tasks": 4}}, 100, 100)
            rec.evaluate(
                r, {"a": metrics(acc, 0.02, 5), "b": metrics(acc - 0.1 * (2 - r), 0.02, 5), "c": metrics(acc, 0.02, 5)}
            )
        runs[name] = rec.finish(1.0)
    rows = compare(runs, tmp_path)
    assert [r["algorithm"] for r in rows] == ["maml", "fedavg"]
    assert rows[0]["heldout acc-after"] == pytest.approx(0.7)
    assert "| maml | 0.700 ±" in (tmp_path / "comparison.md").read_text()
    assert (tmp_path / "comparison.png").stat().st_size > 0
    with open(tmp_path / "maml" / "metrics.csv") as f:
        lines = list(csv.DictReader(f))
    assert {(row["round"], row["phase"], row["site"]) for row in lines} >= {("1", "train", "a"), ("2", "evaluate", "b")}


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
    assert rows[0]["heldout acc-after 1-shot"] == pytest.approx(0.5) and rows[0][
        "heldout acc-after 10-shot"
    ] == pytest.approx(0.8)
    table = (tmp_path / "comparison.md").read_text()
    assert "| algorithm | 1-shot | 5-shot | 10-shot |" in table
    assert "| maml | 0.500 ± 0.0" in table and "| local | 0.400 ± 0.0" in table and table.rstrip().endswith("| n/a |")
    with open(tmp_path / "comparison.csv") as f:
        assert "heldout acc-after 10-shot" in next(csv.reader(f))
    assert (tmp_path / "comparison_shots.png").stat().st_size > 0
