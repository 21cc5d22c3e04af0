"""The `fedmeta` command as a user runs it: a real subprocess."""

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def fedmeta(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmeta", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args", [[], ["bench"], ["bench", "maml"]])
def test_every_command_has_help(args):
    out = fedmeta(*args, "--help")
    assert out.returncode == 0, out.stderr
    assert "Usage: " in out.stdout


def test_bench_maml_json_reports_equal_gradients():
    # The issue's own workload (Conv-4, 5-way 5-shot, 5 steps, 8 tasks), one timed repeat.
    # A toy-sized workload is no cheaper check: with a handful of 16x16 noise images, lr 0.4
    # amplifies float32 rounding ~50x per inner step, so any two implementations (fedmeta or
    # not) drift past 1e-5 there while agreeing exactly in float64 (test_models.py).
    out = fedmeta("bench", "maml", "--json", "--repeats", "1")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    for key in ("fedmeta_s", "higher_s", "autograd_s", "speedup_vs_higher", "max_rel_grad_diff", "peak_mem_mb", "device"):
        assert key in result
    assert result["device"] == "cpu"
    assert result["max_rel_grad_diff"] < 1e-5
    assert result["fedmeta_s"] > 0 and result["speedup_vs_higher"] > 0


def test_bench_rejects_missing_cuda_device_clearly():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    out = fedmeta("bench", "maml", "--device", "cuda")
    assert out.returncode != 0
    assert "no CUDA device" in out.stderr and "--device cpu" in out.stderr
