"""A DICOM series writer (pydicom) for synthetic volumes: what PACS viewers, 3D Slicer and
SimpleITK open, placed in the training data's scanner space and marked synthetic everywhere a
person or a program looks.

One file per slice (along the volume's third voxel axis), CT or MR Image Storage, 16-bit signed
pixels with RescaleSlope / RescaleIntercept so float intensities (HU for CT) survive to 1/slope.
Geometry comes from a NIfTI-style affine (voxel i, j, k -> RAS mm): DICOM's patient space is
LPS, so x and y flip sign. Slice k's pixel (row r, column c) is voxel (i = c, j = r, k):
ImageOrientationPatient holds the directions of the i and j axes, PixelSpacing [row spacing
(along j), column spacing (along i)], ImagePositionPatient the position of voxel (0, 0, k).

The mark: ImageType DERIVED\\SECONDARY, a new Study / Series / Frame of Reference UID, patient
name SYNTHETIC^MEDSYNTH, "SYNTHETIC ..." in SeriesDescription and ImageComments, and the whole
provenance JSON in a private block ("medsynth", group 0x0011) that `dicom_provenance` reads back.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np

from medsynth.errors import MedsynthError
from medsynth.writers import atomic_path

PRIVATE_GROUP, PRIVATE_CREATOR = 0x0011, "medsynth"
SOP_CLASSES = {"CT": "1.2.840.10008.5.1.4.1.1.2", "MR": "1.2.840.10008.5.1.4.1.1.4"}
LPS = np.diag([-1.0, -1.0, 1.0])


def _rescale(volume: np.ndarray) -> tuple[float, float]:
    """(slope, intercept) that fit the volume's range into int16 with the finest step (whole HU
    stay whole when the range allows)."""
    lo, hi = float(volume.min()), float(volume.max())
    intercept = (lo + hi) / 2.0
    half = max(hi - intercept, intercept - lo, 1e-6)
    slope = 1.0 if half <= 32000 and np.allclose(volume, np.round(volume)) else half / 32000.0
    if slope == 1.0:
        intercept = float(np.round(intercept))
    return slope, intercept


def write_dicom_series(folder: str | Path, volume: np.ndarray, affine: np.ndarray, provenance: dict,
                       modality: str = "MR", description: str = "") -> list[Path]:
    """Write `volume` (i x j x k, float, in the source's units: HU for CT) as one DICOM file per
    slice k into `folder` (made; files IM00001.dcm, ...). affine: 4 x 4 voxel -> RAS mm.
    Returns the files, in slice order."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID, generate_uid

    if modality not in SOP_CLASSES:
        raise MedsynthError(f"DICOM modality {modality!r} is not one of {list(SOP_CLASSES)}")
    volume = np.asarray(volume, dtype=np.float64)
    if volume.ndim != 3 or not np.isfinite(volume).all():
        raise MedsynthError(f"{folder}: a DICOM series holds one finite 3D volume, got shape {volume.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    directions = LPS @ (affine[:3, :3] / spacing)  # unit columns: the i, j, k axes in LPS
    slope, intercept = _rescale(volume)
    pixels = np.clip(np.round((volume - intercept) / slope), -32768, 32767).astype(np.int16)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    now = dt.datetime.now()
    run = provenance.get("run") or "unknown"
    note = (f"SYNTHETIC image, made by {provenance.get('generator', 'medsynth')} from run {run}; "
            "not a patient image")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(volume.shape[2]):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = SOP_CLASSES[modality]
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = FileDataset(None, {}, file_meta=meta, preamble=b"\0" * 128)
        ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.Modality = modality
        ds.PatientName, ds.PatientID = "SYNTHETIC^MEDSYNTH", "SYNTHETIC"
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = now.strftime("%Y%m%d")
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = now.strftime("%H%M%S")
        ds.Manufacturer = "medsynth"
        ds.SeriesDescription = f"SYNTHETIC {description}".strip()[:64]
        ds.ImageComments = note
        ds.BurnedInAnnotation = "NO"
        ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
        ds.ImagePositionPatient = [float(v) for v in LPS @ (affine @ [0, 0, k, 1])[:3]]
        ds.ImageOrientationPatient = [float(v) for v in (*directions[:, 0], *directions[:, 1])]
        ds.PixelSpacing = [float(spacing[1]), float(spacing[0])]
        ds.SliceThickness = ds.SpacingBetweenSlices = float(spacing[2])
        ds.Rows, ds.Columns = volume.shape[1], volume.shape[0]
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleSlope, ds.RescaleIntercept = f"{slope:.10g}", f"{intercept:.10g}"
        ds.RescaleType = "HU" if modality == "CT" else "US"
        ds.PixelData = np.ascontiguousarray(pixels[:, :, k].T).tobytes()  # rows along j, columns along i
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
        block.add_new(0x01, "UT", json.dumps(provenance))
        path = folder / f"IM{k + 1:05d}.dcm"
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        files.append(path)
    return files


def dicom_provenance(path: str | Path) -> dict | None:
    """The provenance JSON of a DICOM file written by write_dicom_series, or None."""
    import pydicom

    ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    try:
        block = ds.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        return json.loads(block[0x01].value)
    except (KeyError, ValueError):
        return None
