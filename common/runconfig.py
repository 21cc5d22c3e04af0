"""Flat kebab-case run config (`[tool.flwr.app.config]`, `--run-config`) into typed dataclasses.

Parsed once, at the edge; everything below takes the dataclasses. Unknown keys are an error
(a typo such as `inner-lr=0.1` spelled `innerlr` must not be silently ignored).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from common.augment import parse_augment
from common.backbones import check_backbone
from common.config import EpisodeConfig, MetaConfig, reject_unknown
from common.models import ModelConfig

OPTIMIZERS = ("adam", "sgd")
TRANSPORT_DTYPES = ("float32", "float16")
AGGREGATORS = (
    "mean",
    "median",
    "trimmed-mean",
)  # server.robust implements them  # what meta-parameters and meta-gradients travel as


LR_SCHEDULES = ("constant", "cosine")


def outer_lr_factor(schedule: str, warmup: int, server_round: int, num_rounds: int) -> float:
    """See `TrainConfig.outer_lr_factor`."""
    if server_round <= warmup:
        return server_round / (warmup + 1)
    if schedule == "constant" or num_rounds <= warmup + 1:
        return 1.0
    progress = (server_round - warmup - 1) / (num_rounds - warmup - 1)  # 0 at the first full round, 1 at the last
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class TrainConfig:
    """What the coordinator does with the sites' meta-gradients."""

    num_server_rounds: int = 50
    tasks_per_round: int = 8
    outer_optimizer: str = "adam"
    outer_lr: float = 0.001
    outer_lr_schedule: str = "constant"  # or cosine: decays to outer_lr / 100 at the last round
    outer_lr_warmup: int = 0  # rounds of linear warm-up to outer_lr (any schedule)
    augment: str = ""  # training images only, e.g. "flip,rot90,shift,intensity" (common/augment.py)
    init_model: str = ""  # a model directory whose fitting weights start meta-training (the coordinator reads it)
    fraction_train: float = 1.0
    eval_every: int = 5
    eval_tasks: int = 50
    eval_heldout: bool = True  # false while choosing settings (a sweep): held-out sites are never scored
    eval_shots: str = ""  # more shot counts for the final evaluation, e.g. "1,10" (the run's own shots always)
    min_sites: int = 1
    round_timeout: float = 3600.0
    out_dir: str = ""
    device: str = "auto"
    transport_dtype: str = "float32"
    aggregator: str = "mean"
    trim_fraction: float = 0.1
    max_update_norm: float = 0.0
    min_train_sites: int = 1
    resume: bool = False
    force_resume: bool = False
    dp_clip: float = 0.0
    dp_noise_multiplier: float = 1.0
    dp_delta: float = 1e-5
    dp_noise: str = "server"
    secure_aggregation: bool = False
    secagg_threshold: float = 0.6
    secagg_clip_range: float = 1024.0
    seed: int = 0
    eval_seed: int = 0  # which evaluation episodes: the same for every method and training seed
    tracking: str = ""  # "tensorboard": every round's metrics as event files on the coordinator (server/tracking.py)
    tracking_dir: str = ""  # where they go (default: OUT-DIR/tensorboard)

    def __post_init__(self) -> None:
        if self.outer_optimizer not in OPTIMIZERS:
            raise ValueError(f"outer-optimizer={self.outer_optimizer!r}: choose one of {', '.join(OPTIMIZERS)}")
        if self.outer_lr_schedule not in LR_SCHEDULES or self.outer_lr_warmup < 0:
            raise ValueError(
                f"outer-lr-schedule={self.outer_lr_schedule!r}, outer-lr-warmup={self.outer_lr_warmup}: "
                f"choose one of {', '.join(LR_SCHEDULES)} and a warm-up of >= 0 rounds"
            )
        parse_augment(self.augment)
        if not 0 < self.fraction_train <= 1:
            raise ValueError(f"fraction-train={self.fraction_train}: must be in (0, 1]")
        if min(self.num_server_rounds, self.tasks_per_round, self.eval_every, self.eval_tasks, self.min_sites) < 1:
            raise ValueError(
                "num-server-rounds, tasks-per-round, eval-every, eval-tasks and min-sites must all be >= 1"
            )
        try:
            bad_shots = any(k < 1 for k in self.final_shots())
        except ValueError:  # not integers
            bad_shots = True
        if bad_shots:
            raise ValueError(f'eval-shots={self.eval_shots!r}: give comma-separated shot counts >= 1, e.g. "1,10"')
        if self.transport_dtype not in TRANSPORT_DTYPES:
            raise ValueError(f"transport-dtype={self.transport_dtype!r}: choose one of {', '.join(TRANSPORT_DTYPES)}")
        if self.aggregator not in AGGREGATORS:
            raise ValueError(f"aggregator={self.aggregator!r}: choose one of {', '.join(AGGREGATORS)}")
        if not 0 <= self.trim_fraction < 0.5:
            raise ValueError(f"trim-fraction={self.trim_fraction}: must be in [0, 0.5)")
        if self.max_update_norm < 0 or self.min_train_sites < 1:
            raise ValueError("max-update-norm must be >= 0 (0: no bound) and min-train-sites >= 1")
        if self.dp_clip < 0:
            raise ValueError(f"dp-clip={self.dp_clip}: the clipping bound must be > 0 (0: no differential privacy)")
        if self.dp_clip > 0:
            if (
                not self.dp_noise_multiplier > 0
                or not 0 < self.dp_delta < 1
                or self.dp_noise not in ("server", "sites")
            ):
                raise ValueError(
                    "with dp-clip > 0: dp-noise-multiplier must be > 0, dp-delta in (0, 1), dp-noise server or sites"
                )
            if self.aggregator != "mean":
                raise ValueError(
                    "dp-clip > 0 needs aggregator=mean (the Gaussian mechanism's sensitivity is for a sum), "
                    f"not {self.aggregator!r}"
                )
        if self.secure_aggregation:
            if self.aggregator != "mean" or self.max_update_norm > 0:
                raise ValueError(
                    "secure-aggregation hides each site's meta-gradient: per-site checks (max-update-norm) "
                    "and robust rules (aggregator median/trimmed-mean) cannot apply; "
                    "use aggregator=mean, max-update-norm=0"
                )
            if self.dp_clip > 0 and self.dp_noise != "sites":
                raise ValueError(
                    "with secure-aggregation, differential privacy needs dp-noise=sites: the sites add the noise"
                )
            if not 0 < self.secagg_threshold <= 1 or not self.secagg_clip_range > 0:
                raise ValueError("secagg-threshold must be in (0, 1] and secagg-clip-range > 0")
        if not self.round_timeout > 0:
            raise ValueError(f"round-timeout={self.round_timeout}: must be a positive number of seconds")

    def outer_lr_factor(self, server_round: int) -> float:
        """The outer learning rate in round `server_round` (1-based), as a fraction of outer-lr:
        a linear warm-up over `outer-lr-warmup` rounds, then constant or a cosine decay to 1%."""
        return outer_lr_factor(self.outer_lr_schedule, self.outer_lr_warmup, server_round, self.num_server_rounds)

    def final_shots(self) -> tuple[int, ...]:
        """The extra shot counts of `eval-shots`, in order, without repeats."""
        return tuple(dict.fromkeys(int(k) for k in self.eval_shots.replace(" ", "").split(",") if k))


@dataclass(frozen=True)
class DataConfig:
    """Where sites' data comes from. `scenario` is a built-in name or a scenario .toml path; the
    scenario also fixes the model's input shape. `data_dir` is where MedMNIST files and site
    folders are; a site's own `--node-config data-dir=...` takes precedence."""

    scenario: str = "synthetic"
    data_dir: str = ""
    tasks: str = "scenario"  # or episodes | hospital: this run's kind of task in place of the scenario's

    def __post_init__(self) -> None:
        if self.tasks not in ("scenario", "episodes", "hospital"):
            raise ValueError(f"tasks={self.tasks!r}: choose scenario (the scenario's own), episodes or hospital")


@dataclass(frozen=True)
class RunConfig:
    episode: EpisodeConfig
    meta: MetaConfig
    model: ModelConfig
    train: TrainConfig
    data: DataConfig

    @property
    def train_episode(self) -> EpisodeConfig:
        """The training episodes: `ways` replaced by `train-ways` where it is set (ProtoNet)."""
        return replace(self.episode, ways=self.meta.train_ways) if self.meta.train_ways else self.episode


# run-config key -> (section, dataclass field); every key of [tool.flwr.app.config] is here
_KEYS = {
    "ways": ("episode", "ways"),
    "shots": ("episode", "shots"),
    "queries": ("episode", "queries"),
    "algorithm": ("meta", "algorithm"),
    "inner-steps": ("meta", "inner_steps"),
    "inner-lr": ("meta", "inner_lr"),
    "eval-inner-steps": ("meta", "eval_inner_steps"),
    "chunk-size": ("meta", "chunk_size"),
    "local-lr": ("meta", "local_lr"),
    "first-order-rounds": ("meta", "first_order_rounds"),
    "start-loss-weight": ("meta", "start_loss_weight"),
    "train-ways": ("meta", "train_ways"),
    "execution": ("meta", "execution"),
    "model": ("model", "backbone"),
    "model-width": ("model", "width"),
    "model-depth": ("model", "depth"),
    "model-norm": ("model", "norm"),
    "model-groups": ("model", "num_groups"),
    "scenario": ("data", "scenario"),
    "data-dir": ("data", "data_dir"),
    "tasks": ("data", "tasks"),
    **{f.name.replace("_", "-"): ("train", f.name) for f in fields(TrainConfig)},
}
RUN_CONFIG_KEYS = frozenset(_KEYS)
_SECTIONS = {
    "episode": EpisodeConfig,
    "meta": MetaConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "data": DataConfig,
}
_DEFAULTS = {name: cls() for name, cls in _SECTIONS.items()}  # the type of each field's default


def parse_run_config(values: Mapping[str, object]) -> RunConfig:
    reject_unknown("run-config", values, _KEYS)
    kwargs: dict[str, dict[str, Any]] = {name: {} for name in _SECTIONS}  # each value checked against its field
    for key, value in values.items():
        section, field = _KEYS[key]
        expected = type(getattr(_DEFAULTS[section], field))
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, expected) or isinstance(value, bool) != (expected is bool):
            raise ValueError(f"run-config {key}={value!r}: expected a {expected.__name__}")
        kwargs[section][field] = value
    episode = EpisodeConfig(**kwargs["episode"])
    model = ModelConfig(num_classes=episode.ways, **kwargs["model"])
    check_backbone(model.backbone)
    return RunConfig(
        episode, MetaConfig(**kwargs["meta"]), model, TrainConfig(**kwargs["train"]), DataConfig(**kwargs["data"])
    )


def flat_run_config(cfg: RunConfig) -> dict[str, object]:
    """The inverse of `parse_run_config`: every key with its value (what a simulation sends)."""
    return {key: getattr(getattr(cfg, section), field) for key, (section, field) in _KEYS.items()}


def parse_overrides(text: str) -> dict[str, object]:
    """`"inner-lr=0.1 algorithm='anil'"` (flwr run's --run-config syntax) to a dict of TOML values."""
    import tomllib

    try:
        return tomllib.loads("\n".join(text.split()))
    except tomllib.TOMLDecodeError as error:
        raise ValueError(
            f"--run-config {text!r}: write space-separated key=value pairs, strings quoted ({error})"
        ) from error
