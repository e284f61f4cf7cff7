"""`sample_pairs(run_dir, n, out_dir)`: synthetic (image, label map) pairs from a run that draws
images from label maps (model.family=spade).

Maps come from the run's own training cases, each randomly deformed (data/label_maps.py: affine
+ elastic, seeded per pair), or from `label_maps`: maps used as given (3D: a map file or a folder
of them; 2D: an .npz with `masks`, N x H x W), or a model of label maps (a run trained with
data.format=label_maps, e.g. a 3D VAE) that draws a new map for every pair: anatomy no patient had. 3D pairs are written as NIfTI with the source map's
affine: pair_00000_image.nii.gz (one file per contrast, _image_0, _image_1, .. for several) and
pair_00000_label.nii.gz (label values), both marked synthetic with their provenance (seed, mask
source); manifest.csv lists case, image column(s), label, mask_source and seed, and is what
`data.synthetic` reads to train a segmentation model on the pairs. 2D pairs (slices along
data.slice_axis that hold foreground) go to pairs.npz in medsynth's .npz layout (`images` N x H x W,
or N x H x W x C for several contrasts, float32 0..1 for the model's [-1, 1]; `masks` N x H x W
label values; `provenance`) with manifest.csv (index, mask_source, seed). The folder is
staged and renamed into place: a failure leaves no half set.

Images are in the training images' normalised units (each case's contrasts z-scored inside the
case, mapped to [-1, 1] as data.mr_normalise does), which is also how a segmentation model
trained on them normalises its input.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsynth.data.cases import read_volume
from medsynth.data.intensity import structures_only
from medsynth.data.label_maps import check_label_map, deform_label_map
from medsynth.data.patches import load_segmentation_splits, pair_columns, to_values
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.provenance import synthetic_provenance
from medsynth.runs import check_output, is_run
from medsynth.writers import staged_folder, write_nifti, write_text

MAP_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".h5", ".hdf5")
UNITS = "normalised as in training (data.mr_normalise per case, mapped to [-1, 1])"


@dataclass
class SourceMap:
    name: str
    indices: np.ndarray  # *spatial class indices
    affine: np.ndarray
    deform: bool  # training maps are deformed; given maps are used as they are


def _given_maps(path: Path, classes: list[int], dims: int) -> list[SourceMap]:
    if dims == 2:
        return _given_flat_maps(path, classes)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.name.lower().endswith(MAP_SUFFIXES)) \
        if path.is_dir() else []
    if not files:
        raise MedsynthError(f"{path}: no label map file ({', '.join(MAP_SUFFIXES)}) found")
    maps = []
    for f in files:
        volume = read_volume(f)
        maps.append(SourceMap(f"given:{f.name}", check_label_map(volume.array, classes, dims, str(f)),
                              np.asarray(volume.affine), deform=False))
    return maps


def grid_affine(case, spacing) -> np.ndarray:
    """The affine of a prepared case's arrays: its file's, or with data.spacing (the arrays were
    resampled to it) each axis's direction kept and its step set to that spacing; the first voxel
    stays where it was (scipy's zoom keeps the corner voxels' centres; the exact step differs from
    the target by under one voxel over the volume's extent)."""
    affine = np.asarray(case.affine, dtype=np.float64).copy()
    if spacing is not None:
        axes = affine[:3, :3]
        affine[:3, :3] = axes / np.linalg.norm(axes, axis=0) * np.asarray(list(spacing), dtype=np.float64)
    return affine


def _given_flat_maps(path: Path, classes: list[int]) -> list[SourceMap]:
    """2D maps: the `masks` (N x H x W) of an .npz file."""
    if not (path.is_file() and path.name.lower().endswith(".npz")):
        raise MedsynthError(f"{path}: 2D label maps are given as an .npz file with `masks` (N x H x W)")
    with np.load(path, allow_pickle=False) as f:
        if "masks" not in f.files:
            raise MedsynthError(f"{path}: no `masks` array (it has {sorted(f.files)})")
        masks = f["masks"]
    if masks.ndim != 3:
        raise MedsynthError(f"{path}: `masks` of shape {list(masks.shape)}: expected N x H x W")
    return [SourceMap(f"given:{path.name}:{i}", check_label_map(m, classes, 2, f"{path} masks[{i}]"), np.eye(4),
                      deform=False) for i, m in enumerate(masks)]


def _training_maps(cfg, flat: int | None) -> list[SourceMap]:
    """The training cases' maps (3D), or for 2D models their slices along `flat` that hold foreground."""
    splits = load_segmentation_splits(cfg.data, cfg.seed, which=("train",))
    if flat is None:
        return [SourceMap(f"deformed:{c.name}", c.label.astype(np.uint8), grid_affine(c, cfg.data.spacing), deform=True)
                for c in splits.train]
    maps = []
    for c in splits.train:
        label = np.moveaxis(c.label.astype(np.uint8), flat, 0)
        maps += [SourceMap(f"deformed:{c.name}:slice{k}", label[k], np.eye(4), deform=True)
                 for k in np.flatnonzero(label.reshape(len(label), -1).any(1))]
    if len({m.indices.shape for m in maps}) > 1:
        raise MedsynthError("the training cases' slices differ in size; give 2D maps of one size with --label-maps")
    return maps


# a model of maps that draws mostly empty maps is refused rather than drawn from for ever
MAX_DRAWS_PER_MAP = 10


def _model_maps(run: Path, n: int, seed: int, classes: list[int], bands: int, device: str) -> list[SourceMap]:
    """n new maps drawn from a model of label maps (a run trained with data.format=label_maps), each
    resized back to the box its training maps were cut to; one per pair, used as drawn. A drawn map
    without any structure voxel (all background or tissue bands) is skipped (a gap in the draw
    numbers of the manifest's mask_source): a pair with an empty label map teaches a segmentation
    model that there is nothing to find. After
    MAX_DRAWS_PER_MAP x n draws without n usable maps the model of maps is refused. Their grid: the
    map model's data.spacing, else data.source_spacing, else 1 mm, axis-aligned (the box has no
    patient's position)."""
    from medsynth.data.label_maps import maps_from_images

    model = load_run(run, device)
    c = model.cfg
    if c.data.format != "label_maps" or not model.can_sample or model.from_label_maps:
        raise MedsynthError(f"{run}: not a model of label maps (a run trained with data.format=label_maps)")
    if list(c.data.classes) != classes:
        raise MedsynthError(f"{run}: draws maps of classes {list(c.data.classes)}; this model takes {classes}")
    if int(c.data.tissue_bands or 0) != bands:
        raise MedsynthError(f"{run}: draws maps with data.tissue_bands={c.data.tissue_bands or 0}; this model was "
                            f"trained on maps with {bands}")
    if model.conditional:
        raise MedsynthError(f"{run}: a conditional model of maps; draw its maps yourself and give them as files")
    spacing = c.data.spacing or c.data.source_spacing or [1.0, 1.0, 1.0]
    affine = np.diag([*(float(s) for s in spacing), 1.0])
    generator = torch.Generator(device=model.device).manual_seed(seed)
    box = list(c.model.output_space["box"])
    kept, draws = [], 0
    while len(kept) < n and draws < MAX_DRAWS_PER_MAP * n:
        with torch.no_grad():
            # no more than the maps still missing (so n <= 16 draws the same stream as before skipping)
            batch = maps_from_images(model.sample(min(16, n - len(kept)), generator=generator).cpu(), box)
        for m in batch:
            if len(kept) < n and structures_only(m, len(classes)).any():
                kept.append(SourceMap(f"model:{Path(run).name}:{draws}", m, affine, deform=False))
            draws += 1
    if len(kept) < n:
        raise MedsynthError(f"{run}: {draws} maps drawn, {len(kept)} of them hold any structure (classes "
                            f"{classes[1:]}), fewer than the {n} pairs asked for: this model of maps draws empty "
                            "maps; train it longer, draw from a prior fitted to its codes "
                            "(model.latent_prior=gmm), or draw from the training maps (no --label-maps)")
    return kept


def draw_pair(recipe, source: SourceMap, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(class indices *spatial, image C x *spatial in [-1, 1]) from one source map: deformed with
    `seed` when it is a training map (kept as it was when a deformation pushed every structure out
    of the volume), the image drawn with noise from `seed`."""
    indices = deform_label_map(source.indices, seed) if source.deform else source.indices
    if not structures_only(indices, len(recipe.cfg.data.classes)).any():
        indices = source.indices
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    image = recipe.sample(1, condition=torch.from_numpy(indices[None, None].astype(np.int64)), generator=generator)
    return indices, image[0].cpu().numpy()


def _write_flat_pairs(staging: Path, recipe, run_dir, maps: list[SourceMap], n: int, seed: int, log) -> str:
    """2D pairs into pairs.npz; returns manifest.csv's text."""
    from medsynth.writers import save_npz

    classes = list(recipe.cfg.data.classes)
    images, masks, rows = [], [], ["index,mask_source,seed"]
    for i in range(n):
        source, pair_seed = maps[i % len(maps)], seed + i
        indices, image = draw_pair(recipe, source, pair_seed)
        images.append(torch.from_numpy(image))
        masks.append(to_values(structures_only(indices, len(classes)), classes))
        rows.append(f"{i},{source.name},{pair_seed}")
        log(f"pair {i + 1}/{n}: {source.name}, seed {pair_seed}")
    prov = synthetic_provenance(recipe, Path(run_dir), seed, n=n, units=UNITS,
                                mask_sources="manifest.csv (per pair, with its seed)")
    save_npz(staging / "pairs.npz", torch.stack(images), provenance=prov, dtype="float32",
             extra={"masks": np.stack(masks)})
    return "\n".join(rows) + "\n"


def _write_volume_pairs(staging: Path, recipe, run_dir, maps: list[SourceMap], n: int, seed: int, log) -> str:
    """3D pairs as NIfTI files; returns manifest.csv's text."""
    classes = list(recipe.cfg.data.classes)
    columns = pair_columns(int(recipe.cfg.model.in_channels))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", *columns, "label", "mask_source", "seed"])
    for i in range(n):
        source, pair_seed = maps[i % len(maps)], seed + i
        indices, image = draw_pair(recipe, source, pair_seed)
        case = f"pair_{i:05d}"
        prov = synthetic_provenance(recipe, Path(run_dir), pair_seed, index=i, mask_source=source.name, units=UNITS)
        names = [f"{case}_{c}.nii.gz" for c in columns]
        for k, name in enumerate(names):
            write_nifti(staging / name, image[k], source.affine, provenance={**prov, "role": columns[k]})
        write_nifti(staging / f"{case}_label.nii.gz", to_values(structures_only(indices, len(classes)), classes),
                    source.affine,
                    provenance={**prov, "role": "label"}, dtype=np.int16)
        writer.writerow([case, *names, f"{case}_label.nii.gz", source.name, pair_seed])
        log(f"pair {i + 1}/{n}: {source.name}, seed {pair_seed}")
    return buffer.getvalue()


def sample_pairs(run_dir: str | Path, n: int, out_dir: str | Path, seed: int = 0, label_maps: str | Path | None = None,
                 device: str = "cpu", overwrite: bool = False, log=print) -> Path:
    """Write n pairs and manifest.csv into out_dir; returns the manifest's path."""
    if n <= 0:
        raise MedsynthError(f"number of pairs must be positive, got {n}")
    out_dir = check_output(out_dir, overwrite, [run_dir, label_maps], (), "--out-dir")
    recipe = load_run(run_dir, device)
    if not getattr(recipe, "from_label_maps", False):
        raise MedsynthError(f"{run_dir}: a {recipe.cfg.model.family} model does not draw images from label maps")
    cfg = recipe.cfg
    classes, dims = list(cfg.data.classes), int(cfg.model.spatial_dims)
    flat = int(cfg.data.slice_axis) if dims == 2 else None
    bands = int(cfg.data.tissue_bands or 0)
    if label_maps and is_run(label_maps):
        if dims != 3:
            raise MedsynthError(f"--label-maps {label_maps}: maps from a model of maps are for 3D models")
        maps, kind = _model_maps(Path(label_maps), n, seed, classes, bands, device), "drawn"
    elif label_maps and bands > 1:
        raise MedsynthError(f"--label-maps {label_maps}: this model was trained on maps with tissue bands "
                            f"(data.tissue_bands={bands}), which maps given as files do not carry; draw from the "
                            "training maps (no --label-maps) or from a model of maps trained with the same bands")
    elif label_maps:
        maps, kind = _given_maps(Path(label_maps), classes, dims), "given"
    else:
        maps, kind = _training_maps(cfg, flat), "deformed training"
    log(f"drawing {n} pair(s) from {len(maps)} {kind} map(s)")
    write = _write_flat_pairs if dims == 2 else _write_volume_pairs
    with staged_folder(out_dir, overwrite) as staging:
        write_text(staging / "manifest.csv", write(staging, recipe, run_dir, maps, n, seed, log))
    return Path(out_dir) / "manifest.csv"
