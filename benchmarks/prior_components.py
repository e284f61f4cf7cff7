"""How many mixture components a VAE-family set should draw from, chosen on the validation split:
one-class runs (or one run) refitted with each K (`medsynth fit-prior`, no retraining), drawn as
one set the size of the val split (`medsynth sample`), audited against the real val images
(`medsynth evaluate` on the data file without its test split, so the val split is the real set;
no TSTR). The test split is never read: score the chosen K on it afterwards, once.

    python benchmarks/prior_components.py --runs CLASS0_RUN CLASS1_RUN --features FEATURES64 \\
        --data ../shared/data/medmnist/pneumoniamnist.npz --image-size 64 --components 9 4 2 1 --out-dir runs/prior_k
    python benchmarks/prior_components.py ... --quick      # 128 drawn images, K in 2 1: a smoke run

A K equal to the runs' own is drawn from the runs as they are. Prints FID, MS-SSIM (and the val
split's), coverage and the memorised share per K, and the mixture's mean log-likelihood of the
training codes per run; writes every evaluation under --out-dir. The 2026-12-07 table in
benchmarks/RESULTS.md was made with the commands this script issues.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from _cli import ROOT, medsynth


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="the run(s) drawn together (one per class)")
    parser.add_argument("--features", required=True, help="the feature run the audit embeds in")
    parser.add_argument("--data", required=True, help="the .npz the runs trained on (train, val, test splits)")
    parser.add_argument("--image-size", type=int, help="resize the real images to the runs' size")
    parser.add_argument("--components", type=int, nargs="+", default=[9, 4, 2, 1])
    parser.add_argument("--out-dir", default="runs/prior_components")
    parser.add_argument("--quick", action="store_true", help="128 drawn images, K in 2 1")
    args = parser.parse_args()
    out = (ROOT / args.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    with np.load(ROOT / args.data) as f:  # the file without its test split: evaluate scores against val
        trainval = {k: f[k] for k in f.files if not k.startswith("test_")}
    n = 128 if args.quick else len(trainval["val_images"])
    if args.quick:
        trainval["val_images"], trainval["val_labels"] = trainval["val_images"][:n], trainval["val_labels"][:n]
    real = out / "trainval.npz"
    np.savez(real, **trainval)
    runs = [Path(r).resolve() for r in args.runs]
    rows = {}
    for k in [2, 1] if args.quick else args.components:
        own = [json.loads((r / "summary.json").read_text())["metrics"].get("latent_prior_components") for r in runs]
        drawn_from = runs if all(c == k for c in own) else []
        for i, run in enumerate(runs if not drawn_from else []):
            refit = out / f"run{i}_k{k}"
            if not refit.exists():
                medsynth("fit-prior", str(run), "--components", str(k), "--out", str(refit))
            drawn_from.append(refit)
        fake = out / f"val_k{k}.npz"
        medsynth("sample", *map(str, drawn_from), "-n", str(n), "--out", str(fake), "--overwrite")
        size = ["--image-size", str(args.image_size)] if args.image_size else []
        medsynth("evaluate", "--real", str(real), "--fake", str(fake), "--features", args.features, *size,
                 "--no-utility", "--out", str(out / f"val_k{k}.json"), "--overwrite")
        ev = json.loads((out / f"val_k{k}.json").read_text())
        likelihood = [json.loads((r / "summary.json").read_text())["metrics"].get("latent_prior_mean_log_likelihood")
                      for r in drawn_from]
        rows[k] = (ev, likelihood)
    print("\n| components | mean log-likelihood per run | FID [95% CI] | MS-SSIM (val split's) | coverage | memorised |")
    print("|---|---|---|---|---|---|")
    for k, (ev, likelihood) in rows.items():
        f, d = ev["fidelity"], ev["diversity"]
        iv = f.get("fid_interval") or [float("nan")] * 2
        print(f"| {k} | {' / '.join(f'{v:.1f}' for v in likelihood if v is not None)} | {f['fid']:.2f} "
              f"[{iv[0]:.2f}, {iv[1]:.2f}] | {d['fake']['ms_ssim_mean']:.3f} ({d['real']['ms_ssim_mean']:.3f}) | "
              f"{f['coverage']:.3f} | {ev['privacy']['pixel']['rate']:.3f} |")


if __name__ == "__main__":
    main()
