"""Training augmentation: label-preserving, per image (per task for `scanner`), seeded apart
from the episodes."""

import pytest
import torch

from common.augment import AUGMENTATIONS, PER_TASK, Augmenter, augment, parse_augment, scanners
from common.config import EpisodeConfig
from common.runconfig import parse_run_config
from common.tasks import EpisodeSampler, site_generator
from tests.common.conftest import labelled_set


def _images(n=64, size=8, channels=1, dims=2):
    return torch.randn(n, channels, *(size,) * dims, generator=torch.Generator().manual_seed(0))


def test_names_parse_in_a_fixed_order_and_unknown_ones_are_named():
    assert parse_augment(" rot90,flip ") == ("flip", "rot90") and parse_augment("") == ()
    assert parse_augment("flip,scanner") == ("scanner", "flip")  # the acquisition comes first
    with pytest.raises(ValueError, match=r"augment='flip,blur': unknown 'blur'; choose from scanner"):
        parse_augment("flip,blur")
    with pytest.raises(ValueError, match="unknown 'mixup'"):
        parse_run_config({"augment": "mixup"})


@pytest.mark.parametrize("kind", ["flip", "rot90"])
def test_flips_and_rotations_move_pixels_and_each_image_draws_its_own(kind):
    x = _images()
    y = augment(x, (kind,), 2, torch.Generator().manual_seed(1))
    changed = [not torch.equal(a, b) for a, b in zip(x, y)]
    assert 0 < sum(changed) < len(x), "some images transformed, some not: one draw per image"
    for a, b in zip(x, y):  # a permutation of the image's own pixels
        torch.testing.assert_close(a.flatten().sort().values, b.flatten().sort().values)
        candidates = [a, a.flip(-1), a.flip(-2), a.flip(-1).flip(-2)] + [a.rot90(k, (-2, -1)) for k in range(4)]
        assert any(torch.equal(b, c) for c in candidates)


def test_a_shift_translates_each_image_by_its_own_offset_within_the_margin():
    x = _images(size=28)
    y = augment(x, ("shift",), 2, torch.Generator().manual_seed(2))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    offsets = []
    for i in range(len(x)):
        found = [(r, c) for r in range(5) for c in range(5) if torch.equal(y[i], padded[i, :, r : r + 28, c : c + 28])]
        assert found, f"image {i} is not a window of its reflected padding"
        offsets.append(found[0])
    assert len(set(offsets)) > 5


def test_intensity_keeps_the_image_mean_up_to_the_brightness_shift():
    x = _images() + 3.0
    y = augment(x, ("intensity",), 2, torch.Generator().manual_seed(3))
    shift = (y.mean((1, 2, 3)) - x.mean((1, 2, 3))) / x.std((1, 2, 3))
    assert shift.abs().max() <= 0.1 + 1e-5 and shift.abs().max() > 0.01
    ratio = y.std((1, 2, 3)) / x.std((1, 2, 3))
    assert ratio.min() >= 0.8 - 1e-5 and ratio.max() <= 1.2 + 1e-5 and ratio.max() - ratio.min() > 0.1


def test_every_transform_takes_3d_volumes_and_the_same_seed_gives_the_same_images():
    x = _images(n=6, size=8, dims=3)
    kinds = tuple(k for k in AUGMENTATIONS if k not in PER_TASK)
    a = augment(x, kinds, 3, torch.Generator().manual_seed(4))
    b = augment(x, kinds, 3, torch.Generator().manual_seed(4))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, x)
    volumes = x.reshape(2, 3, 1, 8, 8, 8).sigmoid()  # two tasks of three volumes each, in [0, 1]
    s1, q1 = scanners(volumes[:, :2], volumes[:, 2:], torch.Generator().manual_seed(4))
    s2, q2 = scanners(volumes[:, :2], volumes[:, 2:], torch.Generator().manual_seed(4))
    assert s1.shape == (2, 2, 1, 8, 8, 8) and q1.shape == (2, 1, 1, 8, 8, 8)
    assert torch.equal(s1, s2) and torch.equal(q1, q2) and not torch.equal(s1, volumes[:, :2])
    with pytest.raises(ValueError, match="scanner: drawn per task, by Augmenter"):
        augment(x, ("scanner",), 3, torch.Generator())


def test_a_scanner_shifts_every_image_of_a_task_alike_and_tasks_differently():
    """Eight tasks of the same four images (two support, two query): within a task the images
    keep their order and differ only by the scanner's noise; across tasks the acquisition differs."""
    base = torch.rand(4, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    tasks = base.expand(8, *base.shape).clone()
    support, query = scanners(tasks[:, :2], tasks[:, 2:], torch.Generator().manual_seed(6))
    shifted = torch.cat([support, query], dim=1)  # (8 tasks, 4 images, ...)
    means = shifted.mean(dim=(2, 3, 4))  # (8, 4)
    # one acquisition per task: each image's change in mean is the same throughout its task
    change = means - base.mean(dim=(1, 2, 3))
    assert (change.max(dim=1).values - change.min(dim=1).values).max() < 0.05
    assert change.mean(dim=1).max() - change.mean(dim=1).min() > 0.05  # tasks met different scanners
    order = torch.corrcoef(torch.stack([shifted[0, 0].flatten(), base[0].flatten()]))[0, 1]
    assert order > 0.5, "the first support image is still the first image, shifted"


def test_the_augmenter_keeps_the_episodes_and_labels_and_is_seeded_per_site_and_round():
    images, labels = labelled_set()
    sampler = EpisodeSampler(images, labels, EpisodeConfig(ways=3, shots=2, queries=3))
    batch = sampler.sample_batch(2, site_generator(0, 1, 5, 0))
    augmenter = Augmenter.from_text("scanner,flip,rot90,shift,intensity", spatial_dims=2, seed=0)
    a, b, other = augmenter(batch, 1, 5), augmenter(batch, 1, 5), augmenter(batch, 2, 5)
    assert torch.equal(a.support_y, batch.support_y) and torch.equal(a.query_y, batch.query_y)
    assert a.support_x.shape == batch.support_x.shape and not torch.equal(a.support_x, batch.support_x)
    assert torch.equal(a.query_x, b.query_x) and not torch.equal(a.query_x, other.query_x)
    assert Augmenter.from_text("", 2, 0)(batch, 1, 5) is batch
