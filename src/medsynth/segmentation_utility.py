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
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsynth.case_evaluation import evaluate_segmentation
from medsynth.data.label_maps import foreground_box
from medsynth.errors import MedsynthError
from medsynth.metrics.intervals import LEVEL
from medsynth.models import load_run
from medsynth.training import train

ARMS = {"real": None, "synthetic": "replace", "real+synthetic": "add"}


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
                         synthetic_share: float | None = None, log=print) -> dict:
    """Train `seg_config` (+ `overrides`) on each arm, score each on the real test cases; the result
    dict (evaluation.json layout: task, sets, segmentation_utility, settings). `synthetic_share`: the
    real+synthetic arm's data.synthetic_share (None: every case alike)."""
    manifest = pairs_manifest(pairs)
    arms = {}
    for arm, mode in ARMS.items():
        extra = [] if mode is None else [f"data.synthetic={manifest.resolve()}", f"data.synthetic_mode={mode}"]
        if mode == "add" and synthetic_share is not None:
            extra.append(f"data.synthetic_share={synthetic_share}")
        log(f"segmentation utility: training on {arm}")
        run = train(seg_config, [*overrides, *extra, f"runs_dir={runs_dir}", f"name=utility-{arm.replace('+', '-')}"],
                    log=lambda *_: None)
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
                                     "synthetic_share": synthetic_share},
            "map_agreement": map_agreement(load_run(arms["real"]["run"]), manifest),
            "privacy": pair_privacy(recipe.cfg, manifest),
            "settings": {"seed": seed, "intervals": {"level": LEVEL, "resamples": resamples,
                                                     "method": "percentile bootstrap over cases"}}}
