"""The evaluation protocol, shared by the site ClientApp and the non-federated baselines, so that
every method is scored on the same episodes of the same sites.

Training episodes come from a site's train split, from a generator seeded by (seed, site,
round); evaluation always uses the same `eval_tasks` episodes of the site's test split, so a
curve over rounds measures the model, not the draw.
"""

from __future__ import annotations

from common.algorithms import MetaAlgorithm
from common.config import EpisodeConfig
from common.functional import Params
from common.metrics import mean_ci
from common.scenario import SiteData
from common.tasks import EpisodeSampler, HospitalSampler, TaskBatch, site_generator

SPLIT_STREAM = {"train": 0, "test": 1}


def site_tasks(
    site: SiteData, episode: EpisodeConfig, seed: int, index: int, split: str, count: int, stream: int
) -> TaskBatch:
    """`count` episodes from `site`'s `split`: N-way episodes over the classes it has enough
    examples of, or (hospital tasks) the site's own problem over all its classes, global labels."""
    data = getattr(site, split)
    generator = site_generator(seed, index, stream, SPLIT_STREAM[split])
    if site.tasks == "hospital":
        where = f"site {site.spec.name!r}, {split} data"
        return HospitalSampler.from_data(data, episode, where).sample_batch(count, generator)
    usable = site.usable_classes(episode, split)
    if len(usable) < episode.ways:
        counts = ", ".join(f"{name}: {n}" for name, n in data.counts().items())
        raise ValueError(
            f"site {site.spec.name!r}, {split} data: {episode.ways}-way episodes need {episode.ways} classes "
            f"with at least shots+queries = {episode.shots}+{episode.queries} = {episode.per_class} examples, "
            f"but {len(usable)} class(es) have that many ({counts}); add examples, or lower ways, shots or queries"
        )
    try:
        sampler = EpisodeSampler.from_data(data, episode, classes=usable)
    except ValueError as error:
        raise ValueError(f"site {site.spec.name!r}, {split} data: {error}") from error
    return sampler.sample_batch(count, generator)


def evaluation_tasks(site: SiteData, episode: EpisodeConfig, seed: int, index: int, count: int) -> TaskBatch:
    return site_tasks(site, episode, seed, index, "test", count, stream=0)


def evaluate_site(algorithm: MetaAlgorithm, meta: Params, batch: TaskBatch) -> dict[str, float]:
    """Mean and 95% CI half-width over episodes of accuracy before/after adaptation, AUC, loss."""
    rows = algorithm.evaluate(meta, batch)
    metrics: dict[str, float] = {"num-tasks": len(rows["acc_after"])}  # episodes; Flower's weight key
    for key, values in rows.items():
        name = key.replace("_", "-")
        metrics[name], metrics[f"{name}-ci"] = mean_ci(values)
    return metrics
