"""Scenarios: built-ins parse, sites get disjoint data, held-out sites are marked, errors are clear."""

import numpy as np
import pytest
import torch

from common.data import DataError, SiteShift
from common.models import ModelConfig
from common.scenario import builtin_scenarios, load_scenario, load_site, parse_scenario
from tests.common.data.hospital import folder_consortium, write_site


def test_builtins_parse_and_match_the_issue():
    assert builtin_scenarios() == [
        "medmnist-2d",
        "medmnist-3d",
        "medmnist-dirichlet",
        "new-classes",
        "new-hospital",
        "new-hospital-blood",
        "synthetic",
    ]
    sc = load_scenario("medmnist-2d")
    assert [s.name for s in sc.sites] == ["pneumonia-a", "pneumonia-b", "retina", "breast"]
    assert sc.heldout_sites == [3] and sc.training_sites == [0, 1, 2]
    assert load_scenario("medmnist-3d").model_config(ModelConfig()).spatial_dims == 3
    sized = {
        "num-server-rounds": 20,
        "tasks-per-round": 4,
        "model-width": 32,
        "eval-every": 5,
        "eval-tasks": 20,
        "outer-lr": 0.01,
    }  # what `fedmeta simulate` runs on 2 CPU cores unless told otherwise
    assert sc.run_config == {**sized, "inner-lr": 0.05} and load_scenario("synthetic").run_config == sized


def test_synthetic_default_needs_no_files_and_sites_differ():
    sc = load_scenario("synthetic")
    assert len(sc.training_sites) == 6 and len(sc.heldout_sites) == 2
    a, b = load_site(sc, 0), load_site(sc, "heldout-1")
    assert a.shift != b.shift and a.train.images.shape == (300, 1, 28, 28)
    assert not set(a.train.ids) & set(a.test.ids)
    again = load_site(sc, 0)
    assert torch.equal(a.train.images, again.train.images) and a.train.ids == again.train.ids


def test_medmnist_2d_sites_hold_disjoint_samples(medmnist_2d):
    sc = load_scenario("medmnist-2d")
    sites = [load_site(sc, i, medmnist_2d) for i in range(len(sc.sites))]
    for split in ("train", "test"):
        ids = [set(getattr(s, split).ids) for s in sites]
        assert sum(map(len, ids)) == len(set().union(*ids)), f"{split}: a sample is at two sites"
    a, b = sites[0], sites[1]
    # the pneumonia pool is divided in halves, covering the official split exactly
    assert len(a.train) + len(b.train) == 4708 and abs(len(a.train) - len(b.train)) <= 1
    assert len(a.test) + len(b.test) == 624
    assert all(s.train.images.shape[1:] == (1, 28, 28) for s in sites)  # retina RGB -> grey
    assert b.shift == SiteShift(contrast=1.3, gamma=0.8, blur=0.8, noise=0.03) and a.shift == SiteShift()
    assert sites[3].spec.role == "heldout" and sites[3].train.classes == ("malignant", "normal, benign")


def test_dirichlet_scenario_is_label_skewed_disjoint_and_reproducible(medmnist_2d):
    sc = load_scenario("medmnist-dirichlet")
    sites = [load_site(sc, i, medmnist_2d) for i in range(len(sc.sites))]
    ids = [set(s.train.ids) for s in sites]
    assert sum(map(len, ids)) == len(set().union(*ids)) == 1080
    mixes = np.array([list(s.train.counts().values()) for s in sites], dtype=float)
    mixes /= mixes.sum(1, keepdims=True)
    assert np.abs(mixes - mixes.mean(0)).max() > 0.2  # the label mix differs strongly between sites
    assert all(len(s.usable_classes(sc.episode)) >= sc.episode.ways for s in sites)
    assert load_site(sc, 2, medmnist_2d).train.ids == sites[2].train.ids


def test_medmnist_3d_sites(medmnist_3d):
    sc = load_scenario("medmnist-3d")
    site = load_site(sc, "vessel", medmnist_3d)
    assert site.train.images.shape == (1335, 1, 28, 28, 28) and site.spec.role == "heldout"


def test_folder_site_splits_by_patient(tmp_path):
    write_site(tmp_path / "hospital-a", {"benign": 24, "malignant": 24}, patients_per_class=8)
    sc = parse_scenario(
        {
            "name": "two-hospitals",
            "episodes": {"ways": 2, "shots": 2, "queries": 3},
            "sites": [{"name": "a", "source": "folder", "path": "hospital-a", "test-fraction": 0.25}],
        }
    )
    site = load_site(sc, "a", tmp_path)
    assert not set(site.train.patients) & set(site.test.patients)
    assert len(site.train) + len(site.test) == 48 and site.train.images.shape[1:] == (1, 28, 28)


def test_class_subset_and_cap(medmnist_2d):
    sc = parse_scenario(
        {
            "name": "small",
            "sites": [
                {"name": "r", "source": "medmnist", "dataset": "retinamnist", "classes": [0, 2], "max-per-class": 25}
            ],
        }
    )
    site = load_site(sc, 0, medmnist_2d)
    assert site.train.counts() == {"0": 25, "1": 0, "2": 25, "3": 0, "4": 0}


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"sites": [{"name": "a", "source": "synthetic", "colour": 1}]}, r"unknown key 'colour'; known keys are"),
        (
            {"sites": [{"name": "a", "source": "medmnist", "dataset": "pneumonia"}]},
            "unknown MedMNIST dataset 'pneumonia'",
        ),
        ({"sites": [{"name": "a", "source": "synthetic", "role": "test"}]}, "role='test'"),
        ({"sites": [{"name": "a", "source": "synthetic", "role": "heldout"}]}, "at least one site must have role"),
        ({"sites": [{"name": "a", "source": "folder"}]}, "a folder site needs path"),
        (
            {"sites": [{"name": "a", "source": "synthetic"}, {"name": "a", "source": "synthetic"}]},
            "site names must be unique",
        ),
        ({"sites": []}, "at least one"),
        (
            {"episodes": {"way": 2}, "sites": [{"name": "a", "source": "synthetic"}]},
            r"unknown key 'way' \(did you mean 'ways'\?\)",
        ),
        (
            {"run-config": {"innerlr": 0.1}, "sites": [{"name": "a", "source": "synthetic"}]},
            r"run-config: unknown key 'innerlr' \(did you mean 'inner-lr'\?\)",
        ),
    ],
)
def test_bad_scenarios_say_what_is_wrong(doc, message):
    with pytest.raises(ValueError, match=message):
        parse_scenario(doc)


def test_missing_data_dir_and_unknown_names(tmp_path):
    sc = load_scenario("medmnist-2d")
    with pytest.raises(ValueError, match="give the data directory"):
        load_site(sc, 0)
    with pytest.raises(ValueError, match=r"no site 'lung'; its sites are \['pneumonia-a'"):
        load_site(sc, "lung", tmp_path)
    with pytest.raises(ValueError, match="no scenario 'synthetik': use a built-in"):
        load_scenario("synthetik")


def test_a_deployed_hospital_not_in_the_scenario_reads_its_own_folder(tmp_path):
    from common.scenario import load_hospital_site

    root = write_site(tmp_path / "st-mary", {"benign": 20, "malignant": 20}, patients_per_class=10)
    site = load_hospital_site(load_scenario("synthetic"), "st-mary", root)
    again = load_hospital_site(load_scenario("synthetic"), "st-mary", root)
    assert site.train.ids == again.train.ids and not set(site.train.patients) & set(site.test.patients)
    assert site.train.images.shape[1:] == (1, 28, 28)


def test_a_run_can_take_hospital_tasks_on_an_episodes_scenario():
    """Supervised FedAvg trains with global labels on any scenario: `tasks = "hospital"` in the
    run config gives every site its own problem and the model one output per class."""
    from common.runconfig import parse_run_config

    sc = load_scenario("synthetic", "hospital")
    assert sc.tasks == "hospital" and sc.model_config(ModelConfig()).num_classes == sc.num_labels == 10
    site = load_site(sc, 0)
    assert site.tasks == "hospital"
    assert load_scenario("synthetic").model_config(ModelConfig(num_classes=5)).num_classes == 5
    with pytest.raises(ValueError, match="tasks='pile': choose scenario"):
        parse_run_config({"tasks": "pile"})
    with pytest.raises(ValueError, match="tasks='pile': use scenario"):
        load_scenario("synthetic", "pile")


def test_folder_sites_share_the_consortiums_classes_by_name(tmp_path):
    """Hospital tasks keep global labels: each hospital's labels.csv, in its own order and
    spelling, is matched to the scenario's `labels`, and the model has one output per label."""
    sc = parse_scenario(folder_consortium(tmp_path))
    assert sc.head_classes == ("benign", "malignant", "cyst") and sc.model_config(ModelConfig()).num_classes == 3
    a, b = (load_site(sc, name, tmp_path) for name in ("a", "b"))
    for site in (a, b):
        assert site.train.classes == site.test.classes == ("benign", "malignant", "cyst")
    # write_site names each file after its class: every image lands on its class's label
    for site in (a, b):
        for part in (site.train, site.test):
            named = {(i.split("_")[0].lower(), part.classes[y]) for i, y in zip(part.ids, part.labels)}
            assert all(file == label for file, label in named), named
    assert {a.train.classes[y] for y in a.train.labels} == {"benign", "malignant"}
    assert {b.train.classes[y] for y in b.train.labels} == {"benign", "cyst"}


def test_a_folder_consortium_without_its_classes_or_with_a_stranger_is_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match=r"folder sites \['a', 'b'\] name their classes only in their own"):
        parse_scenario(folder_consortium(tmp_path, labels=()))
    episodes = parse_scenario(folder_consortium(tmp_path, labels=(), tasks="episodes"))
    assert load_site(episodes, "b", tmp_path).train.classes == ("cyst", "benign")  # its own, as before
    sc = parse_scenario(folder_consortium(tmp_path, labels=("benign", "malignant")))
    with pytest.raises(DataError, match=r"1 problem\(s\) in .*b:\n  - class 'cyst': is not among the consortium's"):
        load_site(sc, "b", tmp_path)
    with pytest.raises(ValueError, match=r"labels \['benign', 'Benign'\] are one class spelt two ways"):
        parse_scenario(folder_consortium(tmp_path, labels=("benign", "Benign", "cyst")))
    with pytest.raises(ValueError, match="names the classes of folder sites, and it has none"):
        parse_scenario({"labels": ["a"], "sites": [{"name": "a", "source": "synthetic"}]})


def test_a_deployed_hospital_joining_a_global_label_consortium_maps_its_classes(tmp_path, medmnist_multiclass):
    """A hospital the scenario does not list joins `new-hospital` (organ labels) with its own folder."""
    from common.scenario import load_hospital_site

    sc = load_scenario("new-hospital")
    root = write_site(tmp_path / "st-mary", {"Spleen": 24, "kidney_left": 24}, patients_per_class=12)
    site = load_hospital_site(sc, "st-mary", root)
    assert site.train.classes == sc.head_classes
    held = {site.train.classes[i] for i in torch.cat([site.train.labels, site.test.labels]).tolist()}
    assert held == {"spleen", "kidney-left"}
    stranger = write_site(tmp_path / "st-anne", {"brain": 24, "liver": 24}, patients_per_class=12)
    with pytest.raises(DataError, match=r"class 'brain': is not among the consortium's classes \(bladder"):
        load_hospital_site(sc, "st-anne", stranger)
