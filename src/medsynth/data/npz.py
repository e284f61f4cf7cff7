"""MedMNIST-format `.npz` files, read directly (no `medmnist` package).

Keys are `{train,val,test}_images` and `{train,val,test}_labels`, as the
MedMNIST releases ship them; a file with plain `images` (and `labels`) is one
training split, which is how `medsynth sample` writes its output.
Layouts: N x H x W (2D grayscale), N x H x W x 3 (2D RGB), N x D x H x W (3D).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path

import numpy as np

from medsynth.errors import MedsynthError, reason

SPLITS = ("train", "val", "test")


def _memory_limit() -> int:
    """Half the machine's memory: an array claiming more is refused before numpy allocates it."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def check_members(path: Path) -> None:
    """Read every .npy header in the archive and refuse what numpy would choke on: object dtypes
    (pickles), sizes beyond memory, and headers claiming more bytes than the member holds."""
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    continue
                with zf.open(info) as fh:
                    version = np.lib.format.read_magic(fh)
                    reader = {(1, 0): np.lib.format.read_array_header_1_0,
                              (2, 0): np.lib.format.read_array_header_2_0}.get(version)
                    if reader is None:
                        raise ValueError(f"unsupported .npy version {version}")
                    shape, _, dtype = reader(fh)
                    header = fh.tell()
                key = info.filename[:-4]
                if dtype.hasobject:
                    raise MedsynthError(f"{path}: key '{key}' holds Python objects (a pickle); refused")
                nbytes = math.prod(shape) * dtype.itemsize
                if nbytes > _memory_limit():
                    raise MedsynthError(f"{path}: key '{key}' claims shape {shape} ({nbytes / 2**30:.1f} GiB), "
                                        "more than this machine can hold")
                if info.file_size < header + nbytes:
                    raise MedsynthError(f"{path}: key '{key}' is truncated: its header claims shape {shape} "
                                        f"({nbytes} bytes) but it holds {info.file_size - header}")
    except MedsynthError:
        raise
    except Exception as exc:  # BadZipFile, zlib.error, ValueError, EOFError, ...: all mean unreadable
        raise MedsynthError(f"{path}: not a readable .npz file ({reason(exc)})") from None


def read_npz(path: str | Path, spatial_dims: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split name -> (images N x C x *spatial, labels or None), images as stored (not rescaled)."""
    path = Path(path)
    if not path.is_file():
        raise MedsynthError(f"{path}: data file not found")
    check_members(path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:  # a corrupt archive can raise almost anything
        raise MedsynthError(f"{path}: not a readable .npz file ({reason(exc)})") from None
    with archive:
        keys = set(archive.files)
        if "images" in keys:
            layout = {"train": ("images", "labels")}
        else:
            layout = {s: (f"{s}_images", f"{s}_labels") for s in SPLITS if f"{s}_images" in keys}
        if "train" not in layout:
            raise MedsynthError(
                f"{path}: no 'train_images' (or 'images') key; keys found: {sorted(keys) or 'none'}")
        out = {}
        for split, (ikey, lkey) in layout.items():
            try:
                images = archive[ikey]
                labels = archive[lkey] if lkey in keys else None
            except Exception as exc:  # CRC errors, zlib errors, short reads
                raise MedsynthError(f"{path}: key '{ikey}' cannot be read ({reason(exc)})") from None
            images = _channels_first(images, f"{path}[{ikey}]", spatial_dims)
            if labels is not None:
                labels = _check_labels(labels, len(images), f"{path}[{lkey}]")
            out[split] = (images, labels)
    return out


def _channels_first(images: np.ndarray, source: str, spatial_dims: int | None) -> np.ndarray:
    if images.ndim == 3:  # N x H x W
        return images[:, None]
    if images.ndim == 4:
        last = images.shape[-1]
        # N x H x W x 3 (RGB) unless told it is 3D; a 3D volume is never 3 voxels wide in practice.
        if spatial_dims != 3 and last in (1, 3) and images.shape[1] > 3:
            return np.moveaxis(images, -1, 1)
        return images[:, None]  # N x D x H x W
    if images.ndim == 5 and images.shape[-1] in (1, 3):  # N x D x H x W x C
        return np.moveaxis(images, -1, 1)
    raise MedsynthError(
        f"{source}: images of shape {images.shape} are not N x H x W, N x H x W x 3 or N x D x H x W")


MAX_CLASSES = 10_000  # a label of 10^9 would otherwise ask for a 10^9-way one-hot


def _check_labels(labels: np.ndarray, n: int, source: str) -> np.ndarray:
    if len(labels) != n:
        raise MedsynthError(f"{source}: {len(labels)} labels for {n} images")
    if labels.ndim == 1:
        labels = labels[:, None]
    if labels.ndim != 2:
        raise MedsynthError(f"{source}: labels of shape {labels.shape} are not N x 1 or N x k")
    if not np.issubdtype(labels.dtype, np.number) and labels.dtype != bool:
        raise MedsynthError(f"{source}: labels of dtype {labels.dtype} are not numbers")
    if np.issubdtype(labels.dtype, np.floating) and not np.isfinite(labels).all():
        raise MedsynthError(f"{source}: labels hold NaN or inf")
    if labels.shape[1] == 1 and labels.min(initial=0) < 0:
        raise MedsynthError(f"{source}: class labels must be >= 0, found {labels.min()}")
    if labels.shape[1] == 1 and np.issubdtype(labels.dtype, np.floating) and (labels != np.round(labels)).any():
        bad = labels[labels != np.round(labels)][0]
        raise MedsynthError(f"{source}: class labels must be whole numbers, found {bad:g}")
    if labels.shape[1] == 1 and labels.max(initial=0) >= MAX_CLASSES:
        raise MedsynthError(f"{source}: class label {labels.max():g} implies more than {MAX_CLASSES} classes "
                            "(labels are class indices 0..K-1)")
    return labels
