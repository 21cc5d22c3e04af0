"""The `fedmeta` command as a user runs it: a real subprocess."""

import json
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.integration


def fedmeta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmeta", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["bench"],
        ["bench", "maml"],
        ["data"],
        ["data", "check"],
        ["scenario"],
        ["scenario", "show"],
        ["scenario", "list"],
        ["simulate"],
        ["adapt"],
        ["bench", "sanity"],
        ["provision"],
        ["provision", "new"],
        ["provision", "add-site"],
        ["provision", "revoke-site"],
        ["bench", "federation"],
        ["coordinator"],
        ["benchmark"],
        ["benchmark", "tune"],
        ["benchmark", "evaluate"],
        ["benchmark", "report"],
        ["site"],
    ],
)
def test_every_command_has_help(args):
    out = fedmeta(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: " in out.stdout


@pytest.mark.slow  # 80 s; in CI: test_meta_gradients.py (float64) and the bench against higher (test_backbones.py)
def test_bench_maml_json_reports_equal_gradients():
    # The issue's own workload (Conv-4, 5-way 5-shot, 5 steps, 8 tasks), one timed repeat.
    # A toy-sized workload is no cheaper check: with a handful of 16x16 noise images, lr 0.4
    # amplifies float32 rounding ~50x per inner step, so any two implementations (fedmeta or
    # not) drift past 1e-5 there while agreeing exactly in float64 (test_models.py).
    out = fedmeta("bench", "maml", "--json", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in (
        "fedmeta_s",
        "higher_s",
        "autograd_s",
        "speedup_vs_higher",
        "max_rel_grad_diff",
        "peak_mem_mb",
        "device",
    ):
        assert key in result
    assert result["device"] == "cpu"
    assert result["max_rel_grad_diff"] < 1e-5
    assert result["fedmeta_s"] > 0 and result["speedup_vs_higher"] > 0
    # against the float64 meta-gradient, fedmeta's float32 rounding is no worse than higher's
    error = result["grad_error_vs_float64"]
    assert result["max_rel_grad_diff"] == error["fedmeta"]
    assert error["fedmeta"] <= error["higher"] * 1.1, error
    assert result["fedmeta_vs_higher_float32"] < 2e-5
    assert result["kernels"] in ("native", "torch")


def test_bench_rejects_unknown_kernels_by_name():
    out = fedmeta("bench", "maml", "--kernels", "fast")
    assert out.returncode == 2
    assert "kernels='fast'" in out.stderr and "native, torch" in out.stderr


def test_bench_rejects_missing_cuda_device_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = fedmeta("bench", "maml", "--device", "cuda")
    assert out.returncode != 0
    assert "no CUDA device" in out.stderr and "--device cpu" in out.stderr


def test_data_check_names_each_problem_and_fails(tmp_path):
    from tests.common.data.hospital import write_site

    root = write_site(tmp_path / "site", {"benign": 25, "malignant": 3})
    (root / "benign_0.png").write_bytes(b"not a png")
    out = fedmeta("data", "check", str(root), "--shots", "5", "--queries", "15")
    assert out.returncode == 1
    text = " ".join(out.stdout.split())
    assert "benign_0.png (labels.csv line 2): cannot be read" in text
    assert "class 'malignant': has 3 usable examples" in text and "fix: add at least 17" in text


def test_data_check_passes_a_good_folder_and_the_shared_medmnist_files(tmp_path):
    from tests.common.data.hospital import write_site
    from tests.conftest import medmnist_dir

    out = fedmeta("data", "check", str(write_site(tmp_path / "site", {"a": 20, "b": 20})))
    assert out.returncode == 0 and "no problems found" in out.stdout, out.stdout
    out = fedmeta("data", "check", str(medmnist_dir("breastmnist.npz")))
    assert out.returncode == 0 and "breastmnist.npz" in out.stdout and "mismatch" not in out.stdout, out.stdout


def test_data_check_matches_a_hospitals_classes_to_its_consortiums(tmp_path):
    """`--scenario`: the consortium's input shape, episodes and classes; a hospital's own spelling
    is shown against the class it joins, and a class the consortium lacks fails the check."""
    from tests.common.data.hospital import write_site

    root = write_site(tmp_path / "st-mary", {"Spleen": 20, "kidney_left": 20}, patients_per_class=20)
    out = fedmeta("data", "check", str(root), "--scenario", "new-hospital")
    text = " ".join(out.stdout.split())
    assert out.returncode == 0 and "consortium class" in text and "no problems found" in text, out.stdout
    assert "kidney_left │ 20 │ 20 │ kidney-left" in text
    stranger = write_site(tmp_path / "st-anne", {"brain": 20, "liver": 20}, patients_per_class=20)
    out = fedmeta("data", "check", str(stranger), "--scenario", "new-hospital")
    text = " ".join(out.stdout.split())
    assert out.returncode == 1 and "class 'brain': is not among the consortium's classes (bladder," in text
    # an episodes scenario has no classes of its own to match; its episodes still size the check
    out = fedmeta("data", "check", str(stranger), "--scenario", "synthetic", "--shots", "5", "--queries", "16")
    assert out.returncode == 1 and "consortium class" not in out.stdout and "needs shots + queries = 21" in out.stdout
    wrong = fedmeta("data", "check", str(stranger), "--scenario", "nope")
    assert wrong.returncode == 2 and "no scenario 'nope'" in wrong.stderr


def test_scenario_show_prints_every_site(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "fedmeta", "scenario", "show", "synthetic"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    for name in [*(f"site-{i}" for i in range(6)), "heldout-0", "heldout-1"]:
        assert name in out.stdout
    missing = fedmeta("scenario", "show", "medmnist-2d", "--data-dir", str(tmp_path))
    assert missing.returncode == 2 and "pneumoniamnist.npz is not in" in missing.stdout + missing.stderr


def test_scenario_show_lists_a_folder_consortiums_classes(tmp_path):
    from tests.common.data.hospital import folder_consortium

    doc = folder_consortium(tmp_path / "data")
    scenario = tmp_path / "folders.toml"
    scenario.write_text(
        f'name = "folders"\ntasks = "hospital"\nlabels = {json.dumps(doc["labels"])}\n'
        + "".join(f'[[sites]]\nname = "{s["name"]}"\nsource = "folder"\npath = "{s["path"]}"\n' for s in doc["sites"])
    )
    out = subprocess.run(
        [sys.executable, "-m", "fedmeta", "scenario", "show", str(scenario), "--data-dir", str(tmp_path / "data")],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    assert (
        "the consortium's classes, in label order (per-class counts below follow it): benign, malignant, cyst"
        in out.stdout
    )
    import re

    # train counts per consortium class: a holds benign and malignant, b benign and cyst
    counts = dict(re.findall(r"│ (a|b)\s+│[^│]+│[^│]+│\s*(\d+ \d+ \d+)\s*│", out.stdout))
    assert counts["a"].endswith(" 0") and counts["b"].split()[1] == "0" and "0" not in counts["b"].split()[::2]


def test_provision_new_then_refuses_to_overwrite(tmp_path):
    out = fedmeta("provision", "new", "--out", str(tmp_path), "--host", "localhost", "--site", "st-mary")
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "sites" / "st-mary" / "auth.key").is_file()
    again = fedmeta("provision", "new", "--out", str(tmp_path), "--host", "localhost", "--site", "st-mary")
    assert again.returncode == 2 and "already exist" in again.stderr


def test_coordinator_and_site_checks_from_the_command_line(tmp_path):
    from deploy.provision import provision
    from tests.deploy.bundle import set_keys

    provision(tmp_path, ["localhost"], ["st-mary"])
    out = fedmeta("coordinator", "--config", str(tmp_path / "coordinator" / "coordinator.toml"), "--check")
    assert out.returncode == 0 and "ready (sites dial localhost:9092)" in out.stdout, out.stdout + out.stderr
    site_toml = tmp_path / "sites" / "st-mary" / "site.toml"
    set_keys(site_toml, device="cpu", data_dir=str(tmp_path / "missing"))
    out = fedmeta("site", "--config", str(site_toml), "--check")
    assert (
        out.returncode == 1
        and "problem: data:" in out.stderr
        and "missing does not exist" in " ".join(out.stderr.split())
    )
    set_keys(site_toml, coordinator="no-port")
    out = fedmeta("site", "--config", str(site_toml), "--check")
    assert out.returncode == 2 and "should be host:port" in " ".join(out.stderr.split())


@pytest.mark.parametrize(
    ("args", "help_text"),
    [
        (["adapt"], "Meta-model directory"),
        (["data", "check"], "A site folder"),
        (["provision", "add-site"], "New site's name"),
    ],
)
def test_positional_arguments_show_their_help(args, help_text):
    # typer below 0.21 (flwr's cap) writes but does not show argument help with click 8.5
    out = fedmeta(*args, "--help")
    assert help_text in " ".join(out.stdout.split()), out.stdout


def test_version_names_fedmeta_and_flower():
    out = fedmeta("--version")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("fedmeta 0.") and "flwr 1.42" in out.stdout


def test_simulate_with_a_missing_data_dir_fails_in_seconds_naming_the_file_and_fix(tmp_path):
    started = time.monotonic()
    out = fedmeta("simulate", "--scenario", "new-classes", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run"))
    elapsed = time.monotonic() - started
    assert out.returncode == 2, out.stderr
    text = " ".join(out.stderr.split())
    assert "organamnist.npz is not in" in text and "bloodmnist.npz is not in" in text and "--data-dir" in text
    assert "Traceback" not in out.stderr and not (tmp_path / "run").exists()  # nothing started, nothing written
    assert elapsed < 10, f"took {elapsed:.1f} s: the check must come before Ray starts"


def test_simulate_suggests_the_run_config_key_meant():
    out = fedmeta("simulate", "--run-config", "inner-lrr=0.1")
    assert out.returncode == 2
    assert "unknown key 'inner-lrr' (did you mean 'inner-lr'?)" in " ".join(out.stderr.split())


@pytest.mark.parametrize("what", ["a-file", "a-run-dir", "corrupt"])
def test_adapt_names_a_wrong_model_path_without_a_traceback(tmp_path, what):
    if what == "a-file":
        model = tmp_path / "notamodel.txt"
        model.write_text("hello")
        expected = "is a file, not a model directory"
    else:
        (tmp_path / "run" / "model").mkdir(parents=True)
        (tmp_path / "run" / "model" / "model.safetensors").write_bytes(b"\x00garbage")
        (tmp_path / "run" / "model" / "model.json").write_text('{"format": "fedmeta-meta-model/1"}')
        model = tmp_path / "run" if what == "a-run-dir" else tmp_path / "run" / "model"
        expected = "is a run directory" if what == "a-run-dir" else "not a readable safetensors file"
    out = fedmeta("adapt", str(model), "--folder", str(tmp_path))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert expected in " ".join(out.stderr.split())


def test_adapt_takes_the_steps_and_rate_the_benchmark_tuned_and_names_a_wrong_entry(tmp_path):
    """`fedmeta adapt --tuned tuned.json` adapts a site with the settings `fedmeta benchmark tune`
    chose on the validation sites for that method (as `evaluate` scores it); --steps overrides."""
    import torch

    from common.algorithms import build_algorithm
    from common.backbones import build_model
    from common.config import EpisodeConfig, MetaConfig
    from common.export import save_meta_model
    from common.models import ModelConfig
    from tests.common.data.hospital import write_site

    cfg = ModelConfig(image_size=16, num_classes=2, width=4, depth=1, num_groups=2)
    torch.manual_seed(0)
    algo = build_algorithm(build_model(cfg), MetaConfig(algorithm="fomaml", eval_inner_steps=2))
    model = tmp_path / "model"
    save_meta_model(model, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=2))
    site = write_site(tmp_path / "site", {"benign": 8, "malignant": 8}, patients_per_class=8)
    tuned = tmp_path / "tuned.json"
    tuned.write_text(
        json.dumps(
            {
                "protocol": {"scenario": "x", "shots": [1, 5], "episodes": 50, "role": "validation"},
                "fomaml": {"best": {"lr_scale": 0.3, "steps": 7}, "tries": {}},
                "finetune": {"best": {"lr": 1e-4, "steps": 100}, "tries": {}},
            }
        )
    )

    def adapt(*extra: str) -> subprocess.CompletedProcess:
        return fedmeta("adapt", str(model), "--folder", str(site), "--shots", "2", "--out", str(tmp_path / "o"), *extra)

    done = adapt("--tuned", str(tuned))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert (report["adaptation_steps"], report["adaptation_lr_scale"]) == (7, 0.3)
    assert "(7 steps at 0.3x its inner rate)" in (tmp_path / "o" / "report.md").read_text()
    assert adapt("--tuned", str(tuned), "--steps", "3").returncode == 0
    assert json.loads((tmp_path / "o" / "report.json").read_text())["adaptation_steps"] == 3
    wrong = adapt("--tuned", str(tuned), "--tuned-as", "finetune")
    assert wrong.returncode == 2 and "tuned with lr" in wrong.stderr and "meta-model entries: fomaml" in wrong.stderr
    missing = adapt("--tuned", str(tuned), "--tuned-as", "centralized-fomaml")
    assert missing.returncode == 2 and "holds no settings for 'centralized-fomaml'" in " ".join(missing.stderr.split())


def test_a_hospital_adapts_the_committed_headline_model_from_its_own_organs_outputs(tmp_path, medmnist_multiclass):
    """A site folder of three organs, named its own way and in its own order, adapted from the
    committed `new-hospital` FOMAML model (global labels): each class starts from the output the
    consortium trained for it. Taking the first three outputs instead (bladder, femur-left,
    femur-right) scored 32.5% before any step on these organs, against 84.4% by name."""
    import numpy as np

    from common.data import medmnist as mm
    from tests.common.data.hospital import write_png

    model = "docs/results/models/new-hospital/seed-0/fomaml/model"
    organs = mm.load("organamnist", "test", medmnist_multiclass)
    site, lines = tmp_path / "site", ["path,label,patient_id"]
    site.mkdir()
    for name, label in (("Spleen", 10), ("kidney_left", 4), ("liver", 6)):
        for i in np.flatnonzero(organs.labels.numpy() == label)[:40]:
            write_png(site / f"{label}-{i}.png", organs.images[i, 0].numpy() * 255)
            lines.append(f"{label}-{i}.png,{name},{name}-{i}")
    (site / "labels.csv").write_text("\n".join(lines) + "\n")
    done = fedmeta("adapt", model, "--folder", str(site), "--shots", "1", "--steps", "0", "--out", str(tmp_path / "o"))
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert dict(zip(report["classes"], report["head_from"])) == {
        "Spleen": "spleen",
        "kidney_left": "kidney-left",
        "liver": "liver",
    }
    assert report["accuracy"] > 0.7, report["accuracy"]
    assert "head: the model's own outputs for" in " ".join(done.stdout.split())


def test_adapt_against_fedavg_pairs_both_models_on_the_same_images_and_draws(tmp_path):
    """`--against`: the baseline fine-tuned on the same support images, scored on the same images.
    A model against itself with no adaptation step on either side differs by exactly 0 on every
    draw; with steps, the paired difference is the difference of the two accuracies."""
    import torch

    from common.algorithms import build_algorithm
    from common.backbones import build_model
    from common.config import EpisodeConfig, MetaConfig
    from common.export import save_meta_model
    from common.models import ModelConfig
    from tests.common.data.hospital import write_site

    cfg = ModelConfig(image_size=16, num_classes=3, width=4, depth=1, num_groups=2)
    torch.manual_seed(0)
    algo = build_algorithm(build_model(cfg), MetaConfig(algorithm="fomaml", eval_inner_steps=2))
    model = tmp_path / "model"
    save_meta_model(model, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=3), classes=["a", "b", "c"])
    site = write_site(tmp_path / "site", {"C": 10, "a": 10}, patients_per_class=10)

    def adapt(finetune_steps: int, *extra: str) -> subprocess.CompletedProcess:
        tuned = tmp_path / "tuned.json"
        best = {"fomaml": {"steps": 0}, "finetune": {"steps": finetune_steps, "lr": 1e-2}}
        tuned.write_text(json.dumps({name: {"best": b, "tries": {}} for name, b in best.items()}))
        args = ("--folder", str(site), "--shots", "2", "--tuned", str(tuned), "--out", str(tmp_path / "o"))
        return fedmeta("adapt", str(model), *args, *extra)

    done = adapt(0, "--against", str(model), "--draws", "3")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    against = report["against"]
    assert against["adaptation"] == {"steps": 0, "lr": 0.01, "tuned": True} and against["difference"]["images"] == 16
    assert against["difference"]["mean"] == 0 and against["draws"]["difference"]["mean"] == 0
    assert against["draws"]["seeds"] == [0, 1, 2] and against["accuracy"] == report["accuracy"]
    text = (tmp_path / "o" / "report.md").read_text()
    assert "## Against FedAvg + fine-tune" in text and "Over 3 support draws (--seed 0 to 2" in text
    assert "Sensitivity per class (mean over the 3 draws" in text and text.count(" | +0.0 |") == 2  # C and a
    assert set(against["draws"]["sensitivity"]) == {"C", "a"}
    moved = adapt(5, "--against", str(model))
    assert moved.returncode == 0, moved.stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert abs(report["against"]["difference"]["mean"] - (report["accuracy"] - report["against"]["accuracy"])) < 1e-12
    assert "`--draws 10` repeats the comparison" in (tmp_path / "o" / "report.md").read_text()
    lone = adapt(0, "--draws", "2")
    assert lone.returncode == 2 and "with --against" in lone.stderr


def test_adapt_at_a_scenario_site_takes_the_classes_it_holds(tmp_path):
    """--scenario S --site NAME: the site's images as its client reads them (the synthetic
    scenario needs no files), relabelled to the classes it holds; a ProtoNet takes them all."""
    import torch

    from common.algorithms import build_algorithm
    from common.backbones import build_model
    from common.config import EpisodeConfig, MetaConfig
    from common.export import save_meta_model
    from common.models import ModelConfig

    cfg = ModelConfig(image_size=28, num_classes=3, width=4, depth=2, num_groups=2)
    torch.manual_seed(0)
    algo = build_algorithm(build_model(cfg), MetaConfig(algorithm="protonet", eval_inner_steps=1))
    model = tmp_path / "model"
    save_meta_model(model, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=3))
    out = tmp_path / "o"
    done = fedmeta(
        "adapt", str(model), "--scenario", "synthetic", "--site", "heldout-0", "--shots", "2", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    report = json.loads((out / "report.json").read_text())
    from common.scenario import load_scenario, load_site

    held = load_site(load_scenario("synthetic"), "heldout-0").test
    assert report["classes"] == [held.classes[c] for c in held.classes_with(3)] and len(report["classes"]) > 3
    assert report["head_from"] == "prototypes"
    lone = fedmeta("adapt", str(model), "--scenario", "synthetic", "--out", str(out))
    assert lone.returncode == 2 and "--scenario and --site go together" in lone.stderr
    both = fedmeta("adapt", str(model), "--scenario", "synthetic", "--site", "x", "--medmnist", "y", "--out", str(out))
    assert both.returncode == 2 and "one of --folder DIR" in " ".join(both.stderr.split())
