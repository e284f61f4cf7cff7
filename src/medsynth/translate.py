"""`translate(run_dir, input, out)`: a trained translation model (pix2pix or CycleGAN) applied to an .npz, a
folder of PNG/JPEG images, or a whole volume (NIfTI or NRRD file, DICOM series folder).

Images are resized to the model's size, translated and resized back, so the output keeps the
input's shape: the same array shape in the .npz, the same file names and sizes in the image folder.
A volume is turned to the training data's orientation (from its affine), normalised as in
training (the run's MR normalisation inside `mask`), cut into slices along the run's slice axis
(with their neighbours, and around the mask at native resolution, as the run was trained:
`translate_volume`), translated, and put back: the output has the input's shape, affine and header,
and intensities in the target contrast's units of the training data (the inverse of the median
normalisation of the training cases, stored in the run as model.output_space; runs from before
that go back to the input's own scale). Outside the mask it is 0. NIfTI or NRRD inputs can be
written in their own format, any volume as a NIfTI file or, for an output name without a suffix,
a DICOM series in the input's scanner space. Everything written is marked synthetic.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.folder import list_images
from medsynth.data.intensity import from_unit_range, mr_mapping, mr_normalise, to_unit_range
from medsynth.data.npz import read_npz
from medsynth.data.cases import read_any_volume
from medsynth.data.slices import case_slices, paste_in_plane
from medsynth.data.volumes import require_3d
from medsynth.dicom import write_dicom_series
from medsynth.errors import MedsynthError, reason
from medsynth.models import load_run
from medsynth.runs import check_output
from medsynth.provenance import synthetic_provenance
from medsynth.writers import save_npz, save_png, staged_folder, write_nifti, write_nrrd


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


def translate_volume(recipe, image: np.ndarray, inside: np.ndarray, batch_size: int = 64,
                     reverse: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A normalised volume (C x X x Y x Z in [-1, 1], the source contrasts; `inside`: X x Y x Z bool,
    its mask) -> (T x X x Y x Z in [-1, 1], X x Y x Z bool: the voxels translated). Every slice
    along data.slice_axis that holds some of the mask is prepared as in training (data.neighbours,
    data.crop_to_mask: case_slices), translated and put back in place; elsewhere -1 (the background)."""
    data = recipe.cfg.data
    stacks, keep, corner = case_slices(image, inside, data, source_channels=image.shape[0])
    out_channels = recipe.source_channels if reverse else recipe.target_channels
    out = np.full((out_channels, *image.shape[1:]), -1.0, dtype=np.float32)
    covered = np.zeros(image.shape[1:], dtype=bool)
    if not len(keep):
        return out, covered
    fake = translate_slices(recipe, torch.from_numpy(stacks), batch_size, reverse).numpy()  # N x T x h x w
    axis = int(data.slice_axis)
    plane = tuple(n for a, n in enumerate(image.shape[1:]) if a != axis)
    done = np.ones((1, 1, *fake.shape[-2:]), dtype=bool)
    if corner is not None:
        fake = paste_in_plane(fake, corner, plane)
        done = paste_in_plane(done, corner, plane, fill=False)
    np.moveaxis(out, 1 + axis, 1)[:, keep] = fake.transpose(1, 0, 2, 3)  # views: these write into out
    np.moveaxis(covered, axis, 0)[keep] = done[0, 0]
    return out, covered


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
    if name.endswith((".nii", ".nii.gz", ".nrrd", ".nhdr")) or _is_dicom_folder(input):
        _translate_volume_file(recipe, input, out, mask, batch_size, provenance, reverse, overwrite, log)
    elif name.endswith(".npz"):
        if out.suffix != ".npz":
            raise MedsynthError(f"{out}: an .npz input is translated into an .npz file")
        _translate_npz(recipe, input, out, batch_size, provenance, reverse)
    elif input.is_dir():
        if out.suffix:
            raise MedsynthError(f"{out}: an image folder is translated into a folder; give a folder name")
        _translate_folder(recipe, input, out, batch_size, provenance, overwrite, reverse)
    else:
        raise MedsynthError(f"{input}: translate takes an .npz, an image folder, or a volume (NIfTI, NRRD, "
                            "a DICOM series folder)")
    log(f"translated {input} -> {out}")
    return out


def _check_channels(recipe, channels: int, source: Path, reverse: bool = False, volume: bool = False) -> None:
    """Images: the model's input channels (a 2.5D model's stack included); volumes: its contrasts."""
    expected = recipe.target_channels if reverse else recipe.source_channels
    if volume and not reverse:
        expected //= 2 * int(recipe.cfg.data.neighbours) + 1
    if channels != expected:
        what = "contrast(s)" if volume else "channel(s)"
        raise MedsynthError(f"{source}: {channels} {what}, but the model translates {expected}-{what[:-3]} images")


def _is_dicom_folder(path: Path) -> bool:
    """A folder of DICOM files (a series), not a folder of PNG/JPEG images."""
    if not path.is_dir():
        return False
    files = [f for f in path.iterdir() if f.is_file() and not f.name.startswith(".")]
    return bool(files) and not list_images(path) and any(f.suffix.lower() in (".dcm", "") for f in files)


def _volume_outputs(path: Path, out: Path) -> str:
    """nifti | nrrd | dicom: what `out` asks for, refused when it cannot keep the input's header."""
    name = out.name.lower()
    if not out.suffix:
        return "dicom"
    if name.endswith((".nii", ".nii.gz")):
        return "nifti"
    if name.endswith(".nrrd"):
        if not path.name.lower().endswith((".nrrd", ".nhdr")):
            raise MedsynthError(f"{out}: an NRRD output keeps an NRRD input's header; write this {path.name} "
                                "as NIfTI (.nii.gz) or a DICOM series (a folder name without a suffix)")
        return "nrrd"
    raise MedsynthError(f"{out}: a volume is translated into a NIfTI file (.nii.gz), an NRRD file (from NRRD) or a "
                        "DICOM series (a folder name without a suffix)")


def _orientation(affine: np.ndarray, codes) -> tuple[np.ndarray | None, np.ndarray | None]:
    """(input -> training orientation, its inverse) as nibabel orientation transforms, or (None,
    None) when the run stored no orientation (runs from before) or they already agree."""
    import nibabel.orientations as nio

    if not codes:
        return None, None
    here, there = nio.io_orientation(affine), nio.axcodes2ornt(tuple(codes))
    if np.array_equal(here, there):
        return None, None
    return nio.ornt_transform(here, there), nio.ornt_transform(there, here)


def _translate_volume_file(recipe, path: Path, out: Path, mask_path, batch_size: int, provenance: dict,
                           reverse: bool = False, overwrite: bool = False, log=print) -> None:
    import nibabel.orientations as nio

    kind = _volume_outputs(path, out)
    _check_channels(recipe, 1, path, reverse, volume=True)
    volume = require_3d(read_any_volume(path), "translating a volume")
    data = recipe.cfg.data
    if mask_path is None and data.mask:
        raise MedsynthError(f"{path}: give --mask (the run was trained with intensities normalised inside "
                            f"'{data.mask}'; a whole volume would be normalised otherwise)")
    mask = None
    if mask_path is not None:
        mask_volume = require_3d(read_any_volume(Path(mask_path)), "a mask")
        mask = mask_volume.array > 0
        if mask.shape != volume.array.shape:
            raise MedsynthError(f"{mask_path}: mask of shape {mask.shape} does not match {path} {volume.array.shape}")
        # same shape but voxel axes in another order or direction (a NIfTI mask for a DICOM series)
        if not np.allclose(mask_volume.affine[:3, :3], volume.affine[:3, :3], atol=1e-3):
            raise MedsynthError(f"{mask_path}: the mask's affine differs from {path}'s in its voxel axes (another "
                                "order or direction); give the mask in the image's voxel order")
    space = recipe.cfg.model.get("output_space") or {}
    forward, backward = _orientation(volume.affine, space.get("axcodes"))
    array = volume.array if forward is None else nio.apply_orientation(volume.array, forward)
    inside = mask if mask is None or forward is None else nio.apply_orientation(mask, forward) > 0
    affine = volume.affine if forward is None else volume.affine @ nio.inv_ornt_aff(forward, volume.array.shape)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    trained = space.get("spacing")
    resampled = trained is not None and not np.allclose(spacing, trained, rtol=0.02)
    grid, grid_inside = array, inside
    if resampled:  # the model learnt anatomy at the training voxel size: translate there, come back
        from medsynth.data.cases import resample_to_spacing

        grid = resample_to_spacing(array, spacing, trained, order=1)
        grid_inside = None if inside is None else resample_to_spacing(inside.astype(np.float32), spacing, trained,
                                                                      order=0) > 0.5
    normalised = mr_normalise(grid, grid_inside, data.mr_normalise)
    everywhere = grid_inside if grid_inside is not None else np.ones(grid.shape, bool)
    translated, covered = translate_volume(recipe, normalised[None], everywhere, batch_size, reverse)
    if resampled:
        translated = F.interpolate(torch.from_numpy(translated)[None], size=array.shape, mode="trilinear",
                                   align_corners=False)[0].numpy()
        covered = F.interpolate(torch.from_numpy(covered.astype(np.float32))[None, None], size=array.shape,
                                mode="nearest")[0, 0].numpy() > 0.5
    translated = translated[0]
    scale, offset, units = _output_units(recipe, space, array, inside, reverse)
    result = from_unit_range(translated, scale, offset)
    keep = covered if inside is None else covered & inside
    result = np.where(keep, result, 0.0).astype(np.float32)
    note = "inverse of the normalisation; outside the mask 0"
    missed = 0 if inside is None else int((inside & ~covered).sum())
    if missed:  # the mask reaches past the data.crop_to_mask box the model translates
        log(f"warning: {missed} voxels of the mask lie outside the {data.crop_to_mask} px box the model translates "
            "around it; they are 0 in the output")
        note += f"; {missed} mask voxels outside the {data.crop_to_mask} px translated box: 0"
    if resampled:
        note += (f"; translated at the training spacing {[round(float(v), 4) for v in trained]} mm and resampled "
                 f"back to the input's {[round(float(v), 4) for v in spacing]} mm")
    provenance = {**provenance, "output_space": {"units": units, "scale": [scale], "offset": [offset], "note": note}}
    if kind == "dicom":  # slices along the training orientation's slice axis (axial for BraTS)
        with staged_folder(out, overwrite) as staging:
            write_dicom_series(staging, result, affine, provenance, "MR", f"translation of {path.name}")
        return
    if backward is not None:
        result = np.ascontiguousarray(nio.apply_orientation(result, backward))
    if kind == "nrrd":
        import nrrd

        write_nrrd(out, result, nrrd.read_header(str(path)), provenance)
        return
    header = None
    if path.name.lower().endswith((".nii", ".nii.gz")):
        import nibabel as nib

        header = nib.load(str(path)).header
    write_nifti(out, result, volume.affine, provenance, header=header)


def _output_units(recipe, space: dict, array: np.ndarray, inside, reverse: bool) -> tuple[float, float, str]:
    """(scale, offset, units) taking [-1, 1] back to intensities: the target contrast's median mapping
    over the training cases when the run stored it (the source's for --reverse), else the input's own
    mapping (runs from before)."""
    contrasts = list(space.get("contrasts") or [])
    if space.get("scale") is not None and len(contrasts) == len(space["scale"]):
        index = 0 if reverse else len(contrasts) - 1  # one-channel source and target
        return (float(space["scale"][index]), float(space["offset"][index]),
                f"{contrasts[index]} of the training data (median {recipe.cfg.data.mr_normalise} mapping)")
    scale, offset = mr_mapping(array, inside, recipe.cfg.data.mr_normalise)
    return scale, offset, "MR signal (the input's scale: a run without a stored output space)"


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
