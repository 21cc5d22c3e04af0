"""Clipping and noise for site-level differential privacy."""

import math

import pytest
import torch

from common.privacy import add_noise, clip, l2_norm, site_noise_std


@pytest.mark.parametrize("scale", [1e-3, 0.5, 1.0, 7.0, 1e4])
def test_every_clipped_update_is_within_the_bound(scale):
    g = torch.Generator().manual_seed(int(scale * 1000) % 2**31)
    update = {"a": torch.randn(64, 3, 3, generator=g) * scale, "b": torch.randn(5, generator=g).half() * scale}
    clipped, norm = clip(update, 1.0)
    assert norm == pytest.approx(l2_norm(update))
    assert l2_norm(clipped) <= 1.0
    assert {k: v.dtype for k, v in clipped.items()} == {k: v.dtype for k, v in update.items()}
    if norm <= 1.0:
        assert all(torch.equal(clipped[k], update[k]) for k in update)  # below the bound: untouched
    else:
        assert l2_norm(clipped) == pytest.approx(1.0, rel=1e-3)  # direction kept, length at the bound
        cosine = sum(float((clipped[k].double() * update[k].double()).sum()) for k in update) / (
            l2_norm(clipped) * norm
        )
        assert cosine == pytest.approx(1.0, abs=1e-3)


def test_noise_has_the_asked_spread_and_cannot_be_replayed():
    zero = {"w": torch.zeros(200_000)}
    a, b = add_noise(zero, 0.3)["w"], add_noise(zero, 0.3)["w"]
    assert float(a.std()) == pytest.approx(0.3, rel=0.02) and abs(float(a.mean())) < 0.01
    assert not torch.equal(a, b)  # seeded by the OS, not by the run seed


def test_site_shares_add_up_to_the_central_noise():
    sigma, bound, n = 1.3, 0.5, 7
    assert n * site_noise_std(sigma, bound, n) ** 2 == pytest.approx((sigma * bound) ** 2)
    assert math.isclose(site_noise_std(sigma, bound, 1), sigma * bound)


def test_an_overflowed_update_is_refused_not_clipped():
    with pytest.raises(ValueError, match="non-finite"):
        clip({"w": torch.tensor([float("inf"), 1.0])}, 1.0)
