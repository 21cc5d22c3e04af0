"""Device choice: auto picks what exists; asking for what does not exist says what to do."""

import pytest
import torch

from common.device import resolve_device


def test_auto_and_cpu():
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_missing_cuda_is_a_clear_error():
    with pytest.raises(ValueError, match="sees no CUDA device: use device=cpu"):
        resolve_device("cuda:0")


@pytest.mark.parametrize("name", ["tpu", "gpu0", "mps"])
def test_unsupported_devices(name):
    with pytest.raises(ValueError, match="device="):
        resolve_device(name)
