"""Vox2Vox (or another recipe: `la_heart_remap`, the UNet with random intensity curves) against the
plain MONAI UNet at the same budget, on held-out cases: Dice and HD95 per
test case with a bootstrap interval of the mean and of the paired difference, training time, and
whole-volume inference time and peak memory per case.

    python benchmarks/segmentation_compare.py la_heart              # the full budget (configs' epochs)
    python benchmarks/segmentation_compare.py la_heart --quick      # 2 cases a split, 2 epochs: a smoke run
    python benchmarks/segmentation_compare.py la_heart --epochs 300 --runs-dir runs/bench_seg
    python benchmarks/segmentation_compare.py la_heart_remap --runs-dir runs/bench_seg

The budget is a number of training batches (trainer.max_epochs x data.patches_per_epoch /
data.batch_size), the same for both recipes, so the scores do not depend on how fast or busy the
machine is; wall time is reported beside them. The recipes train one after the other with all
threads. Inference is measured afterwards in a fresh process per run (its peak RSS is its own):
every test case is read, normalised and segmented whole by sliding windows, the largest
connected component kept as the configs say.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

ROOT = Path(__file__).resolve().parents[1]
# pair -> (baseline, model), each a config and its overrides
PAIRS = {
    "la_heart": (("configs/unet_la_heart.yaml", []), ("configs/vox2vox_la_heart.yaml", [])),
    # the same UNet with random intensity curves on half the patches (data/augment.py)
    "la_heart_remap": (("configs/unet_la_heart.yaml", []),
                       ("configs/unet_la_heart.yaml", ["data.intensity_remap=0.5", "name=unet_la_heart_remap"])),
}


def _infer(run: str, split: str = "test", flips: str = "0") -> dict:
    """Child process: segment every case of the run's `split` (test | val) whole; seconds and peak
    RSS per case; flips "1": test-time flips (8 passes averaged)."""
    from medsynth.data.patches import load_segmentation_splits, to_values
    from medsynth.metrics.segmentation import score_label_maps
    from medsynth.models import load_run

    recipe = load_run(run)
    cfg = recipe.cfg
    splits = load_segmentation_splits(cfg.data, cfg.seed, which=(split,))
    rows = {}
    for case in getattr(splits, split):
        start = time.perf_counter()
        pred = recipe.segment(case.image, case.mask, flips=flips == "1")
        seconds = time.perf_counter() - start
        scores = score_label_maps(to_values(pred, cfg.data.classes), to_values(case.label, cfg.data.classes),
                                  cfg.data, case.spacing)
        rows[case.name] = {"seconds": seconds, "shape": list(case.image.shape[1:]),
                           **{f"{m}_{k}": v[m] for k, v in scores["classes"].items() if k != "0"
                              for m in ("dice", "hd95")}}
    return {"cases": rows, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _train(config: str, overrides: list[str], runs_dir: str) -> Path:
    cmd = [str(Path(sys.executable).with_name("medsynth")), "train", config, f"runs_dir={runs_dir}", *overrides]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"{config} failed:\n{out.stderr[-3000:]}")
    return Path(out.stdout.strip().splitlines()[-1])


def _interval(values: np.ndarray, seed: int = 0, resamples: int = 2000) -> list[float]:
    from medsynth.metrics.intervals import mean_interval

    return mean_interval(values, resamples, np.random.default_rng(seed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pair", choices=sorted(PAIRS))
    parser.add_argument("--epochs", type=int, help="trainer.max_epochs for both (default: the configs')")
    parser.add_argument("--quick", action="store_true", help="2 cases per split, 2 epochs of 4 patches")
    parser.add_argument("--runs-dir", default="runs/bench_seg")
    parser.add_argument("--runs", nargs=2, metavar="RUN", help="score two finished runs (baseline, model)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    parser.add_argument("--split", choices=["test", "val"], default="test",
                        help="score on these cases (val: to choose inference settings without the test cases)")
    parser.add_argument("--flips", action="store_true", help="test-time flips (model.test_time_flips) at inference")
    args = parser.parse_args()
    overrides = ["data.limit=2", "trainer.max_epochs=2", "data.patches_per_epoch=4"] if args.quick else []
    if args.epochs:
        overrides.append(f"trainer.max_epochs={args.epochs}")
    runs = [Path(r) for r in args.runs] if args.runs else [_train(c, own + overrides, args.runs_dir)
                                                             for c, own in PAIRS[args.pair]]
    results = {}
    for run in runs:
        env = dict(os.environ)
        out = subprocess.run([sys.executable, __file__, "_infer", str(run), args.split, "1" if args.flips else "0"],
                             capture_output=True, text=True,
                             env=env, cwd=ROOT)
        if out.returncode:
            raise SystemExit(out.stderr[-3000:])
        inference = json.loads(out.stdout.strip().splitlines()[-1])
        summary = json.loads((run / "summary.json").read_text())
        results[run.name] = {"run": str(run), "summary": summary, **inference}
    names = list(results)
    cases = sorted(results[names[0]]["cases"])
    flips = " (test-time flips)" if args.flips else ""
    print(f"\n{len(cases)} {args.split} cases{flips}; budget: the same batches for both "
          f"({results[names[0]]['summary']['epochs']} epochs)\n")
    print("| recipe | batches | train min | precision | Dice mean [95% CI] | HD95 mm mean [95% CI] | "
          "inference s/case (max) | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|")
    dice = {}
    for name in names:
        r = results[name]
        d = np.array([r["cases"][c]["dice_1"] for c in cases])
        h = np.array([r["cases"][c]["hd95_1"] for c in cases])
        s = np.array([r["cases"][c]["seconds"] for c in cases])
        dice[name] = d
        lo, hi = _interval(d)
        hlo, hhi = _interval(h)
        sm = r["summary"]
        cfg = OmegaConf.load(Path(r["run"]) / "config.yaml")
        batches = sm["epochs"] * -(-cfg.data.patches_per_epoch // cfg.data.batch_size)
        print(f"| {name} | {batches} | {sm['train_seconds'] / 60:.1f} | {sm['precision']} | {d.mean():.3f} "
              f"[{lo:.3f}, {hi:.3f}] | {h.mean():.2f} [{hlo:.2f}, {hhi:.2f}] | {s.mean():.2f} ({s.max():.2f}) | "
              f"{r['peak_rss_mib']:.0f} |")
    diff = dice[names[1]] - dice[names[0]]
    lo, hi = _interval(diff)
    print(f"\npaired Dice difference {names[1]} - {names[0]}: {diff.mean():+.3f} [{lo:+.3f}, {hi:+.3f}] "
          f"(bootstrap over the {len(cases)} {args.split} cases)")
    print("\nper case Dice: " + ", ".join(f"{c[:6]} {dice[names[0]][i]:.3f}/{dice[names[1]][i]:.3f}"
                                           for i, c in enumerate(cases)))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_infer":
        print(json.dumps(_infer(*sys.argv[2:5])))
        sys.exit(0)
    main()
