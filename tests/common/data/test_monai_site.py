"""MONAI-native site folders: a declared transform chain (a CT window, orientation), a MONAI
datalist beside labels.csv, DICOM and 3D NIfTI files the tests write, and the preprocessed cache
that makes a second load read no image."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.transforms import LoadImage, Orientation, ScaleIntensityRange

from common.data import folder as folder_module
from common.data.folder import FolderSpec, check_folder, load_folder
from tests.common.data.hospital import write_dicom, write_site

CT_WINDOW = """
[[transform]]
name = "ScaleIntensityRange"
a_min = -160.0
a_max = 240.0
b_min = 0.0
b_max = 1.0
clip = true
"""


def ct_site(root, affine=None):
    """Four 3D CT volumes in Hounsfield units (air -1000 to bone 1000), two classes."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    lines = ["path,label,patient_id"]
    for i in range(4):
        hu = rng.uniform(-1000, 1000, size=(8, 8, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(hu, np.eye(4) if affine is None else affine), root / f"ct{i}.nii.gz")
        lines.append(f"ct{i}.nii.gz,{'liver' if i % 2 else 'spleen'},p{i}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    return root


def test_a_ct_window_changes_the_loaded_values_exactly_as_monai_does(tmp_path):
    root = ct_site(tmp_path / "ct")
    plain = load_folder(root, FolderSpec(image_size=8, cache=False))
    (root / "transforms.toml").write_text(CT_WINDOW)
    windowed = load_folder(root, FolderSpec(image_size=8, cache=False))
    raw = torch.as_tensor(nib.load(root / "ct0.nii.gz").get_fdata(), dtype=torch.float32)[None]
    expected = torch.as_tensor(ScaleIntensityRange(-160.0, 240.0, 0.0, 1.0, clip=True)(raw))
    index = windowed.ids.index("ct0.nii.gz")
    torch.testing.assert_close(windowed.images[index], expected)
    assert not torch.allclose(plain.images[index], windowed.images[index])  # min-max is not the window
    assert (windowed.images == 0).float().mean() > 0.3  # air and fat below -160 HU clip to 0


def test_orientation_uses_the_file_affine(tmp_path):
    flipped = np.diag([-1.0, 1.0, 1.0, 1.0])  # the first axis runs right to left
    root = ct_site(tmp_path / "ct", affine=flipped)
    (root / "transforms.toml").write_text('[[transform]]\nname = "Orientation"\naxcodes = "RAS"\n' + CT_WINDOW)
    data = load_folder(root, FolderSpec(image_size=8, cache=False))
    loaded = LoadImage(image_only=True, ensure_channel_first=True)(str(root / "ct0.nii.gz"))
    expected = ScaleIntensityRange(-160.0, 240.0, 0.0, 1.0, clip=True)(Orientation(axcodes="RAS")(loaded))
    torch.testing.assert_close(data.images[data.ids.index("ct0.nii.gz")], torch.as_tensor(expected).float())
    unoriented = ScaleIntensityRange(-160.0, 240.0, 0.0, 1.0, clip=True)(loaded)
    assert not torch.allclose(torch.as_tensor(expected), torch.as_tensor(unoriented))  # it did flip


def test_a_wrong_chain_is_named_with_the_step_and_fix(tmp_path):
    root = ct_site(tmp_path / "ct")
    (root / "transforms.toml").write_text('[[transform]]\nname = "LoadImage"\n')
    _, report = check_folder(root, FolderSpec(image_size=8))
    assert "transform 1 is 'LoadImage'; use one of" in str(report.problems[0])
    (root / "transforms.toml").write_text('[[transform]]\nname = "ScaleIntensityRange"\namin = 1\n')
    _, report = check_folder(root, FolderSpec(image_size=8))
    assert "transform 1 (ScaleIntensityRange)" in str(report.problems[0])


def test_a_monai_datalist_loads_like_labels_csv(tmp_path):
    root = write_site(tmp_path / "site", {"benign": 3, "malignant": 3}, kind="dicom")
    rows = [line.split(",") for line in (root / "labels.csv").read_text().splitlines()[1:]]
    datalist = {"training": [{"image": p, "label": label, "patient_id": patient} for p, label, patient in rows]}
    by_csv = load_folder(root, FolderSpec(image_size=16, cache=False))
    (root / "labels.csv").unlink()
    (root / "datalist.json").write_text(json.dumps(datalist))
    by_datalist = load_folder(root, FolderSpec(image_size=16, cache=False))
    torch.testing.assert_close(by_datalist.images, by_csv.images)
    assert by_datalist.ids == by_csv.ids and by_datalist.patients == by_csv.patients
    assert torch.equal(by_datalist.labels, by_csv.labels)
    datalist["training"][1]["image"] = "gone.dcm"
    (root / "datalist.json").write_text(json.dumps(datalist))
    datalist["training"][2]["image"] = "../outside.dcm"
    (root / "datalist.json").write_text(json.dumps(datalist))
    _, report = check_folder(root, FolderSpec(image_size=16))
    assert "gone.dcm (datalist.json training[1])" in str(report.problems[0])
    assert "(datalist.json training[2]): points outside the site folder" in str(report.problems[1])


def test_dicom_values_survive_a_window(tmp_path):
    root = tmp_path / "dicom"
    root.mkdir()
    pixels = np.arange(16 * 16, dtype=np.uint16).reshape(16, 16) * 4  # 0 .. 1020
    write_dicom(root / "a.dcm", pixels)
    write_dicom(root / "b.dcm", pixels[::-1].copy())
    (root / "labels.csv").write_text("path,label\na.dcm,x\nb.dcm,y\n")
    (root / "transforms.toml").write_text(CT_WINDOW.replace("-160.0", "0.0").replace("240.0", "512.0"))
    data = load_folder(root, FolderSpec(image_size=16, cache=False))
    expected = np.clip(pixels / 512.0, 0, 1).astype(np.float32)
    np.testing.assert_allclose(data.images[0, 0].numpy(), expected, atol=1e-6)


def test_a_second_load_reads_no_image_and_an_edit_invalidates_it(tmp_path, monkeypatch):
    root = write_site(tmp_path / "site", {"benign": 4, "malignant": 4})
    reads = []
    real = folder_module._image_loader

    def counting_loader():
        loader = real()

        def load(path):
            reads.append(path)
            return loader(path)

        return load

    monkeypatch.setattr(folder_module, "_image_loader", counting_loader)
    spec = FolderSpec(image_size=16, cache_dir=tmp_path / "cache")
    first, report = check_folder(root, spec)
    assert len(reads) == 8 and not report.cached
    again, report = check_folder(root, spec)  # the next round's ClientApp process
    assert len(reads) == 8 and report.cached, "a second load read image files"
    torch.testing.assert_close(again.images, first.images)
    assert (
        again.ids == first.ids and again.patients == first.patients and report.counts == {"benign": 4, "malignant": 4}
    )
    (root / "transforms.toml").write_text('[[transform]]\nname = "ScaleIntensity"\nminv = 0.0\nmaxv = 2.0\n')
    check_folder(root, spec)
    assert len(reads) == 16  # another chain: preprocessed anew
    png = root / "benign_0.png"
    png.write_bytes(png.read_bytes())  # same bytes, new modification time
    _, report = check_folder(root, spec)
    assert len(reads) == 24 and not report.cached
    _, report = check_folder(root, FolderSpec(image_size=16, cache=False))  # `fedmeta data check`: every file
    assert len(reads) == 32


@pytest.mark.parametrize("damage", ["truncate", "delete-json"])
def test_a_damaged_cache_entry_is_rebuilt_not_trusted(tmp_path, damage):
    root = write_site(tmp_path / "site", {"benign": 4, "malignant": 4})
    spec = FolderSpec(image_size=16, cache_dir=tmp_path / "cache")
    first = load_folder(root, spec)
    entry = next((tmp_path / "cache").glob("*.safetensors"))
    if damage == "truncate":
        entry.write_bytes(entry.read_bytes()[:100])
    else:
        entry.with_suffix(".json").unlink()
    data, report = check_folder(root, spec)
    assert not report.cached
    torch.testing.assert_close(data.images, first.images)


def test_an_unwritable_cache_costs_speed_not_the_site(tmp_path, caplog):
    root = write_site(tmp_path / "site", {"benign": 4, "malignant": 4})
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the cache directory should be")
    data = load_folder(root, FolderSpec(image_size=16, cache_dir=blocked))
    assert len(data.labels) == 8
    assert "set FEDMETA_CACHE_DIR to a writable directory" in caplog.text
