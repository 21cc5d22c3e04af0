"""A coordinator killed with SIGKILL mid-run and restarted with --resume finishes the planned
rounds, records every round exactly once, and ends where an uninterrupted run ends."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from common.runconfig import parse_run_config
from server.checkpoint import CHECKPOINT, read_checkpoint
from simulation.run import simulate
from tests.procs import group_gone, live_members
from tests.simulation.test_simulate import TINY, fedmeta

pytestmark = pytest.mark.integration

ARGS = ["simulate", "--rounds", "4", "--tasks-per-round", "2", "--eval-every", "2", "--run-config", TINY]
TRACKED = [*ARGS[:-1], TINY + " tracking='tensorboard'"]  # tracking may change on resume


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    reference = fedmeta(*ARGS, "--out", str(tmp_path / "reference"))
    assert reference.returncode == 0, reference.stdout + reference.stderr

    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, "-m", "fedmeta", *TRACKED, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not ((out / CHECKPOINT).exists() and read_checkpoint(out / CHECKPOINT).round >= 2):
            assert process.poll() is None, "the run ended before it could be killed"
            assert time.monotonic() < deadline, "no checkpoint of round 2 within 300 s"
            time.sleep(0.2)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole coordinator: Flower, Ray, the sites
        process.wait()
    killed_after = read_checkpoint(out / CHECKPOINT).round
    assert killed_after < 4, "the run finished before the kill; nothing was tested"
    assert group_gone(process.pid), live_members(process.pid)

    refused = fedmeta(*ARGS, "--out", str(out))  # forgetting --resume must not overwrite the run
    assert refused.returncode == 1 and "--resume" in refused.stderr, refused.stderr
    assert "held-out acc" not in refused.stdout, refused.stdout  # the killed run's rounds are not shown as this one's
    assert read_checkpoint(out / CHECKPOINT).round == killed_after

    # a changed setting, and another model even forced: refused before the simulation starts (in this
    # process, as `fedmeta simulate` would with those options: the command's output is checked above)
    saved = read_checkpoint(out / CHECKPOINT).run_config
    with pytest.raises(ValueError, match="inner-steps"):
        simulate(parse_run_config({**saved, "inner-steps": 2, "resume": True}))
    with pytest.raises(ValueError, match="holds another model") as wider:
        simulate(parse_run_config({**saved, "model-width": 24, "resume": True, "force-resume": True}))
    assert "model-width" in str(wider.value)
    assert read_checkpoint(out / CHECKPOINT).round == killed_after

    resumed = fedmeta(*TRACKED, "--out", str(out), "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2, 3, 4]  # each exactly once
    assert results["resumed"] == [{"after_round": killed_after}]
    final, ref = read_checkpoint(out / CHECKPOINT), read_checkpoint(tmp_path / "reference" / CHECKPOINT)
    assert final.round == ref.round == 4
    for name in ref.params:
        torch.testing.assert_close(final.params[name], ref.params[name], rtol=1e-5, atol=1e-6)

    # TensorBoard saw every round once: the resumed writer purged what the killed one wrote after its checkpoint
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("round/seconds")] == [1, 2, 3, 4]
    assert [e.step for e in events.Scalars("heldout/acc-after")] == [2, 4]
    site = next(s["name"] for s in results["sites"] if s["role"] == "train")
    assert [e.step for e in events.Scalars(f"site/{site}/train-meta-loss")] == [1, 2, 3, 4]
