"""Typed configuration of the meta-learning core, parsed once at the edge (CLI, run config)."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass


def reject_unknown(where: str, given: Iterable[str], known: Iterable[str]) -> None:
    """A ValueError naming each unknown key with the known key it was probably meant to be (a
    typo), or, with no close match, the known keys."""
    known = sorted(known)
    unknown = sorted(set(given) - set(known))
    if not unknown:
        return
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    listed = "" if all("did you mean" in h for h in hints) else f"; known keys are {known}"
    raise ValueError(f"{where}: unknown key{'s' if len(unknown) > 1 else ''} {', '.join(hints)}{listed}")


ALGORITHMS = ("maml", "fomaml", "meta-sgd", "anil", "protonet", "fedavg")
INNER_LOOP_ALGORITHMS = ALGORITHMS[:4]  # the MAML family: an inner loop adapts the start
EXECUTIONS = ("auto", "loop", "threads", "vmap")


@dataclass(frozen=True)
class EpisodeConfig:
    """An N-way K-shot episode with Q query examples per class."""

    ways: int = 5
    shots: int = 5
    queries: int = 15

    def __post_init__(self) -> None:
        if self.ways < 2:
            raise ValueError(f"ways={self.ways}: an episode needs at least 2 classes")
        if self.shots < 1 or self.queries < 1:
            raise ValueError(f"shots={self.shots}, queries={self.queries}: both must be >= 1")

    @property
    def per_class(self) -> int:
        """Examples each class must have so one episode can be drawn from it."""
        return self.shots + self.queries


@dataclass(frozen=True)
class MetaConfig:
    """How an algorithm adapts (inner loop) and how tasks are executed.

    `execution` picks how the tasks of a meta-batch are run: `vmap` batches them into one
    program (fast on GPU), `threads` runs them concurrently with one intra-op thread each (fast
    on a few CPU cores), `loop` one after the other; `auto` picks vmap on CUDA, threads on CPU.
    `chunk_size` bounds how many tasks are in memory at once (3D volumes). (Whether CPU tensors
    use fedmeta's fused C kernels is a per-machine choice, `common.native.resolve_kernels`.)
    """

    algorithm: str = "maml"
    inner_steps: int = 5
    inner_lr: float = 0.4
    eval_inner_steps: int = 10
    chunk_size: int = 8
    execution: str = "auto"
    local_lr: float = 0.05
    first_order_rounds: int = 0  # MAML / Meta-SGD / ANIL: first-order meta-gradients up to this round (warm start)
    # MAML family: weight of the query loss at the start itself (before any inner step), added to the
    # loss after adaptation, so the start stays a classifier of the scenario's labels (0: MAML's objective)
    start_loss_weight: float = 0.0
    # ProtoNet: classes per training episode (0: the episodes' `ways`, as evaluation uses). Snell et
    # al. 2017 train with more ways than they test; on new-classes it did not help (docs/SWEEPS.md, sweep 3)
    train_ways: int = 0

    def __post_init__(self) -> None:
        if self.first_order_rounds < 0:
            raise ValueError(f"first_order_rounds={self.first_order_rounds}: must be >= 0")
        if not 0 <= self.start_loss_weight < float("inf"):
            raise ValueError(f"start_loss_weight={self.start_loss_weight}: must be a finite number >= 0")
        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}: choose one of {', '.join(ALGORITHMS)}")
        if self.start_loss_weight and self.algorithm not in INNER_LOOP_ALGORITHMS:
            raise ValueError(
                f"start_loss_weight={self.start_loss_weight} with algorithm={self.algorithm!r}: it weighs the loss "
                f"before MAML's inner loop; use it with {', '.join(INNER_LOOP_ALGORITHMS)}, or leave it at 0"
            )
        if self.train_ways < 0 or self.train_ways == 1:
            raise ValueError(f"train_ways={self.train_ways}: give 2 or more classes (0: the episodes' ways)")
        if self.train_ways and self.algorithm != "protonet":
            raise ValueError(
                f"train_ways={self.train_ways} with algorithm={self.algorithm!r}: its classifier head has one "
                "output per class of the episodes it is scored on, so it trains on those; train_ways is for "
                "protonet, whose predictions need no head (leave it at 0)"
            )
        if self.execution not in EXECUTIONS:
            raise ValueError(f"execution={self.execution!r}: choose one of {', '.join(EXECUTIONS)}")
        if self.inner_steps < 1 or self.eval_inner_steps < 1:
            raise ValueError(
                f"inner_steps={self.inner_steps}, eval_inner_steps={self.eval_inner_steps}: both must be >= 1"
            )
        if not self.inner_lr > 0 or not self.local_lr > 0:
            raise ValueError(f"inner_lr={self.inner_lr}, local_lr={self.local_lr}: both must be positive")
        if self.chunk_size < 1:
            raise ValueError(f"chunk_size={self.chunk_size}: must be >= 1")
