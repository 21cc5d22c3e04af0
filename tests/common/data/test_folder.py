"""Hospital site folders through MONAI LoadImage: formats, shapes, and one clear error per problem."""

import numpy as np
import pytest
import torch

from common.data import DataError
from common.data.folder import FolderSpec, check_folder, load_folder
from tests.common.data.hospital import write_dicom, write_nifti, write_png, write_site


def test_png_folder_loads_resized_grey_in_row_column_order(tmp_path):
    root = write_site(tmp_path / "site", {"benign": 6, "malignant": 5})
    data = load_folder(root, FolderSpec(image_size=16, channels=1))
    assert data.images.shape == (11, 1, 16, 16) and data.counts() == {"benign": 6, "malignant": 5}
    assert data.classes == ("benign", "malignant") and len(set(data.patients)) == 8
    assert data.images.min() >= 0 and data.images.max() <= 1
    # orientation: a PNG with a bright top row reads with the bright row first
    top = np.zeros((40, 32))
    top[:4] = 255
    write_png(root / "benign_0.png", top)
    again = load_folder(root, FolderSpec(image_size=40, channels=1))
    first = again.images[again.ids.index("benign_0.png"), 0]
    assert first[:4].mean() > 0.9 and first[10:].mean() < 0.1


@pytest.mark.parametrize("kind", ["nifti", "dicom"])
def test_nifti_and_dicom_folders_load(tmp_path, kind):
    root = write_site(tmp_path / kind, {"a": 4, "b": 4}, kind=kind)
    data = load_folder(root, FolderSpec(image_size=8, channels=1))
    dims = 3 if kind == "nifti" else 2
    assert data.images.shape == (8, 1, *(8,) * dims) and data.spatial_dims == dims


def test_dicom_keeps_row_column_order(tmp_path):
    pixels = np.zeros((30, 20))
    pixels[:3] = 1000
    root = tmp_path / "dcm"
    root.mkdir()
    write_dicom(root / "x.dcm", pixels)
    write_dicom(root / "y.dcm", pixels[::-1].copy())
    (root / "labels.csv").write_text("path,label\nx.dcm,top\ny.dcm,bottom\n")
    data = load_folder(root, FolderSpec(image_size=30, channels=1, classes=("top", "bottom")))
    assert data.images[0, 0, :3].mean() > 0.9 and data.images[1, 0, -3:].mean() > 0.9


def test_every_problem_is_named_with_its_fix_and_nothing_is_dropped(tmp_path):
    """The issue's case: one corrupt file, one unknown label, one too-small class, at once."""
    root = write_site(tmp_path / "site", {"benign": 8, "malignant": 8, "rare": 2})
    png = (root / "benign_0.png").read_bytes()
    (root / "broken.png").write_bytes(png[: len(png) // 3])
    write_nifti(root / "scan.nii.gz", np.random.rand(16, 16))
    with open(root / "labels.csv", "a") as f:
        f.write("broken.png,benign,benign-p1\nscan.nii.gz,tumour,x-p9\nmissing.png,benign,benign-p2\n")
    data, report = check_folder(root, FolderSpec(image_size=16, min_per_class=5))
    assert data is None and len(report.problems) == 4
    text = [str(p) for p in report.problems]
    assert any("broken.png (labels.csv line" in t and "cannot be read" in t and "export it again" in t for t in text)
    assert any("scan.nii.gz" in t and "'tumour' is not in the class list" in t and "classes.txt" in t for t in text)
    assert any("missing.png" in t and "does not exist" in t for t in text)
    assert any(
        "class 'rare'" in t and "2 usable examples" in t and "shots + queries = 5" in t and "add at least 3" in t
        for t in text
    )
    with pytest.raises(DataError, match="4 problem"):
        load_folder(root, FolderSpec(image_size=16, min_per_class=5))


def test_mixed_2d_and_3d_is_reported_per_file(tmp_path):
    root = write_site(tmp_path / "site", {"a": 3, "b": 3})
    write_nifti(root / "vol.nii.gz", np.random.rand(6, 6, 6))
    with open(root / "labels.csv", "a") as f:
        f.write("vol.nii.gz,a,a-p0\n")
    _, report = check_folder(root, FolderSpec(image_size=8))
    assert [p.where for p in report.problems] == ["vol.nii.gz"]
    assert "is 3D with 1 channel(s) but most images are 2D" in report.problems[0].message


@pytest.mark.parametrize(
    ("setup", "message"),
    [
        (lambda _root: None, "is not a directory"),
        (lambda root: root.mkdir(), "is empty"),
        (lambda root: (root.mkdir(), (root / "a.png").write_bytes(b"x")), "has no labels.csv"),
        (lambda root: (root.mkdir(), (root / "labels.csv").write_text("file,class\na.png,x\n")), "has columns"),
        (
            lambda root: (root.mkdir(), (root / "labels.csv").write_text("path,label\n../x.png,a\n")),
            "points outside the site folder",
        ),
    ],
)
def test_folder_level_problems(tmp_path, setup, message):
    root = tmp_path / "site"
    setup(root)
    _, report = check_folder(root, FolderSpec())
    assert message in str(report.problems[0])


def test_non_finite_values_are_refused(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    voxels = np.ones((4, 4, 4))
    voxels[1, 1, 1] = np.nan
    write_nifti(root / "nan.nii.gz", voxels)
    (root / "labels.csv").write_text("path,label\nnan.nii.gz,a\n")
    _, report = check_folder(root, FolderSpec())
    assert "non-finite" in str(report.problems[0])


def test_grey_to_rgb_and_rgb_to_grey(tmp_path):
    root = write_site(tmp_path / "site", {"a": 2, "b": 2})
    data = load_folder(root, FolderSpec(image_size=8, channels=3))
    assert data.images.shape == (4, 3, 8, 8) and torch.equal(data.images[:, 0], data.images[:, 2])
    rgb = tmp_path / "rgb"
    rgb.mkdir()
    ramp = np.linspace(0, 255, 40 * 32).reshape(40, 32)
    write_png(rgb / "r.png", np.dstack([ramp, 0 * ramp, 0 * ramp]))
    write_png(rgb / "g.png", np.dstack([0 * ramp, ramp, 0 * ramp]))
    (rgb / "labels.csv").write_text("path,label\nr.png,red\ng.png,green\n")
    grey = load_folder(rgb, FolderSpec(image_size=8, channels=1, classes=("red", "green")))
    assert grey.images.shape == (2, 1, 8, 8)
    # luma weights: the same ramp in green is brighter than in red (0.587 vs 0.299)
    assert grey.images[1].mean() / grey.images[0].mean() == pytest.approx(0.587 / 0.299, rel=0.02)
