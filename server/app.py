"""The coordinator's ServerApp: find the sites, run FedMeta over their meta-gradients, report."""

from __future__ import annotations

import time
from logging import INFO, WARNING
from pathlib import Path

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp
from flwr.supercore import log

from common.algorithms import build_algorithm
from common.export import save_meta_model
from common.models import build_model
from common.runconfig import RunConfig, parse_run_config
from server.checkpoint import CHECKPOINT, Checkpoint, config_changes, config_hash, prepare_resume
from server.fedmeta import FedMeta
from server.privacy import Privacy
from server.replies import ReplyLimits
from server.secure import SecureAggregation
from server.sites import Roster, discover_sites
from simulation.report import Recorder
from simulation.scenario import load_scenario

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    torch.manual_seed(cfg.train.seed)
    # the scenario's description (never its data) fixes the model's input shape
    scenario = load_scenario(cfg.data.scenario)
    model_config = scenario.model_config(cfg.model)
    algorithm = build_algorithm(build_model(model_config), cfg.meta)
    found = discover_sites(grid, cfg.train.min_sites, cfg.train.round_timeout,
                           Roster(tuple((s.name, s.role) for s in scenario.sites)))
    sites = found.sites
    out_dir = Path(cfg.train.out_dir) if cfg.train.out_dir else None
    recorder = None
    if out_dir is not None:
        site_rows = [s.as_dict() for s in sorted(sites.values(), key=lambda s: s.name)]
        recorder = Recorder(out_dir, dict(context.run_config), cfg.data.scenario, cfg.meta.algorithm, site_rows,
                            rejected=found.rejected)
    # fedavg sends `global - local` updates: SGD at rate 1 on their average is FedAvg's model average
    optimizer, lr = ("sgd", 1.0) if cfg.meta.algorithm == "fedavg" else (cfg.train.outer_optimizer, cfg.train.outer_lr)
    strategy = FedMeta(
        outer_optimizer=optimizer,
        outer_lr=lr,
        eval_every=cfg.train.eval_every,
        num_rounds=cfg.train.num_server_rounds,
        seed=cfg.train.seed,
        sites=sites,
        recorder=recorder,
        transport_dtype=getattr(torch, cfg.train.transport_dtype),
        fraction_train=cfg.train.fraction_train,
        aggregator=cfg.train.aggregator,
        trim_fraction=cfg.train.trim_fraction,
        limits=ReplyLimits(cfg.train.tasks_per_round, cfg.train.eval_tasks, cfg.train.max_update_norm),
        min_train_sites=cfg.train.min_train_sites,
        privacy=Privacy(cfg.train.dp_clip, cfg.train.dp_noise_multiplier, cfg.train.dp_delta, cfg.train.dp_noise,
                        population=sum(s.role == "train" for s in sites.values())) if cfg.train.dp_clip > 0 else None,
        secure=SecureAggregation(cfg.train.secagg_threshold, cfg.train.secagg_clip_range,
                                 weight_scale=float(cfg.train.tasks_per_round)) if cfg.train.secure_aggregation else None,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
    strategy.initialize(ArrayRecord(algorithm.init_meta_params()))  # the float32 master copy
    start_round, checkpoint_path = 1, (out_dir / CHECKPOINT if out_dir is not None else None)
    if checkpoint_path is not None:
        start_round = _resume(checkpoint_path, cfg, dict(context.run_config), strategy, recorder)

    def save(server_round: int) -> None:
        if checkpoint_path is not None:
            params, optimizer = strategy.state()
            accountant = strategy.privacy.accountant.state_dict() if strategy.privacy is not None else None
            Checkpoint(server_round, params, optimizer, torch.get_rng_state(), recorder.results, dict(context.run_config),
                       accountant).write(checkpoint_path)

    start = time.monotonic()
    strategy.run(grid, cfg.train.num_server_rounds, cfg.train.round_timeout, start_round=start_round, on_round_end=save)
    strategy.evaluate_shots(grid, cfg.train.final_shots(), cfg.train.round_timeout)
    if out_dir is not None:
        recorder.finish(time.monotonic() - start)
        save_meta_model(out_dir / "model", strategy.params, model_config, cfg.meta, cfg.episode,
                        scenario=cfg.data.scenario, rounds=cfg.train.num_server_rounds)
        log(INFO, "results and the meta-model are in %s", out_dir.resolve())


def meta_template(cfg: RunConfig) -> dict[str, torch.Tensor]:
    """Meta-parameters of the model a run of `cfg` trains (names and shapes: what a checkpoint
    must fit before a run may resume from it)."""
    model_config = load_scenario(cfg.data.scenario).model_config(cfg.model)
    return build_algorithm(build_model(model_config), cfg.meta).init_meta_params()


def _resume(path: Path, cfg, run_config: dict, strategy: FedMeta, recorder: Recorder) -> int:
    """The first round to run: 1, or the one after the checkpoint's (whose state is restored)."""
    checkpoint = prepare_resume(path, run_config, cfg.train.resume, cfg.train.force_resume, template=strategy.params)
    if checkpoint is None:
        return 1
    if config_hash(checkpoint.run_config) != config_hash(run_config):
        log(WARNING, "resuming with a changed config (force-resume): %s", config_changes(checkpoint.run_config, run_config))
    strategy.restore(checkpoint.params, checkpoint.optimizer)
    if strategy.privacy is not None and checkpoint.privacy is not None:
        strategy.privacy.accountant.load_state_dict(checkpoint.privacy)
    torch.set_rng_state(checkpoint.rng)
    # rounds after the checkpoint (recorded before the crash, never checkpointed) run again: drop them
    recorder.results["rounds"] = [r for r in checkpoint.history["rounds"] if r["round"] <= checkpoint.round]
    recorder.results["resumed"] = [*checkpoint.history.get("resumed", []), {"after_round": checkpoint.round}]
    log(INFO, "resuming after round %d of %d from %s", checkpoint.round, cfg.train.num_server_rounds, path)
    return checkpoint.round + 1
