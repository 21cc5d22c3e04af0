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


def test_centralized_baseline_trains_on_the_gpu(tmp_path):
    from common.export import load_meta_model
    from common.runconfig import parse_run_config
    from simulation.baselines import run_baseline

    values = dict(part.split("=", 1) for part in TINY.split())
    cfg = parse_run_config(
        {**{k: int(v) for k, v in values.items()}, "num-server-rounds": 2, "device": "cuda", "out-dir": str(tmp_path)}
    )
    results = run_baseline("centralized", cfg)
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    params = load_meta_model(tmp_path / "model")[0]
    assert all(torch.isfinite(v).all() for v in params.values())
