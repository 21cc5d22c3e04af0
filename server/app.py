"""The coordinator's ServerApp: find the sites, run FedMeta over their meta-gradients, report."""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.algorithms import MetaAlgorithm, build_algorithm
from common.backbones import build_model
from common.export import initial_params, save_meta_model
from common.runconfig import RunConfig, parse_run_config
from common.scenario import load_scenario
from server.aggregation import Aggregation
from server.checkpoint import CHECKPOINT, Checkpoint, config_changes, config_hash, prepare_resume, restore_history
from server.fedmeta import FedMeta
from server.optimizer import OuterOptimizer
from server.privacy import Privacy
from server.replies import ReplyLimits
from server.report import Recorder
from server.schedule import Sampling, Schedule
from server.secure import SecureAggregation
from server.sites import Roster, SiteInfo, discover_sites
from server.tracking import build_sink, check_tracking

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    check_tracking(cfg.train.tracking)  # before any site is asked for anything
    torch.manual_seed(cfg.train.seed)
    # the scenario's description (never its data) fixes the model's input shape
    scenario = load_scenario(cfg.data.scenario, cfg.data.tasks)
    model_config = scenario.model_config(cfg.model)
    algorithm = build_algorithm(build_model(model_config), cfg.meta)
    found = discover_sites(
        grid, cfg.train.min_sites, cfg.train.round_timeout, Roster(tuple((s.name, s.role) for s in scenario.sites))
    )
    sites = found.sites
    out_dir = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    recorder = None
    if out_dir is not None:
        site_rows = [s.as_dict() for s in sorted(sites.values(), key=lambda s: s.name)]
        recorder = Recorder(
            out_dir,
            dict(context.run_config),
            cfg.data.scenario,
            cfg.meta.algorithm,
            site_rows,
            rejected=found.rejected,
            missing=found.missing,
        )
    strategy = build_strategy(cfg, algorithm, sites, recorder)
    start_round, checkpoint_path = 1, (out_dir / CHECKPOINT if out_dir is not None else None)
    if checkpoint_path is not None and recorder is not None:  # both are set exactly when out_dir is
        start_round = _resume(checkpoint_path, cfg, dict(context.run_config), strategy, recorder)
    if recorder is not None and out_dir is not None:
        tracking_dir = Path(cfg.train.tracking_dir) if cfg.train.tracking_dir else out_dir / "tensorboard"
        recorder.sink = build_sink(cfg.train.tracking, tracking_dir, start_round)
    elif cfg.train.tracking:
        log(WARNING, "tracking=%r needs out-dir (where results go): nothing is tracked", cfg.train.tracking)

    def save(server_round: int) -> None:
        if checkpoint_path is not None and recorder is not None:
            params, optimizer = strategy.optimizer.state()
            privacy = strategy.aggregation.privacy
            accountant = privacy.accountant.state_dict() if privacy is not None else None
            Checkpoint(
                server_round,
                params,
                optimizer,
                torch.get_rng_state(),
                recorder.results,
                dict(context.run_config),
                accountant,
            ).write(checkpoint_path)

    start = time.monotonic()
    strategy.run(grid, cfg.train.round_timeout, start_round=start_round, on_round_end=save)
    strategy.evaluate_shots(grid, cfg.train.final_shots(), cfg.train.round_timeout)
    if out_dir is not None and recorder is not None:
        recorder.finish(time.monotonic() - start)
        save_meta_model(
            out_dir / "model",
            strategy.params,
            model_config,
            cfg.meta,
            cfg.episode,
            classes=scenario.head_classes,
            scenario=cfg.data.scenario,
            rounds=cfg.train.num_server_rounds,
        )
        log(INFO, "results and the meta-model are in %s", out_dir.resolve())


def build_strategy(
    cfg: RunConfig, algorithm: MetaAlgorithm, sites: dict[int, SiteInfo], recorder: Recorder | None
) -> FedMeta:
    """The run config's strategy, configured once: the algorithm's initial meta-parameters (the
    float32 master copy) and its outer step (FedAvg's updates need SGD at rate 1), the schedule,
    sampling, aggregation rule, reply limits, privacy and secure aggregation."""
    train = cfg.train
    kind, lr = algorithm.outer_step or (train.outer_optimizer, train.outer_lr)
    privacy = None
    if train.dp_clip > 0:
        privacy = Privacy(
            train.dp_clip,
            train.dp_noise_multiplier,
            train.dp_delta,
            train.dp_noise,
            population=sum(s.role == "train" for s in sites.values()),
        )
    init, kept = initial_params(algorithm.init_meta_params(), train.init_model)
    if train.init_model:
        log(INFO, "meta-training starts from %s; own initialization kept for: %s", train.init_model, kept or "none")
    secure = None
    if train.secure_aggregation:
        secure = SecureAggregation(
            train.secagg_threshold, train.secagg_clip_range, weight_scale=float(train.tasks_per_round)
        )
    return FedMeta(
        OuterOptimizer(init, kind, lr),
        sites,
        # FedAvg's outer step (SGD at rate 1: the model average) is not a learning rate to schedule
        Schedule(
            train.num_server_rounds,
            train.eval_every,
            train.outer_lr_schedule if algorithm.outer_step is None else "constant",
            train.outer_lr_warmup if algorithm.outer_step is None else 0,
            train.eval_heldout,
        ),
        sampling=Sampling(train.fraction_train, train.seed),
        aggregation=Aggregation(train.aggregator, train.trim_fraction, train.min_train_sites, privacy),
        limits=ReplyLimits(train.tasks_per_round, train.eval_tasks, train.max_update_norm),
        secure=secure,
        recorder=recorder,
        transport_dtype=getattr(torch, train.transport_dtype),
    )


def meta_template(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Meta-parameters of the model a run of `cfg` trains (names and shapes: what a checkpoint
    must fit before a run may resume from it)."""
    model_config = load_scenario(cfg.data.scenario, cfg.data.tasks).model_config(cfg.model)
    return build_algorithm(build_model(model_config), cfg.meta).init_meta_params()


def _resume(path: Path, cfg, run_config: dict, strategy: FedMeta, recorder: Recorder) -> int:
    """The first round to run: 1, or the one after the checkpoint's (whose state is restored)."""
    checkpoint = prepare_resume(path, run_config, cfg.train.resume, cfg.train.force_resume, template=strategy.params)
    if checkpoint is None:
        return 1
    if config_hash(checkpoint.run_config) != config_hash(run_config):
        log(
            WARNING,
            "resuming with a changed config (force-resume): %s",
            config_changes(checkpoint.run_config, run_config),
        )
    strategy.optimizer.restore(checkpoint.params, checkpoint.optimizer)
    if strategy.aggregation.privacy is not None and checkpoint.privacy is not None:
        strategy.aggregation.privacy.accountant.load_state_dict(checkpoint.privacy)
    torch.set_rng_state(checkpoint.rng)
    restore_history(recorder.results, checkpoint)
    log(INFO, "resuming after round %d of %d from %s", checkpoint.round, cfg.train.num_server_rounds, path)
    return checkpoint.round + 1
