"""A model directory that is wrong in any way is named, with its fix, never a traceback."""

import json

import pytest
import torch

from common.config import EpisodeConfig, MetaConfig
from common.export import DESCRIPTION, WEIGHTS, ModelFileError, load_meta_model, save_meta_model
from common.models import ModelConfig


@pytest.fixture
def model_dir(tmp_path):
    params = {"body.w": torch.ones(2, 3), "head.weight": torch.zeros(5, 3)}
    return save_meta_model(tmp_path / "run" / "model", params, ModelConfig(), MetaConfig(), EpisodeConfig())


def test_a_saved_model_loads(model_dir):
    params, model, *_ = load_meta_model(model_dir)
    assert torch.equal(params["body.w"], torch.ones(2, 3)) and model == ModelConfig()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("file", "is a file, not a model directory"),
        ("absent", "does not exist"),
        ("run-dir", "is a run directory: give its model"),
        ("no-json", "model.json is missing"),
        ("bad-json", "model.json is not valid JSON"),
        ("foreign-json", "is not a fedmeta meta-model description"),
        ("truncated", "model.safetensors is not a readable safetensors file"),
        ("no-settings", "its model, meta or episode settings are unreadable"),
    ],
)
def test_each_broken_model_directory_is_named_with_the_fix(model_dir, damage, message):
    target = model_dir
    if damage == "file":
        target = model_dir / WEIGHTS
    elif damage == "absent":
        target = model_dir.parent / "nothing-here"
    elif damage == "run-dir":
        target = model_dir.parent
    elif damage == "no-json":
        (model_dir / DESCRIPTION).unlink()
    elif damage == "bad-json":
        (model_dir / DESCRIPTION).write_text("{not json")
    elif damage == "foreign-json":
        (model_dir / DESCRIPTION).write_text(json.dumps({"architectures": ["BertModel"]}))
    elif damage == "truncated":
        data = (model_dir / WEIGHTS).read_bytes()
        (model_dir / WEIGHTS).write_bytes(data[: len(data) // 2])
    elif damage == "no-settings":
        (model_dir / DESCRIPTION).write_text(json.dumps({"format": "fedmeta-meta-model/1", "model": {}}))
    with pytest.raises(ModelFileError, match=message) as caught:
        load_meta_model(target)
    assert str(target) in str(caught.value) or DESCRIPTION in str(caught.value) or WEIGHTS in str(caught.value)
