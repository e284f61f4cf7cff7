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


# stored sample types: what [-1, 1] becomes (medsynth's readers map each back to [-1, 1])
OUTPUT_DTYPES = {"uint8": "0..255", "uint16": "0..65535", "float32": "0..1"}


def to_stored(images: torch.Tensor, dtype: str = "uint8", layout: bool = True) -> np.ndarray:
    """[-1, 1] B x C x *spatial -> `dtype` (OUTPUT_DTYPES: uint8 0..255, uint16 0..65535, float32
    0..1), in MedMNIST layout (N x H x W, N x H x W x 3, N x D x H x W) unless layout=False."""
    shifted = images.detach().float().clamp(-1, 1) + 1.0
    if dtype == "float32":
        arr = (shifted / 2.0).cpu().numpy()
    elif dtype in ("uint8", "uint16"):  # (x + 1) * max / 2 in float32: uint8 as medsynth has always stored it
        arr = (shifted * (float(np.iinfo(dtype).max) / 2.0)).round().cpu().numpy().astype(dtype)
    else:
        raise MedsynthError(f"output dtype {dtype!r} is not one of {list(OUTPUT_DTYPES)}")
    if not layout:
        return arr
    if arr.shape[1] == 1:
        return arr[:, 0]
    return np.moveaxis(arr, 1, -1)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    return to_stored(images, "uint8")


def save_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None,
             provenance: dict | None = None, extra: dict | None = None, dtype: str = "uint8") -> None:
    """Images (and labels N x 1 or N x k) under the keys `images` / `labels`, readable as a dataset;
    `provenance` as a JSON string under the key `provenance` (no pickle needed to read it).
    dtype: how the images are stored (OUTPUT_DTYPES)."""
    payload = {"images": to_stored(images, dtype), **(extra or {})}
    if provenance is not None:
        payload["provenance"] = np.array(json.dumps(provenance))
    if labels is not None:
        lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        payload["labels"] = lab[:, None] if lab.ndim == 1 else lab
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(fh, **payload)


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2, channel: int | None = None
               ) -> np.ndarray:
    """Tile B x C x *spatial images into one uint8 H x W (x 3) array; 3D volumes show their middle
    slice. `channel`: show only that channel, in grey (3 channels that are neighbouring slices, not
    colours, would otherwise be tinted as RGB)."""
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if channel is not None:
        images = images[:, channel:channel + 1]
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


SYNTHETIC_NOTE = "SYNTHETIC image generated by a model; not a patient image"


def save_grid(path: str | Path, images: torch.Tensor, nrow: int | None = None, provenance: dict | None = None,
              pad: int = 2, description: str = SYNTHETIC_NOTE, channel: int | None = None) -> None:
    """A PNG grid; with `provenance`, marked synthetic in its text chunks (`description`: what a
    viewer shows, for a grid that is not synthetic throughout); `channel` as grid_image."""
    canvas = grid_image(images, nrow, pad, channel)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG", pnginfo=_png_info(provenance, description))


def _png_info(provenance: dict | None, description: str) -> PngInfo | None:
    if provenance is None:
        return None
    info = PngInfo()
    info.add_text("Software", provenance.get("generator", "medsynth"))
    info.add_text("medsynth:synthetic", "true" if provenance.get("synthetic") else "false")
    info.add_text("medsynth:provenance", json.dumps(provenance))
    info.add_text("Description", description)
    return info


def save_png(path: str | Path, image: torch.Tensor, provenance: dict | None = None, dtype: str = "uint8",
             description: str = SYNTHETIC_NOTE) -> None:
    """One C x H x W image in [-1, 1] at its own size: 8-bit (grey or RGB) or 16-bit (grey only,
    dtype uint16), marked like every grid."""
    if dtype not in ("uint8", "uint16"):
        raise MedsynthError(f"{path}: PNG images are 8 or 16 bit (uint8 or uint16), not {dtype}")
    array = to_stored(image[None], dtype)[0]
    if dtype == "uint16" and array.ndim == 3:
        raise MedsynthError(f"{path}: 16-bit PNG is for single-channel images; use uint8 or an .npz output")
    picture = Image.fromarray(array)  # uint16 -> mode I;16
    with atomic_path(path) as tmp:
        picture.save(tmp, format="PNG", pnginfo=_png_info(provenance, description))


@contextmanager
def staged_folder(out: str | Path, overwrite: bool = False):
    """Yield a hidden folder beside `out` to write into; renamed onto `out` only when the block
    succeeds (a failure half-way leaves no partial output and an old `out` as it was). With
    `overwrite`, the old `out` goes only once the new one is in place."""
    import shutil

    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    except OSError as exc:
        raise MedsynthError(f"{out}: cannot write here ({exc.strerror or exc})") from None
    os.chmod(staging, 0o777 & ~_umask())
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    aside = None
    if out.exists() and overwrite:
        aside = out.with_name(f".{out.name}.old-{staging.name}")
        out.rename(aside)
    staging.rename(out)
    if aside is not None:
        shutil.rmtree(aside) if aside.is_dir() else aside.unlink()


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


def write_nrrd(path: str | Path, array: np.ndarray, header: dict, provenance: dict | None = None) -> None:
    """An NRRD file with an input's geometry fields (space, space directions, space origin, kinds)
    kept from `header`; with provenance, marked SYNTHETIC in `content` and carrying the provenance
    JSON as the key/value field `medsynth_provenance`."""
    import nrrd

    keep = ("space", "space directions", "space origin", "kinds", "space units", "measurement frame")
    out = {k: header[k] for k in keep if k in header}
    out["encoding"] = "gzip"
    if provenance is not None:
        out["content"] = "SYNTHETIC " + provenance.get("generator", "medsynth")
        out["medsynth_provenance"] = json.dumps(provenance)
    with atomic_path(path) as tmp:
        nrrd.write(str(tmp), np.asarray(array, dtype=np.float32), out)
