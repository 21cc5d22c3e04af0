"""Official MedMNIST `.npz` files (v2 / MedMNIST+, 2D and 3D, sizes 28/64/128/224), MD5-checked.

The table of files, MD5s, URLs and label names (`medmnist_info.json`) is taken from the
`medmnist` 3.0.2 package's `info.py`. A file is verified before it is used; a missing file is
downloaded when `download=True` and the network allows, otherwise the error names the file, the
directory it belongs in and the URL to fetch it from.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from common.data.dataset import LabelledImages

SPLITS = ("train", "val", "test")
_TABLE = json.loads(files("common.data").joinpath("medmnist_info.json").read_text())["datasets"]


class MedMNISTFileError(FileNotFoundError):
    """A MedMNIST file that is missing or not the official one."""


@dataclass(frozen=True)
class MedMNISTInfo:
    flag: str
    name: str
    spatial_dims: int
    task: str
    labels: tuple[str, ...]
    channels: int
    samples: dict[str, int]
    license: str
    files: dict[int, dict[str, str]]

    def file(self, size: int) -> dict[str, str]:
        if size not in self.files:
            raise ValueError(f"{self.name} comes in sizes {sorted(self.files)}, not {size}")
        return self.files[size]


def datasets() -> list[str]:
    return sorted(_TABLE)


def info(flag: str) -> MedMNISTInfo:
    if flag not in _TABLE:
        raise ValueError(f"unknown MedMNIST dataset {flag!r}; known: {', '.join(datasets())}")
    entry = _TABLE[flag]
    return MedMNISTInfo(
        flag=flag,
        name=entry["name"],
        spatial_dims=entry["spatial_dims"],
        task=entry["task"],
        labels=tuple(entry["labels"]),
        channels=entry["channels"],
        samples=entry["samples"],
        license=entry["license"],
        files={int(size): f for size, f in entry["files"].items()},
    )


def md5sum(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def identify(path: Path) -> tuple[str, int] | None:
    """(flag, size) of a file by its official name, or None when the name is not a MedMNIST file."""
    for flag, entry in _TABLE.items():
        for size, f in entry["files"].items():
            if f["file"] == path.name:
                return flag, int(size)
    return None


def verify(path: Path, flag: str, size: int) -> None:
    expected = info(flag).file(size)["md5"]
    actual = md5sum(path)
    if actual != expected:
        raise MedMNISTFileError(
            f"{path} has MD5 {actual}, but the official {path.name} has {expected}: the file is "
            f"modified, truncated or a different version; delete it and download it again from "
            f"{info(flag).file(size)['url']}"
        )


def locate(flag: str, size: int, data_dir: Path, download: bool = False) -> Path:
    """The verified path of a MedMNIST file in `data_dir`, downloading it first if asked."""
    entry = info(flag).file(size)
    path = Path(data_dir) / entry["file"]
    if not path.is_file():
        failure = _download(entry, path) if download else "downloads are off"
        if failure:
            raise MedMNISTFileError(
                f"{entry['file']} is not in {Path(data_dir).resolve()} ({failure}). Download {entry['url']} "
                f"(MD5 {entry['md5']}) and put it there, or point --data-dir (FEDMETA_DATA_DIR) at the "
                "directory that holds it"
            )
    verify(path, flag, size)
    return path


def _download(entry: dict[str, str], path: Path) -> str | None:
    """Fetch to a temporary file and move it into place; returns why it failed, or None."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with (
            urllib.request.urlopen(entry["url"], timeout=30) as response,
            tempfile.NamedTemporaryFile(dir=path.parent, suffix=".part", delete=False) as tmp,
        ):
            shutil.copyfileobj(response, tmp)
        Path(tmp.name).replace(path)
        return None
    except OSError as error:
        return f"download failed: {error}"


def load(flag: str, split: str, data_dir: Path, size: int = 28, download: bool = False) -> LabelledImages:
    """One split of a MedMNIST dataset as float images in [0, 1], (M, C, *S) with C = 1 or 3."""
    return load_splits(flag, (split,), data_dir, size, download)[split]


@lru_cache(maxsize=4)
def load_splits(
    flag: str, splits: tuple[str, ...], data_dir: Path, size: int = 28, download: bool = False
) -> dict[str, LabelledImages]:
    """Several splits from one MD5 check and one read of the archive. Kept for the process's next
    few calls: a worker that hosts several sites of one pool reads the file once."""
    unknown = [s for s in splits if s not in SPLITS]
    if unknown:
        raise ValueError(f"split={unknown[0]!r}: use one of {SPLITS}")
    meta = info(flag)
    if meta.task.startswith("multi-label"):
        raise ValueError(f"{meta.name} is multi-label ({meta.task}); episodic tasks need one label per image")
    path = locate(flag, size, data_dir, download)
    out = {}
    with np.load(path) as archive:
        for split in splits:
            images, labels = archive[f"{split}_images"], archive[f"{split}_labels"].reshape(-1)
            x = torch.from_numpy(images).float().div_(255)
            # 2D grey (M, H, W), 2D RGB (M, H, W, 3), 3D (M, D, H, W): channels first
            x = x.permute(0, 3, 1, 2) if x.dim() == 4 and meta.spatial_dims == 2 else x.unsqueeze(1)
            out[split] = LabelledImages(
                images=x.contiguous(),
                labels=torch.from_numpy(labels.astype(np.int64)),
                classes=meta.labels,
                ids=tuple(f"{path.name}:{split}:{i}" for i in range(len(labels))),
            )
    return out
