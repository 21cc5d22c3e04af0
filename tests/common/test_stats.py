"""Confidence intervals against hand computations."""

import math

import pytest
import torch

from common.stats import Interval, episodes_hash, paired_interval, t_interval


def test_t_interval_by_hand():
    # mean 2 over 4 values, sample sd sqrt(2/3); t(0.975, 3) = 3.182446: half-width t * sd / sqrt(4)
    values = [1.0, 2.0, 3.0, 2.0]
    result = t_interval(values)
    sd = math.sqrt(sum((v - 2.0) ** 2 for v in values) / 3)
    assert result.mean == pytest.approx(2.0) and result.n == 4
    assert result.half_width == pytest.approx(3.182446 * sd / 2, rel=1e-6)
    assert math.isnan(t_interval([5.0]).low) and t_interval([]).n == 0


def test_the_paired_interval_is_the_interval_of_the_differences():
    """Two methods on 5 episodes: per-episode differences 0.1, 0.2, 0.0, 0.1, 0.1; mean 0.1,
    sample sd 0.0707107; t(0.975, 4) = 2.776445; half-width 2.776445 * 0.0707107 / sqrt(5)."""
    a = [0.6, 0.7, 0.5, 0.8, 0.4]
    b = [0.5, 0.5, 0.5, 0.7, 0.3]
    result = paired_interval(a, b)
    assert result.mean == pytest.approx(0.1)
    assert result.half_width == pytest.approx(2.776445 * 0.0707107 / math.sqrt(5), rel=1e-5)
    assert result.low > 0  # b's episodes vary a lot, the difference does not: paired, it is significant
    unpaired_half = t_interval(a).half_width + t_interval(b).half_width
    assert result.half_width < unpaired_half
    with pytest.raises(ValueError, match="the same episodes"):
        paired_interval(a, b[:4])


def test_the_episode_hash_changes_with_any_byte():
    x, y = torch.zeros(2, 3), torch.tensor([0, 1])
    same = episodes_hash(x.clone(), y.clone())
    assert episodes_hash(x, y) == same
    x[1, 2] = 1e-30
    assert episodes_hash(x, y) != same
    assert episodes_hash(torch.zeros(3, 2), y) != same  # shape counts too


def test_an_interval_reads_as_points_with_its_ci():
    assert Interval(0.024, 0.0191, 0.028, 600).points() == "+2.4 (+1.9 to +2.8)"
    assert Interval(-0.004, -0.008, 0.0, 600).points() == "-0.4 (-0.8 to +0.0)"
