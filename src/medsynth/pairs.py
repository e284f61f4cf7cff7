"""`sample_pairs(run_dir, n, out_dir)`: synthetic (image, label map) pairs from a run that draws
images from label maps (model.family=spade).

Maps come from the run's own training cases, each randomly deformed (data/label_maps.py: affine
+ elastic, seeded per pair), or from `label_maps` (a map file or a folder of them) used as given.
Every pair is written as NIfTI with the source map's affine: pair_00000_image.nii.gz (one file per
contrast, _image_0, _image_1, .. for several) and pair_00000_label.nii.gz (label values), both
marked synthetic with their provenance (seed, mask source). manifest.csv lists case, image
column(s), label, mask_source and seed; it is what `data.synthetic` reads to train a segmentation
model on the pairs. The folder is staged and renamed into place: a failure leaves no half set.

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
from medsynth.data.label_maps import check_label_map, deform_label_map
from medsynth.data.patches import load_segmentation_splits, pair_columns, to_values
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.provenance import synthetic_provenance
from medsynth.runs import check_output
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


def _training_maps(cfg) -> list[SourceMap]:
    splits = load_segmentation_splits(cfg.data, cfg.seed, which=("train",))
    return [SourceMap(f"deformed:{c.name}", c.label.astype(np.uint8), np.asarray(c.affine), deform=True)
            for c in splits.train]


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
    if cfg.model.spatial_dims != 3:
        raise MedsynthError(f"{run_dir}: pairs are written for 3D models (this one is {cfg.model.spatial_dims}D)")
    classes = list(cfg.data.classes)
    maps = _given_maps(Path(label_maps), classes, 3) if label_maps else _training_maps(cfg)
    log(f"drawing {n} pair(s) from {len(maps)} {'given' if label_maps else 'deformed training'} map(s)")
    columns = pair_columns(int(cfg.model.in_channels))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["case", *columns, "label", "mask_source", "seed"])
    with staged_folder(out_dir, overwrite) as staging:
        for i in range(n):
            source, pair_seed = maps[i % len(maps)], seed + i
            indices = deform_label_map(source.indices, pair_seed) if source.deform else source.indices
            if not indices.any():  # a deformation can push a small structure out of the volume
                indices = source.indices
            generator = torch.Generator(device=recipe.device).manual_seed(pair_seed)
            image = recipe.sample(1, condition=torch.from_numpy(indices[None, None].astype(np.int64)),
                                  generator=generator)[0].cpu().numpy()
            case = f"pair_{i:05d}"
            prov = synthetic_provenance(recipe, Path(run_dir), pair_seed, index=i, mask_source=source.name,
                                        units=UNITS)
            names = [f"{case}_{c}.nii.gz" for c in columns]
            for k, name in enumerate(names):
                write_nifti(staging / name, image[k], source.affine, provenance={**prov, "role": columns[k]})
            write_nifti(staging / f"{case}_label.nii.gz", to_values(indices, classes), source.affine,
                        provenance={**prov, "role": "label"}, dtype=np.int16)
            writer.writerow([case, *names, f"{case}_label.nii.gz", source.name, pair_seed])
            log(f"pair {i + 1}/{n}: {source.name}, seed {pair_seed}")
        write_text(staging / "manifest.csv", buffer.getvalue())
    return Path(out_dir) / "manifest.csv"
