"""Evaluation rows: query accuracy/AUC/loss before and after adapting, and the support set's
accuracy before and after (adapting to the K shots must fit them)."""

import pytest
import torch

from common.algorithms import build_algorithm
from tests.common.conftest import meta_config

KEYS = {"acc_before", "acc_after", "loss_after", "auc_after", "support_acc_before", "support_acc_after"}


@pytest.mark.parametrize("algorithm", ["maml", "meta-sgd", "anil", "protonet"])
def test_rows_per_episode(tiny_model, tiny_batch, algorithm):
    algo = build_algorithm(tiny_model, meta_config(algorithm, eval_inner_steps=3))
    rows = algo.evaluate(algo.init_meta_params(), tiny_batch)
    assert set(rows) == KEYS
    for key, values in rows.items():
        assert values.shape == (len(tiny_batch),)
        if "acc" in key:
            assert ((values >= 0) & (values <= 1)).all()


def test_adapting_fits_the_support_set(tiny_model, tiny_batch):
    """Many steps at a high rate on 6 support images: the adapted model classifies them all,
    which the random initialization does not."""
    algo = build_algorithm(tiny_model, meta_config("maml", inner_lr=1.0, eval_inner_steps=60))
    rows = algo.evaluate(algo.init_meta_params(), tiny_batch)
    assert torch.equal(rows["support_acc_after"], torch.ones(len(tiny_batch), dtype=rows["support_acc_after"].dtype))
    assert rows["support_acc_before"].mean() < 1
