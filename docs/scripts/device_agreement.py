"""Whether scores made on one device hold on another: a meta-model's held-out scores written by
`fedmeta benchmark evaluate --device cuda` (SCORES, NAME-SEED.json) scored again here on the CPU,
with the same settings on the same episodes, and compared episode by episode.

    .venv/bin/python docs/scripts/device_agreement.py SCORES MODEL_DIR [DATA_DIR]

SCORES records the scenario's episodes (their digests) and the adapter's settings (its identity);
the episodes are drawn again from the headline protocol (shots 1 and 5, 15 queries, eval seed 0,
as many as SCORES holds) and must match byte for byte. Prints, per shots, the mean accuracy on
each device, their paired difference, and on how many episodes the two agree exactly.
"""

import json
import sys
from pathlib import Path

import numpy as np

from simulation.adapters import MetaLearned
from simulation.benchmark import Protocol, draw_episodes, parse_scores, score
from simulation.headline import _pct
from simulation.progress import device_of


def main(scores_path: str, model_dir: str, data_dir: str = "../shared/data/medmnist") -> int:
    data = json.loads(Path(scores_path).read_text())
    other, identity = parse_scores(data), data["identity"]
    if identity.get("adapter") != "MetaLearned":
        sys.exit(f"{scores_path}: a meta-model's scores are compared here, not {identity.get('adapter')}'s")
    scenario = Path(scores_path).parent.parent.name
    count = len(next(iter(other.acc.values())))
    drawn = draw_episodes(Protocol(scenario, data_dir, tuple(sorted(other.acc)), 15, count, 0, "heldout"))
    if drawn.digests != other.digests:
        sys.exit(f"{scores_path}: its episodes are not the ones today's code draws (stale_scores.py says which)")
    adapter = MetaLearned(Path(model_dir), steps=identity["steps"], lr_scale=identity.get("lr_scale", 1.0))
    if adapter.digest != identity["model"]:
        sys.exit(f"{model_dir} is not the model {scores_path} was scored with")
    here = score(adapter, drawn)
    where = device_of(identity)
    print(f"{scenario}, {data['method']}: {where} ({scores_path}) against the cpu here, {count} episodes per shots")
    for k in sorted(here.acc):
        a, b = other.acc[k], here.acc[k]
        diff = 100 * (a - b)
        print(
            f"{k}-shot: {where} {_pct(a.mean())}%, cpu {_pct(b.mean())}%, difference {diff.mean():+.3f} points "
            f"(largest on one episode {np.abs(diff).max():.1f}); "
            f"identical on {int((a == b).sum())} of {len(a)} episodes"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    sys.exit(main(*sys.argv[1:]))
