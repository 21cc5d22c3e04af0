"""Centralized and local baselines run the shared protocol and write the federated format."""

import json

import pytest
import torch

from common.export import load_meta_model
from common.runconfig import parse_run_config
from simulation.baselines import run_baseline, split_method

TINY = {
    "num-server-rounds": 2,
    "tasks-per-round": 2,
    "eval-every": 1,
    "eval-tasks": 3,
    "model-width": 8,
    "model-groups": 2,
    "model-depth": 2,
    "inner-steps": 1,
    "ways": 3,
    "shots": 2,
    "queries": 3,
}


@pytest.mark.parametrize("kind", ["centralized", "local"])
def test_baseline_writes_results_for_the_right_sites(tmp_path, kind):
    cfg = parse_run_config({**TINY, "out-dir": str(tmp_path)})
    results = run_baseline(kind, cfg)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["algorithm"] == f"{kind}-maml" and len(on_disk["rounds"]) == 2
    evaluated = set(on_disk["final"]["evaluate"])
    heldout = {"heldout-0", "heldout-1"}
    assert evaluated == (heldout | {f"site-{i}" for i in range(6)} if kind == "centralized" else heldout)
    acc, half, n = results["final"]["summary"]["heldout"]["acc-after"]
    assert 0 <= acc <= 1 and half >= 0 and n == 6
    assert (tmp_path / "metrics.csv").is_file() and (tmp_path / "heldout_accuracy.png").is_file()
    assert (tmp_path / "model" / "model.safetensors").is_file() == (kind == "centralized")


def test_unknown_baseline_is_refused(tmp_path):
    with pytest.raises(ValueError, match="choose one of"):
        run_baseline("pooled", parse_run_config({"out-dir": str(tmp_path)}))


@pytest.mark.parametrize(
    ("method", "parts"),
    [
        ("maml", (None, "maml")),
        ("meta-sgd", (None, "meta-sgd")),
        ("centralized", ("centralized", "maml")),
        ("centralized-meta-sgd", ("centralized", "meta-sgd")),
        ("local-protonet", ("local", "protonet")),
    ],
)
def test_method_names_split_into_baseline_and_algorithm(method, parts):
    assert split_method(method) == parts


@pytest.mark.parametrize("method", ["centralized-fedavg", "centralised", "local-reptile"])
def test_a_method_that_is_not_one_is_named(method):
    with pytest.raises(ValueError, match=f"method '{method}'"):
        split_method(method)


def test_centralized_trains_the_algorithm_it_is_named_for(tmp_path):
    kind, algorithm = split_method("centralized-protonet")
    cfg = parse_run_config({**TINY, "num-server-rounds": 1, "algorithm": algorithm, "out-dir": str(tmp_path)})
    run_baseline(kind, cfg)
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk["algorithm"] == "centralized-protonet"
    assert load_meta_model(tmp_path / "model")[2].algorithm == "protonet"


def test_a_sweep_run_scores_no_held_out_site(tmp_path):
    cfg = parse_run_config({**TINY, "num-server-rounds": 1, "eval-heldout": False, "out-dir": str(tmp_path)})
    results = run_baseline("centralized", cfg)
    assert "heldout" not in results["final"]["summary"] and set(results["final"]["evaluate"]) == {
        f"site-{i}" for i in range(6)
    }
    with pytest.raises(ValueError, match="eval-heldout=false"):
        run_baseline("local", cfg)


def test_same_seed_same_baseline(tmp_path):
    """The model's initial weights come from the run seed, not from whatever the process drew before."""
    from safetensors.torch import load_file

    models = []
    for run in ("a", "b"):
        torch.manual_seed(hash(run) % 1000)  # a different global state before each run
        cfg = parse_run_config({**TINY, "num-server-rounds": 1, "out-dir": str(tmp_path / run)})
        run_baseline("centralized", cfg)
        models.append(load_file(tmp_path / run / "model" / "model.safetensors"))
    assert all(torch.equal(models[0][k], models[1][k]) for k in models[0])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_a_baseline_asked_for_cuda_without_one_says_so_before_reading_data(tmp_path):
    cfg = parse_run_config({**TINY, "out-dir": str(tmp_path), "device": "cuda"})
    with pytest.raises(ValueError, match="sees no CUDA device"):
        run_baseline("centralized", cfg)
    assert not (tmp_path / "results.json").exists()


def test_a_protonet_trains_on_train_ways_and_is_scored_and_saved_at_ways(tmp_path):
    from common.scenario import load_scenario, load_site
    from simulation.baselines import _pooled_sources, _sampler

    cfg = parse_run_config(
        {**TINY, "num-server-rounds": 1, "algorithm": "protonet", "train-ways": 5, "out-dir": str(tmp_path)}
    )
    scenario = load_scenario(cfg.data.scenario, cfg.data.tasks)
    sites = [load_site(scenario, i, None) for i in range(len(scenario.sites))]
    pooled = _pooled_sources(sites, scenario.training_sites, scenario.tasks, cfg)[0][0]
    for sampler in (pooled, _sampler(sites[0], cfg)):
        batch = sampler.sample_batch(2, torch.Generator().manual_seed(0))
        assert batch.support_y.unique().tolist() == list(range(5)), "training episodes hold train-ways classes"
    results = run_baseline("centralized", cfg)
    assert results["final"]["summary"]["heldout"]["acc-after"][2] == 6  # scored on 3-way episodes
    _, model_config, meta_config, episode, _ = load_meta_model(tmp_path / "model")
    assert (model_config.num_classes, episode.ways, meta_config.train_ways) == (3, 3, 5)


def test_augmentation_changes_what_a_baseline_learns_and_is_reproducible(tmp_path):
    from safetensors.torch import load_file

    def trained(run: str, augment: str) -> dict:
        cfg = parse_run_config({**TINY, "num-server-rounds": 1, "augment": augment, "out-dir": str(tmp_path / run)})
        run_baseline("centralized", cfg)
        return load_file(tmp_path / run / "model" / "model.safetensors")

    plain, a, b = trained("plain", ""), trained("a", "flip,shift"), trained("b", "flip,shift")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], plain[k]) for k in a)


def test_a_centralized_run_stopped_midway_resumes_to_the_unbroken_weights(tmp_path):
    """A checkpoint after every round: a run that stopped after round 2 of 3 continues with resume
    to the weights and history of a run that was never stopped; resuming is refused where it
    cannot be right (no checkpoint to continue, another config, the local baseline), and a new run
    does not overwrite an earlier one's checkpoint."""
    from safetensors.torch import load_file

    from server.checkpoint import CHECKPOINT

    def run(out: str, rounds: int, **more):
        cfg = parse_run_config({**TINY, "num-server-rounds": rounds, "out-dir": str(tmp_path / out), **more})
        return run_baseline("centralized", cfg)

    run("whole", 3)
    run("stopped", 2)  # the last checkpoint a stopped run leaves is its round 2
    assert (tmp_path / "stopped" / CHECKPOINT).is_file()
    before = json.loads((tmp_path / "stopped" / "results.json").read_text())["rounds"]
    resumed = run("stopped", 3, resume=True)
    assert resumed["rounds"][:2] == before[:2]  # kept, to their timings: rounds 1 and 2 did not run again
    whole = load_file(tmp_path / "whole" / "model" / "model.safetensors")
    again = load_file(tmp_path / "stopped" / "model" / "model.safetensors")
    assert whole.keys() == again.keys() and all(torch.equal(whole[k], again[k]) for k in whole)
    assert [r["round"] for r in resumed["rounds"]] == [1, 2, 3] and resumed["resumed"] == [{"after_round": 2}]
    on_disk = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert resumed["rounds"][2]["train"] == on_disk["rounds"][2]["train"]  # round 3's meta-loss, as unbroken

    earlier = (tmp_path / "stopped" / "results.json").read_text()
    with pytest.raises(FileExistsError, match="--resume"):
        run("stopped", 3)  # a new run in that directory
    with pytest.raises(ValueError, match="another config"):
        run("stopped", 4, resume=True, **{"outer-lr": 0.5})
    assert (tmp_path / "stopped" / "results.json").read_text() == earlier  # refused before writing anything
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run("fresh", 3, resume=True)
    with pytest.raises(ValueError, match="local baseline keeps no checkpoint"):
        run_baseline("local", parse_run_config({**TINY, "out-dir": str(tmp_path / "local"), "resume": True}))


@pytest.mark.parametrize("tasks", ["hospital", "episodes"])
def test_a_model_trained_with_global_labels_names_the_class_of_each_output(tmp_path, tasks):
    """What `fedmeta adapt` matches a site's classes against; episodes' outputs are slots, unnamed."""
    from common.scenario import load_scenario

    cfg = parse_run_config({**TINY, "num-server-rounds": 1, "tasks": tasks, "out-dir": str(tmp_path)})
    run_baseline("centralized", cfg)
    *_, info = load_meta_model(tmp_path / "model")
    scenario = load_scenario(cfg.data.scenario, tasks)
    if tasks == "hospital":
        assert info["classes"] == list(scenario.label_space(scenario.sites[0])) and len(info["classes"]) > 3
    else:
        assert "classes" not in info


def test_hospitals_that_spell_their_classes_their_own_way_train_one_global_model(tmp_path):
    """Folder sites under hospital tasks: each labels.csv is matched by name to the scenario's
    `labels`, so one output per consortium class, named in model.json for `fedmeta adapt`."""
    from tests.common.data.hospital import folder_consortium

    doc = folder_consortium(tmp_path / "data")
    sites = "".join(
        f'[[sites]]\nname = "{s["name"]}"\nsource = "folder"\npath = "{s["path"]}"\nrole = "{s.get("role", "train")}"\n'
        for s in doc["sites"]
    )
    scenario = tmp_path / "folders.toml"
    scenario.write_text(
        f'name = "folders"\ntasks = "hospital"\nlabels = {json.dumps(doc["labels"])}\n'
        "[episodes]\nways = 2\nshots = 2\nqueries = 3\n" + sites
    )
    run = {**TINY, "scenario": str(scenario), "data-dir": str(tmp_path / "data"), "out-dir": str(tmp_path / "out")}
    run_baseline("centralized", parse_run_config(run))
    assert set(json.loads((tmp_path / "out" / "results.json").read_text())["final"]["evaluate"]) == {"a", "b"}
    _, model, *_, info = load_meta_model(tmp_path / "out" / "model")
    assert model.num_classes == 3 and info["classes"] == ["benign", "malignant", "cyst"]
