"""A hospital's site folder: images (PNG/JPEG, DICOM, NIfTI; 2D or 3D) and their labels.

    site/
      labels.csv       path,label[,patient_id]   (paths relative to site/)
        or datalist.json  a MONAI datalist: {"training": [{"image": ..., "label": ..., "patient_id": ...}]}
      classes.txt      optional: the class list, one name per line, in label order
      transforms.toml  optional: the MONAI preprocessing chain (common/data/preprocess.py)
      ...images...

Every image is read through MONAI's `LoadImage` (the reader is chosen by file type), put
through the folder's transform chain (by default min-max scaled to [0, 1]), given the model's
channel count and resized to its input size. Validation runs over the whole folder before
anything trains and reports every problem at once, each naming the file or class and the fix;
nothing is dropped silently. The preprocessed result is cached on the site's disk
(common/data/cache.py), so loading the folder again reads no image.
"""

from __future__ import annotations

import csv
import json
import logging
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from common.data.cache import default_cache_dir, folder_key, load_cached, save_cached
from common.data.dataset import DataError, LabelledImages, Problem
from common.data.preprocess import TransformChain, apply_chain, load_chain
from common.data.transforms import match_channels, resize

if TYPE_CHECKING:  # for annotations; MONAI loads where it is used (3.4 s; docs/DEVELOPING.md)
    from monai.transforms import Compose, LoadImage

LABELS_CSV = "labels.csv"
DATALIST_JSON = "datalist.json"
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
    cache: bool = True  # keep the preprocessed folder on this machine's disk (False: read every image)
    cache_dir: Path | None = None  # default: $FEDMETA_CACHE_DIR or ~/.cache/fedmeta/preprocessed


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
    transforms: str = ""  # the preprocessing chain, described
    cached: bool = False  # loaded from the preprocessed cache, no image read

    def add(self, where: str, message: str, fix: str) -> None:
        self.problems.append(Problem(where, message, fix))

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True)
class _Row:
    where: str  # "labels.csv line 7" or "datalist.json training[6]"
    path: str
    label: str
    patient: str | None


def check_folder(
    root: Path, spec: FolderSpec, progress: Callable[[int, int], None] | None = None
) -> tuple[LabelledImages | None, FolderReport]:
    """Read and validate a site folder; the data is None whenever the report has problems.
    `progress(done, total)` is called as images load (not at all on a cache hit)."""
    root = Path(root)
    report = FolderReport(root=root)
    rows = _read_rows(root, report)
    if rows is None:
        return None, report
    report.rows = len(rows)
    classes = _class_list(root, rows, spec, report)
    report.classes = classes
    try:
        chain = load_chain(root)
    except ValueError as error:
        report.add(str(root / "transforms.toml"), str(error).split(": ", 1)[-1], "fix the chain, or delete the file")
        return None, report
    report.transforms = chain.describe()
    settings = f"{chain.fingerprint}|{spec.image_size}|{spec.channels}|{'|'.join(classes)}"
    key = folder_key(root, [(r.path, r.label, r.patient) for r in rows], settings) if spec.cache else None
    cache_dir = spec.cache_dir or default_cache_dir()
    hit = load_cached(cache_dir, key) if key is not None else None
    data: LabelledImages | None
    if hit is not None:
        data, fields = hit
        report.cached = True
        report.shapes = Counter({tuple(shape): n for shape, n in fields["shapes"]})
        _count(report, classes, data.labels.tolist(), list(data.patients or data.ids), spec)
    else:
        data = _load_images(root, rows, classes, chain, spec, report, progress)
    if not report.ok or data is None:
        return None, report
    if key is not None and hit is None:
        try:
            save_cached(cache_dir, key, data, {"shapes": [[list(k), n] for k, n in report.shapes.items()]})
        except OSError as error:  # a read-only home or a full disk: the site still trains, only slower
            logging.getLogger(__name__).warning(
                "preprocessed images not cached in %s (%s): set FEDMETA_CACHE_DIR to a writable directory",
                cache_dir,
                error,
            )
    return data, report


def _count(
    report: FolderReport, classes: tuple[str, ...], labels: list[int], groups: list[str], spec: FolderSpec
) -> None:
    """Examples and patients per class, and every class too small for one episode."""
    counted = Counter(classes[i] for i in labels)
    report.counts = {c: counted.get(c, 0) for c in classes}
    report.patients = {c: len({p for p, lab in zip(groups, labels) if classes[lab] == c}) for c in classes}
    for name, count in report.counts.items():
        if count < spec.min_per_class:
            report.add(
                f"class {name!r}",
                f"has {count} usable examples; one episode needs shots + queries = {spec.min_per_class} per class",
                f"add at least {spec.min_per_class - count} labelled examples, or lower shots/queries",
            )


def _load_images(
    root: Path,
    rows: list[_Row],
    classes: tuple[str, ...],
    chain: TransformChain,
    spec: FolderSpec,
    report: FolderReport,
    progress: Callable[[int, int], None] | None,
) -> LabelledImages | None:
    """Every listed image, loaded, put through the chain, resized: None if any problem."""
    images: list[torch.Tensor] = []
    labels: list[int] = []
    ids: list[str] = []
    patients: list[str] = []
    loader = _image_loader()
    transforms = chain.build()
    for done, row in enumerate(rows, start=1):
        if progress is not None:
            progress(done, len(rows))
        if row.label not in classes:
            report.add(
                f"{row.where} ({row.path})",
                f"label {row.label!r} is not in the class list {list(classes)}",
                f"correct the label, or add it to {CLASSES_TXT} if it is a new class",
            )
            continue
        image = _read_image(root, row, loader, transforms, report)
        if image is None:
            continue
        report.shapes[tuple(image.shape)] += 1
        images.append(image)
        labels.append(classes.index(row.label))
        ids.append(row.path)
        patients.append(row.patient if row.patient is not None else row.path)
    _check_shapes(images, ids, report)
    _count(report, classes, labels, patients, spec)
    if not report.ok or not images:
        return None
    batch = torch.stack([resize(x.unsqueeze(0), spec.image_size)[0] for x in images])
    return LabelledImages(
        images=match_channels(batch, spec.channels, str(root)).contiguous(),
        labels=torch.tensor(labels, dtype=torch.long),
        classes=classes,
        ids=tuple(ids),
        patients=tuple(patients) if any(r.patient is not None for r in rows) else None,
    )


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
    from monai.data import PILReader, PydicomReader
    from monai.transforms import LoadImage

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
        if (root / DATALIST_JSON).is_file():
            return _read_datalist(root, report)
        empty = not any(root.iterdir())
        report.add(
            str(root),
            "is empty" if empty else f"has no {LABELS_CSV} (or {DATALIST_JSON})",
            f"put the images and a {LABELS_CSV} with columns path,label[,patient_id] in it, "
            f'or a MONAI {DATALIST_JSON}: {{"training": [{{"image": ..., "label": ...}}]}}',
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
            rows.append(_Row(f"{LABELS_CSV} line {line}", path, label, values.get("patient_id") or None))
    if not rows:
        report.add(str(csv_path), "lists no images", "add one line per image: path,label[,patient_id]")
        return None
    return rows


def _read_datalist(root: Path, report: FolderReport) -> list[_Row] | None:
    """A MONAI datalist's "training" items (read with MONAI's load_decathlon_datalist): "image"
    relative to the folder, "label" a class name or index, "patient_id" optional."""
    from monai.data import load_decathlon_datalist

    path = root / DATALIST_JSON
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=False, data_list_key="training", base_dir=str(root))
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as error:
        report.add(
            str(path), f"is not a MONAI datalist ({type(error).__name__}: {error})", 'give {"training": [...]} items'
        )
        return None
    rows: list[_Row] = []
    seen: set[str] = set()
    for number, item in enumerate(items):
        where = f"{DATALIST_JSON} training[{number}]"
        image, label = item.get("image"), item.get("label")
        if not isinstance(image, str) or label is None or isinstance(label, list | dict):
            report.add(where, "needs an image path and one label", 'write {"image": "a.png", "label": "benign"}')
            continue
        # MONAI joined the path to the folder; an image outside it keeps its path and is refused when read
        resolved = Path(image).resolve()
        name = resolved.relative_to(root.resolve()).as_posix() if resolved.is_relative_to(root.resolve()) else image
        if name in seen:
            report.add(where, f"repeats {name}", "list each image once")
            continue
        seen.add(name)
        patient = item.get("patient_id")
        rows.append(_Row(where, name, str(label), str(patient) if patient is not None else None))
    if not rows:
        report.add(str(path), "lists no images", 'add {"image": ..., "label": ...} items under "training"')
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


def _read_image(
    root: Path, row: _Row, loader: LoadImage, transforms: Compose, report: FolderReport
) -> torch.Tensor | None:
    path = (root / row.path).resolve()
    where = f"{row.path} ({row.where})"
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
            loaded = loader(str(path))
    except Exception as error:  # noqa: BLE001 -- every reader raises its own type; the message is kept
        report.add(
            where,
            f"cannot be read ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
            "the file is corrupt or truncated: export it again, or delete its line from the label list",
        )
        return None
    try:
        image = apply_chain(transforms, loaded.float())
    except Exception as error:  # noqa: BLE001 -- MONAI raises many types; the step and message are kept
        report.add(
            where,
            f"fails the transform chain ({type(error).__name__}: {str(error).splitlines()[0][:160]})",
            "fix transforms.toml for this kind of image",
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
