"""Paired comparison of a method's committed per-episode scores against the same method's scores
at an earlier git commit: what a retraining or a new recipe changed, on the same episodes (the
headline pairs methods only on byte-identical episodes, and this checks the same digests).
Seeds are averaged per episode, as the headline does.

    .venv/bin/python docs/scripts/versus_commit.py new-classes 0899695 protonet protonet+finetune

Or two scores directories (e.g. a sweep's validation scores against another run's on the same
validation episodes): the first directory's scores, now, against the second's, then.

    .venv/bin/python docs/scripts/versus_commit.py runs/sweep/nhb11/scores/new-hospital-blood/validation \
        runs/sweep/nhb11-fedavg100/scores/new-hospital-blood/validation fedavg+finetune

A method given as NOW=THEN pairs the method NOW against the method THEN (the same episodes under
another name, e.g. one recipe against another in two sweeps):

    .venv/bin/python docs/scripts/versus_commit.py runs/sweep/nc8/scores/new-classes/validation \
        runs/sweep/nc7/scores/new-classes/validation protonet-w128=protonet-w64 fedavg+finetune
"""

import json
import subprocess
import sys
from pathlib import Path

from common.stats import paired_interval
from simulation.benchmark import Scores, mean_over_seeds, parse_scores, read_scores


def at_commit(commit: str, path: Path) -> Scores:
    """The scores file `path` as committed at `commit`."""
    try:
        text = subprocess.run(
            ["git", "show", f"{commit}:{path.as_posix()}"], check=True, capture_output=True, text=True
        ).stdout
    except subprocess.CalledProcessError as error:
        sys.exit(f"{path} at {commit}: {error.stderr.strip()} (give a commit that holds these scores)")
    return parse_scores(json.loads(text))


def _existing(path: Path) -> Path:
    if not path.is_file():
        sys.exit(f"{path}: no such scores file (pair NOW=THEN where the method has another name there)")
    return path


def main(scenario: str, commit: str, methods: list[str]) -> None:
    """`scenario`'s committed held-out scores against `commit`'s; or, where `scenario` and `commit`
    are both directories, the first's scores against the second's."""
    directory = Path("docs/results/scores", scenario, "heldout")
    then_of = lambda path: at_commit(commit, path)
    if Path(scenario).is_dir() and Path(commit).is_dir():
        directory = Path(scenario)
        then_of = lambda path: read_scores(_existing(Path(commit, path.name)))
    rows = [f"| shots | method | now % | at {commit} % | now - then, points (95% CI) | seeds | episodes |"]
    rows.append("| --- | --- | --- | --- | --- | --- | --- |")
    for spec in methods:
        name, _, then_name = spec.partition("=")
        then_name = then_name or name  # NOW alone: the same name then
        paths = sorted(directory.glob(f"{name}-[0-9].json"))
        if not paths:
            sys.exit(f"{directory}: no scores of {name!r} (NAME-SEED.json)")
        now = [read_scores(p) for p in paths]
        then = [then_of(p.with_name(then_name + p.name[len(name) :])) for p in paths]
        for shots in sorted(now[0].acc):
            if any(a.digests[shots] != b.digests[shots] for a, b in zip(now, then)):
                sys.exit(f"{spec}: its {shots}-shot episodes differ at {commit}; the runs cannot be paired")
            a, b = mean_over_seeds(now, shots, "acc"), mean_over_seeds(then, shots, "acc")
            rows.append(
                f"| {shots} | {spec} | {100 * a.mean():.1f} | {100 * b.mean():.1f} | "
                f"{paired_interval(a, b).points()} | {len(now)} | {len(a)} |"
            )
    print("\n".join(rows))  # only once every method paired: a failure prints its reason alone


if __name__ == "__main__":
    if len(sys.argv) < 4:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
