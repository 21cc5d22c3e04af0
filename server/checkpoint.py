"""The coordinator's checkpoint: one safetensors file, replaced atomically after every round.

It holds the meta-parameters, the outer optimizer's state (Adam moments and step counts), the
torch RNG state, the round just finished, the metrics history (results.json as it was at that
round) and the run config with its hash. Tensors go in the tensor section, everything else in
the header's metadata as JSON: no pickles, like every file fedmeta writes.

`write` goes to a temporary file in the same directory, fsyncs it, and renames it over the old
checkpoint. A crash at any point leaves either the previous checkpoint or the new one, never a
torn file.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, safe_open, save_file

from common.runconfig import RUN_CONFIG_KEYS, flat_run_config, parse_run_config

RUN_CONFIG_DEFAULTS = flat_run_config(parse_run_config({}))

CHECKPOINT = "checkpoint.safetensors"
# keys that may change between a run and its resumption: how long, where, how patiently, who
# first, and what is scored at the end
RESUMABLE_CHANGES = frozenset(
    {
        "num-server-rounds",
        "out-dir",
        "round-timeout",
        "min-sites",
        "resume",
        "force-resume",
        "eval-shots",
        "tracking",
        "tracking-dir",
    }
)


def _compared(run_config: Mapping[str, object]) -> dict[str, object]:
    """The keys that must match for a run to continue another: every run-config key but
    RESUMABLE_CHANGES. Keys the run config no longer has (a checkpoint written before `kernels`
    became a per-machine setting) cannot matter and are left out; keys it did not have yet are
    compared at their defaults."""
    values = {**RUN_CONFIG_DEFAULTS, **run_config}  # a key added since the checkpoint had its default then
    return {k: values[k] for k in sorted(values) if k in RUN_CONFIG_KEYS and k not in RESUMABLE_CHANGES}


def config_hash(run_config: Mapping[str, object]) -> str:
    return hashlib.sha256(json.dumps(_compared(run_config), sort_keys=True, default=str).encode()).hexdigest()


def config_changes(old: Mapping[str, object], new: Mapping[str, object]) -> dict[str, tuple[object, object]]:
    old, new = _compared(old), _compared(new)
    return {k: (old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)}


@dataclass
class Checkpoint:
    round: int
    params: dict[str, torch.Tensor]
    optimizer: dict  # torch optimizer state_dict
    rng: torch.Tensor
    history: dict  # the Recorder's results
    run_config: dict[str, object]
    privacy: dict | None = None  # the DP accountant's state (epsilon must keep growing after a resume)

    def write(self, path: Path) -> None:
        path = Path(path)
        names = list(self.params)
        tensors = {f"param/{k}": v.detach().contiguous() for k, v in self.params.items()}
        scalars: dict[str, dict] = {}
        for index, state in self.optimizer["state"].items():
            for key, value in state.items():
                if torch.is_tensor(value):
                    tensors[f"opt/{index}/{key}"] = value.detach().contiguous()
                else:
                    scalars.setdefault(str(index), {})[key] = value
        tensors["rng"] = self.rng
        metadata = {
            "format": "fedmeta-checkpoint-1",
            "round": str(self.round),
            "param_names": json.dumps(names),
            "param_groups": json.dumps(self.optimizer["param_groups"]),
            "optimizer_scalars": json.dumps(scalars),
            "history": json.dumps(self.history, allow_nan=True),
            "run_config": json.dumps(self.run_config, default=str),
            "config_hash": config_hash(self.run_config),
            "privacy": json.dumps(self.privacy),
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file(tensors, tmp, metadata=metadata)
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself survives a power cut
        finally:
            os.close(directory)


def read_checkpoint(path: Path) -> Checkpoint:
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
        tensors = load_file(str(path))
    except Exception as error:
        raise ValueError(
            f"{path} is not a readable fedmeta checkpoint ({error}): restore it from a backup, or move it "
            "away (or use another output directory) to start a new run"
        ) from error
    if meta.get("format") != "fedmeta-checkpoint-1":
        raise ValueError(f"{path} is not a fedmeta checkpoint (format {meta.get('format')!r})")
    names = json.loads(meta["param_names"])
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("opt/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for index, values in json.loads(meta["optimizer_scalars"]).items():
        state.setdefault(int(index), {}).update(values)
    return Checkpoint(
        round=int(meta["round"]),
        params={k: tensors[f"param/{k}"] for k in names},
        optimizer={"state": state, "param_groups": json.loads(meta["param_groups"])},
        rng=tensors["rng"],
        history=json.loads(meta["history"]),
        run_config=json.loads(meta["run_config"]),
        privacy=json.loads(meta.get("privacy", "null")),
    )


def prepare_resume(
    path: Path,
    run_config: Mapping[str, object],
    resume: bool,
    force: bool = False,
    template: Mapping[str, torch.Tensor] | None = None,
) -> Checkpoint | None:
    """The checkpoint to continue from (None: start at round 1), or a clear refusal:
    overwriting an earlier run's checkpoint, resuming without one, an unreadable file, resuming
    with another config, or (even when forced) meta-parameters that do not fit `template`, this
    run's model."""
    path = Path(path)
    if not resume:
        if path.exists():
            raise FileExistsError(
                f"{path.parent} holds a checkpoint of an earlier run: continue it with --resume "
                "(run config resume=true), or give this run another output directory"
            )
        return None
    if not path.exists():
        raise FileNotFoundError(f"resume was asked for, but there is no checkpoint at {path}: start without --resume")
    checkpoint = read_checkpoint(path)
    changes = config_changes(checkpoint.run_config, run_config)
    if changes and not force:
        raise ValueError(
            f"the checkpoint at {path} was written with another config; changed (old, new): {changes}. "
            "Resume with the same config, or force it (--force-resume, run config force-resume=true)"
        )
    if template is not None:
        misfits = param_misfits(checkpoint.params, template)
        if misfits:
            raise ValueError(
                f"the checkpoint at {path} holds another model: {'; '.join(misfits[:5])}"
                + (f" (and {len(misfits) - 5} more)" if len(misfits) > 5 else "")
                + f". Settings changed since (old, new): {changes or 'none'}. A run cannot continue with "
                "another model, even forced: restore those settings, or start a new run in another output directory"
            )
    return checkpoint


def restore_history(results: dict, checkpoint: Checkpoint) -> None:
    """A resumed run's results (the Recorder's) as the checkpoint left them: rounds recorded after
    it (before the crash, never checkpointed) run again, so they are dropped, and the resumption
    is noted."""
    results["rounds"] = [r for r in checkpoint.history["rounds"] if r["round"] <= checkpoint.round]
    results["resumed"] = [*checkpoint.history.get("resumed", []), {"after_round": checkpoint.round}]


def param_misfits(saved: Mapping[str, torch.Tensor], template: Mapping[str, torch.Tensor]) -> list[str]:
    """Each meta-parameter that is missing, extra, or another shape in `saved` than in `template`."""
    out = [f"{k} is missing" for k in sorted(template.keys() - saved.keys())]
    out += [f"{k} is not in this model" for k in sorted(saved.keys() - template.keys())]
    out += [
        f"{k} is {tuple(saved[k].shape)} there, {tuple(template[k].shape)} here"
        for k in sorted(saved.keys() & template.keys())
        if tuple(saved[k].shape) != tuple(template[k].shape)
    ]
    return out
