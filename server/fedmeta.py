"""FedMeta: the coordinator's strategy. Sites send meta-gradients; the coordinator checks each
reply, combines the accepted ones and takes an outer optimizer step on the meta-parameters.

It is a Flower `Strategy` (configure / aggregate for training and evaluation) composed of small
pieces, each in its own module and tested alone: who replied and why others did not
(`server.exchange`), what a reply may hold (`server.replies`), how accepted meta-gradients are
combined (`server.aggregation`), the outer optimizer (`server.optimizer`), which sites train and
when all evaluate (`server.schedule`), the secure round's stages (`server.secure`) and the record
of the run (`server.report`). `run` is the resumable round loop: Flower's `Strategy.start`
always begins at round 1, a resumed run must not.

Only training sites are sampled for training; on schedule all sites evaluate: held-out sites
meta-test the current initialization, training sites report personalization on their own test
split.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy
from flwr.supercore import log

from common.functional import Params
from server.aggregation import Aggregation, finite
from server.exchange import Outcome, exchange
from server.optimizer import OuterOptimizer
from server.replies import Rejected, ReplyLimits, TrainReply, evaluation_metrics, train_reply
from server.report import Recorder
from server.schedule import Sampling, Schedule
from server.secure import SecureAggregation, secure_round, unflatten
from server.sites import SiteInfo

WEIGHT_KEY = "num-tasks"
ARRAYS, CONFIG = "arrays", "config"
# FedMeta's defaults: frozen dataclasses, built once and shared like any default argument
DEFAULT_SCHEDULE, DEFAULT_SAMPLING = Schedule(), Sampling()
DEFAULT_AGGREGATION, DEFAULT_LIMITS = Aggregation(), ReplyLimits()


def weighted_means(rows: list[dict[str, float]]) -> MetricRecord:
    """Each metric's mean over sites, weighted by their tasks or episodes (CI half-widths left out)."""
    total = sum(row[WEIGHT_KEY] for row in rows)
    return MetricRecord(
        {
            key: sum(row[key] * row[WEIGHT_KEY] for row in rows) / total
            for key in rows[0]
            if key != WEIGHT_KEY and not key.endswith("-ci")
        }
    )


def nbytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


class FedMeta(Strategy):
    def __init__(
        self,
        optimizer: OuterOptimizer,
        sites: dict[int, SiteInfo],
        schedule: Schedule = DEFAULT_SCHEDULE,
        *,
        sampling: Sampling = DEFAULT_SAMPLING,
        aggregation: Aggregation = DEFAULT_AGGREGATION,
        limits: ReplyLimits = DEFAULT_LIMITS,
        secure: SecureAggregation | None = None,
        recorder: Recorder | None = None,
        transport_dtype: torch.dtype = torch.float32,
    ) -> None:
        self.optimizer = optimizer
        self.sites = dict(sites)
        self.schedule = schedule
        self.sampling = sampling
        self.aggregation = aggregation
        self.limits = limits
        self.secure = secure
        self.recorder = recorder
        self.transport_dtype = transport_dtype
        self._round = _RoundLog()

    @property
    def params(self) -> Params:
        return self.optimizer.params

    def summary(self) -> None:
        log(
            INFO,
            "FedMeta: %d sites (%d train), %d rounds, evaluating every %d, aggregation %s%s%s",
            len(self.sites),
            len(self.training_nodes()),
            self.schedule.num_rounds,
            self.schedule.eval_every,
            self.aggregation.rule,
            ", differential privacy" if self.aggregation.privacy else "",
            ", secure aggregation" if self.secure else "",
        )

    def name(self, node: int) -> str:
        return self.sites[node].name if node in self.sites else f"node-{node}"

    def by_name(self, replies: dict[int, Message]) -> list[tuple[int, Message]]:
        """Replies in site-name order, not arrival order: sums over sites then come out the same
        on every run (float addition is not associative)."""
        return sorted(replies.items(), key=lambda item: self.name(item[0]))

    def training_nodes(self) -> list[int]:
        return sorted(n for n, s in self.sites.items() if s.role == "train")

    def wire(self, params: Params) -> ArrayRecord:
        """What goes on the wire: the meta-parameters, in half precision if configured."""
        return ArrayRecord({k: v.to(self.transport_dtype) for k, v in params.items()})

    @staticmethod
    def messages(nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        record = RecordDict({ARRAYS: arrays, CONFIG: config})
        return [Message(content=record, message_type=kind, dst_node_id=node) for node in nodes]

    # -- training ------------------------------------------------------------------------
    def configure_train(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,  # noqa: ARG002 -- Flower's Strategy signature; the messages go back to the caller
    ) -> Iterable[Message]:
        chosen = self.sampling.choose(self.training_nodes(), server_round)
        log(INFO, "round %s: training on %s", server_round, ", ".join(self.name(n) for n in chosen))
        config["server-round"] = server_round
        if self.aggregation.privacy is not None:
            config["dp-sites"] = len(chosen)  # in `sites` noise mode each adds 1/n of the noise
        self._round = _RoundLog(sampled=len(chosen), bytes_down=nbytes(arrays) * len(chosen))
        return self.messages(chosen, arrays, config, MessageType.TRAIN)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's hook; `run` hands over the whole `Outcome` (with the silent nodes) instead."""
        return self.train_outcome(server_round, Outcome.of(replies))

    def train_outcome(self, server_round: int, outcome: Outcome) -> tuple[ArrayRecord | None, MetricRecord | None]:
        errors = {self.name(n): why for n, why in outcome.failures.items()}
        accepted: dict[int, TrainReply] = {}
        for node, message in self.by_name(outcome.replies):
            try:
                accepted[node] = train_reply(
                    message.content, ARRAYS, self.params, self.limits.tasks_per_round, self.limits.max_update_norm
                )
            except Rejected as problem:
                errors[self.name(node)] = f"rejected: {problem}"
                log(WARNING, "round %s: rejected %s's meta-gradient: %s", server_round, self.name(node), problem)
        log(
            INFO,
            "round %s: %d meta-gradients accepted, %d failed or rejected",
            server_round,
            len(accepted),
            len(errors),
        )
        result = self.aggregation.combine(list(accepted.values()), self._round.sampled)
        if result.grads is None:
            log(
                WARNING,
                "round %s: %d acceptable meta-gradients, fewer than min-train-sites=%d: the meta-model is unchanged",
                server_round,
                len(accepted),
                self.aggregation.min_train_sites,
            )
        if result.privacy is not None:
            log(
                INFO,
                "round %s: differential privacy (epsilon %.3g, delta %g) so far",
                server_round,
                result.privacy["epsilon"],
                result.privacy["delta"],
            )
        self._record_train(
            server_round,
            {self.name(n): r.metrics for n, r in accepted.items()},
            errors,
            result.grads is not None,
            result.privacy,
            sum(nbytes(outcome.replies[n].content.array_records[ARRAYS]) for n in accepted),
        )
        if result.grads is None:
            return None, None
        step = self.optimizer.step(result.grads, self.schedule.lr_factor(server_round))
        return self.wire(step), weighted_means([r.metrics for r in accepted.values()])

    def secure_train(
        self, server_round: int, grid: Grid, train: list[Message], arrays: ArrayRecord, timeout: float
    ) -> ArrayRecord | None:
        """A training round under secure aggregation: only the sum of the sites' vectors is seen."""
        assert self.secure is not None, "run() calls secure_train only under secure aggregation"
        config = train[0].content.config_records[CONFIG] if train else ConfigRecord()
        result = secure_round(
            grid,
            [m.metadata.dst_node_id for m in train],
            arrays,
            config,
            self.secure,
            timeout,
            self.limits.tasks_per_round,
        )
        errors = {("(round)" if n == -1 else self.name(n)): text for n, text in result.errors.items()}
        for name, text in errors.items():
            log(WARNING, "round %s: secure aggregation: %s: %s", server_round, name, text)
        aggregate = None
        if result.total is not None:
            sums, weight = unflatten(result.total, self.params)
            aggregate = self.aggregation.secure_sum(sums, weight, result.survivors, self._round.sampled)
            if aggregate.grads is not None and not finite(aggregate.grads):
                aggregate, errors["(round)"] = None, "the aggregate is not finite: the meta-model is unchanged"
        updated = aggregate is not None and aggregate.grads is not None
        log(
            INFO,
            "round %s: secure aggregate of %d sites%s",
            server_round,
            result.survivors,
            "" if updated else " not applied",
        )
        self._record_train(
            server_round,
            {self.name(n): m for n, m in result.metrics.items()},
            errors,
            updated,
            aggregate.privacy if aggregate is not None else None,
            result.bytes_up,
        )
        if aggregate is None or aggregate.grads is None:  # i.e. not `updated`
            return None
        return self.wire(self.optimizer.step(aggregate.grads, self.schedule.lr_factor(server_round)))

    def _record_train(
        self,
        server_round: int,
        metrics: dict,
        errors: dict[str, str],
        updated: bool,
        privacy: dict[str, float] | None,
        bytes_up: int,
    ) -> None:
        if self.recorder is not None:
            self.recorder.train(
                server_round,
                metrics,
                bytes_down=self._round.bytes_down,
                bytes_up=bytes_up,
                seconds=time.monotonic() - self._round.start,
                errors=errors,
                updated=updated,
                privacy=privacy,
            )

    # -- evaluation ----------------------------------------------------------------------
    def configure_evaluate(
        self,
        server_round: int,
        arrays: ArrayRecord,
        config: ConfigRecord,
        grid: Grid,  # noqa: ARG002 -- Flower's Strategy signature; the messages go back to the caller
    ) -> Iterable[Message]:
        if not self.schedule.evaluates(server_round):
            return []
        config["server-round"] = server_round
        return self.messages(self.evaluating_nodes(), arrays, config, MessageType.EVALUATE)

    def evaluating_nodes(self) -> list[int]:
        """Every site, or (a recipe sweep: `eval-heldout=false`) every site but the held-out ones."""
        return sorted(n for n, s in self.sites.items() if self.schedule.eval_heldout or s.role != "heldout")

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Flower's hook; `run` hands over the whole `Outcome` instead."""
        return self.evaluate_outcome(server_round, Outcome.of(replies))

    def evaluate_outcome(self, server_round: int, outcome: Outcome) -> MetricRecord | None:
        metrics, errors = self._site_metrics(outcome)
        if self.recorder is not None:
            return MetricRecord(dict(self.recorder.evaluate(server_round, metrics, errors)))
        return weighted_means(list(metrics.values())) if metrics else None

    def _site_metrics(self, outcome: Outcome) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """{site: its evaluation metrics} and {site: why it has none} (failed, or a reply rejected)."""
        errors = {self.name(n): why for n, why in outcome.failures.items()}
        metrics = {}
        for node, message in self.by_name(outcome.replies):
            try:
                metrics[self.name(node)] = evaluation_metrics(message.content, self.limits.eval_tasks)
            except Rejected as problem:
                errors[self.name(node)] = f"rejected: {problem}"
                log(WARNING, "rejected %s's evaluation: %s", self.name(node), problem)
        return metrics, errors

    def evaluate_shots(self, grid: Grid, shots: Iterable[int], timeout: float) -> None:
        """After the last round: every site scores the final meta-model again with each of `shots`
        labelled examples per class (same episodes' classes and queries policy, K changed)."""
        if self.recorder is None:
            return
        arrays = self.wire(self.params)
        for k in shots:
            log(INFO, "final evaluation with %d shot(s) per class", k)
            config = ConfigRecord({"server-round": self.schedule.num_rounds, "eval-shots": k})
            outcome = exchange(
                grid, self.messages(self.evaluating_nodes(), arrays, config, MessageType.EVALUATE), timeout
            )
            self.recorder.evaluate_shots(k, *self._site_metrics(outcome))

    # -- the round loop --------------------------------------------------------------------
    def run(
        self, grid: Grid, timeout: float, start_round: int = 1, on_round_end: Callable[[int], None] | None = None
    ) -> None:
        """Rounds `start_round..num_rounds`: train, aggregate, step, evaluate on schedule, then
        `on_round_end(round)` (the checkpoint)."""
        arrays = self.wire(self.params)
        for server_round in self.schedule.rounds(start_round):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, self.schedule.num_rounds)
            train = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
            if self.secure is not None:
                new_arrays = self.secure_train(server_round, grid, train, arrays, timeout)
            else:
                new_arrays, _ = self.train_outcome(server_round, exchange(grid, train, timeout))
            if new_arrays is not None:
                arrays = new_arrays
            evaluate = list(self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
            if evaluate:
                self.evaluate_outcome(server_round, exchange(grid, evaluate, timeout))
            if on_round_end is not None:
                on_round_end(server_round)


class _RoundLog:
    """What the current training round needs for its record: sampled sites, bytes sent, start."""

    def __init__(self, sampled: int = 0, bytes_down: int = 0) -> None:
        self.sampled, self.bytes_down, self.start = sampled, bytes_down, time.monotonic()
