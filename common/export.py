"""Meta-models move between parties as safetensors plus a JSON description, never as pickles:
a hospital must not execute code from a file it was sent."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, fields
from pathlib import Path

from safetensors.torch import load_file, save_file

from common.config import EpisodeConfig, MetaConfig
from common.functional import Params
from common.models import ModelConfig

WEIGHTS, DESCRIPTION = "model.safetensors", "model.json"
FORMAT = "fedmeta-meta-model/1"


def save_meta_model(
    out_dir: Path,
    params: Params,
    model: ModelConfig,
    meta: MetaConfig,
    episode: EpisodeConfig,
    classes: Sequence[str] | None = None,
    **extra,
) -> Path:
    """The model directory: weights (safetensors) and model.json. `classes`: the class each head
    output stands for, where outputs are classes (global labels, or a site's adapted model); left
    out where they are an episode's relabelled slots."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().cpu().contiguous() for k, v in params.items()}, out_dir / WEIGHTS)
    description = {"format": FORMAT, "model": asdict(model), "meta": asdict(meta), "episode": asdict(episode), **extra}
    if classes is not None:
        if len(classes) != model.num_classes:
            raise ValueError(f"{len(classes)} class names for a head of {model.num_classes} outputs")
        description["classes"] = list(classes)
    (out_dir / DESCRIPTION).write_text(json.dumps(description, indent=1))
    return out_dir


class ModelFileError(ValueError):
    """A model directory that is missing, incomplete, corrupt or not a fedmeta meta-model."""


def load_meta_model(model_dir: Path) -> tuple[Params, ModelConfig, MetaConfig, EpisodeConfig, dict]:
    """(meta-parameters, model config, meta config, episode config, the whole description).
    Anything wrong with the directory is a ModelFileError naming the file and the fix."""
    model_dir = Path(model_dir)
    weights, description = model_dir / WEIGHTS, model_dir / DESCRIPTION
    expected = f"a fedmeta model directory holds {WEIGHTS} and {DESCRIPTION} (e.g. RUN/model)"
    if model_dir.is_file():
        raise ModelFileError(f"{model_dir} is a file, not a model directory: {expected}")
    if not model_dir.is_dir():
        raise ModelFileError(f"{model_dir} does not exist: {expected}")
    if (model_dir / "model" / WEIGHTS).is_file() and not weights.exists():
        raise ModelFileError(f"{model_dir} is a run directory: give its model, {model_dir / 'model'}")
    for path in (weights, description):
        if not path.is_file():
            raise ModelFileError(f"{path} is missing: {expected}")
    try:
        info = json.loads(description.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelFileError(f"{description} is not valid JSON ({error}): copy the model directory again") from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        found = info.get("format") if isinstance(info, dict) else None
        raise ModelFileError(
            f"{description} is not a fedmeta meta-model description (format {found!r}, expected {FORMAT!r}): "
            "give a directory written by fedmeta (a run's model/ or fedmeta adapt's output)"
        )
    try:
        params = load_file(weights)
    except Exception as error:  # noqa: BLE001 -- safetensors raises its own error types for corrupt files
        raise ModelFileError(
            f"{weights} is not a readable safetensors file ({error}): it is truncated or corrupt; copy it again"
        ) from None
    try:
        configs = (
            ModelConfig(**_known(ModelConfig, info["model"])),
            MetaConfig(**_known(MetaConfig, info["meta"])),
            EpisodeConfig(**info["episode"]),
        )
    except (KeyError, TypeError, ValueError) as error:
        raise ModelFileError(f"{description}: its model, meta or episode settings are unreadable ({error!r})") from None
    return (params, *configs, info)


def initial_params(init: Params, init_model: str) -> tuple[Params, list[str]]:
    """A run's starting meta-parameters: the algorithm's own `init`, or with `init-model` set, its
    warm start (and the names that kept their own initialization)."""
    return warm_start(init, Path(init_model)) if init_model else (init, [])


def warm_start(init: Params, model_dir: Path) -> tuple[Params, list[str]]:
    """`init` with the model in `model_dir`'s weights: a supervised FedAvg model's body (and its
    head, when it has the same classes) as the meta-learner's starting point. Returns the
    parameters and the names kept from `init` (a head of another size, Meta-SGD's rates).
    The whole body must fit; a head is taken whole or not at all."""
    saved = load_meta_model(model_dir)[0]

    def fits(name: str) -> bool:
        return name in saved and saved[name].shape == init[name].shape

    body = [k for k in init if k.startswith("body.")]
    misfit = [k for k in body if not fits(k)]
    if misfit:
        found = tuple(saved[misfit[0]].shape) if misfit[0] in saved else "absent"
        raise ValueError(
            f"init-model {model_dir}: its body does not fit this run's model ({misfit[0]}: "
            f"{found} there, {tuple(init[misfit[0]].shape)} here); backbone, width and depth must match"
        )
    head = [k for k in init if k.startswith("head.")]
    taken = body + (head if all(fits(k) for k in head) else [])
    out = {k: (saved[k].to(v.dtype).clone() if k in taken else v) for k, v in init.items()}
    return out, [k for k in init if k not in taken]


def _known(cls: type, values: dict) -> dict:
    """The entries of `values` that are fields of `cls`: a model exported before a setting moved
    out of the run config (e.g. `kernels`, now chosen per machine) still loads."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in values.items() if k in names}
