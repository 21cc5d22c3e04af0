"""What a site sends is checked before the coordinator uses it: identity from the coordinator's
records, every metric field typed, finite and in range. A bad reply costs its sender the round,
named in results.json; the run goes on. The whole-run tests drive the real ServerApp over the real
ClientApp handlers (`LocalGrid`), with hostile sites tampering with their replies."""

from __future__ import annotations

import json
import math

import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MessageType, MetricRecord, RecordDict

from common.runconfig import flat_run_config, parse_run_config
from server.app import app as server_app
from server.replies import Rejected, evaluation_metrics, site_claim, train_metrics, train_reply
from server.report import RESULTS
from server.sites import Roster, discover_sites
from tests.server.local_grid import TINY_RUN, LocalGrid
from tests.server.test_fedmeta import task_identity  # noqa: F401 -- autouse fixture

GOOD_TRAIN = {"num-tasks": 2, "meta-loss": 1.2, "query-acc": 0.4, "compute-s": 0.3}
GOOD_EVAL = {
    "num-tasks": 4,
    **dict.fromkeys(("acc-before", "acc-after", "auc-after", "support-acc-before", "support-acc-after"), 0.5),
    "loss-after": 1.1,
    **{
        f"{k}-ci": 0.05
        for k in ("acc-before", "acc-after", "auc-after", "loss-after", "support-acc-before", "support-acc-after")
    },
}


def metrics(values: dict) -> RecordDict:
    return RecordDict({"metrics": MetricRecord(values)})


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"meta-loss": [1.0, 2.0]}, "'meta-loss' is a list of 2, expected one number"),
        ({"query-acc": float("nan")}, "'query-acc' is nan, not a finite number"),
        ({"query-acc": 1.5}, "'query-acc' = 1.5 is outside [0, 1]"),
        ({"num-tasks": 3}, "'num-tasks' = 3 is outside [1, 2]"),
        ({"num-tasks": 1.5}, "'num-tasks' = 1.5 is not a whole number"),
        ({"num-tasks": float("inf")}, "'num-tasks' = inf is not a whole number"),
        ({"compute-s": -1.0}, "'compute-s' = -1 is outside [0, inf]"),
        ({"patient-ids": 7.0}, "unexpected key(s) ['patient-ids']"),
    ],
)
def test_bad_training_metrics_are_rejected_with_the_field(change, message):
    with pytest.raises(Rejected, match="training metrics: " + _escaped(message)):
        train_metrics(metrics({**GOOD_TRAIN, **change}), tasks_per_round=2)


def test_missing_training_metrics_and_records_are_named():
    with pytest.raises(Rejected, match=r"missing key\(s\) \['query-acc'\]"):
        train_metrics(metrics({k: v for k, v in GOOD_TRAIN.items() if k != "query-acc"}), 2)
    with pytest.raises(Rejected, match="no 'metrics' record"):
        train_metrics(RecordDict(), 2)
    assert train_metrics(metrics(GOOD_TRAIN), 2) == {k: float(v) for k, v in GOOD_TRAIN.items()}


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"acc-after-ci": None}, "missing key(s) ['acc-after-ci']"),
        ({"acc-after": float("nan")}, "'acc-after' is nan, not a finite number"),
        ({"auc-after": [0.5, 0.6]}, "'auc-after' is a list of 2, expected one number"),
        ({"acc-after-ci": float("nan")}, "'acc-after-ci' is nan, not a finite number"),
        ({"num-tasks": 1_000_000}, "'num-tasks' = 1000000, expected 4"),  # a site cannot outweigh the others
        ({"loss-after": -0.1}, "'loss-after' = -0.1 is outside [0, inf]"),
    ],
)
def test_bad_evaluation_metrics_are_rejected_with_the_field(change, message):
    values = {k: v for k, v in {**GOOD_EVAL, **change}.items() if v is not None}
    with pytest.raises(Rejected, match="evaluation metrics: " + _escaped(message)):
        evaluation_metrics(metrics(values), eval_tasks=4)


def test_one_evaluation_episode_has_an_undefined_ci_and_that_is_fine():
    one = {**GOOD_EVAL, "num-tasks": 1, **{k: float("nan") for k in GOOD_EVAL if k.endswith("-ci")}}
    assert math.isnan(evaluation_metrics(metrics(one), eval_tasks=1)["acc-after-ci"])
    assert evaluation_metrics(metrics(GOOD_EVAL), eval_tasks=4)["acc-after"] == 0.5


def test_a_meta_gradient_reply_is_read_whole_or_not_at_all():
    reference = {"w": torch.zeros(2, 2)}
    content = RecordDict({"arrays": ArrayRecord({"w": torch.ones(2, 2)}), **metrics(GOOD_TRAIN)})
    reply = train_reply(content, "arrays", reference, tasks_per_round=2)
    assert reply.weight == 2.0 and torch.equal(reply.update["w"], torch.ones(2, 2))
    with pytest.raises(Rejected, match="'w' has non-finite values"):
        train_reply(
            RecordDict({"arrays": ArrayRecord({"w": torch.full((2, 2), math.inf)}), **metrics(GOOD_TRAIN)}),
            "arrays",
            reference,
            2,
        )
    with pytest.raises(Rejected, match="reply without 'arrays' arrays"):
        train_reply(metrics(GOOD_TRAIN), "arrays", reference, 2)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"role": "coordinator"}, "'role' = 'coordinator', expected one of"),
        ({"num-train": -3}, "'num-train' must be a count"),
        ({"site-name": "x" * 500}, "'site-name' must be a short printable text"),
        ({"device": "cpu\n<script>"}, "'device' must be a short printable text"),
        ({"extra": "data"}, "unexpected key(s) ['extra']"),
    ],
)
def test_bad_site_descriptions_are_rejected(change, message):
    info = {"site-name": "site-0", "role": "train", "num-train": 10, "num-test": 5, "device": "cpu", **change}
    with pytest.raises(Rejected, match=_escaped(message)):
        site_claim(RecordDict({"site": ConfigRecord(info)}))


def _escaped(text: str) -> str:
    import re

    return re.escape(text)


# ---- identity: the coordinator's records decide who a node is

RUN = {
    **TINY_RUN,
    "ways": 3,
    "eval-tasks": 3,
    "eval-every": 1,
    "num-server-rounds": 2,
    "outer-lr": 0.5,
    "min-sites": 4,
    "round-timeout": 60.0,
}
SYNTHETIC = Roster(tuple([(f"site-{i}", "train") for i in range(6)] + [(f"heldout-{i}", "heldout") for i in range(2)]))


def test_in_simulation_the_partition_names_the_site():
    """Node 303 runs partition 2 but its (modified) ClientApp says it is site-0: rejected; node
    404 holds held-out partition 6 and says it trains: rejected. The others are named by partition."""
    run_config = flat_run_config(parse_run_config(RUN))
    nodes = {101: {"partition-id": 0}, 202: {"partition-id": 1}, 303: {"partition-id": 2}, 404: {"partition-id": 6}}

    def claim(name=None, role=None):
        def tamper(kind, reply):
            if kind == MessageType.QUERY:
                info = reply.content["site"]
                info["site-name"], info["role"] = name or info["site-name"], role or info["role"]
            return reply

        return tamper

    grid = LocalGrid(run_config, node_configs=nodes, tamper={303: claim(name="site-0"), 404: claim(role="train")})
    found = discover_sites(grid, 4, 60, SYNTHETIC)
    assert {n: s.name for n, s in found.sites.items()} == {101: "site-0", 202: "site-1"}
    assert "claims to be site 'site-0', but partition 2 is 'site-2'" in found.rejected["node-303"]
    assert "reports role 'train', but 'heldout-0' is a 'heldout' site" in found.rejected["node-404"]


def test_in_a_deployment_the_registered_name_is_the_site():
    """The key registered as site-2 serves site-0's data and says it is site-0: rejected under
    its registered name, and site-0 is still the node registered as site-0."""
    run_config = flat_run_config(parse_run_config(RUN))
    nodes = {
        101: {"site-name": "site-0"},
        202: {"site-name": "site-1"},
        303: {"site-name": "site-0"},
        404: {"site-name": "site-3"},
    }
    registered = {101: "site-0", 202: "site-1", 303: "site-2", 404: "site-3"}
    grid = LocalGrid(run_config, node_configs=nodes, names=registered)
    found = discover_sites(grid, 4, 60, SYNTHETIC)
    assert sorted(s.name for s in found.sites.values()) == ["site-0", "site-1", "site-3"]
    assert found.sites[101].name == "site-0"
    assert "claims to be site 'site-0', but its key is registered as 'site-2'" in found.rejected["site-2"]


class ArrivingGrid(LocalGrid):
    """Nodes connect one at a time, a fraction of a second apart, as a simulation registers its
    virtual nodes while the ServerApp already runs."""

    def __init__(self, run_config: dict, node_configs: dict[int, dict]):
        super().__init__(run_config, node_configs=node_configs)
        self.arrived = 0

    def get_node_ids(self):
        self.arrived = min(self.arrived + 1, len(self.contexts))
        return list(self.contexts)[: self.arrived]


def test_sites_connecting_together_are_all_found():
    """min-sites=1 is met by the first node; the three after it, arriving while the coordinator
    looks, are waited for (the roster expects more) and take part too."""
    run_config = flat_run_config(parse_run_config(RUN))
    grid = ArrivingGrid(run_config, {n: {"partition-id": i} for i, n in enumerate((101, 202, 303, 404))})
    found = discover_sites(grid, 1, 60, SYNTHETIC)
    assert sorted(s.name for s in found.sites.values()) == ["site-0", "site-1", "site-2", "site-3"]


# ---- a whole run with hostile sites: rejected by name, the run completes


def _hostile(kind_wanted: str, corrupt):
    def tamper(kind, reply):
        if kind == kind_wanted:
            corrupt(reply.content["metrics"])
        return reply

    return tamper


def test_a_run_with_hostile_replies_completes_and_names_each(tmp_path):
    """Partition 1 sends a list-valued training metric, partition 2 an evaluation without
    'acc-after-ci', held-out partition 6 NaN evaluation metrics. Each is rejected by its site
    name every time; the run finishes, the meta-model moves and stays finite, results are written."""
    run_config = flat_run_config(parse_run_config({**RUN, "out-dir": str(tmp_path / "out"), "eval-shots": "1"}))
    nodes = {101: {"partition-id": 0}, 202: {"partition-id": 1}, 303: {"partition-id": 2}, 404: {"partition-id": 6}}

    def listed(m):
        m["meta-loss"] = [1.0, 2.0]

    def nan(m):
        m["acc-after"] = float("nan")

    grid = LocalGrid(
        run_config,
        node_configs=nodes,
        tamper={
            202: _hostile(MessageType.TRAIN, listed),
            303: _hostile(MessageType.EVALUATE, lambda m: m.pop("acc-after-ci")),
            404: _hostile(MessageType.EVALUATE, nan),
        },
    )
    server_app(grid, Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=dict(run_config)))

    results = json.loads((tmp_path / "out" / RESULTS).read_text())
    assert [r["round"] for r in results["rounds"]] == [1, 2]
    for row in results["rounds"]:
        assert "'meta-loss' is a list of 2" in row["train_errors"]["site-1"]
        assert sorted(row["train"]) == ["site-0", "site-2"]
        assert "missing key(s) ['acc-after-ci']" in row["evaluate_errors"]["site-2"]
        assert "'acc-after' is nan" in row["evaluate_errors"]["heldout-0"]
        assert sorted(row["evaluate"]) == ["site-0", "site-1"]
    assert "'acc-after' is nan" in results["shots"]["1"]["evaluate_errors"]["heldout-0"]
    assert (tmp_path / "out" / "model").is_dir() and (tmp_path / "out" / "metrics.csv").is_file()
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / "out" / "model" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_a_malformed_secure_aggregation_reply_drops_that_site_not_the_round(tmp_path):
    """Under secure aggregation a site whose public key is the wrong length leaves the round at
    stage 1 by name; the other three complete it."""
    from server.report import Recorder
    from tests.server.test_secure import RUN as SECURE_RUN
    from tests.server.test_secure import strategy_and_params

    run_config = flat_run_config(parse_run_config(SECURE_RUN))
    strategy, params = strategy_and_params(run_config)
    strategy.recorder = Recorder(tmp_path, {}, "synthetic", "maml", [s.as_dict() for s in strategy.sites.values()])

    def short_key(kind, reply):
        if kind == "train.secagg":
            reply.content["secagg"]["c-pk"] = b"\x00" * 5
        return reply

    grid = LocalGrid(run_config, tamper={303: short_key})
    train = list(strategy.configure_train(1, ArrayRecord(params), ConfigRecord(), grid))
    result_arrays = strategy.secure_train(1, grid, train, ArrayRecord(params), timeout=60)
    assert result_arrays is not None
    assert not any(torch.equal(strategy.params[k], params[k]) for k in params)
    row = json.loads((tmp_path / RESULTS).read_text())["rounds"][0]
    assert (
        list(row["train_errors"]) == ["site-2"]
        and "'c-pk' must be a 32-byte public key" in row["train_errors"]["site-2"]
    )
    assert sorted(row["train"]) == ["site-0", "site-1", "site-3"]
