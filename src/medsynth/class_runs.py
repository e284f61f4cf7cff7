"""One labelled synthetic set from several unconditional runs, each trained on one class.

Why: a conditional generator must share one decoder (and, for the VAE family, one latent space)
between classes; a mixture prior fitted to the pooled codes then draws codes that sit between the
classes, which the label does not steer (benchmarks/RESULTS.md, the conditional VAE-GAN re-audited).
Training one unconditional model per class (`data.keep_labels=[c]`) and drawing each class from its
own model keeps each class's samples where that class's images are; the set they make together is
labelled, so `medsynth evaluate` can score its train-on-synthetic utility.

`sample_classes(run_dirs, n, out)`: how many images each class gets is `class_ratio`: "train" (the
default) in proportion to the images each run was trained on, so the set has the training data's
class mix, as an unconditional model trained on all classes would draw; "balanced" the same for
every class (a conditional model's default). The audit compares a set with the real test split,
so a mix unlike the data's costs fidelity (benchmarks/RESULTS.md, PneumoniaMNIST: FID 4.56 balanced
against 0.07 in the training data's mix, the same two runs). The classes are spread evenly
through the set (its first images show every class); each run draws its share with the same
seed, so each class's images equal those of `medsynth sample RUN -n COUNT` with that seed and
that class's count.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medsynth.data.slices import grid_channel
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.provenance import medsynth_version, synthetic_provenance
from medsynth.runs import SUMMARY, check_output
from medsynth.sampling import check_counts, write_png_folder, draw, kept_class
from medsynth.writers import OUTPUT_DTYPES, save_grid, save_npz


CLASS_RATIOS = ("train", "balanced")


def class_counts(weights: dict[int, float], n: int) -> dict[int, int]:
    """n split between the classes in proportion to `weights` (largest remainders get the rest;
    ties to the lower class), every count summing to n."""
    total = sum(weights.values())
    exact = {c: n * w / total for c, w in weights.items()}
    counts = {c: int(v) for c, v in exact.items()}
    for c in sorted(exact, key=lambda c: (-(exact[c] - counts[c]), c))[:n - sum(counts.values())]:
        counts[c] += 1
    return counts


def class_order(counts: dict[int, int]) -> list[int]:
    """The class of each image, spread evenly: image i goes to the class furthest behind its share
    of the first i + 1 images (ties to the lower class). Equal counts give 0, 1, 0, 1, ..."""
    n = sum(counts.values())
    given = dict.fromkeys(counts, 0)
    order = []
    for i in range(n):
        c = max(counts, key=lambda c: ((i + 1) * counts[c] / n - given[c], -c))
        given[c] += 1
        order.append(c)
    return order


def train_images(run_dir: Path, recipe) -> int:
    """The images a run was trained on: summary.json's train_images (written since 2026-12-07), else
    its training split counted again from its data settings."""
    try:
        return int(json.loads((Path(run_dir) / SUMMARY).read_text())["train_images"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    from medsynth.data import load_splits

    try:
        return len(load_splits(recipe.cfg.data, recipe.cfg.model.spatial_dims, recipe.cfg.seed).train.images)
    except MedsynthError as exc:
        raise MedsynthError(f"{run_dir}: how many images it was trained on is not recorded and its data cannot be "
                            f"read ({exc}); draw with --class-ratio balanced") from None


def load_class_runs(run_dirs: list[str | Path], device: str = "cpu") -> dict[int, tuple[Path, object]]:
    """class -> (run directory, loaded recipe), every run checked to be an unconditional model
    trained on one class, the classes distinct."""
    runs: dict[int, tuple[Path, object]] = {}
    for run_dir in run_dirs:
        recipe = load_run(run_dir, device)
        c = kept_class(recipe)
        if c is None:
            keep = recipe.cfg.data.get("keep_labels")
            why = "a conditional model" if recipe.conditional else f"trained with data.keep_labels={keep}"
            raise MedsynthError(f"{run_dir}: {why}; several runs make one labelled set only when each is an "
                                "unconditional model trained on one class (data.keep_labels=[c])")
        if c in runs:
            raise MedsynthError(f"{run_dir}: trained on class {c}, as {runs[c][0]} is; give one run per class")
        runs[c] = (Path(run_dir), recipe)
    if len(runs) < 2:
        raise MedsynthError("a labelled set from one-class runs needs two or more runs (one per class)")
    return dict(sorted(runs.items()))


def sample_classes(run_dirs: list[str | Path], n: int, out: str | Path, grid: str | Path | None = None,
                   seed: int = 0, batch_size: int = 256, device: str = "cpu", overwrite: bool = False,
                   dtype: str | None = None, sampler: str | None = None, steps: int | None = None,
                   guidance: float | None = None, spacing: str | None = None, prior: str | None = None,
                   class_ratio: str = "train") -> Path:
    """Write n images (B x C x H x W) with their class labels (B) drawn from one-class runs to `out`:
    an .npz (images, labels, provenance) or a folder of PNGs with labels.csv (2D runs), each class's
    share set by `class_ratio` (CLASS_RATIOS). The provenance holds each run's own record (weights
    hash, recipe, seed, prior) under "per_class"."""
    check_counts(n, batch_size)
    if class_ratio not in CLASS_RATIOS:
        raise MedsynthError(f"--class-ratio {class_ratio}: not one of {list(CLASS_RATIOS)}")
    if dtype is not None and dtype not in OUTPUT_DTYPES:
        raise MedsynthError(f"--dtype {dtype}: not one of {list(OUTPUT_DTYPES)}")
    out = Path(out)
    if out.suffix and out.suffix != ".npz":
        raise MedsynthError(f"{out}: a set drawn from several runs is written as an .npz or a folder of PNGs")
    out = check_output(out, overwrite, [Path(r) for r in run_dirs])
    if grid is not None:
        check_output(grid, overwrite, [Path(r) for r in run_dirs], (".png",), "--grid")
    runs = load_class_runs(run_dirs, device)
    if not out.suffix and any(r.cfg.model.spatial_dims != 2 for _, r in runs.values()):
        raise MedsynthError(f"{out}: a folder of PNGs holds 2D images; write 3D runs' set as an .npz")
    weights = {c: (train_images(run_dir, recipe) if class_ratio == "train" else 1)
               for c, (run_dir, recipe) in runs.items()}
    counts = class_counts(weights, n)
    labels = torch.tensor(class_order(counts))
    images, records = None, {}
    for c, (run_dir, recipe) in runs.items():
        if counts[c] == 0:
            continue
        options = recipe.sampler_settings(sampler, steps, guidance, spacing, prior)
        drawn, _ = draw(recipe, counts[c], None, seed, batch_size, **options)
        if images is None:
            images = torch.empty((n, *drawn.shape[1:]), dtype=drawn.dtype)
        elif drawn.shape[1:] != images.shape[1:]:
            first = next(iter(records.values()))["run"]
            raise MedsynthError(f"{run_dir}: draws images of shape {list(drawn.shape[1:])}, the run {first} "
                                f"{list(images.shape[1:])}; the runs of one set must draw one shape")
        images[labels == c] = drawn
        records[str(c)] = synthetic_provenance(recipe, run_dir, seed, n=counts[c], label=c, **options)
    prov = {"synthetic": True, "generator": f"medsynth {medsynth_version()}", "family": "one run per class",
            "seed": seed, "n": n, "class_ratio": class_ratio, "per_class": records, "labels": labels.tolist()}
    first = next(iter(runs.values()))[1]
    if out.suffix == ".npz":
        save_npz(out, images, labels, provenance=prov, dtype=dtype or "uint8")
    else:
        write_png_folder(out, images, labels, prov, dtype or "uint8", overwrite)
    if grid is not None:
        save_grid(grid, images[:64], provenance=prov, channel=grid_channel(first.cfg.data))
    return out
