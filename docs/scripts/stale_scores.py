"""Which committed held-out scores were made on episodes that today's code no longer draws
byte-for-byte (e.g. after a data-pipeline fix): draws each scenario's held-out episodes (the
headline protocol: shots 1 and 5, 15 queries, 600 episodes, eval seed 0) and compares their
digests with every docs/results/scores/SCENARIO/heldout/NAME-SEED.json. A stale score is scored
again by `fedmeta benchmark evaluate` (it keeps only scores on byte-identical episodes).

    .venv/bin/python docs/scripts/stale_scores.py new-hospital new-classes new-hospital-blood   # about 10 s
"""

import sys
from pathlib import Path

from simulation.benchmark import Protocol, draw_episodes, read_scores


def main(scenarios: list[str], data_dir: str = "../shared/data/medmnist") -> int:
    stale = 0
    for scenario in scenarios:
        drawn = draw_episodes(Protocol(scenario, data_dir, (1, 5), 15, 600, 0, "heldout")).digests
        for path in sorted(Path("docs/results/scores", scenario, "heldout").glob("*-[0-9].json")):
            kept = read_scores(path).digests
            differ = [
                f"{k}-shot {site}"
                for k in drawn
                for site, digest in drawn[k].items()
                if kept.get(k, {}).get(site) != digest
            ]
            stale += bool(differ)
            print(f"{scenario} {path.stem}: " + (f"STALE ({', '.join(differ)})" if differ else "same episodes"))
    return 1 if stale else 0


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1:]))
