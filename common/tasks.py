"""Episodic few-shot tasks drawn from any labelled image set (2D or 3D), seeded per site."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import overload

import numpy as np
import torch

from common.config import EpisodeConfig


@dataclass(frozen=True)
class Episode:
    """One task: support and query sets with labels relabelled to 0..N-1.

    `classes[i]` is the dataset label that episode label `i` stands for.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor

    def to(self, device: torch.device | str) -> Episode:
        support_x, support_y, query_x, query_y = (t.to(device) for t in self.tensors())
        return Episode(support_x, support_y, query_x, query_y, classes=self.classes)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y


@dataclass(frozen=True)
class TaskBatch:
    """Episodes of equal shape stacked along a leading task dimension (what `vmap` maps over)."""

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    classes: torch.Tensor

    @classmethod
    def stack(cls, episodes: list[Episode]) -> TaskBatch:
        if not episodes:
            raise ValueError("cannot build a task batch from zero episodes")
        fields = zip(*((*ep.tensors(), ep.classes) for ep in episodes))
        return cls(*(torch.stack(list(f)) for f in fields))

    def __len__(self) -> int:
        return self.support_x.shape[0]

    @overload
    def __getitem__(self, index: int) -> Episode: ...
    @overload
    def __getitem__(self, index: slice) -> TaskBatch: ...
    def __getitem__(self, index: int | slice) -> Episode | TaskBatch:
        parts = (t[index] for t in (*self.tensors(), self.classes))
        return Episode(*parts) if isinstance(index, int) else TaskBatch(*parts)

    def __iter__(self) -> Iterator[Episode]:
        return (self[i] for i in range(len(self)))

    def chunks(self, size: int) -> Iterator[TaskBatch]:
        return (self[i : i + size] for i in range(0, len(self), size))

    def to(self, device: torch.device | str) -> TaskBatch:
        support_x, support_y, query_x, query_y = (t.to(device) for t in self.tensors())
        return TaskBatch(support_x, support_y, query_x, query_y, classes=self.classes)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.support_x, self.support_y, self.query_x, self.query_y


class EpisodeSampler:
    """Draws N-way K-shot episodes from `images` (M, C, *spatial) with integer `labels` (M,).

    Every draw takes its randomness from the `torch.Generator` it is given, so a site that
    seeds its own generator gets the same tasks on every run, independent of other sites.
    `classes` restricts sampling to a subset of labels (e.g. meta-train vs meta-test classes).
    `groups` (M,) gives each sample's patient: an episode's queries then never share a patient
    with its support set, so adaptation is never scored on the patient it adapted to.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        config: EpisodeConfig,
        classes: list[int] | None = None,
        groups: torch.Tensor | None = None,
    ) -> None:
        if images.dim() not in (4, 5):
            raise ValueError(
                f"images have shape {tuple(images.shape)}; expected (M, C, H, W) for 2D or "
                "(M, C, D, H, W) for 3D: add a channel dimension with images.unsqueeze(1)"
            )
        labels = torch.as_tensor(labels).reshape(-1).long()
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; they must match one to one")
        present = sorted(torch.unique(labels).tolist())
        wanted = present if classes is None else sorted(set(classes))
        missing = sorted(set(wanted) - set(present))
        if missing:
            raise ValueError(f"classes {missing} have no examples; present classes are {present}")
        if len(wanted) < config.ways:
            raise ValueError(
                f"{config.ways}-way episodes need {config.ways} classes but only {len(wanted)} "
                f"are available ({wanted}); lower ways or add classes"
            )
        self.index = {c: torch.nonzero(labels == c).flatten() for c in wanted}
        small = {c: len(idx) for c, idx in self.index.items() if len(idx) < config.per_class}
        if small:
            detail = ", ".join(f"class {c}: {n}" for c, n in small.items())
            raise ValueError(
                f"each class needs shots+queries = {config.shots}+{config.queries} = "
                f"{config.per_class} examples, but {detail}; lower shots/queries or add examples"
            )
        self.images = images
        self.config = config
        self.classes = torch.tensor(wanted)
        self.groups = None if groups is None else torch.as_tensor(groups).reshape(-1)
        if self.groups is not None:
            self._check_patients(self.groups)

    def _check_patients(self, groups: torch.Tensor) -> None:
        """Every draw must succeed: even when the support lands on the K largest patients of a
        class, the other patients must still hold Q queries."""
        cfg = self.config
        if groups.shape[0] != self.images.shape[0]:
            raise ValueError(f"{self.images.shape[0]} images but {groups.shape[0]} patient ids")
        for c, idx in self.index.items():
            sizes = torch.unique(groups[idx], return_counts=True)[1].sort(descending=True).values
            spare = len(idx) - int(sizes[: cfg.shots].sum())
            if spare < cfg.queries:
                raise ValueError(
                    f"class {c}: {len(idx)} examples from {len(sizes)} patients; with {cfg.shots} support "
                    f"examples from the largest patients only {spare} examples of other patients remain, "
                    f"but {cfg.queries} queries are needed; add patients or lower shots/queries"
                )

    @classmethod
    def from_data(cls, data, config: EpisodeConfig, classes: list[int] | None = None) -> EpisodeSampler:
        """A sampler over a `common.data.LabelledImages`, patient-aware when it has patient ids."""
        groups = None if data.patients is None else data.patient_groups()
        return cls(data.images, data.labels, config, classes=classes, groups=groups)

    def sample(self, generator: torch.Generator) -> Episode:
        cfg = self.config
        chosen = self.classes[torch.randperm(len(self.classes), generator=generator)[: cfg.ways]]
        support, query = [], []
        for c in chosen.tolist():
            idx = self.index[c]
            if self.groups is None:
                picked = idx[torch.randperm(len(idx), generator=generator)[: cfg.per_class]]
                support.append(picked[: cfg.shots])
                query.append(picked[cfg.shots :])
                continue
            order = idx[torch.randperm(len(idx), generator=generator)]
            shots, rest = order[: cfg.shots], order[cfg.shots :]
            support.append(shots)
            query.append(rest[~torch.isin(self.groups[rest], self.groups[shots])][: cfg.queries])
        relabel = torch.arange(cfg.ways)
        return Episode(
            support_x=self.images[torch.cat(support)],
            support_y=relabel.repeat_interleave(cfg.shots),
            query_x=self.images[torch.cat(query)],
            query_y=relabel.repeat_interleave(cfg.queries),
            classes=chosen,
        )

    def sample_batch(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        return TaskBatch.stack([self.sample(generator) for _ in range(num_tasks)])


class HospitalSampler:
    """A hospital's own diagnostic problem as a task: every class it has enough of (at least
    `shots` + 1 examples), K labelled support images of each, the others as queries (at most
    `queries` per class, fewer where the class is small; fixed per hospital, so its tasks stack).
    Labels stay global: label `c` means the same organ or cell type at every hospital, and the
    model has one output per class of the shared label space. With patient ids, a query never
    shares a patient with the support set of its episode."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        shots: int,
        queries: int,
        groups: torch.Tensor | None = None,
        where: str = "site",
        min_classes: int = 2,
    ) -> None:
        labels = torch.as_tensor(labels).reshape(-1).long()
        if labels.shape[0] != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels; they must match one to one")
        self.images, self.shots = images, shots
        self.groups = None if groups is None else torch.as_tensor(groups).reshape(-1)
        self.index: dict[int, torch.Tensor] = {}
        self.queries: dict[int, int] = {}
        for c in sorted(torch.unique(labels).tolist()):
            idx = torch.nonzero(labels == c).flatten()
            spare = len(idx) - shots
            if self.groups is not None:  # worst case: the support lands on the class's largest patients
                sizes = torch.unique(self.groups[idx], return_counts=True)[1].sort(descending=True).values
                spare = len(idx) - int(sizes[:shots].sum())
            if spare >= 1:
                self.index[c], self.queries[c] = idx, min(queries, spare)
        if len(self.index) < min_classes:
            present = torch.unique(labels).tolist()
            counts = {c: int((labels == c).sum()) for c in present}
            if self.groups is None:
                need, have = f"at least shots + 1 = {shots + 1} examples", f"examples per class: {counts}"
            else:  # the support's patients leave the queries: a class of few patients has nothing left
                patients = {c: len(torch.unique(self.groups[labels == c])) for c in present}
                need = f"an example left once {shots} support examples and their patients' other images are set aside"
                have = f"examples per class: {counts}, patients per class: {patients}"
            raise ValueError(
                f"{where}: a hospital task needs {min_classes} classes with {need}, but only {len(self.index)} have "
                f"that ({have}); lower shots or add examples"
            )
        self.classes = torch.tensor(sorted(self.index))

    @classmethod
    def from_data(cls, data, episode: EpisodeConfig, where: str = "site") -> HospitalSampler:
        groups = None if data.patients is None else data.patient_groups()
        return cls(data.images, data.labels, episode.shots, episode.queries, groups, where)

    def sample(self, generator: torch.Generator) -> Episode:
        support, query = [], []
        for c in self.classes.tolist():
            idx = self.index[c]
            order = idx[torch.randperm(len(idx), generator=generator)]
            shots, rest = order[: self.shots], order[self.shots :]
            if self.groups is not None:
                rest = rest[~torch.isin(self.groups[rest], self.groups[shots])]
            support.append(shots)
            query.append(rest[: self.queries[c]])
        support_idx, query_idx = torch.cat(support), torch.cat(query)
        counts = torch.tensor([self.queries[c] for c in self.classes.tolist()])
        return Episode(
            support_x=self.images[support_idx],
            support_y=self.classes.repeat_interleave(self.shots),
            query_x=self.images[query_idx],
            query_y=self.classes.repeat_interleave(counts),
            classes=self.classes,
        )

    def sample_batch(self, num_tasks: int, generator: torch.Generator) -> TaskBatch:
        return TaskBatch.stack([self.sample(generator) for _ in range(num_tasks)])


def site_seed(seed: int, site_id: int = 0, *stream: int) -> int:
    """A 63-bit seed for (run seed, site, optional stream such as round and purpose).

    Mixed through numpy's SeedSequence, so no two distinct tuples share a seed the way a
    linear formula (seed * k + site) lets them once a caller folds more numbers into it.
    """
    if min(seed, site_id, *stream) < 0:
        raise ValueError(f"seed, site and stream numbers must be >= 0, got {(seed, site_id, *stream)}")
    entropy = [seed, site_id, len(stream), *stream]  # the length keeps (s, 1) apart from (s, 1, 0)
    return int(np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]) & (2**63 - 1)


def site_generator(seed: int, site_id: int = 0, *stream: int) -> torch.Generator:
    """A generator whose stream depends on the run seed, the site and `stream`, never on globals."""
    return torch.Generator().manual_seed(site_seed(seed, site_id, *stream))
