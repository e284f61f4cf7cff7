"""The whole evaluation of 5000 synthetic vs 5000 real 64 px images, timed part by part.

Real: PneumoniaMNIST (all 5856 images of its three splits) resized to 64 px as
the training set; 5000 of them mirrored left-right as the "real held-out" set
(the file has too few images for 5000 + 5000 disjoint ones). Synthetic: a VAE
run's samples if --fake is given, else 5000 real images with added noise
standing in for one (every metric's cost depends on the set sizes, not on where
the images came from). The feature network is trained here for one epoch if
--features is not given. Utility (TSTR) is reported separately: the target
covers FID, KID, PRDC, memorisation and diversity on 1000 images, with 95% bootstrap intervals
(--resamples, default 200), and the fidelity floor (a val split: 1000 images flipped upside down,
for its cost). The evaluation runs in a fresh process; its peak RSS is printed at the end.

    python benchmarks/evaluate_speed.py [--n 5000] [--resamples 200] [--features RUN] [--fake RUN_OR_NPZ]
    python benchmarks/evaluate_speed.py --n 50000 --skip-utility    # the memory goal: < 4 GB peak RSS

Above the file's 5856 images, the held-out and synthetic sets are drawn with replacement and made
distinct with grey-level noise (std 4): the cost is the same as for 50 000 different images.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.evaluate import evaluate
from medsynth.models.classifier import FEATURE_DEFAULTS
from medsynth.training import train

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def to64(a: np.ndarray, block: int = 4096) -> np.ndarray:
    """uint8 N x 28 x 28 -> uint8 N x 64 x 64, a block at a time (a float copy of 50 000 would be 800 MB)."""
    out = []
    for i in range(0, len(a), block):
        t = torch.from_numpy(a[i:i + block]).float()[:, None]
        out.append(F.interpolate(t, size=64, mode="bilinear", antialias=True).round().clamp(0, 255).byte()[:, 0].numpy())
    return np.concatenate(out)


def jitter(a: np.ndarray, rng, std: float = 4.0, block: int = 4096) -> np.ndarray:
    """Images drawn more than once (n above the file's 5856) made distinct by grey-level noise; a
    block at a time, so preparing the files does not set the process's peak memory."""
    out = np.empty_like(a)
    for i in range(0, len(a), block):
        noise = rng.normal(0, std, a[i:i + block].shape).astype(np.float32)
        out[i:i + block] = np.clip(a[i:i + block] + noise, 0, 255)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5000)
    parser.add_argument("--features")
    parser.add_argument("--fake")
    parser.add_argument("--resamples", type=int, default=200)
    parser.add_argument("--skip-utility", action="store_true")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medsynth-evalbench-"))
    with np.load(DATA) as f:
        images = np.concatenate([f["train_images"], f["val_images"], f["test_images"]])
        labels = np.concatenate([f["train_labels"], f["val_labels"], f["test_labels"]])
    rng = np.random.default_rng(0)
    n = args.n
    repeat = n > len(images)  # e.g. 50 000 vs 50 000: the memory goal
    test_idx = rng.choice(len(images), n, replace=repeat)
    train_idx = np.arange(len(images))
    real = tmp / "real64.npz"
    np.savez(real, train_images=to64(images[train_idx]), train_labels=labels[train_idx],
             test_images=(jitter(to64(images[test_idx]), rng) if repeat else to64(images[test_idx]))[:, :, ::-1].copy(),
             test_labels=labels[test_idx],
             val_images=to64(images[:1000])[:, ::-1].copy(), val_labels=labels[:1000])
    fake = args.fake
    if fake is None:
        noisy = jitter(to64(images[rng.choice(len(images), n, replace=True)]), rng, std=8.0)
        fake = tmp / "fake64.npz"
        np.savez(fake, images=noisy, labels=labels[rng.choice(len(images), n)])
    features = args.features
    if features is None:
        start = time.perf_counter()
        features = train(None, [*FEATURE_DEFAULTS, f"data.path={real}", f"runs_dir={tmp / 'runs'}",
                                "trainer.max_epochs=1"], log=lambda *_: None)
        print(f"feature network (1 epoch at 64 px): {time.perf_counter() - start:.1f} s")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; real held-out {n} + train "
          f"{len(train_idx)} images at 64 px; fake {fake}")
    # the evaluation in a fresh process, so its peak RSS is its own (not the file preparation's)
    child = subprocess.run([sys.executable, __file__, "_evaluate", str(real), str(fake), str(features),
                            str(args.resamples), str(tmp / "metrics.json")], capture_output=True, text=True)
    if child.returncode:
        raise SystemExit(child.stderr[-3000:])
    r = json.loads(child.stdout.strip().splitlines()[-1])
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r["parts"].items()))
    print(f"total without utility, {args.resamples} resamples: {r['total']:.1f} s (target < 90 s); feature dim "
          f"{r['dim']}; FID {r['fid']:.3f} {r['fid_interval']}")
    print(f"peak RSS of the evaluating process {r['peak_rss_mib']:.0f} MiB (target for 50 000 vs 50 000: < 4096)")
    if args.skip_utility:
        return
    start = time.perf_counter()
    result = evaluate(real, fake, features=features, out=tmp / "metrics_u.json", log=lambda *_: None)
    print(f"utility (TSTR, 3 pairs x 2 classifiers x 300 steps): {result['seconds']['utility']:.1f} s; "
          f"FID {result['fidelity']['fid']:.3f} (floor {result['floor']['fidelity']['fid']:.3f})")


def _evaluate(real: str, fake: str, features: str, resamples: str, out: str) -> dict:
    """Child process: the timed evaluation without utility; its own peak RSS."""
    start = time.perf_counter()
    result = evaluate(real, fake, features=features, out=out, utility=False, resamples=int(resamples),
                      log=lambda *_: None)
    f = result["fidelity"]
    return {"parts": result["seconds"], "total": time.perf_counter() - start, "dim": result["features"]["dim"],
            "fid": f["fid"], "fid_interval": f.get("fid_interval"),
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_evaluate":
        print(json.dumps(_evaluate(*sys.argv[2:7])))
        sys.exit(0)
    main()
