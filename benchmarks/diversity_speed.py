"""All-pairs MS-SSIM diversity: medsynth's batched computation vs a naive loop over MONAI.

The naive loop calls MONAI's `compute_ms_ssim` once per pair with the same
scales, window and weights (settings MONAI accepts at this size). It runs on a
random sample of the pairs (--naive-pairs) and its per-pair rate is scaled to
all pairs, since the full loop would take many minutes; both values are checked
to agree on that sample.

    python benchmarks/diversity_speed.py [--images 1000] [--naive-pairs 3000]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ms_ssim

from medsynth.msssim import MSSSIM_WEIGHTS, msssim_settings
from medsynth.metrics.similarity import diversity
from medsynth.msssim import pairwise_ms_ssim

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--naive-pairs", type=int, default=3000)
    args = parser.parse_args()
    with np.load(DATA) as f:
        base = torch.from_numpy(f["train_images"][:: max(1, len(f["train_images"]) // args.images)][: args.images])
    base = base.float()[:, None] / 127.5 - 1
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {len(base)} real PneumoniaMNIST images")
    for size in (28, 64):
        x = base if size == 28 else F.interpolate(base, size=size, mode="bilinear", antialias=False).clamp(-1, 1)
        n = len(x)
        total = n * (n - 1) // 2
        start = time.perf_counter()
        result = diversity(x)
        batched = time.perf_counter() - start

        scales, k, sigma = msssim_settings((size, size))
        w = torch.tensor(MSSSIM_WEIGHTS[:scales])
        weights = (w / w.sum()).tolist()
        rng = np.random.default_rng(0)
        first = torch.from_numpy(rng.integers(0, n, args.naive_pairs))
        second = torch.from_numpy((first.numpy() + rng.integers(1, n, args.naive_pairs)) % n)
        start = time.perf_counter()
        naive = torch.cat([compute_ms_ssim(x[i:i + 1], x[j:j + 1], 2, data_range=2.0, kernel_size=k,
                                           kernel_sigma=sigma, weights=weights).flatten()
                           for i, j in zip(first.tolist(), second.tolist())])
        naive_time = (time.perf_counter() - start) / args.naive_pairs * total
        check = pairwise_ms_ssim(x, first, second)
        diff = float((check - naive).abs().max())
        print(f"{size:>3} px: {total} pairs; batched {batched:.2f} s (mean MS-SSIM {result['ms_ssim_mean']:.4f}); "
              f"naive MONAI loop {naive_time:.1f} s (from {args.naive_pairs} pairs); ratio {naive_time / batched:.0f}x; "
              f"max |difference| on the sample {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
