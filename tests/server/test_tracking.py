"""The coordinator's TensorBoard sink: every round's per-site and pooled metrics and the DP
budget, read back from the event files; a missing package or unknown tracker is refused."""

import sys

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from server.report import EVAL_METRICS, Recorder
from server.tracking import build_sink, check_tracking

SITES = [{"name": "a", "role": "train"}, {"name": "b", "role": "train"}, {"name": "new", "role": "heldout"}]


def test_every_round_reaches_tensorboard(tmp_path):
    recorder = Recorder(tmp_path, {}, "synthetic", "maml", SITES)
    recorder.sink = build_sink("tensorboard", tmp_path / "tb")
    for r in (1, 2, 3):
        train = {"a": {"meta-loss": 2.0 / r, "num-tasks": 4.0}, "b": {"meta-loss": 1.0 / r, "num-tasks": 4.0}}
        recorder.train(r, train, seconds=0.5, privacy={"epsilon": 0.1 * r, "delta": 1e-5})
        if r != 2:
            scores = dict.fromkeys(EVAL_METRICS, 0.5) | {"acc-after": 0.5 + r / 10}
            per_site = {"new": {**scores, **{f"{m}-ci": 0.05 for m in scores}, "num-tasks": 10.0}}
            recorder.evaluate(r, per_site)
    recorder.finish(1.0)
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("site/a/train-meta-loss")] == [
        (1, 2.0),
        (2, 1.0),
        (3, 0.667),
    ]
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("privacy/epsilon")] == [(1, 0.1), (2, 0.2), (3, 0.3)]
    assert [(e.step, round(e.value, 3)) for e in events.Scalars("heldout/acc-after")] == [(1, 0.6), (3, 0.8)]
    assert "site/new/acc-after" in events.Tags()["scalars"]


def test_unknown_tracker_and_missing_package_are_refused_with_the_fix(monkeypatch):
    with pytest.raises(ValueError, match="tracking='mlflow': choose tensorboard"):
        check_tracking("mlflow")
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    with pytest.raises(ValueError, match=r'pip install "fedmeta\[tracking\]"'):
        check_tracking("tensorboard")
    check_tracking("")  # off: nothing needed
