"""Image similarity: SSIM, PSNR, MS-SSIM per pair, and all-pairs MS-SSIM diversity.

Images are B x C x *spatial in [-1, 1]. The per-pair functions use
`medsynth.losses.ms_ssim` (MONAI's SSIM terms, size-adaptive scales). The
diversity function computes the same numbers for many pairs at once: each
image's local means and variances are filtered once per scale, and only the
cross term G * (x y) is filtered per pair, with the separable Gaussian.
"""

from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from monai.metrics.regression import compute_ssim_and_cs

from medsynth.errors import MedsynthError
from medsynth.losses import DATA_RANGE, MSSSIM_WEIGHTS, ms_ssim, msssim_settings

K1, K2 = 0.01, 0.03


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


def _gauss_1d(k: int, sigma: float) -> torch.Tensor:
    d = torch.arange(k, dtype=torch.float32) - (k - 1) / 2
    g = torch.exp(-(d ** 2) / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Valid-mode separable Gaussian filter over every spatial axis of B x C x *spatial."""
    c, nd = x.shape[1], x.ndim - 2
    conv = getattr(F, f"conv{nd}d")
    for axis in range(nd):
        shape = [1] * nd
        shape[axis] = len(g)
        x = conv(x, g.view(1, 1, *shape).expand(c, 1, *shape).to(x.dtype), groups=c)
    return x


def pairwise_ms_ssim(images: torch.Tensor, first: torch.Tensor, second: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
    """MS-SSIM of images[first[p]] vs images[second[p]] for every pair p (as `ms_ssim` with relu'd terms,
    which is how MONAI's metric treats negative contrast)."""
    scales, k, sigma = msssim_settings(tuple(images.shape[2:]))
    weights = torch.tensor(MSSSIM_WEIGHTS[:scales], dtype=torch.float64)
    weights = weights / weights.sum()
    g = _gauss_1d(k, sigma)
    c1, c2 = (K1 * DATA_RANGE) ** 2, (K2 * DATA_RANGE) ** 2
    pool = getattr(F, f"avg_pool{images.ndim - 2}d")
    levels = []
    x = images.float()
    for level in range(scales):  # per image: the pooled image, its local mean and E[x^2]
        levels.append((x, _blur(x, g), _blur(x * x, g)))
        if level < scales - 1:
            x = pool(x, 2)
    out = torch.empty(len(first), dtype=torch.float64)
    for start in range(0, len(first), chunk):
        i, j = first[start:start + chunk], second[start:start + chunk]
        value = torch.ones(len(i), dtype=torch.float64)
        for level, (xs, mu, mu2) in enumerate(levels):
            mu_x, mu_y = mu[i], mu[j]
            var_x, var_y = mu2[i] - mu_x ** 2, mu2[j] - mu_y ** 2
            cov = _blur(xs[i] * xs[j], g) - mu_x * mu_y
            cs = (2 * cov + c2) / (var_x + var_y + c2)
            term = cs if level < scales - 1 else cs * (2 * mu_x * mu_y + c1) / (mu_x ** 2 + mu_y ** 2 + c1)
            term = term.flatten(1).mean(1).double().clamp_min(0.0)
            value *= term ** weights[level]
        out[start:start + len(i)] = value
    return out.float()


def diversity(images: torch.Tensor, max_pairs: int = 500_000, seed: int = 0) -> dict:
    """Mean MS-SSIM over all pairs (or a stated random subset of max_pairs pairs). Lower = more diverse."""
    n = len(images)
    if n < 2:
        raise MedsynthError(f"diversity needs at least 2 images, got {n}")
    total = n * (n - 1) // 2
    if total <= max_pairs:
        first, second = torch.triu_indices(n, n, offset=1)
        subset = False
    else:
        rng = np.random.default_rng(seed)
        a = rng.integers(0, n, size=2 * max_pairs)
        b = rng.integers(0, n, size=2 * max_pairs)
        keep = a != b
        first, second = torch.from_numpy(a[keep][:max_pairs]), torch.from_numpy(b[keep][:max_pairs])
        subset = True
    values = pairwise_ms_ssim(images, first, second)
    return {"ms_ssim_mean": float(values.mean()), "ms_ssim_std": float(values.std()), "images": n,
            "pairs": int(len(values)), "all_pairs": not subset, "pairs_possible": total}


def reconstruction_scores(x: torch.Tensor, recon: torch.Tensor) -> dict[str, float]:
    return {"ms_ssim": float(ms_ssim(recon, x).mean()), "ssim": float(ssim(recon, x).mean()),
            "psnr": float(psnr(recon, x).mean()), "images": len(x)}


