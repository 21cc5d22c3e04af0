"""Personalizing a meta-model: head resizing, patient-safe support selection, clear refusals."""

import pytest
import torch

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.data import LabelledImages
from common.export import ModelFileError, load_meta_model, save_meta_model
from common.models import ModelConfig
from common.personalize import personalize, resize_head, split_support


def data(per_class=6, classes=("a", "b"), patients=True, size=8):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, size, size, generator=g) + labels.view(-1, 1, 1, 1)
    ids = tuple(f"x{i}" for i in range(len(labels)))
    return LabelledImages(
        images, labels, classes, ids, tuple(f"p{i // 2}" for i in range(len(labels))) if patients else None
    )


def test_resize_head_keeps_the_first_rows_including_meta_sgd_rates():
    meta = {
        "body.0.conv.weight": torch.zeros(4, 1, 3, 3),
        "head.weight": torch.arange(10.0).view(5, 2),
        "head.bias": torch.arange(5.0),
        "inner_lr.head.weight": torch.ones(5, 2),
        "inner_lr.body.0.conv.weight": torch.ones(4, 1, 3, 3),
    }
    small = resize_head(meta, 2)
    assert small["head.weight"].tolist() == [[0, 1], [2, 3]] and small["head.bias"].shape == (2,)
    assert small["inner_lr.head.weight"].shape == (2, 2) and small["inner_lr.body.0.conv.weight"].shape == (4, 1, 3, 3)


def test_support_and_evaluation_never_share_a_patient():
    d = data()
    support, rest = split_support(d, 2, torch.Generator().manual_seed(1))
    assert len(support) == 4 and not {d.patients[i] for i in support.tolist()} & {d.patients[i] for i in rest.tolist()}
    with pytest.raises(ValueError, match="class 'a' has 6 examples: 6 shots need at least 7"):
        split_support(d, 6, torch.Generator())


def test_personalize_end_to_end_and_refusals(tmp_path):
    cfg = ModelConfig(image_size=8, num_classes=3, width=4, depth=1, num_groups=2)
    algo = build_algorithm(build_model(cfg), MetaConfig(eval_inner_steps=2))
    save_meta_model(tmp_path, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=3))
    params, loaded, *_ = load_meta_model(tmp_path)
    assert loaded == cfg and set(params) == set(algo.init_meta_params())
    result = personalize(tmp_path, data(), shots=2)
    # 12 images of 6 patients; the 4 support images hold 2 to 4 patients, whose images all leave evaluation
    assert 4 <= result.report["evaluated"] <= 8 and result.confusion.sum() == result.report["evaluated"]
    assert result.model.num_classes == 2
    with pytest.raises(ValueError, match="trained on 3-way tasks"):
        personalize(tmp_path, data(classes=("a", "b", "c", "d")), shots=2)
    with pytest.raises(ValueError, match="do not fit the meta-model's input"):
        personalize(tmp_path, data(size=16), shots=2)
    (tmp_path / "model.json").unlink()
    with pytest.raises(ModelFileError, match=r"model.json is missing"):
        personalize(tmp_path, data(), shots=2)


def test_a_rate_scale_adapts_at_that_fraction_and_the_report_says_so(tmp_path):
    cfg = ModelConfig(image_size=8, num_classes=2, width=4, depth=1, num_groups=2)
    torch.manual_seed(0)
    algo = build_algorithm(build_model(cfg), MetaConfig(algorithm="fomaml", eval_inner_steps=3))
    save_meta_model(tmp_path, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=2))
    full = personalize(tmp_path, data(), shots=2)
    scaled = personalize(tmp_path, data(), shots=2, lr_scale=0.3)
    assert full.report["adaptation_lr_scale"] == 1.0 and scaled.report["adaptation_lr_scale"] == 0.3
    start = load_meta_model(tmp_path)[0]
    # the same steps on the same support set at a third of the rate move the head less
    moved, moved_scaled = ((r.params["head.bias"] - start["head.bias"]).norm().item() for r in (full, scaled))
    assert 0 < moved_scaled < moved
    with pytest.raises(ValueError, match="positive, finite factor"):
        personalize(tmp_path, data(), shots=2, lr_scale=0.0)
