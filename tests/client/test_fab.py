"""The ClientApp as Flower ships it: `flwr build` of this repository makes a Flower app bundle
(FAB), which carries only .py/.toml/.md/.json-like files. A ClientApp imported from the unpacked
FAB, with no other copy of fedmeta on its path, must still build and use the fused C kernels
(from their embedded copy, `common/native/kernels_source.py`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from tests.procs import BIN

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration

PROBE = """
import json, sys
from pathlib import Path
from flwr.app import Context, RecordDict
import client.app, common.native.build as build
from common.runconfig import flat_run_config, parse_run_config

run_config = flat_run_config(parse_run_config({"model-width": 8, "model-groups": 2, "model-depth": 2}))
context = Context(run_id=1, node_id=1, node_config={"partition-id": 0, "kernels": "native", "device": "cpu"},
                  state=RecordDict(), run_config=run_config)
site = client.app._site(context)
print(json.dumps({"client": client.app.__file__, "source_installed": build.SOURCE.is_file(),
                  "kernels": site.algorithm.kernels_name, "library": str(site.algorithm.kernels.path)}))
"""


def test_a_clientapp_loaded_from_the_fab_uses_the_c_kernels(tmp_path):
    built = subprocess.run(
        [str(BIN / "flwr"), "build", "--app", str(ROOT)], cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert built.returncode == 0, built.stdout + built.stderr
    fab = next(tmp_path.glob("*.fab"))
    names = zipfile.ZipFile(fab).namelist()
    assert "common/native/kernels_source.py" in names and "client/app.py" in names
    assert not any(name.endswith(".c") for name in names)  # Flower's FAB rules: the reason for the copy
    app = tmp_path / "app"
    zipfile.ZipFile(fab).extractall(app)
    probe = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(app), "XDG_CACHE_HOME": str(tmp_path / "cache"), "PATH": "/usr/bin:/bin"},
    )
    assert probe.returncode == 0, probe.stderr
    import json

    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert (
        Path(seen["client"]).is_relative_to(app) and seen["source_installed"] is False
    )  # the FAB's code, no kernels.c
    assert seen["kernels"] == "native" and Path(seen["library"]).is_relative_to(tmp_path / "cache")
