"""Cases of volumes: contrasts stacked as channels, with an optional label map, from a folder
layout or a CSV / JSON manifest (e.g. BraTS: FLAIR + T1c -> labels 0-4).

Folder layout: one sub-folder per case; `contrasts`, `label` and `mask` are
file-name patterns (globs) inside it. Manifest: a CSV with a `case` column, one
column per contrast and optionally a `label` column, holding paths (relative to
the manifest), or a JSON list of objects with the same keys. Every contrast and the label map must share shape and affine; label
values must be among `classes`.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medsynth.data.volumes import read_dicom_series, read_hdf5, read_nifti, read_nrrd, require_3d
from medsynth.errors import MedsynthError


# split -> sub-folder of case folders (BraTS and the Medical Segmentation Decathlon style)
SPLIT_FOLDERS = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class Case:
    name: str
    image: np.ndarray  # C x D x H x W float32 (contrasts as channels)
    label: np.ndarray | None  # D x H x W int64
    affine: np.ndarray
    spacing: tuple[float, ...]
    mask: np.ndarray | None = None  # D x H x W bool (e.g. the brain), for intensity statistics


# "FILE.h5:KEY": dataset KEY of an HDF5 file, so one file can give both the image and the label
# (e.g. the LA heart cases' mri_norm2.h5:image and mri_norm2.h5:label); FILE.h5 alone is "image"
HDF5_KEY = re.compile(r"^(?P<file>.+\.(?:h5|hdf5)):(?P<key>[^/:]+)$", re.IGNORECASE)


def is_hdf5(path) -> bool:
    """Whether a path or file pattern names an HDF5 file (FILE.h5, FILE.h5:KEY)."""
    text = str(path).lower()
    return bool(HDF5_KEY.match(str(path))) or text.endswith((".h5", ".hdf5"))


def read_volume(path: Path):
    """A 3D Volume from a NIfTI, NRRD or HDF5 file (FILE.h5:KEY for a dataset other than "image")
    or a DICOM folder."""
    return require_3d(read_any_volume(path))


def read_any_volume(path: Path):
    """The Volume a file or DICOM folder holds, as stored (a 4D NIfTI stays 4D)."""
    keyed = HDF5_KEY.match(str(path))
    if keyed:
        return read_hdf5(keyed["file"], keyed["key"])
    name = path.name.lower()
    if path.is_dir():
        return read_dicom_series(path)
    if name.endswith((".nii", ".nii.gz")):
        return read_nifti(path)
    if name.endswith((".nrrd", ".nhdr")):
        return read_nrrd(path)
    if name.endswith((".h5", ".hdf5")):
        return read_hdf5(path)
    raise MedsynthError(f"{path}: unknown volume format (NIfTI, NRRD, HDF5 or a DICOM folder)")


def match_file(folder: Path, pattern: str | None) -> Path | None:
    """The one file in `folder` matching `pattern` (a glob; "PATTERN.h5:KEY" keeps the key), or None
    when none does; several matching is an error."""
    if not pattern:
        return None
    keyed = HDF5_KEY.match(pattern)
    found = sorted(folder.glob(keyed["file"] if keyed else pattern))
    if len(found) > 1:
        raise MedsynthError(f"{folder}: {len(found)} files match '{pattern}' (expected exactly one)")
    if not found:
        return None
    return Path(f"{found[0]}:{keyed['key']}") if keyed else found[0]


def _one(folder: Path, pattern: str) -> Path:
    """The one file in `folder` matching `pattern`; none is an error."""
    found = match_file(folder, pattern)
    if found is None:
        raise MedsynthError(f"{folder}: 0 files match '{pattern}' (expected exactly one)")
    return found


def load_case(name: str, contrast_paths: list[Path], label_path: Path | None,
              classes: list[int] | None = None, mask_path: Path | None = None) -> Case:
    volumes = [read_volume(p) for p in contrast_paths]
    first = volumes[0]
    for p, v in zip(contrast_paths[1:], volumes[1:]):
        if v.array.shape != first.array.shape:
            raise MedsynthError(f"{p}: shape {v.array.shape} differs from {contrast_paths[0].name} {first.array.shape}")
        if not np.allclose(v.affine, first.affine, atol=1e-3):
            raise MedsynthError(f"{p}: affine differs from {contrast_paths[0].name}'s")
    label = None
    if label_path is not None:
        lab = on_image_grid(read_volume(label_path), first, label_path, "label map")
        if not np.allclose(lab.array, np.round(lab.array)):
            raise MedsynthError(f"{label_path}: label map holds non-integer values")
        label = np.round(lab.array).astype(np.int64)
        if classes is not None:
            extra = sorted(set(np.unique(label).tolist()) - set(classes))
            if extra:
                raise MedsynthError(f"{label_path}: labels {extra[:10]} are outside the declared classes {classes}")
    mask = None
    if mask_path is not None:
        mask = on_image_grid(read_volume(mask_path), first, mask_path, "mask").array > 0
    image = np.stack([v.array for v in volumes]).astype(np.float32)
    return Case(name, image, label, first.affine, first.spacing, mask)


def on_image_grid(volume, image, path: Path, what: str):
    """`volume` (a label map or mask) on the voxel grid of `image`: as it is when shapes and affines
    agree; with its voxel axes permuted and flipped (nibabel orientations) when it holds the same
    grid in another axis order, e.g. a NIfTI label map (x, y, z) of a DICOM series read as (slice,
    row, column); otherwise one error naming the file."""
    from nibabel.orientations import apply_orientation, inv_ornt_aff, io_orientation, ornt_transform

    from medsynth.data.volumes import Volume

    array, affine = volume.array, np.asarray(volume.affine, dtype=np.float64)
    if array.shape != image.array.shape and sorted(array.shape) == sorted(image.array.shape):
        turn = ornt_transform(io_orientation(affine), io_orientation(np.asarray(image.affine, dtype=np.float64)))
        array, affine = apply_orientation(array, turn), affine @ inv_ornt_aff(turn, array.shape)
    if array.shape != image.array.shape:
        raise MedsynthError(f"{path}: {what} of shape {volume.array.shape} does not match the image "
                            f"{image.array.shape}")
    if not np.allclose(affine, image.affine, atol=1e-3):
        raise MedsynthError(f"{path}: {what} affine differs from the image's")
    return Volume(np.ascontiguousarray(array), affine, image.spacing, volume.source) if array is not volume.array else volume


def cases_from_folder(root: str | Path, contrasts: list[str], label: str | None = None,
                      classes: list[int] | None = None, mask: str | None = None,
                      names: list[str] | None = None) -> list[Case]:
    """Every case sub-folder of `root`, or the ones `names` lists (in that order)."""
    root = Path(root)
    if not root.is_dir():
        raise MedsynthError(f"{root}: case folder not found")
    dirs = sorted(d for d in root.iterdir() if d.is_dir())
    if names is not None:
        found = {d.name: d for d in dirs}
        missing = [n for n in names if n not in found]
        if missing:
            raise MedsynthError(f"{root}: no case folder(s) {missing[:5]} (named by the split file)")
        dirs = [found[n] for n in names]
    if not dirs:
        raise MedsynthError(f"{root}: no case sub-folders")
    return [load_case(d.name, [_one(d, c) for c in contrasts], _one(d, label) if label else None, classes,
                      _one(d, mask) if mask else None) for d in dirs]


def cases_from_manifest(csv_path: str | Path, contrasts: list[str], label: str | None = "label",
                        classes: list[int] | None = None) -> list[Case]:
    csv_path = Path(csv_path)
    if not csv_path.is_file():
        raise MedsynthError(f"{csv_path}: manifest not found")
    try:
        if csv_path.suffix == ".json":
            rows = json.loads(csv_path.read_text())
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ValueError("expected a list of objects")
        else:
            with open(csv_path, newline="") as fh:
                rows = list(csv.DictReader(fh))
    except (ValueError, UnicodeDecodeError, csv.Error) as exc:
        raise MedsynthError(f"{csv_path}: cannot read the manifest ({exc})") from None
    needed = {"case", *contrasts, *([label] if label else [])}
    if not rows or not needed <= set(rows[0]):
        raise MedsynthError(f"{csv_path}: expected columns {sorted(needed)}")
    base = csv_path.parent
    return [load_case(r["case"], [base / r[c] for c in contrasts], base / r[label] if label and r[label] else None,
                      classes) for r in rows]


def resample_to_spacing(array: np.ndarray, spacing, target, order: int = 1) -> np.ndarray:
    """Resample a D x H x W (or C x D x H x W) volume from `spacing` to `target` mm per voxel
    (order 1: trilinear for images; 0: nearest for label maps)."""
    from scipy.ndimage import zoom

    factors = [s / t for s, t in zip(spacing, target)]
    if array.ndim == len(factors) + 1:
        return np.stack([zoom(ch, factors, order=order) for ch in array])
    return zoom(array, factors, order=order)


def resize_volumes(images: np.ndarray, size: int) -> np.ndarray:
    """N x C x D x H x W -> N x C x size^3 (trilinear): the fixed size 3D generation trains on."""
    import torch
    import torch.nn.functional as F

    t = torch.from_numpy(images)
    return F.interpolate(t, size=(size,) * 3, mode="trilinear", align_corners=False).numpy()


VOLUME_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr")


def is_volume_set(path: Path) -> bool:
    """A NIfTI / NRRD file, or a folder holding volume files or DICOM series (as `medsynth sample`
    writes them), rather than 2D images."""
    if path.is_file():
        return path.name.lower().endswith(VOLUME_SUFFIXES)
    return path.is_dir() and bool(_volume_sources(path))


def _volume_sources(folder: Path) -> list[Path]:
    visible = [p for p in sorted(folder.rglob("*")) if not any(q.startswith(".") for q in p.relative_to(folder).parts)]
    files = [p for p in visible if p.is_file() and p.name.lower().endswith(VOLUME_SUFFIXES)]
    series = sorted({p.parent for p in visible if p.is_file() and p.suffix.lower() == ".dcm"})
    return files + series


def read_volume_set(path: str | Path, size: int | None = None) -> np.ndarray:
    """Every volume of a NIfTI / NRRD file (a 4D file: one volume per index of its 4th axis) or of a
    folder of such files and DICOM series -> N x 1 x size^3 float32 in [-1, 1]. Each volume is
    z-scored on its own (clipped at 3 std, as data.mr_normalise=zscore without a mask), real and
    synthetic sets alike, so scanner units and the model's range compare; size: default the first
    volume's, which must then be a cube."""
    from medsynth.data.intensity import mr_normalise

    path = Path(path)
    sources = [path] if path.is_file() else _volume_sources(path)
    if not sources:
        raise MedsynthError(f"{path}: no NIfTI / NRRD volumes or DICOM series found")
    volumes = []
    for source in sources:
        array = read_any_volume(source).array
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4:
            raise MedsynthError(f"{source}: a {array.ndim}D array; a volume set holds 3D volumes (or 4D files of them)")
        volumes += [array[..., i] for i in range(array.shape[-1])]
    if size is None:
        if len(set(volumes[0].shape)) != 1:
            raise MedsynthError(f"{sources[0]}: volumes of shape {volumes[0].shape} are not cubes; give --image-size "
                                "to resize every volume to size^3")
        size = volumes[0].shape[0]
    out = [resize_volumes(mr_normalise(v)[None, None], size)[0] for v in volumes]
    return np.stack(out).clip(-1, 1).astype(np.float32)
