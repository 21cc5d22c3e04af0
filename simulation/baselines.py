"""Baselines outside the federation, scored with the same protocol on the same sites:

- `centralized` (or `centralized-<algorithm>`, e.g. `centralized-protonet`): the non-private
  upper bound. The training sites' data pooled on one machine
  (a class is a (site, class) pair, so cross-site tasks occur) and meta-trained with the run's
  algorithm, meta-batches as large as a federated round's, the same outer optimizer.
- `local` (or `local-<algorithm>`): what a held-out site could do alone. Each held-out site meta-trains the run's
  algorithm on its own train split only, for as many steps as the federation has rounds.

Both write results in the federated format (results.json, metrics.csv, plots). The centralized
learner keeps the coordinator's checkpoint (`server.checkpoint`: meta-parameters, optimizer
moments, RNG state, results so far) after every round, so a run stopped midway continues with
`--resume` to the same weights as an unbroken one; the local one (minutes, at the held-out sites
only) keeps none and starts again.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

import torch

from common.algorithms import build_algorithm
from common.augment import Augmenter
from common.backbones import build_model
from common.config import ALGORITHMS, EpisodeConfig
from common.data.dataset import pool
from common.device import resolve_device
from common.export import initial_params, save_meta_model
from common.functional import tensor_sum
from common.native import resolve_kernels
from common.protocol import evaluate_site, evaluation_tasks
from common.runconfig import RunConfig, flat_run_config
from common.scenario import SiteData, load_scenario, load_site
from common.tasks import EpisodeSampler, HospitalSampler, site_generator
from server.checkpoint import CHECKPOINT, Checkpoint, prepare_resume, restore_history
from server.optimizer import OuterOptimizer
from server.report import Recorder

BASELINES = ("centralized", "local")
POOLED_INDEX = 1_000_000  # the generator stream of the pooled learner, apart from every site's


def split_method(method: str, default: str = "maml") -> tuple[str | None, str]:
    """A method name as `--compare` takes it, to (baseline kind or None, algorithm): `maml` is
    (None, "maml"); `centralized-protonet` is ("centralized", "protonet"); a bare `centralized`
    or `local` meta-trains `default`."""
    kind, _, algorithm = method.partition("-")
    if kind not in BASELINES:
        if method not in ALGORITHMS:
            raise ValueError(f"method {method!r}: choose one of {', '.join(ALGORITHMS)}, or a baseline {_FORMS}")
        return None, method
    algorithm = algorithm or default
    if algorithm not in META_LEARNERS:
        raise ValueError(f"method {method!r}: a baseline meta-trains one of {', '.join(META_LEARNERS)} {_FORMS}")
    return kind, algorithm


META_LEARNERS = tuple(a for a in ALGORITHMS if a != "fedavg")
_FORMS = "(centralized, local, or e.g. centralized-protonet)"


def run_baseline(kind: str, cfg: RunConfig) -> dict:
    if kind not in BASELINES:
        raise ValueError(f"baseline {kind!r}: choose one of {BASELINES}")
    scenario = load_scenario(cfg.data.scenario, cfg.data.tasks)
    if kind == "local" and not scenario.heldout_sites:
        raise ValueError(f"the local baseline trains at the held-out sites, and scenario {scenario.name!r} has none")
    device = resolve_device(cfg.train.device)  # a bad or absent device fails before any data is read
    data_dir = cfg.data.data_dir or None
    sites = [load_site(scenario, i, data_dir) for i in range(len(scenario.sites))]
    model_config = scenario.model_config(cfg.model)
    torch.manual_seed(cfg.train.seed)  # before the model is built: its weights are the initialization
    kernels = resolve_kernels("auto") if device.type == "cpu" else None
    algorithm = build_algorithm(build_model(model_config).to(device), cfg.meta, kernels)
    init, _ = initial_params(algorithm.init_meta_params(), cfg.train.init_model)
    rows = [
        {"node_id": None, "name": s.spec.name, "role": s.spec.role, "num_train": len(s.train), "num_test": len(s.test)}
        for s in sites
    ]
    out_dir = Path(cfg.train.out_dir)
    if kind == "local" and not cfg.train.eval_heldout:
        raise ValueError(
            "the local baseline is scored at the held-out sites only: it cannot run with eval-heldout=false"
        )
    if kind == "local" and cfg.train.resume:
        raise ValueError(
            "the local baseline keeps no checkpoint (it trains at the held-out sites only, in minutes): "
            "run it again without --resume"
        )
    run_config = flat_run_config(cfg)
    checkpoint_path = out_dir / CHECKPOINT
    # before anything is written: refuses to overwrite an earlier run's checkpoint, or to resume another config
    checkpoint = (
        prepare_resume(checkpoint_path, run_config, cfg.train.resume, cfg.train.force_resume, template=init)
        if kind == "centralized"
        else None
    )
    recorder = Recorder(out_dir, run_config, cfg.data.scenario, f"{kind}-{cfg.meta.algorithm}", rows)
    train_ids = scenario.training_sites
    if kind == "centralized":
        sources = _pooled_sources(sites, train_ids, scenario.tasks, cfg)
        scored = [i for i, s in enumerate(sites) if cfg.train.eval_heldout or s.spec.role != "heldout"]
        learners = {"pooled": (sources, scored)}
    else:
        learners = {
            sites[i].spec.name: ([(_sampler(sites[i], cfg), i, cfg.train.tasks_per_round)], [i])
            for i in scenario.heldout_sites
        }
    # the coordinator's own outer optimizer and schedule, one per learner
    state = {name: OuterOptimizer(init, cfg.train.outer_optimizer, cfg.train.outer_lr) for name in learners}
    augmenter = Augmenter.from_text(cfg.train.augment, model_config.spatial_dims, cfg.train.seed)
    first_round = 1
    if checkpoint is not None:  # every round's tasks come from (seed, site, round): the rest as if unbroken
        state["pooled"].restore(checkpoint.params, checkpoint.optimizer)
        torch.set_rng_state(checkpoint.rng)
        restore_history(recorder.results, checkpoint)
        first_round = checkpoint.round + 1
    start = time.monotonic()
    for server_round in range(first_round, cfg.train.num_server_rounds + 1):
        round_start = time.monotonic()
        train_metrics = {}
        for name, (sources, _) in learners.items():
            meta = {k: v.to(device) for k, v in state[name].params.items()}  # the master copy stays on the CPU
            steps = [
                algorithm.for_round(server_round).meta_gradient(
                    meta,
                    augmenter(
                        sampler.sample_batch(count, site_generator(cfg.train.seed, index, server_round, 0)),
                        index,
                        server_round,
                    ),
                )
                for sampler, index, count in sources
            ]
            tasks = sum(step.num_tasks for step in steps)  # one step on the task-weighted mean, as a round's
            grads = {
                key: tensor_sum(step.grads[key] * (step.num_tasks / tasks) for step in steps).cpu() for key in meta
            }
            state[name].step(grads, cfg.train.outer_lr_factor(server_round))
            train_metrics[name] = {
                "meta-loss": sum(step.loss * step.num_tasks for step in steps) / tasks,
                "query-acc": sum(step.metrics["query_acc"] * step.num_tasks for step in steps) / tasks,
                "num-tasks": tasks,
            }
        recorder.train(server_round, train_metrics, seconds=time.monotonic() - round_start)
        if server_round % cfg.train.eval_every == 0 or server_round == cfg.train.num_server_rounds:
            recorder.evaluate(server_round, *_evaluate(algorithm, state, learners, sites, cfg, cfg.episode, device))
        if kind == "centralized":
            params, optimizer = state["pooled"].state()
            Checkpoint(server_round, params, optimizer, torch.get_rng_state(), recorder.results, run_config).write(
                checkpoint_path
            )
    for k in cfg.train.final_shots():
        shots = replace(cfg.episode, shots=k)
        recorder.evaluate_shots(k, *_evaluate(algorithm, state, learners, sites, cfg, shots, device))
    results = recorder.finish(time.monotonic() - start)
    if kind == "centralized":
        save_meta_model(
            out_dir / "model",
            state["pooled"].snapshot(),
            model_config,
            cfg.meta,
            cfg.episode,
            classes=scenario.head_classes,
            scenario=cfg.data.scenario,
            rounds=cfg.train.num_server_rounds,
        )
    return results


def _evaluate(
    algorithm, state: dict, learners: dict, sites: list, cfg: RunConfig, episode: EpisodeConfig, device: torch.device
) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
    """Each learner's current meta-model scored on the sites it stands for, as in the federation:
    a site whose test data cannot make the episodes is reported, and the others still count."""
    per_site, errors = {}, {}
    for name, (_, evaluated) in learners.items():
        meta = {k: v.to(device) for k, v in state[name].snapshot().items()}
        for i in evaluated:
            try:
                tasks = evaluation_tasks(sites[i], episode, cfg.train.eval_seed, i, cfg.train.eval_tasks)
            except ValueError as error:
                errors[sites[i].spec.name] = str(error)
                continue
            per_site[sites[i].spec.name] = evaluate_site(algorithm, meta, tasks)
    return per_site, errors


def _sampler(site: SiteData, cfg: RunConfig) -> EpisodeSampler | HospitalSampler:
    """A site's training tasks: episodes over its classes with at least shots + queries examples,
    or (hospital tasks) its own problem with global labels."""
    episode = cfg.train_episode
    if site.tasks == "hospital":
        return HospitalSampler.from_data(site.train, episode, f"site {site.spec.name!r}")
    data = site.train
    return EpisodeSampler.from_data(data, episode, classes=data.classes_with(episode.per_class))


def _pooled_sources(sites: list[SiteData], train_ids: list[int], tasks: str, cfg: RunConfig) -> list:
    """Where the centralized learner's tasks come from, a round's worth per step.

    Hospital tasks are one hospital's problem: each step takes each training site's tasks, as a
    federated round with every site does (the pooled learner's advantage is then none but the
    lack of privacy machinery). Episodes come from the training sites' data pooled: with one
    shared label space a class keeps its label across sites, else a class is (site, class)."""
    count = cfg.train.tasks_per_round
    if tasks == "hospital":
        return [(_sampler(sites[i], cfg), i, count) for i in train_ids]
    pooled = pool({sites[i].spec.name: sites[i].train for i in train_ids})
    episode = cfg.train_episode
    sampler = EpisodeSampler.from_data(pooled, episode, classes=pooled.classes_with(episode.per_class))
    return [(sampler, POOLED_INDEX, count * len(train_ids))]
