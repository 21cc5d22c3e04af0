"""The scores a headline evaluation has finished so far, before every method and seed is in, as
the headline's own table (`simulation.benchmark.headline_rows`, `simulation.headline.markdown`):
per method and shots, the mean accuracy over the seeds scored so far (each seed's too), and the
paired difference to FedAvg + fine-tune over the seeds *it* has so far, on the same episodes.
For progress reports only: the headline tables come from `fedmeta benchmark evaluate` once every
method-seed is scored.

    .venv/bin/python docs/scripts/partial_scores.py docs/results/scores/new-hospital/heldout
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from simulation.benchmark import Scores, headline_rows, read_scores
from simulation.headline import markdown


def main() -> None:
    directory = Path(sys.argv[1])  # .../scores/<scenario>/<sites>
    methods: dict[str, list[Scores]] = {}
    for path in sorted(directory.glob("*-*.json")):  # NAME-SEED.json; not the .progress.json files
        if re.fullmatch(r".+-\d+\.json", path.name):
            methods.setdefault(path.name.rsplit("-", 1)[0], []).append(read_scores(path))
    rows = headline_rows(directory.parent.name, methods, sites=directory.name)
    print(markdown(rows, with_targets=False))


if __name__ == "__main__":
    main()
