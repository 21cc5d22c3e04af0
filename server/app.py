"""The coordinator's ServerApp: FedMeta over the sites' meta-gradients."""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.algorithms import build_algorithm
from common.models import build_model
from common.runconfig import parse_run_config
from server.fedmeta import FedMeta
from simulation.scenario import load_scenario

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = parse_run_config(context.run_config)
    torch.manual_seed(cfg.train.seed)
    # the scenario's description (never its data) fixes the model's input shape
    model = build_model(load_scenario(cfg.data.scenario).model_config(cfg.model))
    algorithm = build_algorithm(model, cfg.meta)
    strategy = FedMeta(
        outer_optimizer=cfg.train.outer_optimizer,
        outer_lr=cfg.train.outer_lr,
        eval_every=cfg.train.eval_every,
        fraction_train=cfg.train.fraction_train,
        min_train_nodes=1,
        min_evaluate_nodes=1,
        min_available_nodes=1,
    )
    strategy.start(grid=grid, initial_arrays=ArrayRecord(algorithm.init_meta_params()), num_rounds=cfg.train.num_server_rounds)
