"""Personalizing a meta-model: its head's outputs taken by class name or by slot, patient-safe support
selection, clear refusals."""

import pytest
import torch

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.config import EpisodeConfig, MetaConfig
from common.data import LabelledImages
from common.export import ModelFileError, load_meta_model, save_meta_model
from common.models import ModelConfig
from common.personalize import head, head_classes, head_rows, personalize, select_head, split_support
from common.scenario import load_scenario


def data(per_class=6, classes=("a", "b"), patients=True, size=8):
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(len(classes)).repeat_interleave(per_class)
    images = torch.rand(len(labels), 1, size, size, generator=g) + labels.view(-1, 1, 1, 1)
    ids = tuple(f"x{i}" for i in range(len(labels)))
    return LabelledImages(
        images, labels, classes, ids, tuple(f"p{i // 2}" for i in range(len(labels))) if patients else None
    )


def test_select_head_takes_the_outputs_asked_for_in_order_including_meta_sgd_rates():
    meta = {
        "body.0.conv.weight": torch.zeros(4, 1, 3, 3),
        "head.weight": torch.arange(10.0).view(5, 2),
        "head.bias": torch.arange(5.0),
        "inner_lr.head.weight": torch.arange(10.0).view(5, 2),
        "inner_lr.body.0.conv.weight": torch.ones(4, 1, 3, 3),
    }
    first = select_head(meta, [0, 1])
    assert first["head.weight"].tolist() == [[0, 1], [2, 3]] and first["head.bias"].shape == (2,)
    assert first["inner_lr.head.weight"].shape == (2, 2) and first["inner_lr.body.0.conv.weight"].shape == (4, 1, 3, 3)
    picked = select_head(meta, [4, 1])
    assert picked["head.bias"].tolist() == [4, 1] and picked["inner_lr.head.weight"].tolist() == [[8, 9], [2, 3]]


def test_a_sites_classes_find_the_models_outputs_by_name_or_are_refused_by_name():
    trained = ("bladder", "femur-left", "kidney-left", "liver", "spleen")
    assert head_rows(trained, ("spleen", "Kidney Left", "liver")) == [4, 2, 3]
    joined = ("organamnist:kidney-left", "organamnist:liver", "bloodmnist:monocyte")
    assert head_rows(joined, ("monocyte", "organamnist:liver")) == [2, 1]
    blood = load_scenario("new-hospital-blood").head_classes
    assert blood is not None and head_rows(blood, ("Immature granulocytes", "monocyte")) == [3, 5]
    pooled = load_scenario("new-classes", "hospital").head_classes
    assert pooled is not None and head_rows(pooled, ("immature_granulocytes", "kidney left")) == [14, 4]
    with pytest.raises(ValueError, match=r"\['pancreas'\] are not among the 5 classes .*bladder, femur-left"):
        head_rows(trained, ("liver", "pancreas"))
    with pytest.raises(ValueError, match=r"'x' fits 2 classes \(a:x, b:x\)"):
        head_rows(("a:x", "b:x"), ("x",))
    with pytest.raises(ValueError, match=r"\['liver', 'LIVER'\] are one class spelt two ways"):
        head_rows(trained, ("liver", "LIVER"))


def test_which_models_outputs_are_classes():
    """Global labels name the outputs; relabelled episodes do not. Models written before model.json
    said so (the committed headline models) are read through the scenario they name."""
    organs = load_scenario("new-hospital").label_space(load_scenario("new-hospital").sites[0])
    hospital = ModelConfig(num_classes=11)
    assert head_classes({"scenario": "new-hospital"}, hospital, EpisodeConfig(ways=11)) == organs
    assert head_classes({"classes": ["a", "b"]}, ModelConfig(num_classes=2), EpisodeConfig(ways=2)) == ("a", "b")
    # new-classes: its ProtoNet's 5 outputs are episode slots; its supervised FedAvg's 19 are the joined classes
    assert head_classes({"scenario": "new-classes"}, ModelConfig(num_classes=5), EpisodeConfig(ways=5)) is None
    joined = head_classes({"scenario": "new-classes"}, ModelConfig(num_classes=19), EpisodeConfig(ways=5))
    assert joined is not None and joined[4] == "organamnist:kidney-left"
    assert head_classes({"scenario": "no-such-scenario"}, hospital, EpisodeConfig(ways=11)) is None
    assert head_classes({}, hospital, EpisodeConfig(ways=11)) is None
    with pytest.raises(ValueError, match="should be 2 names, one per head output"):
        head_classes({"classes": ["a"]}, ModelConfig(num_classes=2), EpisodeConfig(ways=2))


def test_a_global_label_model_adapts_from_its_outputs_for_the_sites_classes(tmp_path):
    """A site holding some of the consortium's classes, in its own order, starts from the head rows
    trained for them; before, it took the first rows, another class's, whatever its names."""
    cfg = ModelConfig(image_size=8, num_classes=4, width=4, depth=1, num_groups=2)
    torch.manual_seed(0)
    algo = build_algorithm(build_model(cfg), MetaConfig(algorithm="fomaml"))
    meta = algo.init_meta_params()
    save_meta_model(tmp_path, meta, cfg, algo.config, EpisodeConfig(ways=4), classes=["a", "b", "c", "d"])
    result = personalize(tmp_path, data(classes=("d", "b")), shots=2, steps=0)
    assert torch.equal(result.params["head.weight"], meta["head.weight"][[3, 1]])
    assert result.report["head_from"] == ["d", "b"] and head(result.report) == "the model's own outputs for d, b"
    with pytest.raises(ValueError, match=r"\['e'\] are not among the 4 classes"):
        personalize(tmp_path, data(classes=("a", "e")), shots=2)
    # adapted again, the personalized model's outputs are the site's classes
    from common.personalize import write_personalized

    write_personalized(tmp_path / "site", result)
    assert "Head: the model's own outputs for d, b." in (tmp_path / "site" / "report.md").read_text()
    again = personalize(tmp_path / "site" / "model", data(classes=("b", "d")), shots=2, steps=0)
    assert torch.equal(again.params["head.weight"], meta["head.weight"][[1, 3]])


def test_only_keeps_the_classes_asked_for_relabelled_in_that_order():
    d = data(classes=("a", "b", "c"))
    part = d.only([2, 0])
    assert part.classes == ("c", "a") and len(part) == 12
    assert [d.classes[d.labels[d.ids.index(i)]] for i in part.ids] == [part.classes[y] for y in part.labels]


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
    assert result.model.num_classes == 2 and result.report["head_from"] is None
    assert head(result.report).startswith("the model's first 2 outputs")
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


def test_a_protonet_adapts_to_any_number_of_classes_from_its_prototypes(tmp_path):
    """A ProtoNet reads no trained output: a site with more classes than its training episodes
    had ways gets one prototype per class, where a model that adapts its head is refused."""
    cfg = ModelConfig(image_size=8, num_classes=2, width=4, depth=1, num_groups=2)
    torch.manual_seed(0)
    for algorithm in ("protonet", "fomaml"):
        algo = build_algorithm(build_model(cfg), MetaConfig(algorithm=algorithm))
        save_meta_model(tmp_path / algorithm, algo.init_meta_params(), cfg, algo.config, EpisodeConfig(ways=2))
    site = data(classes=("a", "b", "c", "d"))
    result = personalize(tmp_path / "protonet", site, shots=2)
    assert result.params["head.weight"].shape[0] == 4 and result.logits.shape[1] == 4
    assert result.report["head_from"] == "prototypes" and head(result.report).startswith("the support set's class")
    # the fixture's classes differ in brightness, which the prototypes of an untrained body still see
    assert result.report["accuracy"] > 0.9
    with pytest.raises(ValueError, match="trained on 2-way tasks; meta-train with ways=4 or more, or use a ProtoNet"):
        personalize(tmp_path / "fomaml", site, shots=2)
