"""The coordinator's checkpoint: exact restore of meta-parameters and Adam state, atomic writes,
clear refusals (overwrite, missing, changed config, corrupt file)."""

import pytest
import torch

import server.checkpoint as checkpoint_module
from server.checkpoint import CHECKPOINT, Checkpoint, prepare_resume, read_checkpoint
from server.optimizer import OuterOptimizer

CONFIG = {"inner-lr": 0.4, "num-server-rounds": 4, "out-dir": "/tmp/x", "seed": 0}


def params():
    g = torch.Generator().manual_seed(1)
    return {
        "conv.weight": torch.randn(4, 1, 3, 3, generator=g),
        "head.bias": torch.zeros(5),
        "lr.conv.weight": torch.full((4, 1, 3, 3), 0.1),
    }


def grads(step):
    g = torch.Generator().manual_seed(100 + step)
    return {k: torch.randn(v.shape, generator=g) for k, v in params().items()}


def snapshot(optimizer, rnd, history=None):
    p, opt = optimizer.state()
    return Checkpoint(
        rnd,
        p,
        opt,
        torch.get_rng_state(),
        history or {"rounds": [{"round": r} for r in range(1, rnd + 1)]},
        dict(CONFIG),
    )


def test_a_restored_strategy_continues_exactly_like_the_original(tmp_path):
    original = OuterOptimizer(params(), "adam", 0.01)
    for step in range(3):
        original.step(grads(step))
    snapshot(original, 3).write(tmp_path / CHECKPOINT)

    restored = OuterOptimizer(params(), "adam", 0.01)  # a fresh start, as after a crash
    loaded = read_checkpoint(tmp_path / CHECKPOINT)
    restored.restore(loaded.params, loaded.optimizer)
    assert loaded.round == 3 and [r["round"] for r in loaded.history["rounds"]] == [1, 2, 3]
    for step in range(3, 6):  # Adam's moments and step counts must be the original's, or these diverge
        a, b = original.step(grads(step)), restored.step(grads(step))
        for k in a:
            assert torch.equal(a[k], b[k]), k


def test_a_crash_while_writing_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    strategy = OuterOptimizer(params())
    path = tmp_path / CHECKPOINT
    snapshot(strategy, 1).write(path)
    before = path.read_bytes()

    def torn(tensors, filename, metadata):  # the process dies halfway through the new file
        with open(filename, "wb") as handle:
            handle.write(b"\x00" * 100)
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module, "save_file", torn)
    with pytest.raises(KeyboardInterrupt):
        snapshot(strategy, 2).write(path)
    assert path.read_bytes() == before and read_checkpoint(path).round == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT]  # no temporary file left behind


def test_a_corrupt_checkpoint_is_named(tmp_path):
    path = tmp_path / CHECKPOINT
    path.write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="is not a readable fedmeta checkpoint"):
        read_checkpoint(path)


def test_resume_refusals(tmp_path):
    path = tmp_path / CHECKPOINT
    assert prepare_resume(path, CONFIG, resume=False) is None
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        prepare_resume(path, CONFIG, resume=True)
    strategy = OuterOptimizer(params())
    snapshot(strategy, 2).write(path)
    with pytest.raises(FileExistsError, match="holds a checkpoint of an earlier run"):
        prepare_resume(path, CONFIG, resume=False)
    assert prepare_resume(path, {**CONFIG, "num-server-rounds": 10, "out-dir": "/elsewhere"}, resume=True).round == 2
    with pytest.raises(ValueError, match=r"'inner-lr': \(0.4, 0.1\)"):
        prepare_resume(path, {**CONFIG, "inner-lr": 0.1}, resume=True)
    assert prepare_resume(path, {**CONFIG, "inner-lr": 0.1}, resume=True, force=True).round == 2


def test_a_forced_resume_with_another_model_names_the_parameters_and_settings(tmp_path):
    """--force-resume may change settings, never the model: the refusal names each parameter that
    does not fit and the settings that changed, instead of a tensor size error mid-run."""
    path = tmp_path / CHECKPOINT
    strategy = OuterOptimizer(params())
    snapshot(strategy, 2).write(path)
    wider = {**params(), "conv.weight": torch.zeros(8, 1, 3, 3), "extra.bias": torch.zeros(2)}
    with pytest.raises(ValueError) as refusal:
        prepare_resume(path, {**CONFIG, "model-width": 8}, resume=True, force=True, template=wider)
    message = str(refusal.value)
    assert "conv.weight is (4, 1, 3, 3) there, (8, 1, 3, 3) here" in message and "extra.bias is missing" in message
    assert "'model-width': (64, 8)" in message and "start a new run" in message
    assert prepare_resume(path, CONFIG, resume=True, template=params()).round == 2  # the same model resumes
