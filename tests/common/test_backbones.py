"""Every registered backbone works everywhere unchanged: exported and loaded, personalized at a
site, and benchmarked against `higher` (whose meta-gradient differentiates through the same
MONAI blocks), with the backbone chosen by name only."""

import pytest

from common.algorithms import build_algorithm
from common.backbones import BACKBONES, build_model
from common.bench import BenchConfig, run_maml_bench
from common.config import EpisodeConfig, MetaConfig
from common.export import load_meta_model, save_meta_model
from common.models import ModelConfig
from common.personalize import personalize
from tests.common.test_personalize import data


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_export_and_personalize(tmp_path, backbone):
    cfg = ModelConfig(image_size=8, num_classes=3, width=4, depth=1, num_groups=2, backbone=backbone)
    algo = build_algorithm(build_model(cfg), MetaConfig("meta-sgd", eval_inner_steps=2))
    save_meta_model(tmp_path, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=3))
    params, loaded, *_ = load_meta_model(tmp_path)
    assert loaded == cfg and set(params) == set(algo.init_meta_params())
    result = personalize(tmp_path, data(), shots=2)
    assert result.model.backbone == backbone and 0 <= result.report["accuracy"] <= 1


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_the_bench_measures_every_backbone_against_higher(backbone):
    cfg = BenchConfig(
        tasks=2, ways=3, shots=2, queries=2, inner_steps=2, width=8, image_size=16, repeats=1, model=backbone
    )
    result = run_maml_bench(cfg)
    assert result.config["model"] == backbone and result.fedmeta_s > 0 and result.higher_s > 0
    # float32 against higher's float64 meta-gradient: tiny noisy inputs amplify rounding, so the
    # bound is loose here; the workload is held to 1e-5 (tests/cli)
    assert result.max_rel_grad_diff < 1e-3
