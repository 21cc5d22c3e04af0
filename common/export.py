"""Meta-models move between parties as safetensors plus a JSON description, never as pickles:
a hospital must not execute code from a file it was sent."""

from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from common.config import EpisodeConfig, MetaConfig
from common.functional import Params
from common.models import ModelConfig

WEIGHTS, DESCRIPTION = "model.safetensors", "model.json"
FORMAT = "fedmeta-meta-model/1"


def save_meta_model(
    out_dir: Path, params: Params, model: ModelConfig, meta: MetaConfig, episode: EpisodeConfig, **extra
) -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, out_dir / WEIGHTS)
    description = {"format": FORMAT, "model": asdict(model), "meta": asdict(meta), "episode": asdict(episode), **extra}
    (out_dir / DESCRIPTION).write_text(json.dumps(description, indent=1))
    return out_dir


def load_meta_model(model_dir: Path) -> tuple[Params, ModelConfig, MetaConfig, EpisodeConfig, dict]:
    """(meta-parameters, model config, meta config, episode config, the whole description)."""
    model_dir = Path(model_dir)
    weights, description = model_dir / WEIGHTS, model_dir / DESCRIPTION
    for path in (weights, description):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: a fedmeta model directory holds {WEIGHTS} and {DESCRIPTION}")
    info = json.loads(description.read_text())
    if info.get("format") != FORMAT:
        raise ValueError(f"{description} has format {info.get('format')!r}, expected {FORMAT!r}")
    params = load_file(weights)
    return (
        params,
        ModelConfig(**_known(ModelConfig, info["model"])),
        MetaConfig(**_known(MetaConfig, info["meta"])),
        EpisodeConfig(**info["episode"]),
        info,
    )


def _known(cls: type, values: dict) -> dict:
    """The entries of `values` that are fields of `cls`: a model exported before a setting moved
    out of the run config (e.g. `kernels`, now chosen per machine) still loads."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
