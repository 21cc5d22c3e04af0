"""A site folder's preprocessed images, kept on the site's own disk so that loading the folder
again (the next round's ClientApp process, the next run) reads one file instead of every image.

An entry is keyed by every listed image's path, label, patient, size and modification time, the
transform chain's fingerprint and the model's input shape: editing, adding or relabelling an
image, or changing transforms.toml, makes a new entry. Entries are safetensors (tensors) plus
JSON (names and counts), never pickles, and never leave the site. The directory is
$FEDMETA_CACHE_DIR, else ~/.cache/fedmeta/preprocessed; delete it to reclaim the space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from common.data.dataset import LabelledImages

CACHE_ENV = "FEDMETA_CACHE_DIR"
FORMAT = "fedmeta-folder-cache/1"


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "fedmeta" / "preprocessed")


def folder_key(root: Path, entries: Sequence[tuple[str, str, str | None]], settings: str) -> str | None:
    """The entry for (path, label, patient) rows of `root` under `settings` (chain and shape);
    None when a listed file is missing (the full load reports it)."""
    digest = hashlib.sha256(f"{FORMAT}|{Path(root).resolve()}|{settings}".encode())
    for path, label, patient in entries:
        try:
            stat = (Path(root) / path).stat()
        except OSError:
            return None
        digest.update(f"\n{path}|{label}|{patient}|{stat.st_size}|{stat.st_mtime_ns}".encode())
    return digest.hexdigest()


def load_cached(cache_dir: Path, key: str) -> tuple[LabelledImages, dict] | None:
    """The cached data and its report fields, or None (absent or unreadable: it is rebuilt)."""
    tensors, meta = Path(cache_dir) / f"{key}.safetensors", Path(cache_dir) / f"{key}.json"
    if not (tensors.is_file() and meta.is_file()):
        return None
    try:
        info = json.loads(meta.read_text(encoding="utf-8"))
        arrays = load_file(tensors)
        data = LabelledImages(
            images=arrays["images"],
            labels=arrays["labels"],
            classes=tuple(info["classes"]),
            ids=tuple(info["ids"]),
            patients=tuple(info["patients"]) if info["patients"] is not None else None,
        )
    except Exception:  # noqa: BLE001 -- a damaged entry is a miss: the folder is read again
        return None
    return data, info["report"]


def save_cached(cache_dir: Path, key: str, data: LabelledImages, report: dict) -> None:
    """Written to temporary names and moved into place, so a reader never sees half an entry."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tensors, meta = cache_dir / f"{key}.safetensors", cache_dir / f"{key}.json"
    tmp = cache_dir / f".{key}.{os.getpid()}"
    save_file({"images": data.images.contiguous(), "labels": data.labels.to(torch.long)}, f"{tmp}.safetensors")
    info = {
        "format": FORMAT,
        "classes": list(data.classes),
        "ids": list(data.ids),
        "patients": list(data.patients) if data.patients is not None else None,
        "report": report,
    }
    Path(f"{tmp}.json").write_text(json.dumps(info), encoding="utf-8")
    Path(f"{tmp}.safetensors").replace(tensors)
    Path(f"{tmp}.json").replace(meta)
