"""Corrupt data at one hospital ends as that site's error for the round: the site's own log names
the file and the fix, the coordinator learns only that the site has data problems (hospital file
names can carry patient identifiers). The other sites train and the meta-model moves."""

import json

import torch
from flwr.app import ArrayRecord, ConfigRecord

from common.algorithms import build_algorithm
from common.backbones import build_model
from common.runconfig import flat_run_config, parse_run_config
from common.scenario import load_scenario
from server.exchange import exchange
from server.fedmeta import FedMeta
from server.optimizer import OuterOptimizer
from server.report import RESULTS, Recorder
from server.sites import SiteInfo
from tests.common.data.hospital import write_site
from tests.server.local_grid import TINY_RUN, LocalGrid
from tests.server.test_fedmeta import task_identity  # noqa: F401 -- autouse fixture

RUN = {
    **TINY_RUN,
    "ways": 2,
    "outer-lr": 0.5,
}


def test_a_hospital_with_a_truncated_image_is_named_and_the_round_goes_on(tmp_path, caplog):
    good = write_site(tmp_path / "st-mary", {"benign": 30, "malignant": 30}, patients_per_class=30)
    bad = write_site(tmp_path / "general", {"benign": 30, "malignant": 30}, patients_per_class=30, seed=1)
    (bad / "malignant_3.png").write_bytes(b"\x89PNG\r\n\x1a\n cut off")
    run_config = flat_run_config(parse_run_config(RUN))
    nodes = {
        11: {"site-name": "st-mary", "data-dir": str(good)},
        22: {"site-name": "general", "data-dir": str(bad)},
        33: {"partition-id": 0},
    }
    grid = LocalGrid(run_config, node_configs=nodes)
    cfg = parse_run_config(run_config)
    params = build_algorithm(
        build_model(load_scenario(cfg.data.scenario).model_config(cfg.model)), cfg.meta
    ).init_meta_params()
    roster = {n: SiteInfo(n, str(c.get("site-name", "site-0")), "train", 0, 0) for n, c in nodes.items()}
    recorder = Recorder(tmp_path / "out", {}, "synthetic", "maml", [s.as_dict() for s in roster.values()])
    strategy = FedMeta(OuterOptimizer(params, "sgd", 0.5), roster, recorder=recorder)
    train = list(strategy.configure_train(1, ArrayRecord(params), ConfigRecord(), grid))
    arrays, _ = strategy.train_outcome(1, exchange(grid, train, timeout=60))
    assert arrays is not None and any(not torch.equal(strategy.params[k], params[k]) for k in params)
    row = json.loads((tmp_path / "out" / RESULTS).read_text())["rounds"][0]
    assert sorted(row["train"]) == ["site-0", "st-mary"]
    assert (
        set(row["train_errors"]) == {"general"} and "1 problem(s) in its data folder" in row["train_errors"]["general"]
    )
    assert "malignant_3.png" not in json.dumps(row)  # no file name reaches the coordinator
    assert "malignant_3.png (labels.csv line 35): cannot be read" in caplog.text  # the site's log has it
