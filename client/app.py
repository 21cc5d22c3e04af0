"""A site's ClientApp: meta-gradients and few-shot evaluation on the site's own data only."""

from __future__ import annotations

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from common.algorithms import MetaAlgorithm, build_algorithm
from common.models import build_model
from common.runconfig import RunConfig, parse_run_config
from common.synthetic import synthetic_site
from common.tasks import EpisodeSampler, site_generator

app = ClientApp()


def _site(context: Context) -> tuple[RunConfig, MetaAlgorithm, EpisodeSampler, int]:
    cfg = parse_run_config(context.run_config)
    site_id = int(context.node_config.get("site-id", context.node_config.get("partition-id", 0)))
    images, labels = synthetic_site(site_id, seed=cfg.train.seed, image_size=cfg.model.image_size)
    sampler = EpisodeSampler(images, labels, cfg.episode)
    return cfg, build_algorithm(build_model(cfg.model), cfg.meta), sampler, site_id


def _tasks(msg: Message, cfg: RunConfig, sampler: EpisodeSampler, site_id: int, stream: int):
    server_round = int(msg.content["config"]["server-round"])
    generator = site_generator(cfg.train.seed, site_id, server_round, stream)
    return sampler.sample_batch(cfg.train.tasks_per_round, generator)


@app.train()
def train(msg: Message, context: Context) -> Message:
    cfg, algorithm, sampler, site_id = _site(context)
    meta = dict(msg.content["arrays"].to_torch_state_dict())
    step = algorithm.meta_gradient(meta, _tasks(msg, cfg, sampler, site_id, stream=0))
    metrics = {"meta-loss": step.loss, "query-acc": step.metrics["query_acc"], "num-tasks": step.num_tasks}
    content = RecordDict({"arrays": ArrayRecord({k: g.detach() for k, g in step.grads.items()}), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    cfg, algorithm, sampler, site_id = _site(context)
    meta = dict(msg.content["arrays"].to_torch_state_dict())
    rows = algorithm.evaluate(meta, _tasks(msg, cfg, sampler, site_id, stream=1))
    metrics = {
        "acc-before": rows["acc_before"].mean().item(),
        "acc-after": rows["acc_after"].mean().item(),
        "loss-after": rows["loss_after"].mean().item(),
        "num-tasks": len(rows["acc_after"]),
    }
    return Message(content=RecordDict({"metrics": MetricRecord(metrics)}), reply_to=msg)
