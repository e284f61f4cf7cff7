"""`sample(run_dir, n, out)`: draw synthetic images from a trained run.

Small sets go to one .npz. Large sets (`out_dir`) go to numbered shards of
`shard_size` images, each drawn with its own seed (seed + shard number), so a
shard is reproducible on its own; shards are written atomically, so a job
killed halfway resumes by skipping the shards that exist, and `workers`
processes split the shards between them. `manifest.csv` (file, index, label,
seed, model_sha256) is rebuilt from the shards at the end.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

import medsynth.console as console
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.provenance import file_sha256, synthetic_provenance
from medsynth.runs import WEIGHTS, check_output
from medsynth.data.intensity import from_unit_range
from medsynth.data.slices import grid_channel
from medsynth.dicom import write_dicom_series
from medsynth.writers import (OUTPUT_DTYPES, save_grid, save_npz, save_png, staged_folder, to_stored, write_nifti,
                              write_text)


def check_counts(n: int, batch_size: int, shard_size: int = 1, workers: int = 1) -> None:
    for name, value in (("number of samples", n), ("batch size", batch_size), ("shard size", shard_size),
                        ("workers", workers)):
        if value <= 0:
            raise MedsynthError(f"{name} must be positive, got {value}")


def _labels(recipe, n: int, label: int | None, start: int = 0) -> torch.Tensor | None:
    conditional = recipe.conditional
    if label is not None and not conditional:
        raise MedsynthError("--label given, but this model is not conditional")
    if label is not None and not recipe.cfg.model.multilabel and not 0 <= label < recipe.cfg.model.num_classes:
        raise MedsynthError(f"label {label} is outside the model's classes 0..{recipe.cfg.model.num_classes - 1}")
    if conditional and label is None:
        if recipe.cfg.model.multilabel:
            raise MedsynthError("this model is multi-label conditional: sampling it needs label vectors "
                                "(use the Python API: recipe.sample(n, condition=labels))")
        return (torch.arange(start, start + n)) % recipe.cfg.model.num_classes  # balanced classes
    return None if label is None else torch.full((n,), int(label))


def check_samples(recipe) -> None:
    """Refuse, with what to do instead, a model that cannot draw samples now."""
    family = recipe.cfg.model.family
    if recipe.can_translate:
        raise MedsynthError(f"a {family} model does not draw samples: it translates images "
                            "(`medsynth translate RUN --input IN --out OUT`)")
    if recipe.can_segment:
        raise MedsynthError(f"a {family} model does not draw samples: segment volumes with "
                            "`medsynth segment RUN --input ... --out ...`")
    if getattr(recipe, "from_label_maps", False):
        raise MedsynthError(f"a {family} model draws images from label maps: write (image, label map) pairs "
                            "with `medsynth sample RUN -n N --out-dir DIR`")
    if not recipe.can_sample:
        raise MedsynthError(f"a {family} model does not draw samples")


def draw(recipe, n: int, label: int | None = None, seed: int = 0, batch_size: int = 256, start: int = 0,
         **options):
    """n samples (B x C x *spatial, [-1, 1]) and their labels (None for unconditional models).

    A conditional model with no label given cycles through its classes by
    global index (start + i), so the output is a balanced labelled set.
    options: the diffusion sampler's (sampler, steps, guidance, spacing, progress, precision), see
    Recipe.sampler_settings and LatentDiffusionRecipe.sample; the VAE family's prior (MixturePrior).
    """
    if n <= 0:
        raise MedsynthError(f"number of samples must be positive, got {n}")
    check_samples(recipe)
    conditions = _labels(recipe, n, label, start)
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    chunks = []
    for first in range(0, n, batch_size):
        part = None if conditions is None else conditions[first:first + batch_size]
        chunks.append(recipe.sample(min(batch_size, n - first), condition=part, generator=generator, **options).cpu())
    one_class = kept_class(recipe)
    # an unconditional run trained on one class draws that class: its images carry it as their label
    labels = conditions if one_class is None else torch.full((n,), one_class, dtype=torch.long)
    return torch.cat(chunks), labels


def kept_class(recipe) -> int | None:
    """The one class an unconditional run was trained on (data.keep_labels=[c]), else None."""
    keep = recipe.cfg.data.get("keep_labels")
    if recipe.conditional or keep is None or len(keep) != 1:
        return None
    return int(keep[0])


def sample(run_dir: str | Path, n: int, out: str | Path | None = None, grid: str | Path | None = None,
           label: int | None = None, seed: int = 0, batch_size: int = 256, device: str = "cpu",
           out_dir: str | Path | None = None, shard_size: int = 10_000, workers: int = 1,
           sampler: str | None = None, steps: int | None = None, guidance: float | None = None,
           spacing: str | None = None, overwrite: bool = False, dtype: str | None = None,
           label_maps: str | Path | None = None, prior: str | None = None) -> Path:
    """Write n samples to `out` or as .npz shards into `out_dir`. Existing outputs are refused
    unless `overwrite`; a run's own files always. What `out` is decides the format:

    - FILE.npz: images (stored as `dtype`: uint8 by default, uint16 or float32; writers.OUTPUT_DTYPES),
      labels and provenance, readable as a dataset;
    - FILE.nii / .nii.gz (single-channel models): 3D models as one 4D image (the volumes along the
      4th axis) in the training data's scanner space (its grid's affine, HU for CT, the input's
      scale for MR) where the run knows it (model.output_space), else `dtype` (float32 0..1 by
      default); 2D models as one 3D image (the images along the 3rd axis);
    - a folder (a name without a suffix): 2D models as one PNG per image (8-bit, or 16-bit grey
      with dtype uint16) with labels.csv; 3D models as one DICOM series per volume, in scanner space.

    sampler (a name in medsynth.diffusion.SAMPLERS), steps, guidance, spacing: latent diffusion's
    (defaults: the run's config). prior: the VAE family's, "mixture" (the default for a run trained
    with model.latent_prior=gmm) or "normal" (N(0, I), the same weights).

    A run that draws images from label maps (model.family=spade) writes (image, label map) pairs
    into `out_dir` instead (medsynth.pairs), from its deformed training maps or from `label_maps`."""
    if label_maps is not None or draws_from_label_maps(run_dir):
        return _sample_pairs(run_dir, n, out, out_dir, seed, label_maps, device, overwrite,
                             label=label, grid=grid, dtype=dtype, sampler=sampler, steps=steps, guidance=guidance,
                             spacing=spacing, prior=prior)
    if (out is None) == (out_dir is None):
        raise MedsynthError("give exactly one of --out FILE.npz or --out-dir DIR")
    check_counts(n, batch_size)
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise MedsynthError(f"--dtype {dtype}: not one of {list(OUTPUT_DTYPES)}")
    if grid is not None:
        check_output(grid, overwrite, [run_dir], (".png",), "--grid")
    if out_dir is not None:
        return sample_shards(run_dir, n, Path(out_dir), label, seed, batch_size, device, shard_size, workers, grid,
                             sampler=sampler, steps=steps, guidance=guidance, spacing=spacing, overwrite=overwrite,
                             prior=prior)
    out = Path(out)
    kind = "folder" if not out.suffix else "nifti" if out.name.lower().endswith((".nii", ".nii.gz")) else "npz"
    out = check_output(out, overwrite, [run_dir], () if kind == "folder" else (".npz", ".nii", ".nii.gz"))
    recipe = load_run(run_dir, device)
    space = _check_format(recipe, out, kind, dtype)
    options = recipe.sampler_settings(sampler, steps, guidance, spacing, prior)
    # a progress bar for the diffusion samplers' many steps; a VAE's options (its prior) take none
    progress = {"progress": console.progress_bars()} if "steps" in options else {}
    images, labels = draw(recipe, n, label, seed, batch_size, **options, **progress)
    prov = synthetic_provenance(recipe, Path(run_dir), seed, n=n, label=label, **options,
                                labels=None if labels is None else labels.tolist(), output_space=space)
    if kind == "npz":
        save_npz(out, images, labels, provenance=prov, dtype=dtype or "uint8")
    elif kind == "nifti":
        _write_nifti(out, images, prov, space, dtype)
    elif recipe.cfg.model.spatial_dims == 2:
        write_png_folder(out, images, labels, prov, dtype or "uint8", overwrite)
    else:
        _write_dicom_folder(out, images, prov, space, overwrite)
    if grid is not None:
        save_grid(grid, images[:64], provenance=prov, channel=grid_channel(recipe.cfg.data))
    return out


def draws_from_label_maps(run_dir: str | Path) -> bool:
    """Whether a run's family draws images from label maps (read from its config, nothing loaded)."""
    from medsynth.config import load_config
    from medsynth.models import recipe_class
    from medsynth.runs import CONFIG, check_run_dir

    return bool(getattr(recipe_class(load_config(check_run_dir(run_dir) / CONFIG).model.family),
                        "from_label_maps", False))


def _sample_pairs(run_dir, n: int, out, out_dir, seed: int, label_maps, device: str, overwrite: bool,
                  **unused) -> Path:
    """Pairs for a label-map run, after refusing the options that do not apply to it."""
    from medsynth.pairs import sample_pairs

    if out is not None or out_dir is None:
        raise MedsynthError("this model draws (image, label map) pairs: give --out-dir DIR (not --out)")
    given = [k.replace("_", "-") for k, v in unused.items() if v is not None]
    if given:
        raise MedsynthError(f"--{', --'.join(given)}: not used when drawing (image, label map) pairs")
    return sample_pairs(run_dir, n, out_dir, seed=seed, label_maps=label_maps, device=device, overwrite=overwrite,
                        log=console.say)


def _check_format(recipe, out: Path, kind: str, dtype: str | None) -> dict | None:
    """The run's scanner space (or None), after refusing a format the model's output cannot take."""
    m = recipe.cfg.model
    space = m.get("output_space")
    space = OmegaConf.to_container(space) if space is not None and not isinstance(space, dict) else space
    if kind == "nifti" and m.in_channels != 1:
        raise MedsynthError(f"{out}: NIfTI output is for single-channel models; this one makes {m.in_channels} "
                            "channels (use .npz)")
    if kind == "nifti" and m.spatial_dims == 3 and space and dtype not in (None, "float32"):
        raise MedsynthError(f"{out}: volumes go to NIfTI in scanner units (float32); --dtype {dtype} is for .npz, "
                            "PNG and 2D NIfTI outputs")
    if kind == "folder" and m.spatial_dims == 3:
        if not space or "affine" not in space:
            raise MedsynthError(f"{out}: a DICOM series needs the training data's scanner space, which this run "
                                "does not record (trained on .npz volumes, or before 2026-11-30); write .nii.gz")
        if dtype is not None:
            raise MedsynthError(f"{out}: a DICOM series stores scanner units; --dtype is for .npz, PNG and 2D NIfTI")
    if kind == "folder" and m.spatial_dims == 2 and dtype == "float32":
        raise MedsynthError(f"{out}: PNG images are 8 or 16 bit; use --dtype uint8 or uint16, or an .npz for float32")
    return space


def _scanner(images: torch.Tensor, space: dict) -> np.ndarray:
    """B x 1 x *spatial in [-1, 1] -> B x *spatial float32 in the source's units (channel 0's mapping)."""
    return from_unit_range(images[:, 0].numpy(), space["scale"][0], space["offset"][0])


def _write_nifti(out: Path, images: torch.Tensor, prov: dict, space: dict | None, dtype: str | None) -> None:
    if images.ndim == 5 and space and "affine" in space:  # volumes in scanner space, along the 4th axis
        write_nifti(out, np.moveaxis(_scanner(images, space), 0, -1), np.array(space["affine"]), provenance=prov)
        return
    dtype = dtype or "float32"
    stored = to_stored(images, dtype, layout=False)[:, 0]  # B x *spatial
    write_nifti(out, np.moveaxis(stored, 0, -1), provenance={**prov, "stored_as": f"{dtype} {OUTPUT_DTYPES[dtype]}"},
                dtype=np.dtype(dtype))


def write_png_folder(out: Path, images: torch.Tensor, labels, prov: dict, dtype: str, overwrite: bool) -> None:
    """sample_00000.png, ... and, for single-label models, labels.csv (filename,label: what
    data.labels_csv reads), staged and renamed into place."""
    with staged_folder(out, overwrite) as staging:
        rows = ["filename,label"]
        for i, image in enumerate(images):
            name = f"sample_{i:05d}.png"
            save_png(staging / name, image, {**prov, "index": i}, dtype)
            if labels is not None and labels.ndim == 1:
                rows.append(f"{name},{int(labels[i])}")
        if len(rows) > 1:
            write_text(staging / "labels.csv", "\n".join(rows) + "\n")


def _write_dicom_folder(out: Path, images: torch.Tensor, prov: dict, space: dict, overwrite: bool) -> None:
    """One DICOM series per volume (sample_00000/IM00001.dcm, ...), staged and renamed into place."""
    volumes = _scanner(images, space)
    modality = "CT" if space.get("units") == "HU" else "MR"
    with staged_folder(out, overwrite) as staging:
        for i, volume in enumerate(volumes):
            write_dicom_series(staging / f"sample_{i:05d}", volume, np.array(space["affine"]), {**prov, "index": i},
                               modality, f"{prov.get('recipe')} sample {i}")


# --- shards ---------------------------------------------------------------------------------
SHARD = "shard_{:05d}.npz"


def _shard_plan(n: int, shard_size: int, seed: int) -> list[tuple[int, int, int, int]]:
    """(shard number, first index, count, seed) for each shard."""
    return [(k, k * shard_size, min(shard_size, n - k * shard_size), seed + k) for k in range(math.ceil(n / shard_size))]


def _write_shard(recipe, run_dir: Path, out_dir: Path, k: int, start: int, count: int, shard_seed: int,
                 label, batch_size: int, options: dict) -> None:
    images, labels = draw(recipe, count, label, shard_seed, batch_size, start=start, **options)
    prov = synthetic_provenance(recipe, run_dir, shard_seed, shard=k, first_index=start, n=count, label=label,
                                **options)
    save_npz(out_dir / SHARD.format(k), images, labels, provenance=prov,
             extra={"indices": np.arange(start, start + count, dtype=np.int64)})


def _worker(rank: int, workers: int, run_dir: str, out_dir: str, todo: list, label, batch_size: int,
            device: str, threads: int, options: dict) -> None:
    torch.set_num_threads(threads)
    recipe = load_run(run_dir, device)
    for k, start, count, shard_seed in todo[rank::workers]:
        _write_shard(recipe, Path(run_dir), Path(out_dir), k, start, count, shard_seed, label, batch_size, options)


def sample_shards(run_dir: str | Path, n: int, out_dir: Path, label: int | None = None, seed: int = 0,
                  batch_size: int = 256, device: str = "cpu", shard_size: int = 10_000, workers: int = 1,
                  grid: str | Path | None = None, sampler: str | None = None, steps: int | None = None,
                  guidance: float | None = None, spacing: str | None = None, overwrite: bool = False,
                  prior: str | None = None) -> Path:
    """Shards into out_dir; every check runs before the folder or its request.json is written."""
    check_counts(n, batch_size, shard_size, workers)
    resuming = (out_dir / "request.json").is_file()
    if not resuming and out_dir.exists() and any(out_dir.iterdir()):
        check_output(out_dir, overwrite, [run_dir], (), "--out-dir")  # a folder of other files: only if asked
    run_dir = Path(run_dir)
    recipe = load_run(run_dir, device)  # fail early on a bad run, and check the label
    _labels(recipe, 1, label)
    options = recipe.sampler_settings(sampler, steps, guidance, spacing, prior)
    model_hash = file_sha256(run_dir / WEIGHTS)
    request = {"run": str(run_dir.resolve()), "model_sha256": model_hash, "n": n, "label": label, "seed": seed,
               "shard_size": shard_size, **options}
    out_dir.mkdir(parents=True, exist_ok=True)
    req_path = out_dir / "request.json"
    if req_path.is_file():
        before = json.loads(req_path.read_text())
        if "prior" in request and "prior" not in before and request["prior"] == "mixture":
            before["prior"] = "mixture"  # written before --prior existed: such runs drew from their mixture
        if before != request:
            raise MedsynthError(f"{out_dir}: holds shards of another request ({before}); use a new --out-dir")
    else:
        write_text(req_path, json.dumps(request, indent=2))
    plan = _shard_plan(n, shard_size, seed)
    todo = [p for p in plan if not (out_dir / SHARD.format(p[0])).is_file()]  # complete by atomic writes
    if todo:
        if workers == 1:
            for k, start, count, shard_seed in todo:
                _write_shard(recipe, run_dir, out_dir, k, start, count, shard_seed, label, batch_size, options)
        else:
            ctx = torch.multiprocessing.get_context("spawn")
            threads = max(1, (os.cpu_count() or 1) // workers)
            procs = [ctx.Process(target=_worker, args=(r, workers, str(run_dir), str(out_dir), todo, label,
                                                         batch_size, device, threads, options))
                     for r in range(workers)]
            for p in procs:
                p.start()
            for p in procs:
                p.join()
            failed = [p.exitcode for p in procs if p.exitcode != 0]
            if failed:
                raise MedsynthError(f"{out_dir}: {len(failed)} sampling worker(s) failed (exit codes {failed}); "
                                    "finished shards are kept, run the same command again to resume")
    manifest = write_manifest(out_dir, plan, model_hash)
    if grid is not None:
        with np.load(out_dir / SHARD.format(0)) as f:
            first = torch.from_numpy(f["images"][:64].astype(np.float32) / 127.5 - 1)
            prov = json.loads(str(f["provenance"]))
        save_grid(grid, first[:, None] if first.ndim == 3 else first.movedim(-1, 1), provenance=prov,
                  channel=grid_channel(recipe.cfg.data))
    return manifest


def write_manifest(out_dir: Path, plan, model_hash: str) -> Path:
    """manifest.csv from the shard files themselves, checked to hold every index exactly once."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["file", "index", "label", "seed", "model_sha256"])
    for k, start, count, shard_seed in plan:
        name = SHARD.format(k)
        with np.load(out_dir / name, allow_pickle=False) as f:
            indices = f["indices"]
            labels = f["labels"][:, 0] if "labels" in f.files else None
            prov = json.loads(str(f["provenance"]))
        if prov.get("model_sha256") != model_hash or not np.array_equal(indices, np.arange(start, start + count)):
            raise MedsynthError(f"{out_dir / name}: does not match this request (another model or range)")
        for i, idx in enumerate(indices):
            writer.writerow([name, int(idx), "" if labels is None else int(labels[i]), shard_seed, model_hash])
    path = out_dir / "manifest.csv"
    write_text(path, buffer.getvalue())
    return path
