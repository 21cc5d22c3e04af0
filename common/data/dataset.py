"""The labelled image set every loader returns, and the error every loader raises."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a site's data: what (a file, a class, a row) and how to fix it."""

    where: str
    message: str
    fix: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message} -> {self.fix}"


class DataError(ValueError):
    """Site data that must not be trained on; lists every problem found, not just the first."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{len(problems)} problem(s) in {source}:\n{lines}")


@dataclass(frozen=True)
class LabelledImages:
    """Images (M, C, *spatial) float32 with labels (M,) indexing `classes`.

    `ids` name every sample stably across runs (e.g. ``pneumoniamnist.npz:train:17``), so
    partitions can be checked for overlap; `patients` groups samples that must never be split
    across support/query or train/test (each sample is its own patient when absent).
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: tuple[str, ...]
    ids: tuple[str, ...]
    patients: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        m = self.images.shape[0]
        if self.images.dim() not in (4, 5):
            raise ValueError(f"images have shape {tuple(self.images.shape)}; expected (M, C, H, W) or (M, C, D, H, W)")
        if self.labels.shape != (m,) or len(self.ids) != m or (self.patients is not None and len(self.patients) != m):
            raise ValueError(f"{m} images need {m} labels, ids and patients; got {self.labels.shape}, {len(self.ids)}")
        if m and not 0 <= int(self.labels.min()) <= int(self.labels.max()) < len(self.classes):
            raise ValueError(f"labels must index the {len(self.classes)} classes {self.classes}")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def spatial_dims(self) -> int:
        return self.images.dim() - 2

    def subset(self, index: torch.Tensor | list[int]) -> LabelledImages:
        index = torch.as_tensor(index, dtype=torch.long)
        pick = index.tolist()
        return LabelledImages(
            images=self.images[index],
            labels=self.labels[index],
            classes=self.classes,
            ids=tuple(self.ids[i] for i in pick),
            patients=None if self.patients is None else tuple(self.patients[i] for i in pick),
        )

    def patient_groups(self) -> torch.Tensor:
        """(M,) integer patient index per sample (a sample is its own patient when none given)."""
        if self.patients is None:
            return torch.arange(len(self))
        index: dict[str, int] = {}
        return torch.tensor([index.setdefault(p, len(index)) for p in self.patients], dtype=torch.long)

    def classes_with(self, at_least: int) -> list[int]:
        """Labels with at least `at_least` examples (e.g. shots + queries for an episode)."""
        counts = torch.bincount(self.labels, minlength=len(self.classes))
        return [c for c, n in enumerate(counts.tolist()) if n >= at_least]

    def only(self, keep: list[int]) -> LabelledImages:
        """The examples of classes `keep`, relabelled 0..len(keep)-1 in that order (e.g. a hospital's
        own classes out of a global label space)."""
        index = torch.nonzero(torch.isin(self.labels, torch.tensor(keep, dtype=torch.long))).flatten()
        remap = torch.full((len(self.classes),), -1, dtype=torch.long)
        remap[keep] = torch.arange(len(keep))
        part = self.subset(index)
        return replace(part, labels=remap[part.labels], classes=tuple(self.classes[c] for c in keep))

    def counts(self) -> dict[str, int]:
        """Samples per class name, in class order (zero counts included)."""
        seen = Counter(self.labels.tolist())
        return {name: seen.get(i, 0) for i, name in enumerate(self.classes)}


def pool(parts: dict[str, LabelledImages]) -> LabelledImages:
    """One set from several sites' sets. Sites of one label space (the same class names) keep
    their labels; otherwise a class is (site, class name), so labels never merge across sites
    whose scanners or label definitions differ. Ids and patients are prefixed with the site."""
    shared = len({data.classes for data in parts.values()}) == 1
    classes: list[str] = list(next(iter(parts.values())).classes) if shared else []
    images: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    ids: list[str] = []
    patients: list[str] = []
    for site, data in parts.items():
        if shared:
            labels.append(data.labels)
        else:
            labels.append(data.labels + len(classes))
            classes.extend(f"{site}/{name}" for name in data.classes)
        images.append(data.images)
        ids.extend(f"{site}/{i}" for i in data.ids)
        patients.extend(f"{site}/{p}" for p in (data.patients or data.ids))
    return LabelledImages(torch.cat(images), torch.cat(labels), tuple(classes), tuple(ids), tuple(patients))
