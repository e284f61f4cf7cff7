"""Post-processing of a trained LA heart segmentation, chosen on the validation cases only.

The UNet's two failing test cases segment about twice the atrium: a neighbouring chamber or vessel
joined to it, which the largest connected component keeps. This asks whether a cut in the
probabilities or a morphological opening before the largest component (bridges thinner than the
opening's ball break; what survives is grown back by at most the ball's radius inside the
original prediction) removes such joins, without training anything: the class probabilities of
every validation and test case are computed once (sliding windows, as `medsynth segment`; kept
in --cache as float16 for re-scoring), then each variant is scored.

    python benchmarks/la_postprocess.py RUN_DIR [--flips] [--cache DIR] [--out runs/bench_seg/postprocess.json]

The variant with the best mean validation Dice is marked; test Dice is reported for every variant,
beside the run's own (argmax + largest component), so the choice cannot be tuned on the test cases.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def variants() -> dict:
    """name -> (foreground probability threshold, opening radius in voxels, largest component)."""
    out = {"argmax": (0.5, 0, False), "argmax + largest component (the run's)": (0.5, 0, True)}
    for t in (0.6, 0.7, 0.8, 0.9):
        out[f"p > {t} + largest component"] = (t, 0, True)
    for r in (1, 2, 3, 4):
        out[f"opening r={r} + largest component + regrow"] = (0.5, r, True)
    return out


def ball(radius: int) -> np.ndarray:
    r = np.arange(-radius, radius + 1)
    return (r[:, None, None] ** 2 + r[None, :, None] ** 2 + r[None, None, :] ** 2) <= radius ** 2


def postprocess(foreground: np.ndarray, threshold: float, radius: int, largest: bool) -> np.ndarray:
    """Foreground probability D x H x W -> a binary map: p > threshold; with radius, opened by a
    ball of that radius before the largest 26-connected component is kept, which is then dilated
    by the same ball inside the un-opened map, so the atrium keeps its outline. (The dilation is
    bounded on purpose: an unbounded, geodesic regrowth refills every bridge and returns the
    whole component, as a first version of this benchmark did.)"""
    from scipy import ndimage

    from medsynth.models.segmentation import keep_largest_components

    pred = foreground > threshold
    if not largest or not pred.any():
        return pred
    seed = ndimage.binary_opening(pred, structure=ball(radius)) if radius else pred
    if not seed.any():
        seed = pred
    seed = keep_largest_components(seed.astype(np.uint8), 2) > 0
    if radius:
        seed = ndimage.binary_dilation(seed, structure=ball(radius)) & pred
    return seed


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Dice of two binary maps (1 when both are empty), by the segmentation recipe's own patch_dice."""
    import torch

    from medsynth.models.segmentation import patch_dice

    return float(patch_dice(torch.from_numpy(pred.astype(np.uint8)), torch.from_numpy(truth.astype(np.uint8)), 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a finished LA heart segmentation run (model.family=segmentation, two classes)")
    parser.add_argument("--flips", action="store_true", help="probabilities averaged over the 8 flips")
    parser.add_argument("--out", help="write the per-case Dice of every variant here (JSON)")
    parser.add_argument("--cache", help="keep each case's foreground probabilities here (float16 .npy), and reuse them")
    args = parser.parse_args()

    from medsynth.data.patches import read_split_file
    from medsynth.models import load_run
    from medsynth.segment import prepared_case

    recipe = load_run(args.run)
    cfg = recipe.cfg
    named = read_split_file(cfg.data.splits)
    scores: dict = {v: {"val": {}, "test": {}} for v in variants()}
    start = time.perf_counter()
    for split in ("val", "test"):
        for name in named[split]:
            case, prepared, _ = prepared_case(recipe, Path(cfg.data.path) / name)
            cached = Path(args.cache) / f"{name}{'_flips' if args.flips else ''}.npy" if args.cache else None
            if cached is not None and cached.is_file():
                probs = np.load(cached).astype(np.float32)
            else:
                probs = recipe.class_probabilities(prepared.image, flips=args.flips)[1].numpy()
                if cached is not None:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.save(cached, probs.astype(np.float16))
            truth = case.label > 0
            for v, (t, r, largest) in variants().items():
                scores[v][split][name] = dice(postprocess(probs, t, r, largest), truth)
            print(f"{split} {name}: " + ", ".join(f"{s[split][name]:.3f}" for s in scores.values()), flush=True)
    rows = {v: {s: float(np.mean(list(c.values()))) for s, c in per.items()} for v, per in scores.items()}
    chosen = max(rows, key=lambda v: rows[v]["val"])
    print(f"\n{len(named['val'])} validation and {len(named['test'])} test cases, {time.perf_counter() - start:.0f} s"
          f"{' (8 flips)' if args.flips else ''}\n")
    print("| post-processing | validation Dice | test Dice | test cases below 0.7 |\n|---|---|---|---|")
    for v, r in rows.items():
        low = sum(d < 0.7 for d in scores[v]["test"].values())
        print(f"| {v}{' (chosen on validation)' if v == chosen else ''} | {r['val']:.3f} | {r['test']:.3f} | {low} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": args.run, "flips": args.flips, "chosen": chosen, "means": rows,
                                              "per_case": scores}, indent=2))


if __name__ == "__main__":
    main()
