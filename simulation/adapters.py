"""How each method meets a new site: given an episode's labelled support set, produce the query
set's logits. One adapter per way of adapting, all behind one call, so the benchmark scores every
method on the same episodes in the same way.

- `MetaLearned`: a meta-model adapts with its own algorithm's inner loop (MAML, Meta-SGD, ANIL)
  or prototypes (ProtoNet).
- `FineTune`: a supervised model (FedAvg with global labels) fine-tunes every weight on the
  support set; where its head does not fit the episode's classes, a new head starts from the
  support set's class means (Chen et al.'s Baseline, with a warm head). A ProtoNet meta-model
  fine-tunes the same way from its prototypes, and a MAML-family one, where asked, from its own
  meta-learned weights (`NAME+finetune` rows: the meta-learned start under the baseline's adaptation).
- `LinearProbe`: the supervised model's features stay frozen; a linear head is fit on them.
- `Prototypes`: the supervised model's features stay frozen; the nearest class mean (cosine)
  predicts (Chen et al.'s Baseline++ at test time).
- `Scratch`: what the new site could do alone: a freshly initialized model trained on the
  support set.

Every adapter is deterministic given its seed; its hyperparameters (steps, learning rate) are
chosen on the validation sites (`simulation.benchmark.tune`), never on the test sites. Each
adapts on the CPU unless moved (`Adapter.to`): on a GPU the C kernels give way to torch's
operators, and its scores are named by the device (they agree with the CPU's to float rounding).
"""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

from common.algorithms import build_algorithm
from common.algorithms.protonet import prototype_head, prototypes
from common.backbones import build_model
from common.export import DESCRIPTION, WEIGHTS, load_meta_model
from common.functional import Params
from common.models import MetaNet, ModelConfig, init_params
from common.native import NativeKernels, resolve_kernels
from common.tasks import Episode, TaskBatch


def architecture_digest(config: ModelConfig) -> str:
    """A digest of a backbone's shape alone: what local training's settings suit (it trains no
    consortium weights, so another model of the same shape keeps them)."""
    return hashlib.sha256(json.dumps(asdict(config), sort_keys=True).encode()).hexdigest()


def model_digest(model_dir: Path) -> str:
    """A digest of a model directory's weights and description: scores name the exact model."""
    digest = hashlib.sha256()
    for name in (WEIGHTS, DESCRIPTION):
        digest.update(Path(model_dir, name).read_bytes())
    return digest.hexdigest()


CPU = torch.device("cpu")
QUERY_CHUNK = 256  # query images scored at once after a fit


class Adapter(ABC):
    name: str = ""
    device: torch.device = CPU

    def identity(self) -> dict:
        """Everything an adapter's scores depend on besides the episodes: its kind, its settings,
        the exact model it starts from and, off the CPU, the device type it adapts on (scores
        kept from before the device was recorded are the CPU's). A kept scores file is reused
        only when this matches."""
        where = {} if self.device.type == "cpu" else {"device": self.device.type}
        return {"adapter": type(self).__name__, **self._settings(), **where}

    def to(self, device: torch.device) -> Adapter:
        """Adapt on `device` from now on: its model moves there, episodes are moved there as they
        come (`on_device`), and the C kernels (CPU only) give way to torch's operators off the CPU."""
        self.device = device
        self._move(device)
        return self

    @abstractmethod
    def _move(self, device: torch.device) -> None:
        """Move what the adapter holds (its model) to `device`."""

    def on_device(self, episode: Episode) -> Episode:
        """`episode` where this adapter computes (itself on the CPU)."""
        return episode if self.device.type == "cpu" else episode.to(self.device)

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
    """An adapter that trains for `steps` on the support set: `logits_at` gives the logits after
    several step counts from one run, so tuning `steps` costs one trajectory, not one per count."""

    steps: int

    @abstractmethod
    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        """Query logits after each number of `steps`."""

    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        return self.logits_at(episode, num_classes, [self.steps])[self.steps]


def support_classes(episode: Episode, num_classes: int) -> torch.Tensor:
    """(num_classes,) bool: the classes `episode`'s support set holds (a hospital's own, with
    global labels), the only ones a head fitted to that support can tell apart."""
    present = torch.zeros(num_classes, dtype=torch.bool, device=episode.support_y.device)
    present[episode.support_y.unique()] = True
    return present


def _fit(params: Params, trainable: list[str], loss_fn, steps: Iterable[int], lr: float) -> dict[int, Params]:
    """Adam on `loss_fn(params)` over the `trainable` entries (the rest stay fixed): the parameters
    after each number of `steps`, from one trajectory (a 10-step fit is the first 10 of 100)."""
    wanted = sorted(set(steps))
    leaves = {k: v.detach().clone().requires_grad_(k in trainable) for k, v in params.items()}
    optimizer = torch.optim.Adam([leaves[k] for k in trainable], lr=lr)
    out = {0: {k: v.detach().clone() for k, v in leaves.items()}} if wanted[0] == 0 else {}
    with torch.enable_grad():
        for step in range(1, wanted[-1] + 1):
            optimizer.zero_grad()
            loss_fn(leaves).backward()
            optimizer.step()
            if step in wanted:
                out[step] = {k: v.detach().clone() for k, v in leaves.items()}
    return out


def _trained_logits(
    model: MetaNet,
    params: Params,
    episode: Episode,
    steps: Iterable[int],
    lr: float,
    kernels: NativeKernels | None = None,
) -> dict[int, torch.Tensor]:
    """Query logits after each number of `steps` of Adam on every weight, on the support set's
    cross-entropy. `kernels`: the fused C ops (common.native) the meta-learners adapt with too:
    fine-tuning with them is 1.29x (5 shots) to 1.43x (1 shot) as fast on one CPU thread, and its
    logits differ from torch's operators' by float rounding grown over the steps (at most 0.008
    after 100; docs/BENCHMARKS.md)."""
    support = model.prepare(episode.support_x)

    def loss(p: Params) -> torch.Tensor:
        return F.cross_entropy(model.logits(p, support, kernels), episode.support_y)

    with torch.no_grad():
        fits = _fit(params, list(params), loss, steps, lr)
        # in chunks: a site's whole test set (`fedmeta adapt --against`) can be thousands of images;
        # an episode's queries (at most 15 per class) are one chunk, as before
        chunks = episode.query_x.split(QUERY_CHUNK)
        return {
            k: torch.cat([model.logits(trained, model.prepare(chunk), kernels) for chunk in chunks])
            for k, trained in fits.items()
        }


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

    def to(self, device: torch.device) -> None:
        self.model.to(device)
        self.params = {k: v.to(device) for k, v in self.params.items()}


def _kernels_on(choice: str, device: torch.device) -> NativeKernels | None:
    """The C kernels for `choice` where they run (the CPU), torch's operators elsewhere."""
    return resolve_kernels(choice) if device.type == "cpu" else None


class MetaLearned(Trained):
    """A meta-model adapted with its own algorithm: `steps` inner steps (None: the steps it was
    meta-trained with for evaluation, `eval-inner-steps`; ProtoNet takes none) at `lr_scale`
    times its own inner rate (Meta-SGD: its learned rates). Both are settings chosen on the
    validation sites, as fine-tuning's steps and rate are: a start that already classifies can
    overshoot at the rate it was meta-trained with."""

    def __init__(
        self, model_dir: Path, steps: int | None = None, lr_scale: float = 1.0, kernels: str = "auto", name: str = ""
    ) -> None:
        meta, model_config, meta_config, _, _ = load_meta_model(model_dir)
        self.meta, self.kernels, self.digest = meta, kernels, model_digest(model_dir)
        self.steps = steps  # type: ignore[assignment]  # None: the model's own eval-inner-steps
        self.lr_scale = lr_scale
        self.name = name or meta_config.algorithm
        self._configs = model_config, meta_config
        try:
            self.algorithm = self._build(CPU)
        except ValueError as error:
            raise ValueError(f"{self.name} ({model_dir}): {error}; drop lr_scale") from None

    def _build(self, device: torch.device):
        model_config, meta_config = self._configs
        model = build_model(model_config).to(device)
        return build_algorithm(model, meta_config, _kernels_on(self.kernels, device)).with_rate_scale(self.lr_scale)

    def _move(self, device: torch.device) -> None:
        self.meta = {k: v.to(device) for k, v in self.meta.items()}
        self.algorithm = self._build(device)

    def _settings(self) -> dict:
        # the model's own rate adds no key: scores kept from before the rate was a setting still match
        scale = {} if self.lr_scale == 1.0 else {"lr_scale": self.lr_scale}
        return {"model": self.digest, "steps": self.steps, "kernels": self.kernels, **scale}

    def takes_steps(self) -> bool:
        """Whether the number of adaptation steps is a setting of this meta-model (not ProtoNet's)."""
        return self.algorithm.steps_adapt

    def logits(self, episode: Episode, num_classes: int) -> torch.Tensor:
        steps = self.algorithm.config.eval_inner_steps if self.steps is None else self.steps
        return self.logits_at(episode, num_classes, [steps])[steps]

    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        """Query logits after each number of inner `steps`, from one inner loop: plain SGD steps
        depend on the weights alone, so adapting k more steps from the k-step weights continues
        the same trajectory (exactly: a test compares it with each count adapted alone)."""
        if self.algorithm.model.config.num_classes != num_classes:
            raise ValueError(
                f"{self.name}: the meta-model has {self.algorithm.model.config.num_classes} outputs, "
                f"the episodes {num_classes} classes: meta-train with ways = {num_classes}"
            )
        out, current, done = {}, self.meta, 0
        for count in sorted(set(steps)):
            adapted = self.algorithm.adapt(current, episode.support_x, episode.support_y, count - done)
            current, done = {**self.meta, **adapted}, count  # the meta-model's own rates etc. stay
            with torch.no_grad():
                out[count] = self.algorithm.predict(adapted, episode.query_x)
        return out


FINETUNED = "+finetune"  # NAME+finetune: the meta-model NAME fine-tuned at the new site as FedAvg's model is


def best_settings(tuned: dict, name: str) -> dict:
    """The settings `fedmeta benchmark tune` chose for method `name` (its tuned.json, read), e.g.
    {"steps": 80, "lr_scale": 0.3}; {} where it holds none (the method's own defaults)."""
    return tuned.get(name, {}).get("best", {})


def finetuned(name: str) -> str:
    """The method a meta-model named `name` becomes when every weight is fine-tuned on the support
    set (a ProtoNet from its prototypes, a MAML-family model from its own head)."""
    return name + FINETUNED


class FineTune(Trained):
    """Every weight of a trained model fine-tuned on the support set. `head_from_prototypes`: the head
    always starts from the support's class means, as it does where the model's head does not fit
    the episode's classes: a ProtoNet's head is never trained, so fine-tuning a ProtoNet starts
    from the prototypes it would predict with (Hu et al. 2022's pre-train, meta-train, fine-tune)."""

    def __init__(
        self,
        model_dir: Path,
        steps: int = 50,
        lr: float = 1e-3,
        kernels: str = "auto",
        name: str = "fedavg+finetune",
        head_from_prototypes: bool = False,
    ) -> None:
        self.loaded, self.steps, self.lr, self.name = Loaded.from_dir(model_dir), steps, lr, name
        self.kernels, self._kernels = kernels, resolve_kernels(kernels)
        self.head_from_prototypes = head_from_prototypes

    def _move(self, device: torch.device) -> None:
        self.loaded.to(device)
        self._kernels = _kernels_on(self.kernels, device)

    @classmethod
    def of_meta_model(cls, model_dir: Path, name: str, prototypes: bool, **settings) -> FineTune:
        """The meta-model `name` (model_dir) fine-tuned, `finetuned(name)`: with `prototypes` (a
        ProtoNet, which takes no steps) from its prototypes, else from its own weights and head."""
        return cls(model_dir, name=finetuned(name), head_from_prototypes=prototypes, **settings)

    def _settings(self) -> dict:
        head = {"head_from_prototypes": True} if self.head_from_prototypes else {}  # kept FedAvg scores still match
        return {"model": self.loaded.digest, "steps": self.steps, "lr": self.lr, "kernels": self.kernels, **head}

    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        params = dict(self.loaded.params)
        if self.head_from_prototypes or self.loaded.model.config.num_classes != num_classes:  # head from class means
            with torch.no_grad():
                features = self.loaded.features(params, episode.support_x)
                params |= prototype_head(features, episode.support_y, num_classes)
        return _trained_logits(self.loaded.model, params, episode, steps, self.lr, self._kernels)


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

    def _move(self, device: torch.device) -> None:
        self.loaded.to(device)

    def _settings(self) -> dict:
        return {"model": self.loaded.digest, "steps": self.steps, "lr": self.lr, "weight_decay": self.weight_decay}

    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        with torch.no_grad():
            support = self.loaded.features(self.loaded.params, episode.support_x)
            query = self.loaded.features(self.loaded.params, episode.query_x)
        scale = support.norm(dim=1).mean().clamp(min=1e-6)  # features on a unit scale: one lr fits all
        support, query = support / scale, query / scale
        present = support_classes(episode, num_classes)
        head = {"w": support.new_zeros(num_classes, support.shape[1]), "b": support.new_zeros(num_classes)}

        def loss(p: Params) -> torch.Tensor:
            logits = (support @ p["w"].T + p["b"]).masked_fill(~present, float("-inf"))
            return F.cross_entropy(logits, episode.support_y) + self.weight_decay * p["w"].pow(2).sum()

        return {
            k: (query @ fitted["w"].T + fitted["b"]).masked_fill(~present, float("-inf"))
            for k, fitted in _fit(head, ["w", "b"], loss, steps, self.lr).items()
        }


class Prototypes(Adapter):
    def __init__(self, model_dir: Path, name: str = "fedavg+prototypes") -> None:
        self.loaded, self.name = Loaded.from_dir(model_dir), name

    def _move(self, device: torch.device) -> None:
        self.loaded.to(device)

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
        self,
        model_config: ModelConfig,
        steps: int = 100,
        lr: float = 1e-3,
        seed: int = 0,
        kernels: str = "auto",
        name: str = "local",
    ) -> None:
        self.config, self.steps, self.lr, self.seed, self.name = model_config, steps, lr, seed, name
        self.kernels, self._kernels = kernels, resolve_kernels(kernels)
        self._initial: dict[int, tuple[MetaNet, Params]] = {}  # per class count: built once, not per episode

    def _move(self, device: torch.device) -> None:
        self._initial.clear()  # built again where it computes, from the same seed
        self._kernels = _kernels_on(self.kernels, device)

    def _settings(self) -> dict:
        return {
            "model_config": asdict(self.config),
            "steps": self.steps,
            "lr": self.lr,
            "seed": self.seed,
            "kernels": self.kernels,
        }

    def logits_at(self, episode: Episode, num_classes: int, steps: Iterable[int]) -> dict[int, torch.Tensor]:
        if num_classes not in self._initial:
            with torch.random.fork_rng():  # the same initialization for every episode: only the data differs
                torch.manual_seed(self.seed)
                model = build_model(replace(self.config, num_classes=num_classes))
            model.to(self.device)  # initialized on the CPU: the same weights wherever it trains
            self._initial[num_classes] = model, init_params(model)
        model, params = self._initial[num_classes]
        return _trained_logits(model, params, episode, steps, self.lr, self._kernels)
