"""The abdominal-CT tutorial's claims, measured (Hansen, Blendowski, Heinrich: "Abdominal CT image
synthesis with variational autoencoders"): its VAE on 256 px 2.5D crops around the pancreas, (a) L1
+ KL, (b) + a perceptual loss from a network trained to segment organs in the same CT, (c) (b)
with a bilinear + conv decoder instead of transposed convolutions.

    python benchmarks/ct_vae_tutorial.py --quick        # 2 feature epochs, 2 VAE epochs: a smoke run
    python benchmarks/ct_vae_tutorial.py --epochs 150 --out runs/bench_ct/ct.json --figure benchmarks/figures/ct_vae_tutorial.png

Steps: `medsynth features train --task segmentation` on the shared DICOM CT and its label map (the
perceptual network and the audit's feature space), then configs/ct_vae_l1.yaml,
ct_vae_perceptual.yaml and ct_vae_perceptual_bilinear.yaml trained `--epochs` epochs each (the same
steps and batch), each audited by `medsynth evaluate` against real crops of the same CT: sharpness
(mean gradient magnitude) and checkerboard (period-2 spectral energy) as synthetic / real ratios,
FID / KID / precision / recall in the segmentation network's pooled features, diversity (MS-SSIM)
and memorisation, with 95% bootstrap intervals. There is one CT: the real reference crops come from
the slices the VAEs trained on, so the fidelity numbers say how close samples come to the training
images, not how well a model generalises; the claims are about texture, which this measures.

The claims, judged from the intervals:
- (a) is blurry: its sharpness ratio's interval lies below 1;
- the perceptual loss sharpens: (b)'s sharpness interval lies above (a)'s;
- it brings checkerboard artefacts: (b)'s checkerboard interval lies above (a)'s and above 1;
- the bilinear decoder removes them: (c)'s checkerboard interval lies below (b)'s, and (c) stays
  sharper than (a).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from _cli import ROOT, grids_side_by_side, medsynth

DICOM = ROOT / "../shared/data/ct_example/dicom"
LABELS = ROOT / "../shared/data/ct_example/example_seg_dicom.nii.gz"
RECIPES = {"ct_vae_l1": "(a) L1 + KL, transposed-conv decoder",
           "ct_vae_perceptual": "(b) + perceptual (segmentation network), transposed-conv decoder",
           "ct_vae_perceptual_bilinear": "(c) + perceptual, bilinear + conv decoder"}


def real_crops(out: Path, crops_per_slice: int, seed: int = 0) -> Path:
    """An npz of real 256 px crops of the recipes' slices (320 px around the pancreas, 2.5D),
    uint8 N x 256 x 256 x 3: test = the centre crop and crops_per_slice - 1 random ones per slice,
    val and train = crops_per_slice other random crops per slice each."""
    from medsynth.config import load_config
    from medsynth.data.slices import read_ct_slices

    cfg = load_config(ROOT / "configs" / "ct_vae_l1.yaml",
                      [f"data.path={DICOM.resolve()}", f"data.label_path={LABELS.resolve()}"])
    slices = read_ct_slices(cfg.data)  # N x 3 x 320 x 320 in [-1, 1]
    size, side = int(cfg.data.crop_size), slices.shape[-1]
    rng = np.random.default_rng(seed)

    def crops(n: int, centre: bool) -> np.ndarray:
        out = []
        for s in slices:
            corners = [((side - size) // 2,) * 2] if centre else []
            corners += [tuple(rng.integers(0, side - size + 1, 2)) for _ in range(n - len(corners))]
            out += [s[:, t:t + size, l:l + size] for t, l in corners]
        return np.round((np.stack(out).transpose(0, 2, 3, 1) + 1) * 127.5).clip(0, 255).astype(np.uint8)

    path = out / "ct_real_crops.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, test_images=crops(crops_per_slice, True), val_images=crops(crops_per_slice, False),
                        train_images=crops(crops_per_slice, False))
    return path


def row(ev: dict) -> dict:
    t, f, floor = ev["texture"], ev["fidelity"], ev["floor"]
    return {"sharpness": t["sharpness"]["ratio"], "sharpness_interval": t["sharpness"].get("ratio_interval"),
            "checkerboard": t["checkerboard"]["ratio"],
            "checkerboard_interval": t["checkerboard"].get("ratio_interval"),
            "floor_sharpness": floor.get("texture", {}).get("sharpness", {}).get("ratio"),
            "floor_checkerboard": floor.get("texture", {}).get("checkerboard", {}).get("ratio"),
            "fid": f["fid"], "fid_interval": f.get("fid_interval"), "fid_floor": floor["fidelity"]["fid"],
            "kid": f["kid"], "precision": f["precision"], "recall": f["recall"],
            "ms_ssim": ev["diversity"]["fake"]["ms_ssim_mean"], "ms_ssim_real": ev["diversity"]["real"]["ms_ssim_mean"],
            "memorised": ev.get("privacy", {}).get("pixel", {}).get("rate")}


def above(x: list | None, y: list | None) -> bool | None:
    """Whether interval x lies wholly above interval y (None without intervals)."""
    return None if x is None or y is None else x[0] > y[1]


def claims(rows: dict) -> dict:
    a, b, c = (rows.get(k) for k in RECIPES)
    out = {}
    if a:
        out["a_blurry"] = None if a["sharpness_interval"] is None else a["sharpness_interval"][1] < 1
    if a and b:
        out["perceptual_sharpens"] = above(b["sharpness_interval"], a["sharpness_interval"])
        above_a = above(b["checkerboard_interval"], a["checkerboard_interval"])
        out["perceptual_checkerboard"] = None if above_a is None else above_a and b["checkerboard_interval"][0] > 1
    if b and c:
        out["bilinear_removes_checkerboard"] = above(b["checkerboard_interval"], c["checkerboard_interval"])
    if a and c:
        out["bilinear_stays_sharper_than_a"] = above(c["sharpness_interval"], a["sharpness_interval"])
    return out


def fmt_ci(value: float, ci) -> str:
    return f"{value:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def table(rows: dict) -> str:
    lines = ["| recipe | train min | sharpness / real [95% CI] | checkerboard / real [95% CI] | FID [95% CI] (floor) | "
             "KID | precision / recall | MS-SSIM synthetic (real) | memorised share |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        lines.append(f"| {RECIPES[name]} | {r['minutes']:.1f} | {fmt_ci(r['sharpness'], r['sharpness_interval'])} | "
                     f"{fmt_ci(r['checkerboard'], r['checkerboard_interval'])} | "
                     f"{fmt_ci(r['fid'], r['fid_interval'])} ({r['fid_floor']:.3f}) | {r['kid']:.4f} | "
                     f"{r['precision']:.2f} / {r['recall']:.2f} | {r['ms_ssim']:.3f} ({r['ms_ssim_real']:.3f}) | "
                     f"{r['memorised'] if r['memorised'] is None else round(r['memorised'], 2)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 feature epochs, 2 VAE epochs, 16 samples, no intervals")
    parser.add_argument("--epochs", type=int, default=150, help="VAE epochs for each recipe (default 150: 300 steps)")
    parser.add_argument("--feature-epochs", type=int, default=60, help="segmentation network epochs (default 60)")
    parser.add_argument("--samples", type=int, default=64, help="synthetic images audited per recipe (default 64)")
    parser.add_argument("--features", help="reuse this `features train --task segmentation` run")
    parser.add_argument("--only", nargs="*", choices=list(RECIPES), help="recipes to run (default: all three)")
    parser.add_argument("--runs-dir", default="runs/bench_ct")
    parser.add_argument("--figure", help="write the sample grids side by side here (PNG)")
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args()
    epochs, feature_epochs = (2, 2) if args.quick else (args.epochs, args.feature_epochs)
    runs_dir = Path(args.runs_dir)
    audit = ["-n", "16", "--resamples", "0"] if args.quick else ["-n", str(args.samples)]
    features = args.features or medsynth("features", "train", "--task", "segmentation", "--data", str(DICOM.resolve()),
                                         "--labels", str(LABELS.resolve()), f"runs_dir={runs_dir}",
                                         f"trainer.max_epochs={feature_epochs}")
    feature_scores = json.loads((Path(features) / "features.json").read_text())
    real = real_crops(runs_dir, 2 if args.quick else 4)
    rows, runs = {}, {}
    for recipe in args.only or list(RECIPES):
        start = time.perf_counter()
        perceptual = [] if recipe == "ct_vae_l1" else [f"loss.perceptual_net={features}"]
        run = medsynth("train", f"configs/{recipe}.yaml", f"data.path={DICOM.resolve()}",
                       f"data.label_path={LABELS.resolve()}", f"runs_dir={runs_dir}", f"trainer.max_epochs={epochs}",
                       *perceptual)
        minutes = (time.perf_counter() - start) / 60
        medsynth("evaluate", "--real", str(real), "--fake", run, "--features", features, "--no-utility", *audit)
        runs[recipe] = run
        rows[recipe] = {"run": run, "minutes": minutes, **row(json.loads((Path(run) / "evaluation.json").read_text()))}
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps({"rows": rows, "features": features}, indent=2))
    verdict = claims(rows)
    print(f"\nsegmentation network {features}: held-out Dice {json.dumps({k: round(v, 3) for k, v in feature_scores.items() if k.startswith('dice')})}")
    print(f"\n{epochs} epochs each\n{table(rows)}\nclaims: {verdict}")
    if args.figure:
        grids_side_by_side({RECIPES[name].split(",")[0] + (", bilinear" if "bilinear" in name else ""):
                            Path(run) / "samples.png" for name, run in runs.items()}, args.figure, columns=3, inches=4)
    if args.out:
        Path(args.out).write_text(json.dumps({"rows": rows, "claims": verdict, "features": features,
                                              "feature_scores": feature_scores,
                                              "budget": {"epochs": epochs, "feature_epochs": feature_epochs,
                                                         "quick": args.quick}}, indent=2))


if __name__ == "__main__":
    main()
