"""Uncertainty of the audit's numbers: bootstrap resampling of images.

A resample draws n images with replacement from a set of n; it is kept as the count of each
image (`resample_counts`), so a statistic that is a weighted mean (a mean, a covariance, a
mean over pairs) is computed from the counts without copying features. Intervals are the
percentile bootstrap (2.5th and 97.5th percentiles of the resampled values for 95%).

What is resampled, per metric (evaluation.md says the same to users):
- FID: both sets, the means and covariances recomputed from the resample;
- precision, density (per synthetic image) and recall, coverage (per real image): the per-image
  terms, with the k-NN radii of the full sets held fixed (a conditional bootstrap: refitting the
  radii on a resample with duplicates would put duplicates at distance 0);
- diversity (mean MS-SSIM over pairs): the images, a pair of two copies of one image left out;
- KID: not bootstrapped: the mean over random subsets as in Binkowski et al. 2018, its interval
  the 2.5th-97.5th percentiles of the subset estimates (subsets of at most half of each set,
  so they differ).
"""

from __future__ import annotations

import numpy as np

RESAMPLES = 200
LEVEL = 0.95


def resample_counts(n: int, rng: np.random.Generator) -> np.ndarray:
    """How often each of n images is drawn in one resample with replacement (sums to n), float64."""
    return np.bincount(rng.integers(0, n, n), minlength=n).astype(np.float64)


def percentile_interval(values, level: float = LEVEL) -> list[float]:
    """[low, high]: the central `level` share of `values` (NaN-free)."""
    values = np.asarray(values, dtype=np.float64)
    tail = (1.0 - level) / 2.0 * 100.0
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100.0 - tail))]


def mean_interval(terms: np.ndarray, resamples: int, rng: np.random.Generator, level: float = LEVEL) -> list[float]:
    """Interval of the mean of per-image `terms` (n), resampling the images."""
    terms = np.asarray(terms, dtype=np.float64)
    n = len(terms)
    return percentile_interval([resample_counts(n, rng) @ terms / n for _ in range(resamples)], level)


def pair_mean_interval(matrix: np.ndarray, resamples: int, rng: np.random.Generator,
                       level: float = LEVEL) -> list[float]:
    """Interval of the mean over pairs of distinct images of a symmetric n x n matrix (its diagonal
    unused), resampling the images: with counts c, the pairs of two different images sum to
    c^T M c - sum c_i^2 M_ii over n^2 - sum c_i^2 ordered pairs."""
    m = np.asarray(matrix, dtype=np.float64).copy()
    np.fill_diagonal(m, 0.0)
    n = len(m)
    values = []
    for _ in range(resamples):
        c = resample_counts(n, rng)
        values.append(float(c @ m @ c) / (n * n - float(c @ c)))
    return percentile_interval(values, level)
