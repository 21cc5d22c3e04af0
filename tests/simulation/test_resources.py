"""What a simulation asks of the machine is checked before Ray starts: an impossible request is
an error naming the option, not a run that waits for sites that never come."""

import os
import subprocess
import sys

import pytest
import torch

from deploy.processes import free_port
from simulation.run import Resources


def test_more_cpus_per_site_than_the_machine_has():
    with pytest.raises(ValueError, match=r"cpus-per-site=.* lower --cpus-per-site"):
        Resources(cpus_per_site=(os.cpu_count() or 1) + 1).ray_init_args()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the machine without a GPU")
def test_gpu_fraction_without_a_gpu_is_refused_before_anything_starts():
    with pytest.raises(ValueError, match="torch sees no CUDA GPU"):
        Resources(gpus_per_site=0.25).ray_init_args()
    result = subprocess.run(
        [sys.executable, "-m", "fedmeta", "simulate", "--gpus-per-site", "0.25", "--out", "unused"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "--gpus-per-site 0" in result.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_count_is_given_to_ray():
    assert Resources(gpus_per_site=0.5).ray_init_args()["num_gpus"] == torch.cuda.device_count()


def test_unreachable_ray_cluster():
    port = free_port()
    with pytest.raises(ValueError, match=f"no Ray head node answers there.*ray start --head --port {port}"):
        Resources(ray_address=f"127.0.0.1:{port}").ray_init_args()
    with pytest.raises(ValueError, match="ip:port"):
        Resources(ray_address="headnode").ray_init_args()


def test_a_local_cluster_without_gpus():
    args = Resources(cpus_per_site=1).ray_init_args()
    assert args["include_dashboard"] is False and "num_gpus" not in args
