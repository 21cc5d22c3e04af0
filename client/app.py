"""A site's ClientApp: meta-gradients and few-shot evaluation on the site's own data only.

The site is `site-name` from `--node-config` (deployment) or `partition-id` (simulation), an
entry of the run's scenario; its data directory is the node's `data-dir`, else the run's.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.algorithms import MetaAlgorithm, build_algorithm
from common.models import build_model
from common.runconfig import RunConfig, parse_run_config
from common.tasks import EpisodeSampler, TaskBatch, site_generator
from simulation.scenario import SiteData, load_scenario, load_site

app = ClientApp()


@dataclass(frozen=True)
class Site:
    cfg: RunConfig
    index: int
    data: SiteData
    algorithm: MetaAlgorithm

    def tasks(self, msg: Message, split: str) -> TaskBatch:
        """This round's episodes from the site's `split`, from its own seeded generator."""
        data = getattr(self.data, split)
        classes = self.data.usable_classes(self.cfg.episode, split)
        try:
            sampler = EpisodeSampler.from_data(data, self.cfg.episode, classes=classes)
        except ValueError as error:
            raise ValueError(f"site {self.data.spec.name!r}, {split} data: {error}") from error
        server_round = int(msg.content["config"]["server-round"])
        generator = site_generator(self.cfg.train.seed, self.index, server_round, ("train", "test").index(split))
        return sampler.sample_batch(self.cfg.train.tasks_per_round, generator)


@lru_cache(maxsize=4)  # a simulation worker serves rounds of the same sites: read each once
def _site_data(scenario: str, index: int, data_dir: str | None) -> SiteData:
    return load_site(load_scenario(scenario), index, data_dir)


def _site(context: Context) -> Site:
    cfg = parse_run_config(context.run_config)
    scenario = load_scenario(cfg.data.scenario)
    node = context.node_config
    if "site-name" in node:
        index = scenario.site_index(str(node["site-name"]))
    else:
        index = int(node.get("partition-id", 0))
    data_dir = str(node.get("data-dir", "")) or cfg.data.data_dir or None
    data = _site_data(cfg.data.scenario, index, data_dir)
    algorithm = build_algorithm(build_model(scenario.model_config(cfg.model)), cfg.meta)
    return Site(cfg, index, data, algorithm)


@app.train()
def train(msg: Message, context: Context) -> Message:
    site = _site(context)
    meta = dict(msg.content["arrays"].to_torch_state_dict())
    step = site.algorithm.meta_gradient(meta, site.tasks(msg, "train"))
    metrics = {"meta-loss": step.loss, "query-acc": step.metrics["query_acc"], "num-tasks": step.num_tasks}
    content = RecordDict({"arrays": ArrayRecord({k: g.detach() for k, g in step.grads.items()}), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    site = _site(context)
    meta = dict(msg.content["arrays"].to_torch_state_dict())
    rows = site.algorithm.evaluate(meta, site.tasks(msg, "test"))
    metrics = {
        "acc-before": rows["acc_before"].mean().item(),
        "acc-after": rows["acc_after"].mean().item(),
        "loss-after": rows["loss_after"].mean().item(),
        "num-tasks": len(rows["acc_after"]),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
