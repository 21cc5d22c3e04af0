"""A simulation's cleanup after a failed local Ray start: real processes carrying Ray's path."""

import time
from pathlib import Path

import pytest

from tests.procs import SLEEPER, Processes

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")


def test_a_simulation_stops_ray_processes_that_a_failed_start_left(tmp_path):
    import ray

    from simulation.run import stop_orphaned_ray

    assert not ray.is_initialized()
    procs = Processes(tmp_path)
    gcs_server = Path(ray.__file__).parent / "core" / "src" / "ray" / "gcs" / "gcs_server"
    orphan = procs.start("gcs", [*SLEEPER, str(gcs_server)])
    try:
        time.sleep(0.2)
        assert stop_orphaned_ray() == [orphan.pid]
        assert procs.finish(orphan, 10)[0] == -15
    finally:
        procs.kill_all()
