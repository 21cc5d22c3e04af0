"""MedMNIST loader on the real shared files: MD5 checks, shapes and labels as documented."""

import shutil

import pytest
import torch

from common.data import medmnist


def test_good_files_pass_their_md5(medmnist_2d, medmnist_3d):
    for path in [*sorted(medmnist_2d.glob("*.npz")), *sorted(medmnist_3d.glob("*.npz"))]:
        flag, size = medmnist.identify(path)
        medmnist.verify(path, flag, size)  # raises on mismatch


def test_a_modified_copy_fails_its_md5_and_is_not_loaded(medmnist_2d, tmp_path):
    copy = tmp_path / "breastmnist.npz"
    shutil.copy(medmnist_2d / "breastmnist.npz", copy)
    data = bytearray(copy.read_bytes())
    data[len(data) // 2] ^= 0xFF
    copy.write_bytes(bytes(data))
    with pytest.raises(
        medmnist.MedMNISTFileError,
        match=r"breastmnist\.npz has MD5 .* official .* 750601b1f35ba3300ea97c75c52ff8f6"
        r".*download it again from https://zenodo",
    ):
        medmnist.load("breastmnist", "train", tmp_path)


def test_missing_file_offline_names_file_directory_and_url(tmp_path):
    with pytest.raises(medmnist.MedMNISTFileError) as error:
        medmnist.load("pneumoniamnist", "train", tmp_path, download=False)
    message = str(error.value)
    assert "pneumoniamnist.npz is not in" in message and str(tmp_path) in message
    assert (
        "https://zenodo.org/records/10519652/files/pneumoniamnist.npz" in message
        and "28209eda62fecd6e6a2d98b1501bb15f" in message
    )


@pytest.mark.parametrize(
    ("flag", "size", "split", "shape", "counts"),
    [
        ("breastmnist", 28, "train", (546, 1, 28, 28), {"malignant": 147, "normal, benign": 399}),
        ("breastmnist", 64, "test", (156, 1, 64, 64), {"malignant": 42, "normal, benign": 114}),
        ("pneumoniamnist", 28, "val", (524, 1, 28, 28), {"normal": 135, "pneumonia": 389}),
        ("retinamnist", 28, "train", (1080, 3, 28, 28), {"0": 486, "1": 128, "2": 206, "3": 194, "4": 66}),
        ("adrenalmnist3d", 28, "test", (298, 1, 28, 28, 28), {"normal": 229, "hyperplasia": 69}),
        ("vesselmnist3d", 28, "train", (1335, 1, 28, 28, 28), {"vessel": 1185, "aneurysm": 150}),
    ],
)
def test_shapes_and_labels_match_provenance(medmnist_2d, medmnist_3d, flag, size, split, shape, counts):
    data_dir = medmnist_3d if flag.endswith("3d") else medmnist_2d
    data = medmnist.load(flag, split, data_dir, size)
    assert tuple(data.images.shape) == shape and data.images.dtype == torch.float32
    assert data.images.min() >= 0 and data.images.max() <= 1
    assert data.counts() == counts
    assert data.ids[0] == f"{medmnist.info(flag).file(size)['file']}:{split}:0" and len(set(data.ids)) == len(data)


def test_unknown_dataset_size_and_multilabel_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown MedMNIST dataset 'pneumonia'; known: .*pneumoniamnist"):
        medmnist.info("pneumonia")
    with pytest.raises(ValueError, match=r"AdrenalMNIST3D comes in sizes \[28, 64\], not 128"):
        medmnist.info("adrenalmnist3d").file(128)
    with pytest.raises(ValueError, match="multi-label"):
        medmnist.load("chestmnist", "train", tmp_path)


def test_table_covers_every_dataset_and_size():
    assert len(medmnist.datasets()) == 18
    for flag in medmnist.datasets():
        sizes = sorted(medmnist.info(flag).files)
        assert sizes == ([28, 64] if flag.endswith("3d") else [28, 64, 128, 224]), flag
