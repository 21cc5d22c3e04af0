"""A hospital's site folder: images (PNG/JPEG, DICOM, NIfTI; 2D or 3D) and a labels CSV.

    site/
      labels.csv     path,label[,patient_id]   (paths relative to site/)
      classes.txt    optional: the class list, one name per line, in label order
      ...images...

Every image is read through MONAI's `LoadImage` (the reader is chosen by file type), scaled to
[0, 1] per image, given the model's channel count and resized to its input size. Validation
runs over the whole folder before anything trains and reports every problem at once, each
naming the file or class and the fix; nothing is dropped silently.
"""

from __future__ import annotations

import csv
import logging
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import torch
from monai.data import PILReader, PydicomReader
from monai.transforms import LoadImage, ScaleIntensity

from common.data.dataset import DataError, LabelledImages, Problem
from common.data.transforms import match_channels, resize

LABELS_CSV = "labels.csv"
CLASSES_TXT = "classes.txt"
SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".nii", ".nii.gz", ".dcm")


@dataclass(frozen=True)
class FolderSpec:
    """What the model needs from a folder. `classes` overrides classes.txt; `min_per_class` is
    the examples one episode needs per class (shots + queries)."""

    image_size: int = 28
    channels: int = 1
    classes: tuple[str, ...] | None = None
    min_per_class: int = 1


@dataclass
class FolderReport:
    """What `fedmeta data check` prints: counts, shapes and every problem found."""

    root: Path
    rows: int = 0
    classes: tuple[str, ...] = ()
    counts: dict[str, int] = field(default_factory=dict)
    patients: dict[str, int] = field(default_factory=dict)
    shapes: Counter = field(default_factory=Counter)
    problems: list[Problem] = field(default_factory=list)

    def add(self, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(where, message, fix))

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Row:
    line: int
    path: str
    label: str
    patient: str | None


def check_folder(root: Path, spec: FolderSpec) -> tuple[LabelledImages | None, FolderReport]:
    """Read and validate a site folder; the data is None whenever the report has problems."""
    root = Path(root)
    report = FolderReport(root=root)
    rows = _read_rows(root, report)
    if rows is None:
        return None, report
    report.rows = len(rows)
    classes = _class_list(root, rows, spec, report)
    report.classes = classes
    images: list[torch.Tensor] = []
    labels: list[int] = []
    ids: list[str] = []
    patients: list[str] = []
    loader = _image_loader()
    scale = ScaleIntensity(minv=0.0, maxv=1.0)
    for row in rows:
        if row.label not in classes:
            report.add(
                f"{LABELS_CSV} line {row.line} ({row.path})",
                f"label {row.label!r} is not in the class list {list(classes)}",
                f"correct the label, or add it to {CLASSES_TXT} if it is a new class",
            )
            continue
        image = _read_image(root, row, loader, report)
        if image is None:
            continue
        report.shapes[tuple(image.shape)] += 1
        images.append(cast(torch.Tensor, scale(image)))  # MONAI returns the type it is given
        labels.append(classes.index(row.label))
        ids.append(row.path)
        patients.append(row.patient if row.patient is not None else row.path)
    _check_shapes(images, ids, report)
    counted = Counter(classes[i] for i in labels)
    report.counts = {c: counted.get(c, 0) for c in classes}
    report.patients = {c: len({p for p, lab in zip(patients, labels) if classes[lab] == c}) for c in classes}
    for name, count in report.counts.items():
        if count < spec.min_per_class:
            report.add(
                f"class {name!r}",
                f"has {count} usable examples; one episode needs shots + queries = {spec.min_per_class} per class",
                f"add at least {spec.min_per_class - count} labelled examples, or lower shots/queries",
            )
    if not report.ok:
        return None, report
    batch = torch.stack([resize(torch.as_tensor(x).float().unsqueeze(0), spec.image_size)[0] for x in images])
    data = LabelledImages(
        images=match_channels(batch, spec.channels, str(root)).contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        classes=classes,
        ids=tuple(ids),
        patients=tuple(patients) if any(r.patient is not None for r in rows) else None,
    )
    return data, report


def load_folder(root: Path, spec: FolderSpec) -> LabelledImages:
    """The folder's data, or a `DataError` listing every problem."""
    data, report = check_folder(root, spec)
    if data is None:
        raise DataError(str(root), report.problems)
    return data


def _image_loader() -> LoadImage:
    """MONAI's LoadImage: nibabel for NIfTI, pydicom for DICOM, PIL for the rest; PIL and pydicom
    are told to keep numpy's (row, column) order, the order of MedMNIST arrays.

    Building it also builds MONAI's GPU DICOM reader, which warns when nvImageCodec is absent;
    the fallback (plain pydicom) is what a CPU site wants, so that one warning is muted here."""
    plugin_log = logging.getLogger("monai.data.nvimgcodec_pydicom_plugin")
    level = plugin_log.level
    plugin_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="NvImgCodecPydicomReader")
            readers = [PydicomReader(swap_ij=False), PILReader(reverse_indexing=False)]
            return LoadImage(readers, image_only=True, ensure_channel_first=True)
    finally:
        plugin_log.setLevel(level)


def _read_rows(root: Path, report: FolderReport) -> list[_Row] | None:
    if not root.is_dir():
        report.add(str(root), "is not a directory", "point the site's data-dir at the folder that holds labels.csv")
        return None
    csv_path = root / LABELS_CSV
    if not csv_path.is_file():
        empty = not any(root.iterdir())
        report.add(
            str(root),
            "is empty" if empty else f"has no {LABELS_CSV}",
            f"put the images and a {LABELS_CSV} with columns path,label[,patient_id] in it",
        )
        return None
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        if not {"path", "label"} <= set(header):
            report.add(
                str(csv_path), f"has columns {header}", "the first line must name the columns path,label[,patient_id]"
            )
            return None
        rows: list[_Row] = []
        seen: dict[str, int] = {}
        for line, raw in enumerate(reader, start=2):
            values = {k.strip(): (v or "").strip() for k, v in raw.items() if k is not None}
            path, label = values.get("path", ""), values.get("label", "")
            if not path or not label:
                report.add(f"{LABELS_CSV} line {line}", "has an empty path or label", "fill in both or delete the line")
                continue
            if path in seen:
                report.add(
                    f"{LABELS_CSV} line {line}", f"repeats {path} (first on line {seen[path]})", "list each image once"
                )
                continue
            seen[path] = line
            rows.append(_Row(line, path, label, values.get("patient_id") or None))
    if not rows:
        report.add(str(csv_path), "lists no images", "add one line per image: path,label[,patient_id]")
        return None
    return rows


def _class_list(root: Path, rows: list[_Row], spec: FolderSpec, report: FolderReport) -> tuple[str, ...]:
    if spec.classes is not None:
        return tuple(spec.classes)
    listed = root / CLASSES_TXT
    if listed.is_file():
        names = tuple(line.strip() for line in listed.read_text(encoding="utf-8").splitlines() if line.strip())
        if len(set(names)) != len(names):
            report.add(str(listed), "lists a class twice", "list each class once")
        return names
    return tuple(sorted({row.label for row in rows}))


def _read_image(root: Path, row: _Row, loader: LoadImage, report: FolderReport) -> torch.Tensor | None:
    path = (root / row.path).resolve()
    where = f"{row.path} ({LABELS_CSV} line {row.line})"
    if not path.is_relative_to(root.resolve()):
        report.add(where, "points outside the site folder", "copy the image into the folder and use a relative path")
        return None
    if not path.is_file():
        report.add(where, "does not exist", "fix the path in labels.csv or restore the file")
        return None
    if not path.name.lower().endswith(SUFFIXES):
        report.add(
            where, f"has an unsupported file type {path.suffix!r}", f"convert it to one of {', '.join(SUFFIXES)}"
        )
        return None
    try:
        with warnings.catch_warnings():  # pydicom: no orientation tags -> identity affine; unused here
            warnings.filterwarnings("ignore", message="PydicomReader: ImageOrientationPatient")
            image = torch.as_tensor(loader(str(path))).float()
    except Exception as error:  # noqa: BLE001 -- every reader raises its own type; the message is kept
        report.add(
            where,
            f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
            "the file is corrupt or truncated: export it again, or delete its line from labels.csv",
        )
        return None
    if image.numel() == 0 or not bool(torch.isfinite(image).all()):
        report.add(where, "has no pixels or non-finite values", "export the image again")
        return None
    return image


def _check_shapes(images: list[torch.Tensor], ids: list[str], report: FolderReport) -> None:
    """One spatial dimensionality and one channel count per site: report the odd ones out."""
    if not images:
        return
    kinds = Counter((x.dim() - 1, x.shape[0]) for x in images)
    (dims, channels), _ = kinds.most_common(1)[0]
    for x, name in zip(images, ids):
        if (x.dim() - 1, x.shape[0]) != (dims, channels):
            report.add(
                name,
                f"is {x.dim() - 1}D with {x.shape[0]} channel(s) but most images are {dims}D with {channels}",
                "a site holds one kind of image: convert it or move it to its own site",
            )
