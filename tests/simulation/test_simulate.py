"""`fedmeta simulate` end to end: Flower's simulation engine (Ray) runs the real ServerApp and
ClientApps with virtual sites; then `fedmeta adapt` personalizes the exported meta-model."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration

TINY = "eval-tasks=3 model-width=8 model-groups=2 model-depth=2 inner-steps=1 ways=3 shots=2 queries=3"
# a short run that still aggregates more than once: 3 rounds of 2 tasks, evaluated at the end
THREE_ROUNDS = ("--rounds", "3", "--tasks-per-round", "2", "--eval-every", "3")


def fedmeta(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmeta", *args], capture_output=True, text=True, timeout=timeout)


def test_simulate_compare_then_adapt(tmp_path):
    out = tmp_path / "run"
    result = fedmeta(
        "simulate",
        "--compare",
        "maml,fedavg,local",
        "--rounds",
        "2",
        "--tasks-per-round",
        "2",
        "--eval-every",
        "1",
        "--run-config",
        TINY + ' eval-shots="1,4"',
        "--shots",
        "1,2",
        "--episodes",
        "6",
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # the trained models scored on the same held-out episodes, paired against FedAvg + fine-tune
    paired = json.loads((out / "comparison-paired.json").read_text())
    assert {(r["method"], r["shots"]) for r in paired} == {(m, k) for m in ("maml", "fedavg+finetune") for k in (1, 2)}
    assert all(r["episodes"] == 6 and r["sites"] == "heldout" for r in paired)
    assert (out / "comparison-forest.png").stat().st_size > 0 and (out / "comparison-by-shots.png").is_file()
    for method in ("maml", "fedavg", "local"):
        results = json.loads((out / method / "results.json").read_text())
        assert [r["round"] for r in results["rounds"]] == [1, 2]
        heldout = {s["name"] for s in results["sites"] if s["role"] == "heldout"}
        assert heldout == {"heldout-0", "heldout-1"}
        if method != "local":
            # only training sites train; every site evaluates
            assert all(set(r["train"]) == {f"site-{i}" for i in range(6)} for r in results["rounds"])
            assert set(results["final"]["evaluate"]) == heldout | {f"site-{i}" for i in range(6)}
            # what crossed the wire per round: one model down and one update up per training site
            assert results["rounds"][0]["bytes"]["down"] == results["rounds"][0]["bytes"]["up"] > 0
        # the final meta-model scored again with 1 and 4 shots per class, on every site
        assert set(results["shots"]) == {"1", "4"}
        for k in ("1", "4"):
            assert set(results["shots"][k]["evaluate"]) == set(results["final"]["evaluate"])
            assert (
                results["shots"][k]["summary"]["heldout"]["acc-after"]
                != results["final"]["summary"]["heldout"]["acc-after"]
            )
        assert (out / method / "heldout_accuracy.png").is_file() and (out / method / "metrics.csv").is_file()
    assert "| maml |" in (out / "comparison.md").read_text() and (out / "comparison.png").is_file()
    assert "held-out sites, final round" in " ".join(result.stdout.split())

    adapted = tmp_path / "adapted"
    from tests.common.data.hospital import write_site

    site = write_site(tmp_path / "site", {"benign": 12, "malignant": 12}, patients_per_class=12)
    result = fedmeta("adapt", str(out / "maml" / "model"), "--folder", str(site), "--shots", "3", "--out", str(adapted))
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads((adapted / "report.json").read_text())
    assert report["evaluated"] == 18 and sum(map(sum, report["confusion"])) == 18
    assert (adapted / "model" / "model.safetensors").is_file() and (adapted / "confusion_matrix.png").is_file()
    # what a clinician reads: the positive finding's sensitivity and specificity with intervals, counts per class
    assert report["positive_class"] == "malignant" and len(report["sensitivity_ci"]) == 2
    assert report["per_class"]["benign"]["cases"] + report["per_class"]["malignant"]["cases"] == 18
    assert "| sensitivity (malignant) |" in (adapted / "report.md").read_text()
    assert (adapted / "roc_curve.png").is_file()


def test_simulate_reports_a_bad_scenario_clearly(tmp_path):
    result = fedmeta("simulate", "--scenario", "nope", "--out", str(tmp_path))
    assert result.returncode == 2 and "no scenario 'nope'" in result.stderr


@pytest.mark.parametrize(
    ("compare", "message"),
    [("maml,protonet", "add fedavg to --compare"), ("fedavg,local", "besides fedavg"), ("maml,fedavg", "--shots 'x'")],
)
def test_a_paired_comparison_that_cannot_run_is_refused_before_training(tmp_path, compare, message):
    shots = "x" if "x'" in message else "1,5"
    result = fedmeta("simulate", "--compare", compare, "--shots", shots, "--out", str(tmp_path), timeout=60)
    assert result.returncode == 2 and message in result.stderr and not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_same_seed_trains_the_same_model_bit_for_bit(tmp_path):
    """A federated run is a function of its seed: two runs with the same seed export identical
    weights (every site in every round, replies aggregated in a fixed order), another seed does not.
    The held-out headline's models must be retrainable to the bit for their scores to be rescored."""
    weights = {}
    for name, seed in (("first", "0"), ("again", "0"), ("other", "1")):
        out = tmp_path / name
        result = fedmeta(
            "simulate",
            "--algorithm",
            "fomaml",
            "--seed",
            seed,
            *THREE_ROUNDS,
            "--run-config",
            TINY,
            "--out",
            str(out),
        )
        assert result.returncode == 0, result.stdout + result.stderr
        weights[name] = (out / "model" / "model.safetensors").read_bytes()
    assert weights["first"] == weights["again"]
    assert weights["first"] != weights["other"]
