"""When the coordinator trains and evaluates: rounds 1..N (or from a resumed round on), every
site evaluating every `eval_every` rounds and after the last; and the outer learning rate of
each round (a fraction of outer-lr: warm-up, then constant or cosine)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from common.runconfig import outer_lr_factor
from common.tasks import site_seed


@dataclass(frozen=True)
class Schedule:
    num_rounds: int = 1
    eval_every: int = 1
    lr_schedule: str = "constant"
    lr_warmup: int = 0
    eval_heldout: bool = True  # False while choosing settings: the held-out sites are not scored at all

    def rounds(self, start: int = 1) -> range:
        """The rounds still to run: Flower's own `Strategy.start` always begins at round 1, a
        resumed run must not."""
        return range(start, self.num_rounds + 1)

    def evaluates(self, server_round: int) -> bool:
        return server_round % self.eval_every == 0 or server_round == self.num_rounds

    def lr_factor(self, server_round: int) -> float:
        """A pure function of the round, so a resumed run continues the same schedule."""
        return outer_lr_factor(self.lr_schedule, self.lr_warmup, server_round, self.num_rounds)


@dataclass(frozen=True)
class Sampling:
    """Which training sites train in a round: `fraction` of them (at least one), drawn with the
    run's seed and the round, so a rerun (or a resumed run) picks the same sites."""

    fraction: float = 1.0
    seed: int = 0

    def choose(self, pool: list[int], server_round: int) -> list[int]:
        count = min(len(pool), max(1, round(len(pool) * self.fraction)))
        rng = np.random.default_rng(site_seed(self.seed, 0, server_round))
        # draw positions, not ids: node ids are 64-bit and numpy would round them through float
        return sorted(pool[i] for i in rng.choice(len(pool), size=count, replace=False))
