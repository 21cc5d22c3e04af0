"""Experiment tracking on the coordinator (never on a site): every round's per-site and pooled
metrics, and the differential-privacy budget spent, as TensorBoard event files.

Only what the coordinator already holds goes in: per-site metric summaries (means, interval
half-widths, episode counts), never a site's data. Off by default (`tracking = ""`); the
`tensorboard` package comes with the optional extra `pip install "fedmeta[tracking]"`.

    tensorboard --logdir RUN/tensorboard
"""

from __future__ import annotations

import math
from pathlib import Path

TRACKERS = ("", "tensorboard")
INSTALL = 'pip install "fedmeta[tracking]"'


def check_tracking(kind: str) -> None:
    """Refuse an unknown tracker, or TensorBoard without its package, before a run starts."""
    if kind not in TRACKERS:
        raise ValueError(f"tracking={kind!r}: choose tensorboard, or leave it empty for none")
    if kind == "tensorboard":
        try:
            import tensorboard  # noqa: F401 -- only whether it is installed
        except ImportError:
            raise ValueError(f"tracking='tensorboard' needs the tensorboard package: {INSTALL}") from None


class TensorBoardSink:
    """Scalars under `<group>/<metric>` (pooled over a role's sites: heldout, validation,
    train) and `site/<name>/<metric>`, stepped by round. A resumed run continues the same
    directory; steps from the checkpointed round on are purged, so no round is written twice."""

    def __init__(self, log_dir: Path, start_round: int = 1) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(str(self.log_dir), purge_step=start_round if start_round > 1 else None)

    def _scalar(self, tag: str, value: object, step: int) -> None:
        if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
            self.writer.add_scalar(tag, float(value), step)

    def train(self, server_round: int, per_site: dict[str, dict], privacy: dict | None, seconds: float) -> None:
        for site, metrics in per_site.items():
            for name, value in metrics.items():
                self._scalar(f"site/{site}/train-{name}", value, server_round)
        if privacy is not None:
            self._scalar("privacy/epsilon", privacy.get("epsilon"), server_round)
        self._scalar("round/seconds", seconds, server_round)
        self.writer.flush()

    def evaluate(self, server_round: int, per_site: dict[str, dict], summary: dict[str, dict]) -> None:
        for site, metrics in per_site.items():
            for name, value in metrics.items():
                self._scalar(f"site/{site}/{name}", value, server_round)
        for group, metrics in summary.items():
            for name, (mean, half, _) in metrics.items():
                self._scalar(f"{group}/{name}", mean, server_round)
                self._scalar(f"{group}/{name}-ci95", half, server_round)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def build_sink(kind: str, log_dir: Path, start_round: int = 1) -> TensorBoardSink | None:
    check_tracking(kind)
    return TensorBoardSink(log_dir, start_round) if kind == "tensorboard" else None
