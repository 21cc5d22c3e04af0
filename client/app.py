"""A site's ClientApp: meta-gradients and few-shot evaluation on the site's own data only.

The site is `partition-id` (simulation) or `site-name` from `--node-config` (deployment): an
entry of the run's scenario, whose data lives under the node's `data-dir` (else the run's), or,
when the scenario does not list that name, a hospital folder at the node's `data-dir`. The node
config also says where the site computes (`device`) and whether CPU tensors use fedmeta's fused
C kernels (`kernels`: auto, native or torch; auto by default).
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, replace
from functools import lru_cache
from logging import ERROR

import torch
from flwr.app import (
    ArrayRecord,
    ConfigRecord,
    Context,
    Message,
    MetricRecord,
    RecordDict,
)
from flwr.clientapp import ClientApp
from flwr.supercore import log

from client import secure
from client.records import one
from common.algorithms import MetaAlgorithm, build_algorithm
from common.augment import Augmenter
from common.backbones import build_model
from common.config import MetaConfig
from common.data.dataset import DataError
from common.device import describe_device, resolve_device
from common.models import ModelConfig
from common.native import resolve_kernels
from common.privacy import add_noise, clip, site_noise_std
from common.protocol import evaluate_site, evaluation_tasks, site_tasks
from common.runconfig import RunConfig, parse_run_config
from common.scenario import SiteData, load_hospital_site, load_scenario, load_site

app = ClientApp()


@dataclass(frozen=True)
class Site:
    cfg: RunConfig
    index: int
    data: SiteData
    algorithm: MetaAlgorithm
    device: torch.device

    def meta(self, msg: Message) -> dict[str, torch.Tensor]:
        """The global meta-parameters, in float32 on this site's device whatever they travelled as."""
        return {
            k: v.to(self.device, torch.float32)
            for k, v in msg.content.array_records["arrays"].to_torch_state_dict().items()
        }


# A worker process serves many rounds (and, in simulation, many sites): read each site's data
# and build each algorithm once, not per message.
@lru_cache(maxsize=16)
def _site_data(
    scenario_ref: str, tasks: str, site: int | str, data_dir: str | None, partitions: str = "?"
) -> tuple[int, SiteData]:
    scenario = load_scenario(scenario_ref, tasks)
    names = [s.name for s in scenario.sites]
    if isinstance(site, int) and site >= len(names):  # simulation: one node per scenario site, by partition
        raise ValueError(
            f"this node is partition {site} of {partitions}, but scenario {scenario_ref!r} has {len(names)} sites: "
            f'give the federation one node per site (flwr run . --federation-config "num-supernodes={len(names)}")'
        )
    if isinstance(site, int) or site in names:
        index = site if isinstance(site, int) else names.index(site)
        return index, load_site(scenario, index, data_dir)
    if data_dir is None:
        raise ValueError(
            f"site {site!r} is not in scenario {scenario.name!r} ({names}); "
            "give its folder as --node-config data-dir=..."
        )
    try:
        data = load_hospital_site(scenario, site, data_dir)
    except DataError as error:
        # A hospital's file names can carry patient identifiers: the full report (every file, its
        # problem, the fix) goes to this site's own log; the coordinator learns only that and how many.
        log(ERROR, "site %s cannot train on its data folder:\n%s", site, error)
        raise RuntimeError(
            f"site {site!r}: {len(error.problems)} problem(s) in its data folder; the site's own log lists "
            "each file and the fix (or run `fedmeta site --check` there)"
        ) from None
    return zlib.crc32(site.encode()), data  # the stable number its seeds derive from


def _site(context: Context) -> Site:
    cfg = parse_run_config(context.run_config)
    node = context.node_config
    site = str(node["site-name"]) if "site-name" in node else int(node.get("partition-id", 0))
    data_dir = str(node.get("data-dir", "")) or cfg.data.data_dir or None
    partitions = str(node.get("num-partitions", "?"))
    index, data = _site_data(cfg.data.scenario, cfg.data.tasks, site, data_dir, partitions)
    device = resolve_device(str(node.get("device", cfg.train.device)))
    kernels = str(node.get("kernels", "auto"))  # this machine's choice, not the federation's
    algorithm = _algorithm(cfg.data.scenario, cfg.data.tasks, cfg.model, cfg.meta, device, kernels)
    return Site(cfg, index, data, algorithm, device)


@lru_cache(maxsize=4)
def _algorithm(
    scenario_ref: str, tasks: str, model: ModelConfig, meta: MetaConfig, device: torch.device, kernels: str
) -> MetaAlgorithm:
    backbone = build_model(load_scenario(scenario_ref, tasks).model_config(model)).to(device)
    return build_algorithm(backbone, meta, resolve_kernels(kernels) if device.type == "cpu" else None)


@app.query()
def describe(msg: Message, context: Context) -> Message:
    """Name, role and example counts: all the coordinator learns about a site's data. In
    simulation the node's partition too: the coordinator names the site after it."""
    site = _site(context)
    info = ConfigRecord(
        {
            "site-name": site.data.spec.name,
            "role": site.data.spec.role,
            "num-train": len(site.data.train),
            "num-test": len(site.data.test),
            "device": describe_device(site.device),
        }
    )
    if "partition-id" in context.node_config and "site-name" not in context.node_config:
        info["partition-id"] = int(context.node_config["partition-id"])
    return Message(content=RecordDict({"site": info}), reply_to=msg)


def _private_meta_gradient(site: Site, msg: Message) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """This round's meta-gradient (float32, CPU), clipped and noised when DP is on, and its metrics."""
    if site.data.spec.role != "train":
        raise RuntimeError(f"site {site.data.spec.name!r} is held out for meta-testing and does not train")
    meta = site.meta(msg)
    server_round = int(one(msg.content.config_records["config"], "server-round"))
    cfg = site.cfg
    tasks = site_tasks(
        site.data, cfg.train_episode, cfg.train.seed, site.index, "train", cfg.train.tasks_per_round, server_round
    )
    augmenter = Augmenter.from_text(cfg.train.augment, site.algorithm.model.config.spatial_dims, cfg.train.seed)
    tasks = augmenter(tasks, site.index, server_round)
    start = time.perf_counter()
    step = site.algorithm.for_round(server_round).meta_gradient(meta, tasks)
    metrics = {
        "meta-loss": step.loss,
        "query-acc": step.metrics["query_acc"],
        "num-tasks": step.num_tasks,
        "compute-s": time.perf_counter() - start,
    }
    grads = {k: g.detach().to("cpu", torch.float32) for k, g in step.grads.items()}
    if cfg.train.dp_clip > 0:  # site-level DP: nothing leaves the site above the bound
        grads, _ = clip(grads, cfg.train.dp_clip)
        if cfg.train.dp_noise == "sites":
            sampled = int(one(msg.content.config_records["config"], "dp-sites"))
            grads = add_noise(grads, site_noise_std(cfg.train.dp_noise_multiplier, cfg.train.dp_clip, sampled))
    return grads, metrics


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = _site(context)
    grads, metrics = _private_meta_gradient(site, msg)
    wire = getattr(torch, site.cfg.train.transport_dtype)
    content = RecordDict(
        {"arrays": ArrayRecord({k: g.to(wire) for k, g in grads.items()}), "metrics": MetricRecord(dict(metrics))}
    )
    return Message(content=content, reply_to=msg)


@app.train("secagg")
def train_secure(msg: Message, context: Context) -> Message:
    """Secure aggregation, stage 1: compute and keep the meta-gradient here; send public keys."""
    site = _site(context)
    grads, metrics = _private_meta_gradient(site, msg)
    config = msg.content.config_records["config"]
    weight = 1.0 if site.cfg.train.dp_clip > 0 else metrics["num-tasks"] / float(one(config, "secagg-weight-scale"))
    keys = secure.advertise(context, int(one(config, "secagg-index")), grads, weight)
    # the task count would tell the coordinator this site's weight in the sum: it stays here
    metrics.pop("num-tasks")
    return Message(content=RecordDict({"secagg": keys, "metrics": MetricRecord(dict(metrics))}), reply_to=msg)


@app.query("secagg_share")
def secagg_share(msg: Message, context: Context) -> Message:
    return Message(
        content=RecordDict({"secagg": secure.share(context, msg.content.config_records["config"])}), reply_to=msg
    )


@app.query("secagg_mask")
def secagg_mask(msg: Message, context: Context) -> Message:
    masked, info = secure.mask(context, msg.content.config_records["config"])
    return Message(content=RecordDict({"masked": masked, "masked-info": info}), reply_to=msg)


@app.query("secagg_unmask")
def secagg_unmask(msg: Message, context: Context) -> Message:
    return Message(
        content=RecordDict({"secagg": secure.unmask(context, msg.content.config_records["config"])}), reply_to=msg
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Adapt the global initialization on each evaluation episode's K shots; score its queries."""
    site = _site(context)
    meta = site.meta(msg)
    cfg = site.cfg
    config = msg.content.config_records["config"]
    episode = replace(cfg.episode, shots=int(one(config, "eval-shots"))) if "eval-shots" in config else cfg.episode
    tasks = evaluation_tasks(site.data, episode, cfg.train.eval_seed, site.index, cfg.train.eval_tasks)
    metrics = evaluate_site(site.algorithm, meta, tasks)
    return Message(content=RecordDict({"metrics": MetricRecord(dict(metrics))}), reply_to=msg)
