"""Distribution distances in a feature space: FID, KID and precision / recall / density / coverage.

Inputs are feature matrices N x D (float). FID and KID follow Heusel et al.
2017 and Binkowski et al. 2018 (cubic polynomial kernel, unbiased MMD^2 over
random subsets); PRDC follows Naeem et al. 2020 (k-nearest-neighbour balls).
"""

from __future__ import annotations

import numpy as np
import torch

from medsynth.errors import MedsynthError


def _check(a: np.ndarray, b: np.ndarray, least: int, what: str) -> None:
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise MedsynthError(f"{what}: feature matrices must be N x D with the same D, got {a.shape} and {b.shape}")
    if min(len(a), len(b)) < least:
        raise MedsynthError(f"{what} needs at least {least} images per set, got {len(a)} and {len(b)}")
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise MedsynthError(f"{what}: features hold NaN or inf")


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + tr(S_a) + tr(S_b) - 2 tr((S_a S_b)^(1/2)).

    tr((S_a S_b)^(1/2)) is the sum of the square roots of the eigenvalues of
    S_a S_b (real and >= 0 for covariance matrices), which avoids sqrtm's
    complex round-off on near-singular covariances.
    """
    _check(a, b, 2, "FID")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(0) - b.mean(0)
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(sa @ sb)
    tr_sqrt = np.sqrt(np.clip(eig.real, 0.0, None)).sum()
    return float(max(mu @ mu + np.trace(sa) + np.trace(sb) - 2.0 * tr_sqrt, 0.0))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> tuple[float, float, int]:
    """Unbiased MMD^2 with k(x, y) = (x.y / D + 1)^3, averaged over random subsets: (mean, std, subset size)."""
    _check(a, b, 2, "KID")
    a, b = a.astype(np.float64), b.astype(np.float64)
    m = min(subset_size, len(a), len(b))
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        values.append((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
                      - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values)), m


def _kth_neighbour_radius(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance from each row to its k-th nearest other row."""
    out = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i:i + chunk], x)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the row itself is at distance 0
    return torch.cat(out)


def prdc(real: np.ndarray, fake: np.ndarray, k: int = 5) -> dict[str, float]:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours."""
    _check(real, fake, k + 1, f"PRDC with k={k}")
    r = torch.from_numpy(np.ascontiguousarray(real, dtype=np.float32))
    f = torch.from_numpy(np.ascontiguousarray(fake, dtype=np.float32))
    r_radius = _kth_neighbour_radius(r, k)
    f_radius = _kth_neighbour_radius(f, k)
    inside_real = torch.zeros(len(f))  # per fake: how many real balls hold it
    real_hit = torch.zeros(len(r), dtype=torch.bool)  # per real: does its ball hold a fake (coverage)
    real_in_fake = torch.zeros(len(r), dtype=torch.bool)  # per real: inside some fake ball (recall)
    for i in range(0, len(r), 2048):
        d = torch.cdist(r[i:i + 2048], f)  # R x F
        within = d < r_radius[i:i + 2048, None]
        inside_real += within.sum(0)
        real_hit[i:i + 2048] = within.any(1)
        real_in_fake[i:i + 2048] = (d < f_radius[None, :]).any(1)
    return {"precision": float((inside_real > 0).float().mean()), "recall": float(real_in_fake.float().mean()),
            "density": float(inside_real.mean() / k), "coverage": float(real_hit.float().mean()), "k": k}
