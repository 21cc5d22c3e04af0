"""The simulation engine with fractional GPUs: four virtual sites share one GPU (0.25 each) and
every site computes on CUDA. Skipped without CUDA."""

import json

import pytest
import torch

from tests.simulation.test_simulate import TINY, fedmeta

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.integration,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def test_virtual_sites_share_a_gpu(tmp_path):
    out = tmp_path / "run"
    # device=cuda (not auto): a site that Ray gave no GPU would fail loudly instead of using the CPU
    result = fedmeta(
        "simulate",
        "--rounds",
        "2",
        "--tasks-per-round",
        "4",
        "--eval-every",
        "2",
        "--gpus-per-site",
        "0.25",
        "--cpus-per-site",
        "1",
        "--run-config",
        TINY + ' device="cuda"',
        "--out",
        str(out),
    )
    assert result.returncode == 0, result.stdout + result.stderr
    results = json.loads((out / "results.json").read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    assert all(s["device"].startswith("cuda:0 (") for s in results["sites"]), results["sites"]
    assert all(len(r["train"]) == 6 for r in results["rounds"])
