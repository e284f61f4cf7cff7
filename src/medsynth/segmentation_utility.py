"""What synthetic (image, label map) pairs are worth for segmentation: one segmentation recipe
trained three times at the same budget, and each scored on the real held-out cases.

- real:            the recipe as it is (its real training cases);
- synthetic:       the pairs alone (data.synthetic, synthetic_mode=replace);
- real+synthetic:  the real training cases and the pairs (synthetic_mode=add; with `synthetic_share`
                   that share of the patches from the pairs, else every case alike).

The budget is the recipe's own: trainer.max_epochs x data.patches_per_epoch patches, drawn at random
from whatever the training set holds, so every arm sees the same number of batches; validation and
test cases are the real ones in all three. Scores per arm: Dice and HD95 per class per test case
(case_evaluation.evaluate_segmentation, the whole case segmented as `medsynth segment` does), means
with bootstrap intervals over cases; and per foreground class the ratio of the synthetic arm's mean
Dice to the real arm's, with a paired bootstrap interval (the same cases resampled for both).

Beside it, the audit's nearest-neighbour privacy check on the volumes (metrics/privacy.py): every
synthetic image, and every real test image as the reference, cut to the recipe's patch size
around its foreground's centre (cases differ in size; the box holds the structure the map
describes), its voxel-space RMS distance to the nearest real training case cut the same way;
memorised share (synthetic closer than the 5th percentile of the real test cases' distances),
authenticity and near copies. And whether the images follow their maps: the real arm's model
segments every synthetic image, Dice of its labels to the pair's map (`map_agreement`).

Several synthetic sets are best compared against one real arm: `real_run` reuses a real-arm run
trained earlier, after checking it was trained with every setting this call would use (so its
scores are the ones this call would get, up to the CPU's rounding), instead of training it again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from medsynth.case_evaluation import evaluate_segmentation
from medsynth.config import load_config
from medsynth.data.label_maps import foreground_box
from medsynth.errors import MedsynthError
from medsynth.metrics.intervals import LEVEL
from medsynth.models import load_run
from medsynth.runs import CONFIG, SUMMARY, check_run_dir
from medsynth.training import train

ARMS = {"real": None, "synthetic": "replace", "real+synthetic": "add"}
WHERE = ("runs_dir", "run_dir", "name")  # where a run was written, not how it was trained


def _flat(node, prefix: str = "") -> dict:
    """A resolved config container as {dotted key: value}."""
    if not isinstance(node, dict):
        return {prefix: node}
    return {k: v for key, value in node.items() for k, v in _flat(value, f"{prefix}.{key}" if prefix else key).items()}


def _split_cases(path) -> object:
    """data.splits compared by the cases it names (a benchmark writes the same split to a new path)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError, TypeError):
        return path


def real_arm_run(run: str | Path, seg_config: str | Path, overrides: list[str] | tuple = ()) -> Path:
    """`run` checked to be the real arm this utility would train: a finished run of `seg_config` +
    `overrides` with no synthetic data, every setting equal but where it was written (data.splits by
    the cases it names; settings filled from the data at training by the data settings); else one
    error naming the settings that differ."""
    run = check_run_dir(run)
    try:
        status = json.loads((run / SUMMARY).read_text()).get("status")
    except (OSError, ValueError):
        status = None
    if status != "finished":
        raise MedsynthError(f"--seg-real-run {run}: not a finished run ({SUMMARY} status {status!r})")
    wanted = _flat(OmegaConf.to_container(load_config(seg_config, list(overrides)), resolve=True))
    had = _flat(OmegaConf.to_container(load_config(run / CONFIG), resolve=True))
    # a key this call leaves unset (None) is filled from the data at training (model.image_size,
    # num_classes, ...): the data settings it comes from are compared instead
    differ = [k for k in sorted(set(wanted) | set(had))
              if k not in WHERE and wanted.get(k) is not None and wanted.get(k) != had.get(k)]
    if had.get("data.synthetic") is not None:  # unset in `wanted`, so the loop above would pass it
        differ.insert(0, "data.synthetic")
    if "data.splits" in differ and _split_cases(wanted["data.splits"]) == _split_cases(had.get("data.splits")):
        differ.remove("data.splits")
    if differ:
        shown = ", ".join(f"{k}={had.get(k)!r} (this evaluation: {wanted.get(k)!r})" for k in differ[:6])
        raise MedsynthError(f"--seg-real-run {run}: not the real arm of this evaluation, trained with {shown}"
                            + (f" and {len(differ) - 6} more" if len(differ) > 6 else ""))
    return run


def pairs_manifest(pairs: str | Path) -> Path:
    """A pairs folder (its manifest.csv) or the manifest itself, checked to list label maps."""
    pairs = Path(pairs)
    manifest = pairs / "manifest.csv" if pairs.is_dir() else pairs
    if not manifest.is_file():
        raise MedsynthError(f"{pairs}: no manifest.csv of (image, label map) pairs (made by `medsynth sample` "
                            "of a model that draws from label maps)")
    header = manifest.read_text().splitlines()[:1]
    if not header or "label" not in header[0].split(","):
        raise MedsynthError(f"{manifest}: has no label column: not a manifest of (image, label map) pairs")
    return manifest


def ratio_interval(synthetic: np.ndarray, real: np.ndarray, resamples: int, seed: int) -> list[float] | None:
    """Percentile bootstrap interval of mean(synthetic) / mean(real), cases resampled in pairs."""
    if resamples <= 0 or len(real) < 2:
        return None
    rng = np.random.default_rng(seed)
    picks = rng.integers(len(real), size=(resamples, len(real)))
    ratios = synthetic[picks].mean(1) / np.maximum(real[picks].mean(1), 1e-12)
    alpha = (1 - LEVEL) / 2
    return [float(np.quantile(ratios, alpha)), float(np.quantile(ratios, 1 - alpha))]


def _cases(cfg, manifest: Path | None, which: tuple[str, ...]):
    """The segmentation recipe's cases prepared as in its training: the real ones (manifest None) or
    the synthetic pairs as its training split."""
    import copy

    from medsynth.data.patches import load_segmentation_splits

    data = copy.deepcopy(cfg.data)
    data.synthetic, data.synthetic_mode = (str(manifest), "replace") if manifest else (None, "add")
    return load_segmentation_splits(data, cfg.seed, which=which)


def map_agreement(recipe, manifest: Path) -> dict:
    """Does each drawn image show its map's structure where the map says? The segmentation model
    trained on the real cases segments every synthetic image whole; Dice of its labels to the pair's
    map, per foreground class, per pair and mean."""
    from medsynth.data.patches import to_values
    from medsynth.metrics.segmentation import score_label_maps

    cfg, classes = recipe.cfg, list(recipe.cfg.data.classes)
    per_pair = {}
    for case in _cases(cfg, manifest, ("train",)).train:
        pred = recipe.segment(case.image, case.mask)
        scores = score_label_maps(to_values(pred, classes), to_values(case.label, classes), cfg.data, case.spacing)
        per_pair[case.name] = {f"dice_class_{k}": v["dice"] for k, v in scores["classes"].items() if k != "0"}
    keys = sorted({k for s in per_pair.values() for k in s})
    return {"pairs": per_pair, "mean": {k: float(np.mean([s[k] for s in per_pair.values()])) for k in keys},
            "model": "the real arm's segmentation run"}


def pair_privacy(cfg, manifest: Path) -> dict:
    """The nearest-neighbour privacy check of the synthetic images against the real training cases
    of the segmentation recipe `cfg`, with its real test cases as the reference (module docstring)."""
    import torch

    from medsynth.metrics.privacy import privacy_report

    real = _cases(cfg, None, ("train", "test"))
    fake = _cases(cfg, manifest, ("train",)).train
    size = list(cfg.model.image_size)

    def boxes(cases):
        return torch.from_numpy(np.stack([foreground_box(c.image, c.label, size) for c in cases]))

    report, closest = privacy_report(boxes(fake), boxes(real.train), boxes(real.test))
    report["box"] = size
    report["closest"] = [{"synthetic": fake[int(i)].name, "train": real.train[int(j)].name}
                         for i, j in closest[:5].tolist()]
    return report


def segmentation_utility(pairs: str | Path, seg_config: str | Path, overrides: list[str] | tuple = (),
                         runs_dir: str | Path = "runs/utility", resamples: int = 200, seed: int = 0,
                         synthetic_share: float | None = None, real_run: str | Path | None = None,
                         log=print) -> dict:
    """Train `seg_config` (+ `overrides`) on each arm, score each on the real test cases; the result
    dict (evaluation.json layout: task, sets, segmentation_utility, settings). `synthetic_share`: the
    real+synthetic arm's data.synthetic_share (None: every case alike). `real_run`: a real arm trained
    earlier, reused once `real_arm_run` has checked it (the result records it under `reused`)."""
    manifest = pairs_manifest(pairs)
    reused = real_arm_run(real_run, seg_config, overrides) if real_run is not None else None
    arms = {}
    for arm, mode in ARMS.items():
        extra = [] if mode is None else [f"data.synthetic={manifest.resolve()}", f"data.synthetic_mode={mode}"]
        if mode == "add" and synthetic_share is not None:
            extra.append(f"data.synthetic_share={synthetic_share}")
        if mode is None and reused is not None:
            log(f"segmentation utility: the real arm is {reused} (trained earlier, same settings)")
            run = reused
        else:
            log(f"segmentation utility: training on {arm}")
            run = train(seg_config, [*overrides, *extra, f"runs_dir={runs_dir}",
                                     f"name=utility-{arm.replace('+', '-')}"], log=lambda *_: None)
        recipe = load_run(run)
        if recipe.cfg.model.family != "segmentation":
            raise MedsynthError(f"{seg_config}: model.family={recipe.cfg.model.family}; the utility trains a "
                                "segmentation recipe")
        scored = evaluate_segmentation(recipe, None, resamples, seed, log)
        arms[arm] = {"run": str(run), **scored["segmentation"]}
        test = scored["sets"]["real"]
    budget = {"batches": int(recipe.cfg.trainer.max_epochs) * -(-int(recipe.cfg.data.patches_per_epoch)
                                                                  // int(recipe.cfg.data.batch_size)),
              "batch_size": int(recipe.cfg.data.batch_size), "patch_size": list(recipe.cfg.model.image_size)}
    ratios = {}
    for name in [str(c) for c in recipe.cfg.data.classes[1:]]:
        key = f"dice_class_{name}"
        cases = list(arms["real"]["cases"])
        real = np.array([arms["real"]["cases"][c]["classes"][name]["dice"] for c in cases])
        synthetic = np.array([arms["synthetic"]["cases"][c]["classes"][name]["dice"] for c in cases])
        ratios[key] = {"synthetic_over_real": float(synthetic.mean() / max(real.mean(), 1e-12)),
                       "interval": ratio_interval(synthetic, real, resamples, seed)}
    return {"task": "segmentation_utility",
            "sets": {"synthetic": {"source": str(manifest)}, "real": test},
            "segmentation_utility": {"arms": arms, "ratio": ratios, "budget": budget,
                                     "config": str(seg_config), "overrides": list(overrides),
                                     "synthetic_share": synthetic_share,
                                     "reused": {"real": str(reused)} if reused is not None else {}},
            "map_agreement": map_agreement(load_run(arms["real"]["run"]), manifest),
            "privacy": pair_privacy(recipe.cfg, manifest),
            "settings": {"seed": seed, "intervals": {"level": LEVEL, "resamples": resamples,
                                                     "method": "percentile bootstrap over cases"}}}
