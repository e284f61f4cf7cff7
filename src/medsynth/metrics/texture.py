"""Two image measures for the claims of the abdominal-CT VAE tutorial (perceptual loss sharpens,
transposed convolutions leave a checkerboard), each per image and as a synthetic / real ratio:

- checkerboard: the share of an image's spectral energy (its mean removed) at the period-2
  frequencies, the Nyquist row and column of its 2D FFT, where the stride-2 pattern of transposed
  convolutions (Odena et al. 2016) puts its energy. A pure (-1)^(i+j) pattern scores 1, anything
  built from frequencies below Nyquist 0. Ratio > 1: more period-2 energy than real images have.
- sharpness: the mean gradient magnitude (forward differences, in the images' [-1, 1] units). A
  ramp rising by c per pixel scores c. Ratio < 1: blurrier than real images.

Ratios come with a percentile bootstrap interval (both sets resampled).
"""

from __future__ import annotations

import numpy as np
import torch

from medsynth.metrics.intervals import LEVEL, percentile_interval


def checkerboard_fraction(images: torch.Tensor) -> np.ndarray:
    """B x C x H x W -> B: share of each image's spectral energy (DC removed; channels summed) on
    the Nyquist row and column (period 2 along either axis). Odd sizes have no Nyquist frequency
    along that axis: it contributes nothing."""
    x = images.double()
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs() ** 2  # B x C x H x W
    h, w = x.shape[-2:]
    nyquist = torch.zeros(h, w, dtype=torch.bool)
    if h % 2 == 0:
        nyquist[h // 2, :] = True
    if w % 2 == 0:
        nyquist[:, w // 2] = True
    total = power.sum(dim=(1, 2, 3))
    at = power[..., nyquist].sum(dim=(1, 2))
    return torch.where(total > 0, at / total.clamp_min(1e-300), torch.zeros_like(total)).numpy()


def sharpness(images: torch.Tensor) -> np.ndarray:
    """B x C x H x W -> B: mean over pixels and channels of the gradient magnitude
    sqrt(dx^2 + dy^2), forward differences on the (H-1) x (W-1) pixels that have both."""
    x = images.double()
    dy = x[..., 1:, :-1] - x[..., :-1, :-1]
    dx = x[..., :-1, 1:] - x[..., :-1, :-1]
    return (dx ** 2 + dy ** 2).sqrt().mean(dim=(1, 2, 3)).numpy()


def _ratio(fake: np.ndarray, real: np.ndarray, resamples: int, seed: int) -> dict:
    value = float(fake.mean() / real.mean()) if real.mean() > 0 else float("nan")
    out = {"ratio": value, "fake": float(fake.mean()), "real": float(real.mean())}
    if resamples and real.mean() > 0:
        rng = np.random.default_rng(seed)
        draws = [fake[rng.integers(0, len(fake), len(fake))].mean()
                 / max(real[rng.integers(0, len(real), len(real))].mean(), 1e-300) for _ in range(resamples)]
        out["ratio_interval"] = percentile_interval(draws, LEVEL)
    return out


def texture_scores(fake: torch.Tensor, real: torch.Tensor, resamples: int = 0, seed: int = 0) -> dict:
    """{"checkerboard": {...}, "sharpness": {...}} for 2D sets (B x C x H x W): per measure the
    synthetic / real ratio of the set means, both means, and (resamples > 0) the ratio's interval."""
    return {"checkerboard": _ratio(checkerboard_fraction(fake), checkerboard_fraction(real), resamples, seed),
            "sharpness": _ratio(sharpness(fake), sharpness(real), resamples, seed + 1)}
