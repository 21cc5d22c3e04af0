"""Built-in synthetic sites: deterministic per (seed, site), sites differ, classes are balanced."""

import pytest
import torch

from common.synthetic import synthetic_site


def test_same_seed_and_site_give_the_same_images():
    a, la = synthetic_site(3, seed=1, num_classes=4, per_class=5)
    b, lb = synthetic_site(3, seed=1, num_classes=4, per_class=5)
    assert torch.equal(a, b) and torch.equal(la, lb)
    assert a.shape == (20, 1, 28, 28) and torch.bincount(la).tolist() == [5, 5, 5, 5]


def test_sites_differ():
    a, _ = synthetic_site(0, num_classes=4, per_class=5)
    b, _ = synthetic_site(1, num_classes=4, per_class=5)
    assert not torch.allclose(a, b)


def test_too_many_classes_is_a_clear_error():
    with pytest.raises(ValueError, match="1..10 classes"):
        synthetic_site(0, num_classes=11)
