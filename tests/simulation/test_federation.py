"""A real 2-round federation on Flower's simulation engine with 3 training sites (one of which
cannot form an episode) and a held-out site. The coordinator's final meta-parameters are
checked against an independent recomputation of every round's aggregated meta-gradient."""

import json

import pytest
import torch
from safetensors.torch import load_file

from common.algorithms import build_algorithm
from common.augment import Augmenter
from common.backbones import build_model
from common.protocol import site_tasks
from common.runconfig import parse_run_config
from common.scenario import load_scenario, load_site
from simulation.run import simulate

pytestmark = pytest.mark.integration

SCENARIO = """
name = "three-sites"
image-size = 16
[[sites]]
name = "a"
source = "synthetic"
num-classes = 4
per-class = 8
test-per-class = 6
[[sites]]
name = "b"
source = "synthetic"
num-classes = 4
per-class = 8
test-per-class = 6
[[sites]]
name = "tiny"
source = "synthetic"
num-classes = 4
per-class = 2
test-per-class = 2
[[sites]]
name = "new"
role = "heldout"
source = "synthetic"
num-classes = 4
per-class = 8
test-per-class = 6
"""


def tiny_run(tmp_path, **keys):
    """The scenario above with a tiny model; `keys` override run-config keys (as key_name=...)."""
    (tmp_path / "three.toml").write_text(SCENARIO)
    values = {
        "scenario": str(tmp_path / "three.toml"),
        "out-dir": str(tmp_path / "out"),
        "ways": 2,
        "model-width": 8,
        "model-groups": 2,
        "model-depth": 2,
        "inner-steps": 1,
    }
    return parse_run_config({**values, **{k.replace("_", "-"): v for k, v in keys.items()}})


# the default MAML, and a ProtoNet trained on 3-way episodes of augmented images: the clients must
# sample at train-ways and augment with the run's seed per (site, round), exactly as recomputed here
@pytest.mark.parametrize("keys", [{}, {"algorithm": "protonet", "train_ways": 3, "augment": "flip,shift,intensity"}])
def test_two_rounds_move_the_meta_parameters_by_the_aggregated_meta_gradient(tmp_path, keys):
    cfg = tiny_run(
        tmp_path,
        **keys,
        num_server_rounds=2,
        tasks_per_round=2,
        eval_every=1,
        eval_tasks=2,
        shots=2,
        queries=3,
        outer_optimizer="sgd",
        outer_lr=0.5,
        execution="loop",
        seed=7,
    )
    results = simulate(cfg)

    # the site whose classes are too small fails with a clear error; the rounds go on without it
    for row in results["rounds"]:
        assert set(row["train"]) == {"a", "b"}
        assert (
            "site 'tiny', train data" in row["train_errors"]["tiny"] and "shots+queries" in row["train_errors"]["tiny"]
        )
        assert set(row["evaluate"]) == {"a", "b", "new"} and "tiny" in row["evaluate_errors"]

    # independent recomputation: same initialization, same tasks, task-weighted mean, SGD step
    scenario = load_scenario(cfg.data.scenario)
    torch.manual_seed(cfg.train.seed)
    algorithm = build_algorithm(build_model(scenario.model_config(cfg.model)), cfg.meta)
    params = init = algorithm.init_meta_params()
    sites = {name: load_site(scenario, name) for name in ("a", "b")}
    augmenter = Augmenter.from_text(cfg.train.augment, 2, cfg.train.seed)
    for server_round in (1, 2):
        steps = [
            algorithm.meta_gradient(
                params,
                augmenter(
                    site_tasks(
                        site,
                        cfg.train_episode,
                        cfg.train.seed,
                        scenario.site_index(name),
                        "train",
                        cfg.train.tasks_per_round,
                        server_round,
                    ),
                    scenario.site_index(name),
                    server_round,
                ),
            )
            for name, site in sites.items()
        ]
        total = sum(s.num_tasks for s in steps)
        mean = {k: sum(s.grads[k] * s.num_tasks / total for s in steps) for k in params}
        params = {k: params[k] - cfg.train.outer_lr * mean[k] for k in params}
    final = load_file(tmp_path / "out" / "model" / "model.safetensors")
    moved = torch.cat([(final[k] - init[k]).flatten() for k in init])
    expected = torch.cat([(params[k] - init[k]).flatten() for k in init])
    assert expected.norm() > 0.01  # the rounds did move the parameters
    # float32 sums in two processes differ in the last bits; the displacement must not
    assert (moved - expected).norm() < 1e-4 * expected.norm()
    assert json.loads((tmp_path / "out" / "model" / "model.json").read_text())["rounds"] == 2


@pytest.mark.parametrize(("nodes", "left_out"), [(2, {"tiny": "train", "new": "heldout"}), (5, {})])
def test_a_federation_of_the_wrong_size_is_reported_not_trained_silently(tmp_path, nodes, left_out):
    # `flwr run .` with Flower's default of 2 SuperNodes, or one node too many
    cfg = tiny_run(tmp_path, num_server_rounds=1, tasks_per_round=1, eval_tasks=1, shots=1, queries=1)
    results = simulate(cfg, nodes=nodes)
    assert results["missing_sites"] == left_out
    log = " ".join((tmp_path / "out" / "simulation.log").read_text().split())
    if left_out:
        assert "num-supernodes=4" in log and "No held-out site takes part" in log
        assert {s["name"] for s in results["sites"]} == {"a", "b"}
    else:
        (why,) = results["rejected_sites"].values()  # the fifth node, named with the fix
        assert "partition 4 of 5" in why and "num-supernodes=4" in why, why
        assert {s["name"] for s in results["sites"]} == {"a", "b", "tiny", "new"}
