"""FedMeta: average the sites' meta-gradients (weighted by tasks) and take an outer optimizer step.

Flower's FedAvg averages what sites send; here sites send meta-gradients, not weights, so the
average is a gradient and the strategy owns the meta-parameters and an optimizer (Adam by
default) whose state persists across rounds. Meta-SGD's learned inner learning rates are entries
of the same dict and are updated like any weight.

Only training sites are sampled for training (with the run's seed, so reruns pick the same
sites); every `eval_every` rounds and after the last, all sites evaluate: held-out sites
meta-test the current initialization, training sites report personalization on their own
test split. Per-site results go to a `Recorder` when one is given.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log

from common.tasks import site_seed
from server.privacy import Privacy
from server.replies import Rejected, ReplyLimits, TrainReply, evaluation_metrics, train_reply
from server.robust import combine
from server.secure import SecureAggregation, secure_round, unflatten
from server.sites import SiteInfo, answered, source
from simulation.report import Recorder

WEIGHT_KEY = "num-tasks"


def _reason(message: Message) -> str:
    return _reason_text(message.error.reason)


def _reason_text(reason: str) -> str:
    """The site's own error message, without the Ray/Flower traceback wrapped around it."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", reason)
    head, _, tail = text.rpartition("Message: ")
    return (tail if head else text.strip().splitlines()[-1]).strip().removesuffix("'>").strip()


def _weighted_means(rows: list[dict[str, float]]) -> MetricRecord:
    """Each metric's mean over sites, weighted by their tasks or episodes (CI half-widths left out)."""
    total = sum(row[WEIGHT_KEY] for row in rows)
    return MetricRecord({key: sum(row[key] * row[WEIGHT_KEY] for row in rows) / total
                         for key in rows[0] if key != WEIGHT_KEY and not key.endswith("-ci")})


def _nbytes(record: ArrayRecord) -> int:
    return sum(len(array.data) for array in record.values())


class FedMeta(FedAvg):
    def __init__(
        self,
        outer_optimizer: str = "adam",
        outer_lr: float = 1e-3,
        eval_every: int = 1,
        num_rounds: int = 1,
        seed: int = 0,
        sites: dict[int, SiteInfo] | None = None,
        recorder: Recorder | None = None,
        transport_dtype: torch.dtype = torch.float32,
        aggregator: str = "mean",
        trim_fraction: float = 0.1,
        limits: ReplyLimits = ReplyLimits(),
        min_train_sites: int = 1,
        privacy: Privacy | None = None,
        secure: SecureAggregation | None = None,
        **kwargs,
    ) -> None:
        super().__init__(weighted_by_key=WEIGHT_KEY, **kwargs)
        self.outer_optimizer = outer_optimizer
        self.outer_lr = outer_lr
        self.eval_every = eval_every
        self.num_rounds = num_rounds
        self.seed = seed
        self.sites = sites or {}
        self.recorder = recorder
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.transport_dtype = transport_dtype
        self.aggregator = aggregator
        self.trim_fraction = trim_fraction
        self.limits = limits
        self.min_train_sites = min_train_sites
        self.privacy = privacy
        self.secure = secure
        self._sampled = 0
        self._bytes_down = 0
        self._round_start = time.monotonic()
        self._sent: dict[str, int] = {}  # message id -> node, for replies the SuperLink makes
        self._expected: set[int] = set()  # nodes asked in the current exchange

    def initialize(self, arrays: ArrayRecord) -> None:
        """Take the meta-parameters to optimize (once: the optimizer state then persists)."""
        self.params = {k: v.clone() for k, v in arrays.to_torch_state_dict().items()}
        cls = torch.optim.Adam if self.outer_optimizer == "adam" else torch.optim.SGD
        self.optimizer = cls(self.params.values(), lr=self.outer_lr)

    def _name(self, node: int) -> str:
        return self.sites[node].name if node in self.sites else f"node-{node}"

    def _exchange(self, grid: Grid, messages: list[Message], timeout: float) -> list[Message]:
        """send_and_receive, remembering whom each message went to."""
        replies = list(grid.send_and_receive(messages, timeout=timeout))
        self._sent, self._expected = answered(messages, replies), {m.metadata.dst_node_id for m in messages}
        return replies

    def _outcomes(self, replies: list[Message]) -> tuple[list[tuple[int, Message]], dict[str, str]]:
        """(node, good reply) pairs and {site: why it failed}, including nodes that never answered."""
        good, errors = [], {}
        for reply in replies:
            node = source(reply, self._sent)
            if reply.has_error():
                errors[self._name(node)] = _reason(reply)
            else:
                good.append((node, reply))
        answered_nodes = {source(r, self._sent) for r in replies}
        for node in sorted(self._expected - answered_nodes):
            errors[self._name(node)] = "no reply within the round timeout"
        self._expected = set()
        return good, errors

    def _messages(self, nodes: list[int], arrays: ArrayRecord, config: ConfigRecord, kind: str) -> list[Message]:
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return [Message(content=record, message_type=kind, dst_node_id=node) for node in nodes]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if self.optimizer is None:
            self.initialize(arrays)
        pool = sorted(n for n, s in self.sites.items() if s.role == "train") if self.sites else sorted(grid.get_node_ids())
        count = max(1, self.min_train_nodes, round(len(pool) * self.fraction_train))
        rng = np.random.default_rng(site_seed(self.seed, 0, server_round))
        # draw positions, not ids: node ids are 64-bit and numpy would round them through float
        chosen = sorted(pool[i] for i in rng.choice(len(pool), size=min(count, len(pool)), replace=False))
        log(INFO, "round %s: training on %s", server_round, ", ".join(self._name(n) for n in chosen))
        config["server-round"] = server_round
        if self.privacy is not None:
            config["dp-sites"] = len(chosen)  # in `sites` noise mode each adds 1/n of the noise
        self._sampled = len(chosen)
        self._bytes_down = _nbytes(arrays) * len(chosen)
        self._round_start = time.monotonic()
        return self._messages(chosen, arrays, config, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Iterable[Message]:
        if server_round % self.eval_every and server_round != self.num_rounds:
            return []
        config["server-round"] = server_round
        nodes = sorted(self.sites) if self.sites else sorted(grid.get_node_ids())
        return self._messages(nodes, arrays, config, MessageType.EVALUATE)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies, errors = self._outcomes(list(replies))
        good: list[tuple[int, Message, TrainReply]] = []
        for node, message in replies:
            try:
                good.append((node, message, train_reply(message.content, self.arrayrecord_key, self.params,
                                                        self.limits.tasks_per_round, self.limits.max_update_norm)))
            except Rejected as problem:
                errors[self._name(node)] = f"rejected: {problem}"
                log(WARNING, "round %s: rejected %s's meta-gradient: %s", server_round, self._name(node), problem)
        updates = [(r.update, r.weight) for _, _, r in good]
        updated = len(good) >= max(1, self.min_train_sites)
        log(INFO, "round %s: %d meta-gradients accepted, %d failed or rejected", server_round, len(good), len(errors))
        if not updated:
            log(WARNING, "round %s: %d acceptable meta-gradients, fewer than min-train-sites=%d: the meta-model is unchanged",
                server_round, len(good), self.min_train_sites)
        privacy = None
        if updated and self.privacy is not None:
            grads, multiplier = self.privacy.aggregate([u for u, _ in updates], max(self._sampled, len(updates)))
            privacy = self.privacy.account(multiplier, max(self._sampled, len(updates)))
            log(INFO, "round %s: differential privacy (epsilon %.3g, delta %g) so far", server_round, privacy["epsilon"], privacy["delta"])
        elif updated:
            grads = combine(updates, self.aggregator, self.trim_fraction)
        if self.recorder is not None:
            self.recorder.train(
                server_round,
                {self._name(n): r.metrics for n, _, r in good},
                bytes_down=self._bytes_down,
                bytes_up=sum(_nbytes(m.content[self.arrayrecord_key]) for _, m, _ in good),
                seconds=time.monotonic() - self._round_start,
                errors=errors,
                updated=updated,
                privacy=privacy,
            )
        if not updated:
            return None, None
        return self.wire(self.step(grads)), _weighted_means([r.metrics for _, _, r in good])

    def secure_train(self, server_round: int, grid: Grid, train: list[Message], arrays: ArrayRecord, timeout: float) -> ArrayRecord | None:
        """A training round under secure aggregation: only the sum of the sites' vectors is seen."""
        config = train[0].content[self.configrecord_key] if train else ConfigRecord()
        result = secure_round(grid, [m.metadata.dst_node_id for m in train], arrays, config, self.secure, timeout, _reason_text,
                              self.limits.tasks_per_round)
        errors = {("(round)" if n == -1 else self._name(n)): text for n, text in result.errors.items()}
        for name, text in errors.items():
            log(WARNING, "round %s: secure aggregation: %s: %s", server_round, name, text)
        updated = result.total is not None and result.survivors >= max(1, self.min_train_sites)
        privacy, grads = None, None
        if updated:
            sums, weight = unflatten(result.total, self.params)
            if self.privacy is not None:  # uniform weights: the sum's weight entry counts the survivors
                grads = {k: (v / self._sampled).float() for k, v in sums.items()}
                multiplier = self.privacy.received_multiplier(result.survivors, self._sampled)
                privacy = self.privacy.account(multiplier, self._sampled)
            else:
                grads = {k: (v / weight).float() for k, v in sums.items()}
            if not all(torch.isfinite(g).all() for g in grads.values()):
                updated, errors["(round)"] = False, "the aggregate is not finite: the meta-model is unchanged"
        log(INFO, "round %s: secure aggregate of %d sites%s", server_round, result.survivors, "" if updated else " not applied")
        if self.recorder is not None:
            self.recorder.train(server_round, {self._name(n): m for n, m in result.metrics.items()}, bytes_down=self._bytes_down,
                                bytes_up=result.bytes_up, seconds=time.monotonic() - self._round_start, errors=errors,
                                updated=updated, privacy=privacy)
        return self.wire(self.step(grads)) if updated else None

    def wire(self, params: dict[str, torch.Tensor]) -> ArrayRecord:
        """What goes on the wire: the meta-parameters, in half precision if configured."""
        return ArrayRecord({k: v.to(self.transport_dtype) for k, v in params.items()})

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        metrics, errors = self._site_metrics(list(replies))
        if self.recorder is not None:
            return MetricRecord(self.recorder.evaluate(server_round, metrics, errors))
        return _weighted_means(list(metrics.values())) if metrics else None

    def _site_metrics(self, replies: list[Message]) -> tuple[dict[str, dict[str, float]], dict[str, str]]:
        """{site: its evaluation metrics} and {site: why it has none} (failed, or a reply rejected)."""
        good, errors = self._outcomes(replies)
        metrics = {}
        for node, message in good:
            try:
                metrics[self._name(node)] = evaluation_metrics(message.content, self.limits.eval_tasks)
            except Rejected as problem:
                errors[self._name(node)] = f"rejected: {problem}"
                log(WARNING, "rejected %s's evaluation: %s", self._name(node), problem)
        return metrics, errors

    def run(self, grid: Grid, num_rounds: int, timeout: float, start_round: int = 1,
            on_round_end: Callable[[int], None] | None = None) -> None:
        """Rounds `start_round..num_rounds`: train, aggregate, step, evaluate on schedule, then
        `on_round_end(round)` (the checkpoint). Flower's `Strategy.start` always begins at round 1;
        a resumed run must not."""
        arrays = self.wire(self.params)
        for server_round in range(start_round, num_rounds + 1):
            log(INFO, "")
            log(INFO, "[ROUND %s/%s]", server_round, num_rounds)
            train = list(self.configure_train(server_round, arrays, ConfigRecord(), grid))
            if self.secure is not None:
                new_arrays = self.secure_train(server_round, grid, train, arrays, timeout)
            else:
                new_arrays, _ = self.aggregate_train(server_round, self._exchange(grid, train, timeout))
            if new_arrays is not None:
                arrays = new_arrays
            evaluate = list(self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
            if evaluate:
                self.aggregate_evaluate(server_round, self._exchange(grid, evaluate, timeout))
            if on_round_end is not None:
                on_round_end(server_round)

    def evaluate_shots(self, grid: Grid, shots: Iterable[int], timeout: float) -> None:
        """After the last round: every site scores the final meta-model again with each of `shots`
        labelled examples per class (same episodes' classes and queries policy, K changed)."""
        if self.recorder is None:
            return
        arrays = self.wire(self.params)
        nodes = sorted(self.sites) if self.sites else sorted(grid.get_node_ids())
        for k in shots:
            log(INFO, "final evaluation with %d shot(s) per class", k)
            config = ConfigRecord({"server-round": self.num_rounds, "eval-shots": k})
            replies = self._exchange(grid, self._messages(nodes, arrays, config, MessageType.EVALUATE), timeout)
            self.recorder.evaluate_shots(k, *self._site_metrics(replies))

    def state(self) -> tuple[dict[str, torch.Tensor], dict]:
        """Meta-parameters and outer optimizer state, for a checkpoint."""
        return {k: p.detach().clone() for k, p in self.params.items()}, self.optimizer.state_dict()

    def restore(self, params: dict[str, torch.Tensor], optimizer_state: dict) -> None:
        """Continue from a checkpoint: same meta-parameters, same optimizer moments and step counts."""
        missing = self.params.keys() ^ params.keys()
        if missing:
            raise ValueError(f"the checkpoint's meta-parameters differ from this model's: {sorted(missing)[:5]}")
        with torch.no_grad():
            for name, p in self.params.items():
                p.copy_(params[name])
        self.optimizer.load_state_dict(optimizer_state)

    def step(self, grads: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """One outer-optimizer step with the averaged meta-gradient; returns the new meta-parameters."""
        if self.optimizer is None:
            raise RuntimeError("FedMeta.step before initialize(): no meta-parameters to update")
        missing = self.params.keys() ^ grads.keys()
        if missing:
            raise ValueError(f"meta-gradient keys differ from the meta-parameters: {sorted(missing)}")
        for name, p in self.params.items():
            p.grad = grads[name].to(p.dtype)
        self.optimizer.step()
        return {k: p.detach().clone() for k, p in self.params.items()}
