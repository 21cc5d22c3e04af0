"""Full-data FedAvg sanity run on the real BreastMNIST file: it learns, it is reproducible, it fails clearly."""

import json
import subprocess
import sys

import pytest
import torch

from common.data.medmnist import MedMNISTFileError
from simulation.sanity import SanityConfig, fedavg, iid_shards, run_sanity
from tests.conftest import medmnist_dir

# small and quick: 546 training images over 4 sites, width 16, 12 rounds (a few seconds on 2 cores)
QUICK = {"dataset": "breastmnist", "sites": 4, "rounds": 12, "width": 16, "batch_size": 32, "lr": 2e-3}


@pytest.fixture(scope="module")
def breast_runs(tmp_path_factory):
    data_dir = medmnist_dir("breastmnist.npz")
    out = tmp_path_factory.mktemp("sanity")
    first = run_sanity(SanityConfig(data_dir=data_dir, out_dir=out, **QUICK))
    again = run_sanity(SanityConfig(data_dir=data_dir, **QUICK))
    return first, again, out


def test_breastmnist_learns_beyond_the_majority_class(breast_runs):
    result, _, _ = breast_runs
    accs = [r["val_acc"] for r in result["rounds"]]
    assert result["samples"] == {"train": 546, "val": 78, "test": 156}
    assert result["test_majority_acc"] == pytest.approx(114 / 156)  # 'normal, benign' dominates the test split
    assert result["test_auc"] > 0.7 and result["test_acc"] > result["test_majority_acc"]
    assert max(accs) > accs[0]
    assert result["rounds"][result["best_round"] - 1]["val_acc"] == max(accs)


def test_same_seed_same_result_and_json_written(breast_runs):
    first, again, out = breast_runs
    assert [r["val_acc"] for r in first["rounds"]] == [r["val_acc"] for r in again["rounds"]]
    assert (first["test_acc"], first["test_auc"], first["best_round"]) == (
        again["test_acc"],
        again["test_auc"],
        again["best_round"],
    )
    written = json.loads((out / "sanity.json").read_text())
    assert written["test_acc"] == first["test_acc"] and written["config"]["rounds"] == QUICK["rounds"]
    assert written["paper_resnet18_28_acc"] == 0.863


def test_shards_cover_the_train_split_once():
    shards = iid_shards(10, 3, seed=0)
    assert sorted(torch.cat(shards).tolist()) == list(range(10))
    assert [len(s) for s in shards] == [4, 3, 3]
    assert all(torch.equal(a, b) for a, b in zip(shards, iid_shards(10, 3, seed=0)))
    with pytest.raises(ValueError, match="fewer sites"):
        iid_shards(2, 3, seed=0)


def test_fedavg_weights_by_examples():
    a, b = {"w": torch.tensor([0.0, 4.0])}, {"w": torch.tensor([4.0, 0.0])}
    assert torch.allclose(fedavg([(a, 3), (b, 1)])["w"], torch.tensor([1.0, 3.0]))


def test_missing_data_dir_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(MedMNISTFileError, match=r"breastmnist.npz is not in .*--data-dir"):
        run_sanity(SanityConfig(dataset="breastmnist", data_dir=tmp_path / "nowhere"))


@pytest.mark.integration
def test_cli_missing_data_exits_2_with_the_fix(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedmeta", "bench", "sanity", "--dataset", "breastmnist", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = " ".join(out.stderr.split())
    assert out.returncode == 2, out.stdout + out.stderr
    assert "breastmnist.npz is not in" in text and "https://" in text and "FEDMETA_DATA_DIR" in text


def test_config_rejects_unknown_dataset_and_optimizer():
    with pytest.raises(ValueError, match="unknown MedMNIST dataset"):
        SanityConfig(dataset="nosuchmnist")
    with pytest.raises(ValueError, match="optimizer='rmsprop'"):
        SanityConfig(optimizer="rmsprop")
