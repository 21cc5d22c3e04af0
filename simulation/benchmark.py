"""The benchmark's protocol: every method scored on the same episodes, compared in pairs.

For a scenario and a number of shots K, the episodes are drawn once from the sites of one role
(the held-out sites for the reported figures, the validation sites while choosing
hyperparameters), from `eval_seed` alone: the same bytes for every method and every training
seed (`episodes_hash` says so in the results). Each method's adapter meets every episode; its
per-episode accuracy and AUROC are kept, so a method's difference to the reference method (FedAvg
+ fine-tune) is a paired comparison over identical episodes, with a t interval.

`tune` picks an adapter's hyperparameters on the validation sites; it never reads a held-out
site (tested).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from common.config import EpisodeConfig
from common.files import write_json
from common.functional import accuracy
from common.metrics import auc
from common.protocol import site_tasks
from common.scenario import Scenario, load_scenario, load_site
from common.stats import Interval, episodes_hash, paired_interval, t_interval
from common.tasks import Episode, TaskBatch
from simulation.adapters import Adapter, Trained
from simulation.progress import Claim, Part, Plan, Progress, ScoreFiles, describe_devices, device_of, made_on

REFERENCE = "fedavg+finetune"  # the method every other one is compared with
ROLES = ("heldout", "validation")
STREAM = 100  # generator streams STREAM + K: the benchmark's episodes


def parse_shots(text: str) -> tuple[int, ...]:
    """`--shots 1,5` as (1, 5); the error names the option and the form."""
    try:
        return tuple(int(k) for k in text.split(","))
    except ValueError:
        raise ValueError(f"--shots {text!r}: give comma-separated counts, e.g. 1,5") from None


@dataclass(frozen=True)
class Protocol:
    scenario: str
    data_dir: str = ""
    shots: tuple[int, ...] = (1, 5)
    queries: int = 15
    episodes: int = 600  # per number of shots, divided evenly among the role's sites
    eval_seed: int = 0
    role: str = "heldout"
    ways: int = 0  # classes per episode: 0 is the scenario's (a run that overrides `ways` gives its own)

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role={self.role!r}: episodes come from the held-out or the validation sites")
        if self.episodes < 1 or min(self.shots) < 1 or self.queries < 1:
            raise ValueError("episodes, shots and queries must all be >= 1")


@dataclass
class Episodes:
    """The fixed episodes of one protocol: per shots, per site, a task batch and its digest."""

    scenario: Scenario
    role: str
    ways: int
    batches: dict[int, dict[str, TaskBatch]] = field(default_factory=dict)
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    # site -> its images per class (scenario label space) in the split the episodes come from: the
    # site's case mix, which the episodes (up to `queries` per class) do not follow
    counts: dict[str, np.ndarray] = field(default_factory=dict)

    def num_classes(self) -> int:
        return self.scenario.num_labels if self.scenario.tasks == "hospital" else self.ways

    def num_labels(self) -> int:
        """The size of the scenario's label space (a folder's is known only from its episodes)."""
        seen = max(int(b.classes.max()) for by_site in self.batches.values() for b in by_site.values()) + 1
        return max(self.scenario.num_labels, seen)

    def global_labels(self, episode: Episode, labels: torch.Tensor) -> torch.Tensor:
        """`labels` of `episode` in the scenario's label space (relabelled episodes map back)."""
        return labels if self.scenario.tasks == "hospital" else episode.classes[labels]


def draw_episodes(protocol: Protocol) -> Episodes:
    """Load only the protocol role's sites and draw their episodes (never any other site's)."""
    scenario = load_scenario(protocol.scenario)
    indices = scenario.heldout_sites if protocol.role == "heldout" else scenario.validation_sites
    if not indices:
        raise ValueError(f"scenario {scenario.name!r} has no {protocol.role} sites")
    sites = {i: load_site(scenario, i, protocol.data_dir or None) for i in indices}
    per_site = math.ceil(protocol.episodes / len(indices))
    out = Episodes(scenario, protocol.role, protocol.ways or scenario.episode.ways)
    for site in sites.values():
        out.counts[site.spec.name] = np.bincount(site.test.labels.numpy(), minlength=scenario.num_labels)
    for shots in protocol.shots:
        episode = EpisodeConfig(ways=out.ways, shots=shots, queries=protocol.queries)
        out.batches[shots], out.digests[shots] = {}, {}
        for i, site in sites.items():
            # a stream of their own, per K: apart from training tasks and the in-run evaluation's
            batch = site_tasks(site, episode, protocol.eval_seed, i, "test", per_site, stream=STREAM + shots)
            out.batches[shots][site.spec.name] = batch
            out.digests[shots][site.spec.name] = episodes_hash(*batch.tensors(), batch.classes)
    return out


@dataclass
class Scores:
    """One method's per-episode results over a protocol's episodes (sites in name order)."""

    method: str
    acc: dict[int, np.ndarray] = field(default_factory=dict)  # shots -> (episodes,)
    auc: dict[int, np.ndarray] = field(default_factory=dict)
    digests: dict[int, dict[str, str]] = field(default_factory=dict)
    # shots -> (labels, labels) query counts over every episode: row the true class, column the
    # predicted one, in the scenario's label space (empty in scores kept from before it existed)
    confusion: dict[int, np.ndarray] = field(default_factory=dict)
    # shots -> site -> the same counts at that site alone (summed over sites they are `confusion`;
    # empty in scores kept from before they were kept per site): which classes a method loses at
    # one new hospital, where pooled counts mix both hospitals' classes
    site_confusion: dict[int, dict[str, np.ndarray]] = field(default_factory=dict)
    # shots -> site -> the device type its episodes were adapted on (cpu, cuda): one table can be
    # finished on two devices, e.g. 1 and 5 shots on the CPU and 10 added on a GPU (`adopt_finished`)
    made_on: dict[int, dict[str, str]] = field(default_factory=dict)


def split_sites(values: np.ndarray, sites: Iterable[str]) -> dict[str, np.ndarray]:
    """One shots' per-episode `values` (a Scores' acc or auc, or their mean over seeds) per site:
    `draw_episodes` gives every site as many episodes, and `score` keeps them site after site, in
    name order."""
    names = sorted(sites)
    return dict(zip(names, np.split(np.asarray(values), len(names)), strict=True))


def planned(episodes: Episodes) -> dict[int, int]:
    """The episodes per number of shots, over every site."""
    return {shots: sum(len(batch) for batch in by_site.values()) for shots, by_site in episodes.batches.items()}


def score(
    adapter: Adapter,
    episodes: Episodes,
    progress: Callable[[str], None] = lambda _: None,
    keep: Path | None = None,
) -> Scores:
    """`adapter` on every episode: per-episode accuracy and AUROC. `keep`: a file where the episodes
    scored so far are kept as it goes, and taken up again by a run that finds it (`Progress`)."""
    kept = Progress(keep, adapter.identity())

    def logits(episode: Episode, n: int) -> dict[int, torch.Tensor]:
        return {0: adapter.logits(adapter.on_device(episode), n).cpu()}

    scores = _score(adapter.name, episodes, logits, progress, kept)[0]
    here = adapter.device.type  # a part taken from another device's finished scores says so (adopt_finished)
    scores.made_on = {k: {s: kept.made_on(k, s) or here for s in by_site} for k, by_site in episodes.digests.items()}
    return scores


def score_steps(
    adapter: Trained, episodes: Episodes, steps: Iterable[int], keep: Path | None = None
) -> dict[int, Scores]:
    """A training adapter scored after each number of `steps`, one trajectory per episode."""
    counts = sorted(set(steps))
    kept = Progress(keep, {**adapter.identity(), "counts": counts})

    def logits(episode: Episode, n: int) -> dict[int, torch.Tensor]:
        return {k: v.cpu() for k, v in adapter.logits_at(adapter.on_device(episode), n, counts).items()}

    return _score(adapter.name, episodes, logits, lambda _: None, kept)


def _score(
    name: str,
    episodes: Episodes,
    logits: Callable[[Episode, int], dict[int, torch.Tensor]],
    progress: Callable[[str], None],
    kept: Progress,
) -> dict[int, Scores]:
    """Per key of `logits`' answer (one adapter's variants, e.g. its step counts): the scores.
    Episodes are adapted one at a time: a vmapped fit of 32 at once was measured 0.45x as fast
    at 5 shots on 2 CPU cores (docs/RESULTS.md). What `kept` holds is not scored again."""
    out: dict[int, Scores] = {}
    classes, labels = episodes.num_classes(), episodes.num_labels()
    kept.plan(planned(episodes))
    for shots, by_site in episodes.batches.items():
        parts: dict[str, dict[int, Part]] = {}
        for site in sorted(by_site):
            digest, batch = episodes.digests[shots][site], by_site[site]
            parts[site] = kept.done(shots, site, digest)
            start = len(next(iter(parts[site].values())).acc) if parts[site] else 0
            if start:
                progress(f"{name}: {shots}-shot, {site}: {start} of {len(batch)} episodes kept")
            for i in range(start, len(batch)):
                episode = batch[i]
                truth = episodes.global_labels(episode, episode.query_y)
                for key, value in logits(episode, classes).items():
                    part = parts[site].setdefault(key, Part())
                    part.acc.append(accuracy(value, episode.query_y).item())
                    part.auc.append(auc(value.masked_fill(torch.isinf(value), -1e9), episode.query_y).item())
                    pairs = truth * labels + episodes.global_labels(episode, value.argmax(dim=1))
                    counts = torch.bincount(pairs, minlength=labels * labels).tolist()
                    part.confusion = [a + b for a, b in zip(part.confusion, counts)] if part.confusion else counts
                kept.update(shots, site, digest, parts[site], final=i == len(batch) - 1)
            progress(f"{name}: {shots}-shot, {site} done")
        for key in parts[min(parts)]:
            scores = out.setdefault(key, Scores(name))
            ordered = {site: parts[site][key] for site in sorted(parts)}
            scores.acc[shots] = np.array([a for part in ordered.values() for a in part.acc])
            scores.auc[shots] = np.array([a for part in ordered.values() for a in part.auc])
            scores.site_confusion[shots] = {
                site: np.asarray(part.confusion).reshape(labels, labels) for site, part in ordered.items()
            }
            scores.confusion[shots] = np.sum(list(scores.site_confusion[shots].values()), axis=0)
            scores.digests[shots] = dict(episodes.digests[shots])
    return out


WAIT = 5.0  # seconds between looks at a method-seed that another process is scoring
REMIND = 600.0  # seconds between reminders of what this process is waiting for


def crowded(directory: Path, device: torch.device) -> str | None:
    """What to say when this process computes on the CPU with more than one thread while another
    process on this machine scores into `directory` (a live claim): threads beyond a process's
    share of the cores wait on each other: a 2-thread fine-tuning beside a busy 1-thread one ran
    2.8x slower than alone, a 2-thread FOMAML evaluation beside two busy processes 22x slower
    (docs/BENCHMARKS.md). None when nothing is wrong."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        return None
    for path in sorted(Path(directory).glob("*.claim")):
        holder = Claim(path).holder()
        if holder and holder.endswith("on this machine"):
            return (
                f"{holder} is scoring here too and this process computes on {threads} threads: beside another busy "
                "process that makes it several times slower (2.8x to 22x measured, docs/BENCHMARKS.md). Run "
                "every process sharing these cores with OMP_NUM_THREADS=1 (two one-thread processes use 2 cores best)"
            )
    return None


def score_methods(
    adapters: Mapping[str, list[Adapter]],
    episodes: Episodes,
    directory: Path,
    rescore: bool = False,
    say: Callable[[str], None] = lambda _: None,
    accept: Iterable[str] = (),
) -> dict[str, list[Scores]]:
    """Every method's scores, one per training seed, kept in `directory` as NAME-SEED.json:
    - kept from an earlier run made by the same adapter on the same episodes (unless `rescore`);
    - else scored, going on from the episodes a stopped run left in NAME-SEED.progress.json;
    - a method-seed another process is scoring (its NAME-SEED.claim) is left to it: the rest are
      scored first, then its scores are taken once written (or scored here if it stopped);
    - `accept`: device types whose finished scores are kept too (`kept_scores`)."""
    accept = tuple(accept)
    todo = [(name, seed) for name, runs in adapters.items() for seed in range(len(runs))]
    Plan(directory).add([ScoreFiles(directory, *m).stem for m in todo], planned(episodes))
    done: dict[tuple[str, int], Scores] = {}
    told: dict[tuple[str, int], float] = {}  # when this process last said it waits for a method-seed
    warned = False
    while todo:
        waiting = []
        for name, seed in todo:
            adapter = adapters[name][seed]
            adapter.name = name
            files = ScoreFiles(directory, name, seed)
            path = files.scores
            identity = adapter.identity()
            kept = None if rescore else kept_scores(path, identity, episodes, accept)
            if kept is None:
                claim = Claim(files.claim)
                taken = claim.take()
                warning = None if warned else crowded(directory, adapter.device)
                if warning:
                    say(f"warning: {warning}")
                    warned = True
                if not taken:
                    if time.monotonic() - told.get((name, seed), -REMIND) >= REMIND:
                        say(f"{name} (seed {seed}): being scored by {claim.holder()}; waiting for its scores")
                        told[name, seed] = time.monotonic()
                    waiting.append((name, seed))
                    continue
                try:
                    kept = None if rescore else kept_scores(path, identity, episodes, accept)  # written meanwhile?
                    if kept is None:
                        done[name, seed] = _score_and_write(adapter, episodes, files, rescore, say, accept)
                        continue
                finally:
                    claim.release()
            scores, where = kept
            elsewhere = "" if where == adapter.device.type else f" (scored on {where})"
            say(f"{name} (seed {seed}): kept from {path}{elsewhere}")
            done[name, seed] = scores
        if waiting and len(waiting) == len(todo):  # nothing left here but others' work
            time.sleep(WAIT)
        todo = waiting
    return {name: [done[name, seed] for seed in range(len(runs))] for name, runs in adapters.items()}


def _score_and_write(
    adapter: Adapter,
    episodes: Episodes,
    files: ScoreFiles,
    rescore: bool,
    say: Callable[[str], None],
    accept: Iterable[str] = (),
) -> Scores:
    """Score `adapter` (from the episodes a stopped run kept in `files.progress`, unless `rescore`)
    and write its scores to `files.scores`; the progress file goes once they are there. `accept`:
    device types whose finished scores of other shots are kept too (`adopt_finished`)."""
    if rescore:
        files.progress.unlink(missing_ok=True)
    else:
        adopted = adopt_finished(files, adapter.identity(), episodes, accept)
        if adopted:
            say(f"{adapter.name}: {adopted} episodes kept from {files.scores} (their shots and sites did not change)")
    scores = score(adapter, episodes, say, keep=files.progress)
    write_scores(files.scores, scores, adapter.identity())
    where = describe_devices(scores.made_on)
    if where != adapter.device.type:  # parts kept from another device's finished scores
        say(f"{adapter.name}: scored on {where}")
    files.progress.unlink(missing_ok=True)
    return scores


def adopt_finished(files: ScoreFiles, identity: dict, episodes: Episodes, accept: Iterable[str] = ()) -> int:
    """How many episodes of `files`' finished scores this scoring keeps, put into its progress file:
    those of every (shots, site) whose episodes are byte-identical still, when the same adapter
    made them, e.g. a table finished at 1 and 5 shots that is now scored at 10 shots too adapts to
    the 10-shot episodes only. `accept`: device types whose finished scores by an otherwise
    identical adapter are kept too; each kept part keeps the device that made it (`Scores.made_on`),
    so a table finished on the CPU and extended on a GPU says which shots each made. Scores without
    per-site confusion counts (kept from before they existed) are scored again, as are parts the
    progress file already holds in full. Refuses a run whose shots leave out some of the finished
    scores' (writing its scores would drop theirs)."""
    found = read_finished(files.scores)
    if found is None:
        return 0
    data, finished = found
    if not accepted(data.get("identity"), identity, accept):
        return 0
    progress, here = Progress(files.progress, identity), device_of(identity)
    dropped = sorted(set(finished.digests) - set(episodes.digests))
    if dropped:  # its scores would be replaced by fewer: refuse rather than lose them
        every = ",".join(map(str, sorted(set(finished.digests) | set(episodes.digests))))
        raise ValueError(
            f"{files.scores} holds {', '.join(map(str, dropped))}-shot scores of these settings that this run "
            f"does not score and would replace: score with --shots {every} to keep them, or into another --out"
        )
    count = 0
    for shots, by_site in finished.digests.items():
        now, per_site = episodes.digests.get(shots, {}), finished.site_confusion.get(shots, {})
        if set(per_site) != set(by_site):
            continue
        acc, auc = split_sites(finished.acc[shots], by_site), split_sites(finished.auc[shots], by_site)
        for site, digest in by_site.items():
            if now.get(site) != digest:  # these episodes changed: scored again
                continue
            held = next(iter(progress.done(shots, site, digest).values()), Part())
            if len(held.acc) == len(acc[site]):  # the progress file has them all already
                continue
            part = Part(acc[site].tolist(), auc[site].tolist(), per_site[site].reshape(-1).astype(int).tolist())
            made = finished.made_on[shots][site]
            progress.update(shots, site, digest, {0: part}, final=True, made_on=None if made == here else made)
            count += len(part.acc)
    return count


def tune(
    factory: Callable[..., Adapter],
    grid: Mapping[str, Iterable],
    source: Protocol | Episodes,
    keep: Path | None = None,
) -> tuple[dict, dict]:
    """The grid point whose adapter has the best mean accuracy on the validation sites, over all
    the protocol's shots (fewer steps preferred within TOLERANCE: `choose`); and every point's
    score. `source`: a protocol, or its episodes already drawn (to tune several adapters on one
    draw). Refuses any other role: the held-out sites are
    for the reported figures only. A `steps` axis of a training adapter costs one trajectory per
    episode (its longest), scored at every count. `keep`: a directory where each grid point's
    episodes scored so far are kept (`Progress`), so a stopped tuning goes on where it stopped."""
    if source.role != "validation":
        raise ValueError("hyperparameters are chosen on the validation sites: use role='validation'")
    episodes = draw_episodes(source) if isinstance(source, Protocol) else source
    counts = sorted(grid["steps"]) if "steps" in grid else []
    names = [k for k in grid if k != "steps"]
    results: dict[str, float] = {}

    def record(point: dict, scores: Scores) -> None:
        results[json.dumps(point, sort_keys=True)] = float(np.mean([scores.acc[k].mean() for k in scores.acc]))

    for values in itertools.product(*(list(grid[k]) for k in names)):
        point = dict(zip(names, values))
        if not counts:
            adapter = factory(**point)
            record(point, score(adapter, episodes, keep=_progress_file(keep, adapter.identity())))
            continue
        adapter = factory(**point, steps=counts[-1])
        if not isinstance(adapter, Trained):
            raise TypeError(f"{type(adapter).__name__} takes no steps: drop the grid's steps axis")
        kept = _progress_file(keep, {**adapter.identity(), "counts": counts})
        for steps, scores in score_steps(adapter, episodes, counts, kept).items():  # one trajectory
            record({**point, "steps": steps}, scores)
    return choose(results), results


def _progress_file(directory: Path | None, identity: dict) -> Path | None:
    """One grid point's progress file in `directory`, named by a digest of what it scores."""
    if directory is None:
        return None
    return directory / f"{hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]}.json"


TOLERANCE = 0.002  # validation accuracy within which fewer steps win: under a third of a 100-episode CI


def choose(tries: Mapping[str, float], tolerance: float = TOLERANCE) -> dict:
    """The setting to use, from every try's validation accuracy (keys: JSON settings): the one with
    the fewest `steps` among those within `tolerance` of the best (the best among them on a tie),
    the one-standard-error rule's idea with a tighter margin. It matters only where the grid is
    flat: on new-hospital, fine-tuning 200 steps scored 76.19% and 50 steps 76.15%, and 600 test
    episodes of 3 seeds cost four times as long at 200."""
    top = max(tries.values())
    near = [key for key, value in tries.items() if value >= top - tolerance]
    return json.loads(min(near, key=lambda key: (json.loads(key).get("steps", 0), -tries[key])))


def mean_over_seeds(runs: list[Scores], shots: int, metric: str) -> np.ndarray:
    """Per-episode values averaged over a method's training seeds (every run on the same episodes)."""
    digests = {json.dumps(r.digests[shots], sort_keys=True) for r in runs}
    if len(digests) != 1:
        raise ValueError(f"{runs[0].method}: its runs were scored on different episodes ({shots}-shot)")
    return np.mean([getattr(r, metric)[shots] for r in runs], axis=0)


def headline_rows(
    scenario: str, methods: dict[str, list[Scores]], reference: str = REFERENCE, sites: str = "heldout"
) -> list[dict]:
    """One row per (shots, method): mean accuracy over seeds and episodes with its t interval, and
    the paired difference to `reference` over the same episodes (seed-averaged per episode).
    `sites`: the role the episodes came from (validation rows are for choosing settings only)."""
    if reference not in methods:
        raise ValueError(f"the comparison needs the reference method {reference!r}; have {sorted(methods)}")
    rows = []
    for shots in sorted(methods[reference][0].acc):
        base = mean_over_seeds(methods[reference], shots, "acc")
        base_digest = methods[reference][0].digests[shots]
        for name, runs in methods.items():
            if runs[0].digests[shots] != base_digest:
                raise ValueError(f"{name} and {reference} were scored on different {shots}-shot episodes")
            acc = mean_over_seeds(runs, shots, "acc")
            acc_ci: Interval = t_interval(acc)
            diff = paired_interval(acc, base)
            rows.append(
                {
                    "scenario": scenario,
                    "shots": shots,
                    "method": name,
                    "acc": acc_ci.mean,
                    "acc_ci": acc_ci.half_width,
                    "auc": float(np.nanmean(mean_over_seeds(runs, shots, "auc"))),
                    "diff_vs_fedavg_ft": diff.mean,
                    "diff_ci_low": diff.low,
                    "diff_ci_high": diff.high,
                    "seeds": len(runs),
                    # each training seed's own mean accuracy: how much the result depends on the seed
                    "seed_acc": [float(np.mean(r.acc[shots])) for r in runs],
                    "episodes": len(acc),
                    "sites": sites,
                }
            )
            if name != reference:
                rows[-1]["site_diff"] = site_differences(acc, base, base_digest)
            made_on = sorted({d for r in runs for d in r.made_on.get(shots, {}).values()})
            if made_on:  # known for every scoring; not for hand-made Scores
                rows[-1]["made_on"] = "+".join(made_on)
    return rows


def site_differences(acc: np.ndarray, base: np.ndarray, sites: Iterable[str]) -> dict[str, list[float]]:
    """The paired difference to the reference at each site alone, {site: [mean, low, high]}: the
    pooled difference can be the average of a win at one new hospital and a loss at the other,
    and a pooled CI counts episodes, not hospitals."""
    mine, theirs = split_sites(acc, sites), split_sites(base, sites)
    return {site: _triple(paired_interval(mine[site], theirs[site])) for site in mine}


def _triple(interval: Interval) -> list[float]:
    return [interval.mean, interval.low, interval.high]


def write_scores(path: Path, scores: Scores, identity: dict | None = None) -> None:
    """Per-episode results, for combining seeds and methods later (no site data: numbers only);
    `identity`: the adapter's (`Adapter.identity`), so a rerun can tell whether they still hold.
    `made_on` is written only where some part was made on another device than the identity's."""
    data = {
        "method": scores.method,
        "identity": identity,
        "digests": {str(k): v for k, v in scores.digests.items()},
        "acc": {str(k): v.tolist() for k, v in scores.acc.items()},
        "auc": {str(k): v.tolist() for k, v in scores.auc.items()},
        "confusion": {str(k): v.tolist() for k, v in scores.confusion.items()},
        "site_confusion": {
            str(k): {site: counts.tolist() for site, counts in by_site.items()}
            for k, by_site in scores.site_confusion.items()
        },
    }
    own = device_of(identity)
    if any(d != own for by_site in scores.made_on.values() for d in by_site.values()):
        data["made_on"] = {str(k): dict(v) for k, v in scores.made_on.items()}
    write_json(path, data)  # whole or not at all: a stopped run never leaves half a file to keep


def read_scores(path: Path) -> Scores:
    return parse_scores(json.loads(Path(path).read_text()))


def parse_scores(data: dict) -> Scores:
    """Scores from what `write_scores` wrote (e.g. read from an earlier commit)."""
    return Scores(
        data["method"],
        {int(k): np.array(v) for k, v in data["acc"].items()},
        {int(k): np.array(v) for k, v in data["auc"].items()},
        {int(k): v for k, v in data["digests"].items()},
        {int(k): np.array(v) for k, v in data.get("confusion", {}).items()},
        {
            int(k): {site: np.array(counts) for site, counts in by_site.items()}
            for k, by_site in data.get("site_confusion", {}).items()
        },
        made_on(data),
    )


def accepted(found: object, identity: dict, accept: Iterable[str] = ()) -> bool:
    """Whether a finished scores file's identity `found` is `identity`'s, or the same adapter's on
    a device type in `accept` (their logits agree to about 1e-3: tests/simulation/test_gpu_scoring.py)."""
    allowed = [json.loads(json.dumps(i)) for i in (identity, *(identity_on(identity, d) for d in accept))]
    return found in allowed


def identity_on(identity: dict, device: str) -> dict:
    """`identity` as the same adapter's on `device` (a device type; the CPU's names none)."""
    rest = {k: v for k, v in identity.items() if k != "device"}
    return rest if device == "cpu" else {**rest, "device": device}


def read_finished(path: Path) -> tuple[dict, Scores] | None:
    """A finished scores file as written (its identity included) and its scores; None when there is
    none or it cannot be read (e.g. a hand-edited file cut short: score again)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
        return data, parse_scores(data)
    except (json.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


def kept_scores(
    path: Path, identity: dict, episodes: Episodes, accept: Iterable[str] = ()
) -> tuple[Scores, str] | None:
    """The scores an earlier run left at `path` and where they were made (`describe_devices`), if they were
    made by the same adapter (its identity: kind, settings, the exact model) on byte-identical
    episodes; else None (score again).
    A long evaluation stopped midway thus resumes at the first method-seed it had not finished.
    `accept`: device types (cpu, cuda) whose scores by an otherwise identical adapter are taken
    too, e.g. a table finished on the CPU around methods a GPU scored (their logits agree to about
    1e-3: tests/simulation/test_gpu_scoring.py; say so where the table is reported)."""
    found = read_finished(path)
    if found is None:
        return None
    data, kept = found
    if not accepted(data.get("identity"), identity, accept) or kept.digests != episodes.digests:
        return None
    return kept, describe_devices(kept.made_on)


def protocol_dict(protocol: Protocol) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(protocol).items()}
