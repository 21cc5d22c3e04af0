"""Fixtures shared across packages: the real MedMNIST files, skipped cleanly when absent."""

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def medmnist_dir(*needed: str) -> Path:
    """`FEDMETA_TEST_DATA`, else ../shared/data/medmnist beside the project; skips without the files."""
    path = Path(os.environ.get("FEDMETA_TEST_DATA", ROOT.parent / "shared" / "data" / "medmnist"))
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        pytest.skip(f"MedMNIST files {missing} not in {path} (set FEDMETA_TEST_DATA to their directory)")
    return path


@pytest.fixture
def medmnist_2d() -> Path:
    return medmnist_dir("pneumoniamnist.npz", "retinamnist.npz", "breastmnist.npz", "breastmnist_64.npz")


@pytest.fixture
def medmnist_3d() -> Path:
    return medmnist_dir("adrenalmnist3d.npz", "adrenalmnist3d_64.npz", "vesselmnist3d.npz")


@pytest.fixture
def medmnist_multiclass() -> Path:
    """OrganAMNIST and BloodMNIST: the few-shot benchmark's datasets (issue 15)."""
    return medmnist_dir("organamnist.npz", "bloodmnist.npz")


@pytest.fixture(autouse=True)
def _private_cache_dir(tmp_path_factory, monkeypatch):
    """Site folders' preprocessed cache in a directory of the test's own (subprocesses inherit it),
    never the user's ~/.cache."""
    monkeypatch.setenv("FEDMETA_CACHE_DIR", str(tmp_path_factory.mktemp("fedmeta-cache")))
