"""Scenarios: a declarative (TOML) description of a federation's sites and what data each holds.

A scenario names its sites, the data of each (the synthetic generator, a MedMNIST dataset or a
hospital folder), how sites drawing on one dataset divide it (quantity shares or Dirichlet label
skew, in `[pools.<name>]`; a pool may also join several MedMNIST datasets into one label
space), which classes and how many examples each keeps, each site's scanner shift (given, or
drawn per site with `shift = "draw"`), and each site's role: it trains, it is a validation site
(evaluated, never trained on; for choosing hyperparameters), or it is held out for the reported
meta-test. `tasks` says what a task is: `episodes` (N-way K-shot, classes relabelled 0..N-1) or
`hospital` (a site's own diagnostic problem: every class it has, K labelled images each, global
labels, as in personalization). Built-ins live in `common/scenarios/`; `fedmeta scenario show
NAME` prints what each site holds.

Parsing reads no data. `load_site` builds one site's data and is only called inside that
site's client (or by `scenario show` on a researcher's machine): the coordinator never does.
"""

from __future__ import annotations

import tomllib
import zlib
from dataclasses import dataclass, field, fields, replace
from importlib.resources import files
from pathlib import Path

import numpy as np
import torch

from common.config import EpisodeConfig, reject_unknown
from common.data import DataError, LabelledImages, SiteShift, medmnist
from common.data.folder import LABELS_CSV, FolderSpec, load_folder
from common.data.partition import dirichlet_proportions, split_by_patient, split_by_proportions, split_by_shares
from common.data.synthetic import MAX_CLASSES, site_shift, synthetic_site
from common.data.transforms import to_model_input
from common.labels import consortium_problems, key
from common.models import ModelConfig
from common.runconfig import parse_run_config
from common.tasks import site_generator, site_seed

ROLES = ("train", "validation", "heldout")  # heldout: the reported meta-test sites
SOURCES = ("synthetic", "medmnist", "folder")
SPLITS = ("train", "test")
TASKS = ("episodes", "hospital")


@dataclass(frozen=True)
class SiteSpec:
    """One site. `shift=None` means a scanner drawn from (seed, site) for synthetic sites and
    no shift otherwise."""

    name: str
    source: str
    role: str = "train"
    dataset: str = ""  # medmnist: the dataset flag, e.g. "pneumoniamnist"
    size: int = 28  # medmnist: which file size (28, 64, 128, 224)
    pool: str = ""  # medmnist: sites with the same pool divide one dataset (default: dataset)
    share: float = 1.0  # quantity skew within the pool
    classes: tuple[int, ...] | None = None
    max_per_class: int = 0  # keep at most this many examples per class and split (0: all)
    path: str = ""  # folder: site folder, relative to the data directory
    test_fraction: float = 0.3  # folder: patients held back for testing
    num_classes: int = MAX_CLASSES  # synthetic
    per_class: int = 30  # synthetic: train examples per class
    test_per_class: int = 20  # synthetic: test examples per class
    shift: SiteShift | None = None
    draw_shift: bool = False  # `shift = "draw"`: a scanner drawn from (seed, site), as synthetic sites get

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"site {self.name!r}: source={self.source!r}, use one of {SOURCES}")
        if self.role not in ROLES:
            raise ValueError(f"site {self.name!r}: role={self.role!r}, use one of {ROLES}")
        if self.source == "medmnist" and self.dataset:
            medmnist.info(self.dataset).file(self.size)  # unknown dataset or size: clear error now
        if self.source == "medmnist" and not self.dataset and not self.pool:
            raise ValueError(f'site {self.name!r}: a medmnist site needs dataset = "<flag>" or a pool with datasets')
        if self.source == "folder" and not self.path:
            raise ValueError(f'site {self.name!r}: a folder site needs path = "<folder under the data directory>"')
        if self.share <= 0 or self.max_per_class < 0:
            raise ValueError(f"site {self.name!r}: share must be > 0 and max-per-class >= 0")

    @property
    def pool_name(self) -> str:
        return self.pool or self.dataset

    def describe(self) -> str:
        if self.source == "synthetic":
            return f"synthetic, {self.num_classes} classes"
        if self.source == "folder":
            return f"folder {self.path}"
        return f"{self.dataset or 'pool'} ({self.size}), pool {self.pool_name}"


@dataclass(frozen=True)
class PoolSpec:
    """How the sites of one pool divide its data: by their `share`s (within each class, among the
    sites that keep the class), or by Dirichlet(alpha) label skew scaled by their shares
    (quantity skew). `datasets` joins several MedMNIST datasets into one label space (labels
    offset in the order given, class names prefixed with the dataset); else the pool is its
    sites' own `dataset`."""

    method: str = "shares"
    alpha: float = 0.5
    datasets: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.method not in ("shares", "dirichlet") or self.alpha <= 0:
            raise ValueError(f"pool method={self.method!r}, alpha={self.alpha}: use shares or dirichlet with alpha > 0")
        for flag in self.datasets:
            medmnist.info(flag)  # unknown dataset: a clear error now

    def labels(self) -> tuple[str, ...]:
        """The joined label space's class names (no data is read)."""
        return tuple(f"{flag}:{name}" for flag in self.datasets for name in medmnist.info(flag).labels)


@dataclass(frozen=True)
class Scenario:
    name: str
    description: str
    sites: tuple[SiteSpec, ...]
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    image_size: int = 28
    channels: int = 1
    spatial_dims: int = 2
    seed: int = 0
    pools: dict[str, PoolSpec] = field(default_factory=dict)
    run_config: dict[str, object] = field(default_factory=dict)  # recommended run-config values
    tasks: str = "episodes"
    labels: tuple[str, ...] = ()  # folder sites: the consortium's classes, each labels.csv matched to them by name

    def __post_init__(self) -> None:
        self._check_labels()
        names = [s.name for s in self.sites]
        if len(set(names)) != len(names):
            raise ValueError(f"scenario {self.name!r}: site names must be unique, got {names}")
        if not any(s.role == "train" for s in self.sites):
            raise ValueError(f'scenario {self.name!r}: at least one site must have role = "train"')
        unknown = sorted(set(self.pools) - {s.pool_name for s in self.sites if s.source == "medmnist"})
        if unknown:
            raise ValueError(f"scenario {self.name!r}: [pools] {unknown} are used by no medmnist site")
        for site in self.sites:
            joined = self.pools.get(site.pool_name, PoolSpec()).datasets
            if site.source == "medmnist" and bool(site.dataset) == bool(joined):
                raise ValueError(f"site {site.name!r}: give dataset = ... or a pool with datasets = [...], not both")
        if self.tasks not in TASKS:
            raise ValueError(f"scenario {self.name!r}: tasks = {self.tasks!r}, use one of {TASKS}")
        if self.tasks == "hospital" and len({self.label_space(s) for s in self.sites}) != 1:
            raise ValueError(
                f"scenario {self.name!r}: hospital tasks keep global labels, so every site needs the same "
                "label space (one dataset, or one pool)"
            )

    def _check_labels(self) -> None:
        folders = [s.name for s in self.sites if s.source == "folder"]
        if self.labels:
            if not folders:
                raise ValueError(
                    f"scenario {self.name!r}: labels = [...] names the classes of folder sites, and it has none "
                    "(a MedMNIST or synthetic site's classes come with its data): remove labels"
                )
            spelt = [name for name in self.labels if [key(n) for n in self.labels].count(key(name)) > 1]
            if spelt:
                raise ValueError(f"scenario {self.name!r}: labels {spelt} are one class spelt two ways: give it once")
        elif folders and self.tasks == "hospital":
            raise ValueError(
                f"scenario {self.name!r}: hospital tasks keep global labels, and folder sites {folders} name their "
                'classes only in their own labels.csv: list the consortium\'s classes, labels = ["...", ...], '
                "and every site's labels.csv is matched to them by name"
            )

    def label_space(self, site: SiteSpec) -> tuple[str, ...]:
        """The class names a site's labels index (no data is read)."""
        if site.source == "medmnist":
            joined = self.pools.get(site.pool_name, PoolSpec())
            return joined.labels() if joined.datasets else medmnist.info(site.dataset).labels
        if site.source == "synthetic":
            return tuple(str(c) for c in range(site.num_classes))
        return self.labels  # (): without them, a folder's classes are known only from its labels.csv

    @property
    def num_labels(self) -> int:
        """The model's output count for hospital tasks: the size of the shared label space."""
        return len(self.label_space(self.sites[0]))

    @property
    def head_classes(self) -> tuple[str, ...] | None:
        """The class each output of this scenario's model stands for: the shared label space for
        hospital tasks (global labels), None for episodes (relabelled at random, so an output is
        an episode's slot, no class's)."""
        return (self.label_space(self.sites[0]) or None) if self.tasks == "hospital" else None

    @property
    def folder_classes(self) -> tuple[str, ...]:
        """The classes a hospital folder's labels.csv is matched to by name: `labels`, else the
        global label space under hospital tasks (a deployed hospital joining `new-hospital`);
        () where a folder keeps its own."""
        return self.labels or self.head_classes or ()

    def site_index(self, name: str) -> int:
        for index, site in enumerate(self.sites):
            if site.name == name:
                return index
        raise ValueError(f"scenario {self.name!r} has no site {name!r}; its sites are {[s.name for s in self.sites]}")

    def model_config(self, base: ModelConfig) -> ModelConfig:
        """`base` with the input shape of this scenario's images (and, for hospital tasks, one
        output per class of the shared label space: labels are global)."""
        shaped = replace(base, spatial_dims=self.spatial_dims, in_channels=self.channels, image_size=self.image_size)
        return replace(shaped, num_classes=self.num_labels) if self.tasks == "hospital" else shaped

    @property
    def training_sites(self) -> list[int]:
        return [i for i, s in enumerate(self.sites) if s.role == "train"]

    @property
    def heldout_sites(self) -> list[int]:
        return [i for i, s in enumerate(self.sites) if s.role == "heldout"]

    @property
    def validation_sites(self) -> list[int]:
        return [i for i, s in enumerate(self.sites) if s.role == "validation"]


@dataclass(frozen=True)
class SiteData:
    """What one site holds: its train and test examples and the scanner shift applied to both."""

    spec: SiteSpec
    train: LabelledImages
    test: LabelledImages
    shift: SiteShift
    tasks: str = "episodes"  # the scenario's kind of task (see TASKS)

    def usable_classes(self, episode: EpisodeConfig, split: str = "train") -> list[int]:
        """Classes with enough examples for an episode (shots + queries) in `split`."""
        return getattr(self, split).classes_with(episode.per_class)


# ---------------------------------------------------------------------------------------------
# parsing


def builtin_scenarios() -> list[str]:
    return sorted(
        p.name.removesuffix(".toml")
        for p in files("common").joinpath("scenarios").iterdir()
        if p.name.endswith(".toml")
    )


def load_scenario(name_or_path: str | Path, tasks: str = "scenario") -> Scenario:
    """A built-in scenario by name, or a scenario TOML file by path. `tasks` other than
    "scenario" replaces the scenario's kind of task for one run (e.g. supervised FedAvg with global
    labels, `tasks = "hospital"`, on an episodes scenario)."""
    if tasks != "scenario" and tasks not in TASKS:
        raise ValueError(f"tasks={tasks!r}: use scenario (the scenario's own) or one of {TASKS}")
    path = Path(name_or_path)
    if path.suffix == ".toml" or path.exists():
        if not path.is_file():
            raise FileNotFoundError(f"scenario file {path} does not exist")
        text, origin = path.read_text(encoding="utf-8"), str(path)
    elif str(name_or_path) in builtin_scenarios():
        text = files("common").joinpath("scenarios", f"{name_or_path}.toml").read_text(encoding="utf-8")
        origin = f"built-in scenario {name_or_path}"
    else:
        raise ValueError(
            f"no scenario {str(name_or_path)!r}: use a built-in ({', '.join(builtin_scenarios())}) "
            "or a path to a .toml file"
        )
    try:
        scenario = parse_scenario(tomllib.loads(text))
        return scenario if tasks == "scenario" else replace(scenario, tasks=tasks)
    except (tomllib.TOMLDecodeError, ValueError, TypeError) as error:
        raise ValueError(f"{origin}: {error}") from error


_SITE_KEYS = {f.name.replace("_", "-"): f.name for f in fields(SiteSpec) if f.name != "draw_shift"} | {"count": "count"}
_TOP_KEYS = {
    "name",
    "description",
    "image-size",
    "channels",
    "spatial-dims",
    "seed",
    "episodes",
    "sites",
    "pools",
    "run-config",
    "tasks",
    "labels",
}


def parse_scenario(doc: dict) -> Scenario:
    reject_unknown("scenario", doc, _TOP_KEYS)
    episode = doc.get("episodes", {})
    reject_unknown("[episodes]", episode, {"ways", "shots", "queries"})
    pools = {}
    for name, spec in doc.get("pools", {}).items():
        reject_unknown(f"[pools.{name}]", spec, {"method", "alpha", "datasets"})
        pools[name] = PoolSpec(**{**spec, "datasets": tuple(spec.get("datasets", ()))})
    recommended = doc.get("run-config", {})
    parse_run_config(recommended)  # unknown keys and bad values: an error now, naming the key
    sites = []
    for entry in doc.get("sites", []):
        sites.extend(_parse_sites(entry))
    if not sites:
        raise ValueError("a scenario needs at least one [[sites]] entry")
    return Scenario(
        name=doc.get("name", "unnamed"),
        description=doc.get("description", ""),
        sites=tuple(sites),
        episode=EpisodeConfig(**episode),
        image_size=doc.get("image-size", 28),
        channels=doc.get("channels", 1),
        spatial_dims=doc.get("spatial-dims", 2),
        seed=doc.get("seed", 0),
        pools=pools,
        run_config=recommended,
        tasks=doc.get("tasks", "episodes"),
        labels=tuple(doc.get("labels", ())),
    )


def _parse_sites(entry: dict) -> list[SiteSpec]:
    where = f"[[sites]] {entry.get('name', '?')!r}"
    reject_unknown(where, entry, set(_SITE_KEYS))
    values = {_SITE_KEYS[k]: v for k, v in entry.items()}
    count = values.pop("count", 1)
    if values.get("shift") == "draw":
        values["shift"], values["draw_shift"] = None, True
    elif "shift" in values:
        values["shift"] = SiteShift.from_mapping(values["shift"])
    if "classes" in values:
        values["classes"] = tuple(values["classes"])
    if count == 1:
        return [SiteSpec(**values)]
    return [SiteSpec(**{**values, "name": f"{values['name']}-{k}"}) for k in range(count)]


def data_problems(scenario: Scenario, data_dir: str | Path | None) -> list[str]:
    """What keeps the scenario's sites from loading their data, each with its fix, found in
    seconds, before anything starts: MedMNIST files present and official (MD5), site folders
    present with their labels.csv. The images themselves are read (and checked) by the sites."""
    needy = [spec for spec in scenario.sites if spec.source != "synthetic"]
    if not needy:
        return []
    if data_dir is None:
        return [
            f"{_sites(s.name for s in needy)} read files: give the directory that holds them with --data-dir "
            "(or FEDMETA_DATA_DIR)"
        ]
    root = Path(data_dir)
    if not root.is_dir():
        return [
            f"--data-dir {root} is not a directory (the scenario's sites read files from it): point it at "
            "the directory that holds the MedMNIST .npz files or site folders (FEDMETA_DATA_DIR works too)"
        ]
    problems: list[str] = []
    users: dict[tuple[str, int], list[str]] = {}
    for spec in needy:
        if spec.source == "folder":
            folder = root / spec.path
            if not (folder / LABELS_CSV).is_file():
                what = "has no " + LABELS_CSV if folder.is_dir() else "is not a directory"
                problems.append(f"site {spec.name!r}: {folder} {what}; put the site's images and {LABELS_CSV} there")
            continue
        for flag in scenario.pools.get(spec.pool_name, PoolSpec()).datasets or (spec.dataset,):
            users.setdefault((flag, spec.size), []).append(spec.name)
    for (flag, size), names in users.items():
        try:
            medmnist.locate(flag, size, root)
        except (FileNotFoundError, ValueError) as error:
            problems.append(f"{error} (read by {_sites(names)})")
    return problems


def _sites(names) -> str:
    names = list(names)
    shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
    return f"site{'s' if len(names) > 1 else ''} {shown}"


# ---------------------------------------------------------------------------------------------
# building one site's data


def load_site(
    scenario: Scenario, site: int | str, data_dir: str | Path | None = None, download: bool = False
) -> SiteData:
    """Site `site`'s data (by index or name), shifted and shaped for the model."""
    index = site if isinstance(site, int) else scenario.site_index(site)
    if not 0 <= index < len(scenario.sites):
        raise ValueError(f"site index {index}: scenario {scenario.name!r} has sites 0..{len(scenario.sites) - 1}")
    spec = scenario.sites[index]
    seed = scenario.seed
    if spec.source == "synthetic":
        parts = tuple(
            synthetic_site(index, seed, spec.num_classes, n, scenario.image_size, split, shift=SiteShift())
            for split, n in (("train", spec.per_class), ("test", spec.test_per_class))
        )
    elif data_dir is None:
        raise ValueError(f"site {spec.name!r} reads {spec.describe()}: give the data directory (--data-dir)")
    elif spec.source == "folder":
        parts = _folder_parts(scenario, spec, Path(data_dir) / spec.path, index)
    else:
        _check_pool(scenario, index)
        pool = _pool_splits(scenario, spec, Path(data_dir), download)
        parts = tuple(_medmnist_part(scenario, index, split, pool[split]) for split in SPLITS)
    drawn = spec.source == "synthetic" or spec.draw_shift
    shift = spec.shift or (site_shift(seed, index) if drawn else SiteShift())
    train, test = (
        _finish(_select(part, spec, seed, index), scenario, spec, shift, index, k) for k, part in enumerate(parts)
    )
    return SiteData(spec, train, test, shift, scenario.tasks)


def _pool_splits(scenario: Scenario, spec: SiteSpec, data_dir: Path, download: bool) -> dict[str, LabelledImages]:
    """The train and test splits a medmnist site's pool divides: its dataset's, or the pool's
    datasets joined into one label space (each in the scenario's input shape first, since their
    channels may differ)."""
    joined = scenario.pools.get(spec.pool_name, PoolSpec()).datasets
    if not joined:
        return medmnist.load_splits(spec.dataset, SPLITS, data_dir, spec.size, download)
    parts = {flag: medmnist.load_splits(flag, SPLITS, data_dir, spec.size, download) for flag in joined}
    out = {}
    for split in SPLITS:
        images: list[torch.Tensor] = []
        labels: list[torch.Tensor] = []
        ids: list[str] = []
        classes: list[str] = []
        for flag, splits in parts.items():
            data = splits[split]
            images.append(to_model_input(data.images, scenario.channels, scenario.image_size, where=flag))
            labels.append(data.labels + len(classes))
            ids.extend(data.ids)
            classes.extend(f"{flag}:{name}" for name in data.classes)
        out[split] = LabelledImages(torch.cat(images), torch.cat(labels), tuple(classes), tuple(ids))
    return out


def load_hospital_site(scenario: Scenario, name: str, root: str | Path, test_fraction: float = 0.3) -> SiteData:
    """A deployed hospital that the scenario does not list: its folder `root`, in the scenario's
    input shape, split by patient. Its seeds derive from its name, so reruns give the same split."""
    spec = SiteSpec(name=name, source="folder", path=str(root), test_fraction=test_fraction)
    index = zlib.crc32(name.encode())
    train, test = (
        _finish(part, scenario, spec, SiteShift(), index, k)
        for k, part in enumerate(_folder_parts(scenario, spec, Path(root), index))
    )
    return SiteData(spec, train, test, SiteShift())


def _folder_parts(scenario: Scenario, spec: SiteSpec, root: Path, index: int) -> tuple[LabelledImages, LabelledImages]:
    data = load_folder(
        root,
        FolderSpec(
            image_size=scenario.image_size, channels=scenario.channels, min_per_class=scenario.episode.per_class
        ),
    )
    if scenario.folder_classes:
        data = _in_label_space(data, scenario.folder_classes, str(root))
    train, test = split_by_patient(data.patient_groups(), spec.test_fraction, site_generator(scenario.seed, index, 4))
    return data.subset(train), data.subset(test)


def _in_label_space(data: LabelledImages, labels: tuple[str, ...], where: str) -> LabelledImages:
    """A folder's data relabelled into the consortium's classes, matched by name (`common.labels`);
    a class that joins none is a DataError, like any other problem with the folder."""
    found, problems = consortium_problems(labels, data.classes)
    if problems:
        raise DataError(where, problems)
    remap = torch.tensor([index for index in found if index is not None], dtype=torch.long)
    return replace(data, labels=remap[data.labels], classes=labels)


def _check_pool(scenario: Scenario, index: int) -> None:
    """The site's datasets have the scenario's dimensionality, and its pool divides one file (or
    one joined set of files)."""
    spec = scenario.sites[index]
    for flag in scenario.pools.get(spec.pool_name, PoolSpec()).datasets or (spec.dataset,):
        if medmnist.info(flag).spatial_dims != scenario.spatial_dims:
            raise ValueError(
                f"site {spec.name!r}: {flag} is not {scenario.spatial_dims}D like scenario {scenario.name!r}"
            )
    members = [s for s in scenario.sites if s.source == "medmnist" and s.pool_name == spec.pool_name]
    files = {(s.dataset, s.size) for s in members}
    if len(files) > 1:
        raise ValueError(f"pool {spec.pool_name!r} mixes datasets/sizes {sorted(files)}; a pool divides one file")


def _medmnist_part(scenario: Scenario, index: int, split: str, data: LabelledImages) -> LabelledImages:
    """This site's part of its pool's split; every site of the pool computes the same division."""
    spec = scenario.sites[index]
    members = [i for i, s in enumerate(scenario.sites) if s.source == "medmnist" and s.pool_name == spec.pool_name]
    pool = scenario.pools.get(spec.pool_name, PoolSpec())
    rng = np.random.default_rng(site_seed(scenario.seed, zlib.crc32(spec.pool_name.encode()), SPLITS.index(split)))
    shares = np.array([scenario.sites[i].share for i in members])
    keeps = np.array(
        [
            [s.classes is None or c in s.classes for s in (scenario.sites[i] for i in members)]
            for c in range(len(data.classes))
        ],
        dtype=float,
    )  # (classes, sites)
    if pool.method == "dirichlet":
        # the proportions come from a generator that ignores the split: train and test share them
        mix = np.random.default_rng(site_seed(scenario.seed, zlib.crc32(spec.pool_name.encode()), 9))
        proportions = dirichlet_proportions(len(data.classes), len(members), pool.alpha, mix) * shares * keeps
    elif keeps.all():
        parts = split_by_shares(len(data), list(shares), rng)
        return data.subset(torch.from_numpy(parts[members.index(index)]))
    else:  # sites keep different classes: each class is divided among the sites that keep it
        proportions = shares * keeps
    if not (keeps.all() and (shares == 1).all()):  # rows of plain Dirichlet draws already sum to 1
        totals = proportions.sum(axis=1, keepdims=True)
        proportions = np.divide(proportions, totals, out=np.zeros_like(proportions), where=totals > 0)
    parts = split_by_proportions(data.labels.numpy(), proportions, rng)
    return data.subset(torch.from_numpy(parts[members.index(index)]))


def _select(data: LabelledImages, spec: SiteSpec, seed: int, index: int) -> LabelledImages:
    """Keep the site's classes and at most `max_per_class` examples of each."""
    keep = torch.ones(len(data), dtype=torch.bool)
    if spec.classes is not None:
        bad = sorted(set(spec.classes) - set(range(len(data.classes))))
        if bad:
            raise ValueError(
                f"site {spec.name!r}: classes {bad} do not exist; labels are 0..{len(data.classes) - 1} {data.classes}"
            )
        keep &= torch.isin(data.labels, torch.tensor(spec.classes))
    if spec.max_per_class:
        generator = site_generator(seed, index, 5)
        order = torch.randperm(len(data), generator=generator)
        rank = torch.zeros(len(data), dtype=torch.long)
        seen: dict[int, int] = {}
        for i in order.tolist():
            label = int(data.labels[i])
            rank[i] = seen[label] = seen.get(label, 0) + 1
        keep &= rank <= spec.max_per_class
    return data if bool(keep.all()) else data.subset(torch.nonzero(keep).flatten())


def _finish(
    data: LabelledImages, scenario: Scenario, spec: SiteSpec, shift: SiteShift, index: int, part: int
) -> LabelledImages:
    """The model's input shape, then the site's scanner (its noise seeded by site and split)."""
    images = to_model_input(data.images, scenario.channels, scenario.image_size, where=f"site {spec.name!r}")
    return replace(data, images=shift(images, site_generator(scenario.seed, index, 6, part)).contiguous())
