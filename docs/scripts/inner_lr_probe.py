"""First-round MAML meta-gradient on each training site at several inner learning rates.

    .venv/bin/python docs/scripts/inner_lr_probe.py medmnist-2d ../shared/data/medmnist

Prints, per inner-lr and site: query loss, query accuracy after the inner loop, and the
meta-gradient's norm at initialization (the figures quoted in docs/RESULTS.md)."""

import sys

import torch

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.protocol import site_tasks
from common.runconfig import parse_run_config
from common.scenario import load_scenario, load_site

scenario_name = sys.argv[1] if len(sys.argv) > 1 else "medmnist-2d"
data_dir = sys.argv[2] if len(sys.argv) > 2 else None
sc = load_scenario(scenario_name)
sites = {i: load_site(sc, i, data_dir) for i in sc.training_sites}
for lr in (0.4, 0.2, 0.1, 0.05):
    cfg = parse_run_config(
        {
            "inner-lr": lr,
            "model-width": 32,
            "ways": sc.episode.ways,
            "shots": sc.episode.shots,
            "queries": sc.episode.queries,
            "scenario": scenario_name,
        }
    )
    torch.manual_seed(0)
    algorithm = build_algorithm(build_model(sc.model_config(cfg.model)), cfg.meta)
    meta = algorithm.init_meta_params()
    for i, site in sites.items():
        step = algorithm.meta_gradient(meta, site_tasks(site, cfg.episode, 0, i, "train", 4, 1))
        norm = torch.sqrt(sum(g.pow(2).sum() for g in step.grads.values())).item()
        acc = step.metrics["query_acc"]
        print(f"inner-lr {lr:<4} {site.spec.name:<12} loss {step.loss:.3f} query acc {acc:.3f} |meta-grad| {norm:.3g}")
