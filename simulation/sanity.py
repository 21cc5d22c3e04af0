"""Full-data sanity row: FedAvg on all of a MedMNIST dataset, plain supervised classification.

Every training image of the official train split is dealt IID to `sites` virtual sites; each
round every site trains its shard for `local_epochs` from the global weights and the weights are
averaged by example count. The test accuracy of the round with the best validation accuracy can
then be set beside the MedMNIST v2 paper's ResNet-18. This runs in-process, without Flower or
Ray: it checks the data pipeline, the model and the optimizer, not the federation. The split,
initialization and minibatches are seeded; the same config on the same number of torch threads
gives the same numbers.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from common.backbones import build_model
from common.data import medmnist
from common.data.dataset import LabelledImages
from common.device import resolve_device
from common.files import write_json
from common.functional import Params, accuracy, cross_entropy, forward, tensor_sum
from common.metrics import auc
from common.models import ModelConfig, init_params
from common.tasks import site_generator

# Test accuracy of ResNet-18 at 28 px: Yang et al., "MedMNIST v2 - A large-scale lightweight
# benchmark for 2D and 3D biomedical image classification", Scientific Data 10, 41 (2023), Table 3.
PAPER_RESNET18_28_ACC = {"pneumoniamnist": 0.854, "breastmnist": 0.863}
OPTIMIZERS = ("adam", "sgd")
# Rounds that reach about the paper's accuracy with the other defaults: 15 rounds on PneumoniaMNIST
# (4708 training images) plus 50 on BreastMNIST (546) took 91 s on 2 idle CPU cores.
DEFAULT_ROUNDS = {"pneumoniamnist": 15, "breastmnist": 50}


@dataclass(frozen=True)
class SanityConfig:
    """One full-data FedAvg run; `out_dir` (when set) receives sanity.json."""

    dataset: str = "pneumoniamnist"
    data_dir: Path = Path("../shared/data/medmnist")
    sites: int = 4
    rounds: int = DEFAULT_ROUNDS["pneumoniamnist"]
    local_epochs: int = 1
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    width: int = 32
    seed: int = 0
    device: str = "cpu"
    out_dir: Path | None = None

    def __post_init__(self) -> None:
        medmnist.info(self.dataset)  # unknown flags fail here, naming the known ones
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer={self.optimizer!r}: use one of {OPTIMIZERS}")
        for name in ("sites", "rounds", "local_epochs", "batch_size", "width"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: must be >= 1")
        if self.lr <= 0:
            raise ValueError(f"lr={self.lr}: must be > 0")


def default_rounds(flag: str) -> int:
    """The tuned number of rounds for `flag`; 20 for a dataset nobody tuned."""
    return DEFAULT_ROUNDS.get(flag, 20)


def iid_shards(count: int, sites: int, seed: int) -> list[torch.Tensor]:
    """Indices 0..count-1 shuffled and dealt into `sites` shards differing in size by at most one."""
    if count < sites:
        raise ValueError(f"{count} training images cannot be split over sites={sites}; use fewer sites")
    order = torch.randperm(count, generator=site_generator(seed, 0, 1))
    return list(torch.tensor_split(order, sites))


def local_train(
    model: torch.nn.Module,
    start: Params,
    data: LabelledImages,
    cfg: SanityConfig,
    generator: torch.Generator,
    device: torch.device,
) -> Params:
    """`local_epochs` of minibatch training on one site's shard, from `start`; returns the new weights."""
    params = {k: v.detach().clone().requires_grad_() for k, v in start.items()}
    make = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    opt = make(params.values(), lr=cfg.lr)
    for _ in range(cfg.local_epochs):
        for batch in torch.randperm(len(data), generator=generator).split(cfg.batch_size):
            x, y = data.images[batch].to(device), data.labels[batch].to(device)
            opt.zero_grad()
            cross_entropy(forward(model, params, x), y).backward()
            opt.step()
    return {k: v.detach() for k, v in params.items()}


def fedavg(updates: list[tuple[Params, int]]) -> Params:
    """Average of the sites' weights, each weighted by its number of training examples (in float32:
    `server.robust.combine` averages in float64, which moves these tuned results)."""
    total = sum(n for _, n in updates)
    return {k: tensor_sum(p[k] * (n / total) for p, n in updates) for k in updates[0][0]}


@torch.no_grad()
def evaluate(model: torch.nn.Module, params: Params, data: LabelledImages, device: torch.device) -> dict[str, float]:
    logits = torch.cat([forward(model, params, x.to(device)).cpu() for x in data.images.split(512)])
    return {"acc": accuracy(logits, data.labels).item(), "auc": auc(logits, data.labels).item()}


def run_sanity(cfg: SanityConfig) -> dict:
    """Train, pick the round with the best validation accuracy, report it on the official test split."""
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    meta = medmnist.info(cfg.dataset)
    splits = medmnist.load_splits(cfg.dataset, medmnist.SPLITS, cfg.data_dir)
    train, val, test = (splits[s] for s in medmnist.SPLITS)
    config = ModelConfig(
        spatial_dims=meta.spatial_dims,
        in_channels=meta.channels,
        image_size=28,
        num_classes=len(meta.labels),
        width=cfg.width,
        num_groups=min(8, cfg.width),
    )
    with torch.random.fork_rng(devices=[]):  # seeded initialization that leaves the caller's RNG alone
        torch.manual_seed(cfg.seed)
        model = build_model(config).to(device)
    weights = init_params(model)
    shards = [train.subset(index) for index in iid_shards(len(train), cfg.sites, cfg.seed)]
    generators = [site_generator(cfg.seed, site, 2) for site in range(cfg.sites)]
    history, best, best_round = [], weights, 0
    for rnd in range(1, cfg.rounds + 1):
        updates = [
            (local_train(model, weights, shard, cfg, g, device), len(shard)) for shard, g in zip(shards, generators)
        ]
        weights = fedavg(updates)
        scores = evaluate(model, weights, val, device)
        history.append(
            {"round": rnd, "val_acc": scores["acc"], "val_auc": scores["auc"], "seconds": time.perf_counter() - start}
        )
        if best_round == 0 or scores["acc"] > history[best_round - 1]["val_acc"]:
            best, best_round = weights, rnd
    final = evaluate(model, best, test, device)
    result = {
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(cfg).items()},
        "dataset": cfg.dataset,
        "samples": {s: len(splits[s]) for s in medmnist.SPLITS},
        "rounds": history,
        "best_round": best_round,
        "test_acc": final["acc"],
        "test_auc": final["auc"],
        "test_majority_acc": torch.bincount(test.labels).max().item() / len(test.labels),
        "paper_resnet18_28_acc": PAPER_RESNET18_28_ACC.get(cfg.dataset),
        "seconds": time.perf_counter() - start,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if cfg.out_dir is not None:
        write_json(Path(cfg.out_dir) / "sanity.json", result)
    return result
