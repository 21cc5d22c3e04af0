"""How each method meets a new site: given an episode's labelled support set, produce the query
set's logits. One adapter per way of adapting, all behind one call, so the benchmark scores every
method on the same episodes in the same way.

- `MetaLearned`: a meta-model adapts with its own algorithm's inner loop (MAML, Meta-SGD, ANIL)
  or prototypes (ProtoNet).
- `FineTune`: a supervised model (FedAvg with global labels) fine-tunes every weight on the
  support set; where its head does not fit the episode's classes, a new head starts from the
  support set's class means (Chen et al.'s Baseline, with a warm head).
- `LinearProbe`: the supervised model's features stay frozen; a linear head is fit on them.
- `Prototypes`: the supervised model's features stay frozen; the nearest class mean (cosine)
  predicts (Chen et al.'s Baseline++ at test time).
- `Scratch`: what the new site could do alone: a freshly initialized model trained on the
  support set.

Every adapter is deterministic given its seed; its hyperparameters (steps, learning rate) are
chosen on the validation sites (`simulation.benchmark.tune`), never on the test sites.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.func import grad, vmap

from common.algorithms import build_algorithm
from common.algorithms.protonet import prototype_head, prototypes
from common.backbones import build_model
from common.export import DESCRIPTION, WEIGHTS, load_meta_model
from common.functional import Params
from common.models import MetaNet, ModelConfig, init_params
from common.native import resolve_kernels
from common.tasks import Episode, TaskBatch


def model_digest(model_dir: Path) -> str:
    """A digest of a model directory's weights and description: scores name the exact model."""
    digest = hashlib.sha256()
    for name in (WEIGHTS, DESCRIPTION):
        digest.update(Path(model_dir, name).read_bytes())
    return digest.hexdigest()


class Adapter(ABC):
    name: str = ""

    def identity(self) -> dict:
        """Everything an adapter's scores depend on besides the episodes: its kind, its settings
        and the exact model it starts from. A kept scores file is reused only when this matches."""
        return {"adapter": type(self).__name__, **self._settings()}

    @abstractmethod
    def _settings(self) -> dict:
        """The adapter's hyperparameters and the digest of its model (JSON values)."""

    @abstractmethod
    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        """(queries, num_classes) logits after adapting to `episode`'s support set; labels index
        `num_classes` (the episode's ways, or the label space for hospital tasks)."""

    def batch_logits(self, batch: TaskBatch, num_classes: int) -> torch.Tensor:
        """(episodes, queries, num_classes): `logits` for each episode of `batch`, each on its own."""
        return torch.stack([self.logits(batch[i], num_classes) for i in range(len(batch))])


class Trained(Adapter):
    """An adapter that trains for `steps` on the support set. It trains a batch of episodes at
    once (`batch_logits_at`: one vmapped Adam per episode, the same arithmetic as one at a time),
    and gives the logits after several step counts from one run, so tuning `steps` costs one
    trajectory, not one per count."""

    steps: int

    @abstractmethod
    def batch_logits_at(self, batch: TaskBatch, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        """(episodes, queries, num_classes) query logits after each number of `steps`."""

    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        return {k: v[0] for k, v in self.batch_logits_at(TaskBatch.stack([episode]), num_classes, steps).items()}

    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        return self.logits_at(episode, num_classes, [self.steps])[self.steps]

    def batch_logits(self, batch: TaskBatch, num_classes: int) -> torch.Tensor:
        return self.batch_logits_at(batch, num_classes, [self.steps])[self.steps]


ADAM = (0.9, 0.999, 1e-8)  # torch.optim.Adam's defaults: betas and eps


def _fit(
    params: Params, loss_fn: Callable[..., torch.Tensor], data: tuple, steps: Iterable[int], lr: float
) -> dict[int, Params]:
    """Adam on `loss_fn(params, *data)` for every episode of a batch at once: `params` and each of
    `data` carry a leading episode dimension, and each episode has its own parameters and Adam
    state (vmap over `grad`; the update is torch.optim.Adam's, written out). The parameters after
    each number of `steps`, from one trajectory (a 10-step fit is the first 10 of 100)."""
    wanted = sorted(set(steps))
    grads = vmap(grad(loss_fn))
    beta1, beta2, eps = ADAM
    p = {k: v.detach().clone() for k, v in params.items()}
    first = {k: torch.zeros_like(v) for k, v in p.items()}
    second = {k: torch.zeros_like(v) for k, v in p.items()}
    out = {0: {k: v.clone() for k, v in p.items()}} if wanted[0] == 0 else {}
    for step in range(1, wanted[-1] + 1):
        g = grads(p, *data)
        with torch.no_grad():
            for k in p:
                first[k].mul_(beta1).add_(g[k], alpha=1 - beta1)
                second[k].mul_(beta2).addcmul_(g[k], g[k], value=1 - beta2)
                denom = (second[k].sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                p[k].addcdiv_(first[k], denom, value=-lr / (1 - beta1**step))
        if step in wanted:
            out[step] = {k: v.clone() for k, v in p.items()}
    return out


def _batched(params: Params, episodes: int) -> Params:
    """The same parameters for each of `episodes` episodes (a leading dimension)."""
    return {k: v.detach().unsqueeze(0).expand(episodes, *v.shape).clone() for k, v in params.items()}


def _trained_logits(
    model: MetaNet, params: Params, batch: TaskBatch, steps: Iterable[int], lr: float
) -> dict[int, torch.Tensor]:
    """Query logits (episodes, queries, classes) after each number of `steps` of Adam on every
    weight, on each episode's support cross-entropy; `params` with a leading episode dimension."""

    def loss(p: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(model.logits(p, model.prepare(x)), y)

    def query(p: Params, x: torch.Tensor) -> torch.Tensor:
        return model.logits(p, model.prepare(x))

    fitted = _fit(params, loss, (_plain(batch.support_x), batch.support_y), steps, lr)
    with torch.no_grad():
        return {k: vmap(query)(trained, _plain(batch.query_x)) for k, trained in fitted.items()}


def _plain(x: torch.Tensor) -> torch.Tensor:
    """Site images may be MONAI MetaTensors; vmap takes plain tensors."""
    return x.as_subclass(torch.Tensor)


@dataclass
class Loaded:
    """A trained model from its directory (`common.export`)."""

    model: MetaNet
    params: Params
    digest: str = ""

    @classmethod
    def from_dir(cls, model_dir: Path) -> Loaded:
        params, model_config, _, _, _ = load_meta_model(model_dir)
        kept = {k: v for k, v in params.items() if not k.startswith("inner_lr.")}
        return cls(build_model(model_config), kept, model_digest(model_dir))

    def features(self, params: Params, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(params, self.model.prepare(x))


class MetaLearned(Adapter):
    """A meta-model adapted with its own algorithm (the steps it was meta-trained with for
    evaluation, `eval-inner-steps`, unless `steps` says otherwise)."""

    def __init__(self, model_dir: Path, steps: int | None = None, kernels: str = "auto", name: str = "") -> None:
        meta, model_config, meta_config, _, _ = load_meta_model(model_dir)
        self.meta, self.steps, self.kernels, self.digest = meta, steps, kernels, model_digest(model_dir)
        self.algorithm = build_algorithm(build_model(model_config), meta_config, resolve_kernels(kernels))
        self.name = name or meta_config.algorithm

    def _settings(self) -> dict:
        return {"model": self.digest, "steps": self.steps, "kernels": self.kernels}

    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        if self.algorithm.model.config.num_classes != num_classes:
            raise ValueError(
                f"{self.name}: the meta-model has {self.algorithm.model.config.num_classes} outputs, "
                f"the episodes {num_classes} classes: meta-train with ways = {num_classes}"
            )
        adapted = self.algorithm.adapt(self.meta, episode.support_x, episode.support_y, self.steps)
        with torch.no_grad():
            return self.algorithm.predict(adapted, episode.query_x)


class FineTune(Trained):
    def __init__(self, model_dir: Path, steps: int = 50, lr: float = 1e-3, name: str = "fedavg+finetune") -> None:
        self.loaded, self.steps, self.lr, self.name = Loaded.from_dir(model_dir), steps, lr, name

    def _settings(self) -> dict:
        return {"model": self.loaded.digest, "steps": self.steps, "lr": self.lr}

    def batch_logits_at(self, batch: TaskBatch, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        params = _batched(self.loaded.params, len(batch))
        if self.loaded.model.config.num_classes != num_classes:  # new classes: a head from the support's class means
            with torch.no_grad():
                heads = [
                    prototype_head(self.loaded.features(self.loaded.params, x), y, num_classes)
                    for x, y in zip(batch.support_x, batch.support_y)
                ]
            params |= {k: torch.stack([h[k] for h in heads]) for k in heads[0]}
        return _trained_logits(self.loaded.model, params, batch, steps, self.lr)


class LinearProbe(Trained):
    def __init__(
        self,
        model_dir: Path,
        steps: int = 100,
        lr: float = 1e-2,
        weight_decay: float = 1e-3,
        name: str = "fedavg+linear-probe",
    ) -> None:
        self.loaded, self.name = Loaded.from_dir(model_dir), name
        self.steps, self.lr, self.weight_decay = steps, lr, weight_decay

    def _settings(self) -> dict:
        return {"model": self.loaded.digest, "steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay}

    def batch_logits_at(self, batch: TaskBatch, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        episodes = len(batch)
        with torch.no_grad():  # frozen features, computed once: (episodes, images, features)
            support = self.loaded.features(self.loaded.params, batch.support_x.flatten(0, 1)).unflatten(
                0, (episodes, -1)
            )
            query = self.loaded.features(self.loaded.params, batch.query_x.flatten(0, 1)).unflatten(0, (episodes, -1))
        scale = support.norm(dim=2).mean(dim=1).clamp(min=1e-6)[:, None, None]  # unit scale: one lr fits all
        support, query = support / scale, query / scale
        classes = torch.arange(num_classes)
        present = (batch.support_y.unsqueeze(2) == classes).any(dim=1)  # (episodes, classes)
        head = {"w": torch.zeros(episodes, num_classes, support.shape[2]), "b": torch.zeros(episodes, num_classes)}

        def loss(p: Params, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            logits = (x @ p["w"].T + p["b"]).masked_fill(~mask, float("-inf"))
            return F.cross_entropy(logits, y) + self.weight_decay * p["w"].pow(2).sum()

        fitted = _fit(head, loss, (support, batch.support_y, present), steps, self.lr)
        return {
            k: (query @ p["w"].transpose(1, 2) + p["b"].unsqueeze(1)).masked_fill(~present.unsqueeze(1), float("-inf"))
            for k, p in fitted.items()
        }


class Prototypes(Adapter):
    def __init__(self, model_dir: Path, name: str = "fedavg+prototypes") -> None:
        self.loaded, self.name = Loaded.from_dir(model_dir), name

    def _settings(self) -> dict:
        return {"model": self.loaded.digest}

    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        with torch.no_grad():
            support = F.normalize(self.loaded.features(self.loaded.params, episode.support_x), dim=1)
            query = F.normalize(self.loaded.features(self.loaded.params, episode.query_x), dim=1)
            means, present = prototypes(support, episode.support_y, num_classes)
            return (10.0 * query @ F.normalize(means, dim=1).T).masked_fill(~present, float("-inf"))  # cosine, T 0.1


class Scratch(Trained):
    """A new model, initialized from `seed`, trained on the support set alone."""

    def __init__(
        self, model_config: ModelConfig, steps: int = 100, lr: float = 1e-3, seed: int = 0, name: str = "local"
    ) -> None:
        self.config, self.steps, self.lr, self.seed, self.name = model_config, steps, lr, seed, name
        self._initial: dict[int, tuple[MetaNet, Params]] = {}  # per class count: built once, not per episode

    def _settings(self) -> dict:
        return {"model_config": asdict(self.config), "steps": self.steps, "lr": self.lr, "seed": self.seed}

    def batch_logits_at(self, batch: TaskBatch, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        if num_classes not in self._initial:
            with torch.random.fork_rng():  # the same initialization for every episode: only the data differs
                torch.manual_seed(self.seed)
                model = build_model(replace(self.config, num_classes=num_classes))
            self._initial[num_classes] = model, init_params(model)
        model, params = self._initial[num_classes]
        return _trained_logits(model, _batched(params, len(batch)), batch, steps, self.lr)
