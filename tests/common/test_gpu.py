"""The CUDA path (vmap over tasks) gives the CPU loop's meta-gradient. Skipped without CUDA."""

import pytest
import torch

from common.algorithms import build_algorithm
from common.config import ALGORITHMS
from tests.common.conftest import meta_config

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_cuda_vmap_matches_cpu_loop(tiny_model, tiny_batch, algorithm):
    cpu = build_algorithm(tiny_model, meta_config(algorithm, execution="loop"))
    meta = cpu.init_meta_params()
    expected = cpu.meta_gradient(meta, tiny_batch)
    gpu = build_algorithm(tiny_model.cuda(), meta_config(algorithm))
    assert gpu.execution_mode(torch.device("cuda")) == "vmap"
    got = gpu.meta_gradient({k: v.cuda() for k, v in meta.items()}, tiny_batch)
    for k, g in expected.grads.items():
        assert got.grads[k].device.type == "cuda"
        torch.testing.assert_close(got.grads[k].cpu(), g, rtol=1e-8, atol=1e-10)
