"""The bottom floor: files written atomically (npz, PNG grids, NIfTI, text).

Every file is written to a temporary name in its folder and renamed into place, so an
interrupted write never leaves a half-file under the real name. Nothing here knows about
runs, models or data sets. A write that fails (read-only folder, full disk) is one
MedsynthError naming the file, and leaves any previous version of it as it was.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from contextlib import contextmanager
from glob import escape as glob_escape
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from medsynth.errors import MedsynthError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.
    A temporary file that a killed process left for the same target is removed first (one writer
    per target: a run directory is locked, shards have their own names)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{glob_escape(path.name)}.*.tmp{glob_escape(path.suffix)}"):
            stale.unlink(missing_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    except OSError as exc:
        raise MedsynthError(f"{path}: cannot write here ({exc.strerror or exc})") from None
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; shared outputs follow the umask like any file
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a folder made read-only meanwhile: the old file stays
        raise MedsynthError(f"{path}: could not be written ({exc.strerror or exc}); any previous version "
                            "is unchanged") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] B x C x *spatial -> uint8 in MedMNIST layout (N x H x W, N x H x W x 3, N x D x H x W)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
    if arr.shape[1] == 1:
        return arr[:, 0]
    return np.moveaxis(arr, 1, -1)


def save_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None,
             provenance: dict | None = None, extra: dict | None = None) -> None:
    """Images (and labels N x 1 or N x k) under the keys `images` / `labels`, readable as a dataset;
    `provenance` as a JSON string under the key `provenance` (no pickle needed to read it)."""
    payload = {"images": to_uint8(images), **(extra or {})}
    if provenance is not None:
        payload["provenance"] = np.array(json.dumps(provenance))
    if labels is not None:
        lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        payload["labels"] = lab[:, None] if lab.ndim == 1 else lab
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(fh, **payload)


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile B x C x *spatial images into one uint8 H x W (x 3) array; 3D volumes show their middle slice."""
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    tiles = to_uint8(images)
    if tiles.ndim == 3:
        tiles = tiles[..., None]
    n, h, w, c = tiles.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = tiles[i]
    return canvas[..., 0] if c == 1 else canvas


def save_grid(path: str | Path, images: torch.Tensor, nrow: int | None = None, provenance: dict | None = None,
              pad: int = 2) -> None:
    """A PNG grid; with `provenance`, marked synthetic in its text chunks."""
    canvas = grid_image(images, nrow, pad)
    path = Path(path)
    info = None
    if provenance is not None:
        info = PngInfo()
        info.add_text("Software", provenance.get("generator", "medsynth"))
        info.add_text("medsynth:synthetic", "true" if provenance.get("synthetic") else "false")
        info.add_text("medsynth:provenance", json.dumps(provenance))
        info.add_text("Description", "SYNTHETIC image generated by a model; not a patient image")
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=info)


def write_nifti(path: str | Path, array: np.ndarray, affine: np.ndarray | None = None,
                provenance: dict | None = None, header=None, dtype=np.float32, mark: str = "SYNTHETIC") -> None:
    """A NIfTI file; with provenance, marked (`mark`: SYNTHETIC, or MODEL LABELS for a predicted label
    map) in the header description and carrying the
    full provenance JSON as a header extension. `header`: an input's NIfTI header to keep (units,
    orientation codes, ...), with the data type and scaling of `array`."""
    import nibabel as nib

    if header is not None:
        header = header.copy()
        header.extensions.clear()
        header.set_slope_inter(1.0, 0.0)
    image = nib.Nifti1Image(np.asarray(array, dtype=dtype), np.eye(4) if affine is None else affine, header=header)
    image.set_data_dtype(dtype)
    if provenance is not None:
        image.header["descrip"] = (f"{mark} " + provenance.get("generator", "medsynth"))[:79].encode()
        image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", json.dumps(provenance).encode()))
    path = Path(path)
    suffix = ".nii.gz" if path.name.endswith(".nii.gz") else ".nii"
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + suffix)  # nibabel picks compression from the name
        try:
            nib.save(image, str(target))
            target.replace(tmp)
        finally:
            target.unlink(missing_ok=True)
