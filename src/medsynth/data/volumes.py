"""Medical volumes: NIfTI (nibabel), NRRD (pynrrd), HDF5 (h5py) and DICOM series (pydicom), read
with their geometry (NIfTI is written by `medsynth.writers.write_nifti`).

Every failure is one MedsynthError naming the file: unreadable or truncated
files, headers claiming more voxels than the machine can hold, several series
in one DICOM folder, missing slices, pixel data that does not decode.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.npz import _memory_limit
from medsynth.errors import MedsynthError, reason


@dataclass
class Volume:
    """array: float32, voxel axes as stored (NIfTI i, j, k; DICOM slice, row, column);
    affine: 4 x 4 voxel -> world (RAS, mm) for those axes; spacing: mm per voxel axis."""

    array: np.ndarray
    affine: np.ndarray
    spacing: tuple[float, ...]
    source: str


def require_3d(volume: Volume, use: str = "this recipe") -> Volume:
    """The volume if it is 3D (a trailing axis of 1, as 4D NIfTI often has, is dropped); one error
    naming the file otherwise: a 2D slice in a 3D or ct_slices recipe used to end in a traceback."""
    array = volume.array
    while array.ndim > 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim != 3:
        kind = "a 2D image" if array.ndim == 2 else f"a {array.ndim}D array"
        raise MedsynthError(f"{volume.source}: {kind} of shape {tuple(array.shape)}; {use} needs 3D volumes "
                            "(2D images go in an .npz file or an image folder)")
    return Volume(array, volume.affine, volume.spacing[:3], volume.source)


def read_nifti(path: str | Path) -> Volume:
    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError

    path = Path(path)
    if not path.is_file():
        raise MedsynthError(f"{path}: NIfTI file not found")
    try:
        image = nib.load(str(path))
        shape = tuple(int(s) for s in image.header.get_data_shape())
        _check_size(path, shape)
        if path.name.lower().endswith(".gz"):
            image = _verified_gzip(path, image, shape)
        array = np.asarray(image.dataobj, dtype=np.float32)
        affine = np.asarray(image.affine, dtype=np.float64)
        spacing = tuple(float(z) for z in image.header.get_zooms()[:3])
    except MedsynthError:
        raise
    except (ImageFileError, Exception) as exc:  # truncated gzip, bad header fields, short data: all unreadable
        raise MedsynthError(f"{path}: not a readable NIfTI file ({reason(exc)})") from None
    if array.size and not np.isfinite(array).all():
        raise MedsynthError(f"{path}: volume holds NaN or inf values")
    return Volume(array, affine, spacing, str(path))


def _verified_gzip(path: Path, image, shape):
    """The image again, from the whole gzip stream read to its end: reading only the voxels lets a
    file cut inside its CRC / length trailer pass as whole. At most the header's declared size
    (plus 1 MiB of extensions) is inflated, so a gzip bomb cannot fill the memory."""
    import gzip

    expected = int(image.header.get("vox_offset", 352)) + math.prod(shape) * image.header.get_data_dtype().itemsize
    with gzip.open(path, "rb") as fh:
        raw = fh.read(expected + 2**20 + 1)
    if len(raw) > expected + 2**20:
        raise MedsynthError(f"{path}: holds more data than its header declares ({tuple(shape)})")
    return type(image).from_bytes(raw)


def _check_size(path, shape, itemsize: int = 4) -> None:
    nbytes = math.prod(shape) * itemsize
    if not shape or nbytes > _memory_limit():
        raise MedsynthError(f"{path}: header claims shape {tuple(shape)} ({nbytes / 2**30:.1f} GiB), "
                            "more than this machine can hold")


def read_nrrd(path: str | Path) -> Volume:
    """An NRRD volume; spacing and affine from 'space directions' / 'space origin' when present
    (LPS spaces are turned into RAS like NIfTI)."""
    import nrrd

    path = Path(path)
    if not path.is_file():
        raise MedsynthError(f"{path}: NRRD file not found")
    try:
        header = nrrd.read_header(str(path))
        _check_size(path, [int(v) for v in header["sizes"]])
        array, header = nrrd.read(str(path))
        array = np.asarray(array, dtype=np.float32)
    except MedsynthError:
        raise
    except Exception as exc:  # bad header fields, short or corrupt data, bad compression
        raise MedsynthError(f"{path}: not a readable NRRD file ({reason(exc)})") from None
    affine = np.eye(4)
    directions = header.get("space directions")
    if directions is not None:
        rows = [np.asarray(d, dtype=np.float64) for d in directions if d is not None and not np.isnan(d).any()]
        if len(rows) == 3:
            affine[:3, :3] = np.stack(rows, axis=1)
    if header.get("space origin") is not None:
        affine[:3, 3] = np.asarray(header["space origin"], dtype=np.float64)
    if str(header.get("space", "")).lower() in ("left-posterior-superior", "lps"):
        affine[:2] *= -1
    if array.size and not np.isfinite(array).all():
        raise MedsynthError(f"{path}: volume holds NaN or inf values")
    spacing = tuple(float(np.linalg.norm(affine[:3, i])) for i in range(min(3, array.ndim)))
    return Volume(array, affine, spacing, str(path))


def read_hdf5(path: str | Path, key: str = "image") -> Volume:
    """Dataset `key` of an HDF5 file (e.g. "image" or "label"); spacing from its `spacing` attribute
    when present, else 1 mm."""
    import h5py

    path = Path(path)
    if not path.is_file():
        raise MedsynthError(f"{path}: HDF5 file not found")
    try:
        with h5py.File(path, "r") as f:
            if key not in f:
                raise MedsynthError(f"{path}: no dataset '{key}' (found: {sorted(f.keys())})")
            ds = f[key]
            if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "uifb":
                raise MedsynthError(f"{path}: '{key}' is not a numeric dataset")
            _check_size(path, ds.shape)
            array = np.asarray(ds[()], dtype=np.float32)
            spacing = tuple(float(v) for v in ds.attrs.get("spacing", (1.0,) * min(3, array.ndim)))
    except MedsynthError:
        raise
    except Exception as exc:  # not HDF5, truncated, corrupt chunks
        raise MedsynthError(f"{path}: not a readable HDF5 file ({reason(exc)})") from None
    if array.size and not np.isfinite(array).all():
        raise MedsynthError(f"{path}: '{key}' holds NaN or inf values")
    affine = np.diag([*spacing[:3], 1.0]) if len(spacing) >= 3 else np.eye(4)
    return Volume(array, affine, spacing, str(path))


def read_dicom_series(folder: str | Path) -> Volume:
    """One DICOM series from a folder: slices sorted along the slice normal, rescaled (e.g. to HU)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    if not folder.is_dir():
        raise MedsynthError(f"{folder}: DICOM folder not found")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MedsynthError(f"{folder}: no files in the DICOM folder")
    slices = []
    for f in files:
        try:
            ds = pydicom.dcmread(f)
            # Every value used below is converted here: pydicom parses elements lazily, so a corrupt
            # value would otherwise fail later, far from the file it came from.
            geometry = {"position": np.array(ds.ImagePositionPatient, dtype=np.float64),
                        "orientation": np.array(ds.ImageOrientationPatient, dtype=np.float64),
                        "spacing": tuple(float(v) for v in ds.PixelSpacing),
                        "shape": (int(ds.Rows), int(ds.Columns)),
                        "slope": float(ds.get("RescaleSlope", 1) or 1),
                        "intercept": float(ds.get("RescaleIntercept", 0) or 0),
                        "thickness": float(ds.get("SliceThickness", 1.0) or 1.0),
                        "series": str(ds.get("SeriesInstanceUID", ""))}
            if geometry["position"].shape != (3,) or geometry["orientation"].shape != (6,) \
                    or len(geometry["spacing"]) != 2:
                raise ValueError("position, orientation or pixel spacing has the wrong number of values")
        except (InvalidDicomError, AttributeError, KeyError) as exc:
            raise MedsynthError(f"{f}: not a DICOM image slice ({reason(exc)})") from None
        except Exception as exc:  # truncated files and corrupt values raise from deep inside the parser
            raise MedsynthError(f"{f}: not a readable DICOM file ({reason(exc)})") from None
        slices.append((f, ds, geometry))
    series = {g["series"] for _, _, g in slices}
    if len(series) > 1:
        raise MedsynthError(f"{folder}: holds {len(series)} DICOM series; give a folder with one series")
    first = slices[0][2]
    orient = first["orientation"]
    normal = np.cross(orient[:3], orient[3:])
    slices.sort(key=lambda item: float(np.dot(normal, item[2]["position"])))
    positions = np.array([np.dot(normal, g["position"]) for _, _, g in slices])
    if len(slices) > 1:
        steps = np.diff(positions)
        step = float(np.median(steps))
        if not step > 0 or np.any(np.abs(steps - step) > 0.1 * step + 1e-3):
            worst = int(np.argmax(np.abs(steps - step)))
            raise MedsynthError(f"{folder}: slices are not evenly spaced (gap of {steps[worst]:.2f} mm after "
                                f"{slices[worst][0].name}, expected {step:.2f} mm): missing or duplicate slices")
    else:
        step = first["thickness"]
    rows, cols = first["shape"]
    if len(slices) * rows * cols * 4 > _memory_limit():
        raise MedsynthError(f"{folder}: {len(slices)} x {rows} x {cols} voxels is more than this machine can hold")
    planes = []
    for f, ds, g in slices:
        try:
            pixels = ds.pixel_array.astype(np.float32)
        except Exception as exc:  # no decoder, corrupt compressed stream, short pixel data
            raise MedsynthError(f"{f}: pixel data cannot be decoded ({reason(exc)})") from None
        if pixels.shape != (rows, cols):
            raise MedsynthError(f"{f}: slice of {pixels.shape} differs from {rows} x {cols}")
        planes.append(pixels * g["slope"] + g["intercept"])
    row_mm, col_mm = first["spacing"]
    affine = np.eye(4)
    affine[:3, 0] = normal * step
    affine[:3, 1] = orient[3:] * row_mm  # moving down a row follows the column direction cosines
    affine[:3, 2] = orient[:3] * col_mm
    affine[:3, 3] = slices[0][2]["position"]
    affine[:2] *= -1  # DICOM patient space is LPS; NIfTI's world (and ours) is RAS
    return Volume(np.stack(planes), affine, (step, row_mm, col_mm), str(folder))
