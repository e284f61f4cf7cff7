"""Image similarity: SSIM, PSNR and reconstruction scores per pair, and all-pairs MS-SSIM diversity.

Images are B x C x *spatial in [-1, 1]. MS-SSIM itself (per pair and for many pairs at once)
is `medsynth.msssim`, shared with the loss.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs

from medsynth.errors import MedsynthError
from medsynth.metrics.intervals import mean_interval, pair_mean_interval
from medsynth.msssim import DATA_RANGE, all_pairs_ms_ssim, ms_ssim, msssim_settings, pairwise_ms_ssim


def ssim(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Single-scale SSIM per image (11 px window, sigma 1.5; smaller only for tiny images)."""
    _, k, sigma = msssim_settings(tuple(x.shape[2:]), scales=1)
    nd = x.ndim - 2
    value, _ = compute_ssim_and_cs(x.float(), y.float(), spatial_dims=nd, kernel_size=[k] * nd,
                                   kernel_sigma=[sigma] * nd, data_range=DATA_RANGE)
    return value.flatten(1).mean(1)


def psnr(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    mse = (x.float() - y.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(DATA_RANGE ** 2 / mse.clamp_min(1e-12))


def diversity(images: torch.Tensor, max_pairs: int = 500_000, seed: int = 0, resamples: int = 0) -> dict:
    """Mean MS-SSIM over all pairs (or a stated random subset of max_pairs pairs). Lower = more diverse.
    resamples > 0: also "ms_ssim_interval", 95%, resampling the images (all pairs) or the pairs."""
    n = len(images)
    if n < 2:
        raise MedsynthError(f"diversity needs at least 2 images, got {n}")
    total = n * (n - 1) // 2
    rng = np.random.default_rng(seed)
    interval = None
    if total <= max_pairs:
        values = all_pairs_ms_ssim(images)
        subset = False
        if resamples:
            matrix = torch.zeros(n, n, dtype=torch.float64)
            first, second = torch.triu_indices(n, n, offset=1)
            matrix[first, second] = values.double()
            interval = pair_mean_interval((matrix + matrix.T).numpy(), resamples, rng)
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, size=2 * max_pairs)
        b = rng.integers(0, n, size=2 * max_pairs)
        keep = a != b
        first, second = torch.from_numpy(a[keep][:max_pairs]), torch.from_numpy(b[keep][:max_pairs])
        values = pairwise_ms_ssim(images, first, second)
        subset = True
        if resamples:
            interval = mean_interval(values.double().numpy(), resamples, rng)
    out = {"ms_ssim_mean": float(values.mean()), "ms_ssim_std": float(values.std()), "images": n,
           "pairs": int(len(values)), "all_pairs": not subset, "pairs_possible": total}
    if interval is not None:
        out["ms_ssim_interval"] = interval
    return out


def reconstruction_scores(x: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    return {"ms_ssim": float(ms_ssim(recon, x).mean()), "ssim": float(ssim(recon, x).mean()),
            "psnr": float(psnr(recon, x).mean()), "images": len(x)}


