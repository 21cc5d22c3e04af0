"""Writes hospital site folders (PNG, NIfTI, DICOM and labels.csv) for tests."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid


def write_png(path: Path, pixels: np.ndarray) -> None:
    Image.fromarray(pixels.astype(np.uint8)).save(path)


def write_nifti(path: Path, voxels: np.ndarray) -> None:
    nib.save(nib.Nifti1Image(voxels.astype(np.float32), np.eye(4)), path)


def write_dicom(path: Path, pixels: np.ndarray) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "OT", *pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def write_site(
    root: Path, per_class: dict[str, int], kind: str = "png", patients_per_class: int = 4, seed: int = 0
) -> Path:
    """A valid site folder: `per_class` images per class name, spread over patients."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    lines = ["path,label,patient_id"]
    for label, (name, count) in enumerate(per_class.items()):
        for i in range(count):
            rel = f"{name}_{i}.{ {'png': 'png', 'nifti': 'nii.gz', 'dicom': 'dcm'}[kind] }"
            base = rng.uniform(0, 100, size=(12, 10, 8) if kind == "nifti" else (40, 32)) + 100 * label
            {"png": write_png, "nifti": write_nifti, "dicom": write_dicom}[kind](root / rel, base)
            lines.append(f"{rel},{name},{name}-p{i % patients_per_class}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    (root / "classes.txt").write_text("\n".join(per_class) + "\n")
    return root


def folder_consortium(root: Path, labels=("benign", "malignant", "cyst"), tasks="hospital") -> dict:
    """A scenario (as parsed TOML) of two hospital folders under `root` that name their classes their
    own way and order: a holds benign and Malignant, b (held out) cyst and benign."""
    write_site(root / "a", {"benign": 20, "Malignant": 20}, patients_per_class=20)
    write_site(root / "b", {"cyst": 20, "benign": 20}, patients_per_class=20, seed=1)
    doc = {
        "name": "folders",
        "tasks": tasks,
        "episodes": {"ways": 2, "shots": 2, "queries": 3},
        "sites": [
            {"name": "a", "source": "folder", "path": "a"},
            {"name": "b", "source": "folder", "path": "b", "role": "heldout"},
        ],
    }
    return doc | ({"labels": list(labels)} if labels else {})
