"""Quality and training time of the adversarial recipes, each trained with its shipped config.

    python benchmarks/adversarial_quality.py [--runs-dir runs/bench] [--only dcgan_pneumonia ...]

- DCGAN / conditional DCGAN / VAE-GAN on PneumoniaMNIST: `medsynth evaluate` against the real
  test split in the domain feature space (a feature network trained here at the model's size),
  printed beside the real-vs-real floor: FID, KID, precision / recall, diversity (MS-SSIM).
- pix2pix / CycleGAN on BraTS T1c -> FLAIR: MAE, PSNR and SSIM inside the brain on the two test
  cases, beside the trivial baseline of the T1c itself (translation.json), and s per epoch.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "../shared/data/medmnist/pneumoniamnist.npz"
GENERATORS = {"dcgan_pneumonia": None, "cgan_pneumonia": 64, "vaegan_pneumonia": None, "vaegan_pneumonia64": 64}
TRANSLATORS = ["pix2pix_brats", "cyclegan_brats"]


def medsynth(*args: str) -> str:
    exe = Path(sys.executable).with_name("medsynth")
    out = subprocess.run([str(exe), *args], cwd=ROOT, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"medsynth {' '.join(args)} failed:\n{out.stderr[-2000:]}")
    return out.stdout.strip().splitlines()[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--only", nargs="*", help="recipe names to run (default: all)")
    args = parser.parse_args()
    chosen = set(args.only or [*GENERATORS, *TRANSLATORS])
    features = {}
    rows = []
    for name, size in GENERATORS.items():
        if name not in chosen:
            continue
        if size not in features:
            extra = [f"data.image_size={size}", f"name=features{size}"] if size else []
            features[size] = medsynth("features", "train", "--data", str(DATA), f"runs_dir={args.runs_dir}", *extra)
        run = Path(medsynth("train", f"configs/{name}.yaml", f"runs_dir={args.runs_dir}"))
        medsynth("evaluate", "--real", str(DATA), "--fake", str(run), "--features", features[size],
                 *(["--image-size", str(size)] if size else []))
        ev = json.loads((run / "evaluation.json").read_text())
        seconds = json.loads((run / "summary.json").read_text())["train_seconds"]
        f, floor = ev["fidelity"], ev["floor"]["fidelity"]
        rows.append((name, seconds, f["fid"], floor["fid"], f["kid"], f["precision"], f["recall"],
                     ev["diversity"]["fake"]["ms_ssim_mean"], ev["diversity"]["real"]["ms_ssim_mean"]))
    if rows:
        print(f"{'recipe':20s} {'train s':>8s} {'FID':>7s} {'(floor)':>7s} {'KID':>7s} {'prec':>5s} {'recall':>6s} "
              f"{'MS-SSIM fake':>12s} {'real':>6s}")
        for r in rows:
            print(f"{r[0]:20s} {r[1]:8.0f} {r[2]:7.2f} {r[3]:7.2f} {r[4]:7.3f} {r[5]:5.2f} {r[6]:6.2f} {r[7]:12.3f} "
                  f"{r[8]:6.3f}")
    for name in TRANSLATORS:
        if name not in chosen:
            continue
        run = Path(medsynth("train", f"configs/{name}.yaml", f"runs_dir={args.runs_dir}"))
        scores = json.loads((run / "translation.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        per_epoch = summary["train_seconds"] / max(1, summary["epochs"])
        for who in ("model", "baseline_source"):
            s = scores[who]
            print(f"{name:16s} {who:16s} MAE {s['mae']:.3f}  PSNR {s['psnr']:.2f} dB  SSIM {s['ssim']:.3f}")
        print(f"{name:16s} {per_epoch:.1f} s per epoch ({summary['epochs']} epochs, {scores['images']} test slices)")


if __name__ == "__main__":
    main()
