"""`translate(run_dir, input, out)`: a trained translation model (pix2pix or CycleGAN) applied to an .npz, a
folder of PNG/JPEG images, or a NIfTI volume slice by slice.

Every image is resized to the model's size, translated and resized back, so the output keeps
the input's shape: the same array shape in the .npz, the same file names and sizes in the image
folder, and for NIfTI the same shape, affine and header. Volumes are normalised as in training
(the run's MR normalisation, inside `mask` when given) and translated along the run's slice
axis; the output goes back to the input's own scale (the inverse of that normalisation; outside
the mask 0), as a NIfTI file or, for an output name without a suffix, a DICOM series in the
input's scanner space. Everything written is marked synthetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.folder import list_images
from medsynth.data.intensity import from_unit_range, mr_mapping, mr_normalise, to_unit_range
from medsynth.data.npz import read_npz
from medsynth.data.volumes import read_nifti, require_3d
from medsynth.dicom import write_dicom_series
from medsynth.errors import MedsynthError, reason
from medsynth.models import load_run
from medsynth.runs import check_output
from medsynth.provenance import synthetic_provenance
from medsynth.writers import save_npz, save_png, staged_folder, write_nifti


def translate_slices(recipe, slices: torch.Tensor, batch_size: int, reverse: bool = False) -> torch.Tensor:
    """N x C x H x W in [-1, 1] -> N x C' x H x W, through the model's size."""
    size = list(recipe.cfg.model.image_size)
    h, w = slices.shape[-2:]
    out = []
    for i in range(0, len(slices), batch_size):
        x = slices[i:i + batch_size].float()
        if [h, w] != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=min(h, w) > min(size))
        y = recipe.translate(x, reverse=reverse).cpu()
        if [h, w] != size:
            y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False)
        out.append(y.clamp(-1, 1))
    return torch.cat(out)


def translate(run_dir: str | Path, input: str | Path, out: str | Path, mask: str | Path | None = None,
              device: str = "cpu", batch_size: int = 64, reverse: bool = False, overwrite: bool = False,
              log=print) -> Path:
    """reverse: target -> source (CycleGAN learns both directions). An existing `out` is refused
    unless `overwrite`; a folder output is written beside it and renamed into place at the end."""
    if batch_size <= 0:
        raise MedsynthError(f"batch size must be positive, got {batch_size}")
    check_output(out, overwrite, [run_dir, input, mask])
    recipe = load_run(run_dir, device)
    if not recipe.can_translate:
        raise MedsynthError(f"{run_dir}: a {recipe.cfg.model.family} model does not translate images")
    if reverse and not recipe.translates_back:
        raise MedsynthError(f"{run_dir}: a {recipe.cfg.model.family} model translates one way only (no --reverse)")
    input, out = Path(input), Path(out)
    if not input.exists():
        raise MedsynthError(f"{input}: input not found")
    provenance = synthetic_provenance(recipe, Path(run_dir), None, kind=f"translation of {input.name}")
    name = input.name.lower()
    if name.endswith((".nii", ".nii.gz")):
        if out.suffix and not out.name.lower().endswith((".nii", ".nii.gz")):
            raise MedsynthError(f"{out}: a NIfTI input is translated into a NIfTI file (.nii.gz) or a DICOM series "
                                "(a folder name without a suffix)")
        _translate_nifti(recipe, input, out, mask, batch_size, provenance, reverse, overwrite)
    elif name.endswith(".npz"):
        if out.suffix != ".npz":
            raise MedsynthError(f"{out}: an .npz input is translated into an .npz file")
        _translate_npz(recipe, input, out, batch_size, provenance, reverse)
    elif input.is_dir():
        if out.suffix:
            raise MedsynthError(f"{out}: an image folder is translated into a folder; give a folder name")
        _translate_folder(recipe, input, out, batch_size, provenance, overwrite, reverse)
    else:
        raise MedsynthError(f"{input}: translate takes an .npz, an image folder or a NIfTI volume")
    log(f"translated {input} -> {out}")
    return out


def _check_channels(recipe, channels: int, source: Path, reverse: bool = False) -> None:
    expected = recipe.target_channels if reverse else recipe.source_channels
    if channels != expected:
        raise MedsynthError(f"{source}: {channels} channel(s), but the model translates {expected}-channel images")


def _translate_nifti(recipe, path: Path, out: Path, mask_path, batch_size: int, provenance: dict,
                     reverse: bool = False, overwrite: bool = False) -> None:
    import nibabel as nib

    _check_channels(recipe, 1, path, reverse)
    volume = require_3d(read_nifti(path), "translating a NIfTI file")
    mask = None
    if mask_path is not None:
        mask = read_nifti(mask_path).array > 0
        if mask.shape != volume.array.shape:
            raise MedsynthError(f"{mask_path}: mask of shape {mask.shape} does not match {path} {volume.array.shape}")
    axis = int(recipe.cfg.data.slice_axis)
    mode = recipe.cfg.data.mr_normalise
    normalised = mr_normalise(volume.array, mask, mode)
    slices = torch.from_numpy(np.ascontiguousarray(np.moveaxis(normalised, axis, 0)))[:, None]
    translated = translate_slices(recipe, slices, batch_size, reverse)[:, 0].numpy()
    scale, offset = mr_mapping(volume.array, mask, mode)
    result = from_unit_range(np.moveaxis(translated, 0, axis), scale, offset)
    if mask is not None:
        result = np.where(mask, result, 0.0).astype(np.float32)
    provenance = {**provenance, "output_space": {"units": "MR signal (the input's scale)", "scale": [scale],
                                                 "offset": [offset], "note": f"inverse of the input's {mode} "
                                                 "normalisation; outside the mask 0"}}
    if not out.suffix:
        with staged_folder(out, overwrite) as staging:
            write_dicom_series(staging, result, volume.affine, provenance, "MR", f"translation of {path.name}")
        return
    header = nib.load(str(path)).header
    write_nifti(out, result, volume.affine, provenance, header=header)


def _translate_npz(recipe, path: Path, out: Path, batch_size: int, provenance: dict,
                   reverse: bool = False) -> None:
    splits = read_npz(path, spatial_dims=2)
    images = np.concatenate([im for im, _ in splits.values()])  # in file order: train, val, test or `images`
    _check_channels(recipe, images.shape[1], path, reverse)
    x = torch.from_numpy(to_unit_range([images], str(path))[0])
    save_npz(out, translate_slices(recipe, x, batch_size, reverse), provenance=provenance)


def _translate_folder(recipe, folder: Path, out: Path, batch_size: int, provenance: dict,
                      overwrite: bool = False, reverse: bool = False) -> None:
    """Every image into a hidden folder beside `out`, renamed onto `out` only when all are done:
    a bad image half-way leaves no partial output (and an old `out` as it was)."""
    files = list_images(folder)
    if not files:
        raise MedsynthError(f"{folder}: no images found")
    _check_channels(recipe, 1, folder, reverse)
    with staged_folder(out, overwrite) as staging:
        _translate_files(recipe, folder, files, staging, batch_size, provenance, reverse)


def _translate_files(recipe, folder: Path, files: list[Path], staging: Path, batch_size: int,
                     provenance: dict, reverse: bool = False) -> None:
    from PIL import Image

    for f in files:
        try:
            with Image.open(f) as im:
                array = np.asarray(im.convert("L"), dtype=np.float32) / 127.5 - 1.0
        except Exception as exc:
            raise MedsynthError(f"{f}: not a readable image ({reason(exc)})") from None
        y = translate_slices(recipe, torch.from_numpy(array)[None, None], batch_size, reverse)
        target = staging / f.relative_to(folder).with_suffix(".png")
        target.parent.mkdir(parents=True, exist_ok=True)
        save_png(target, y[0], provenance)
