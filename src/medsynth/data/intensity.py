"""Intensity mapping into the [-1, 1] range every model trains in."""

from __future__ import annotations

import numpy as np

from medsynth.errors import MedsynthError


def check_finite(array: np.ndarray, source: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
        raise MedsynthError(f"{source}: image {bad} holds NaN or inf values")


def to_unit_range(arrays: list[np.ndarray], source: str, names: list[str] | None = None) -> list[np.ndarray]:
    """Map arrays sharing one intensity scale to float32 in [-1, 1].

    Integer images are divided by their dtype's maximum (uint8 / 255), as
    MedMNIST intends. Float images already in [0, 1] are taken as they are;
    other float images are rescaled by the joint min / max of all the arrays, so
    the splits of one file keep one scale. names: the arrays' names (e.g. the
    splits), for the message when their dtypes cannot share one scale.
    """
    arrays = [a for a in arrays]
    if not arrays:
        return []
    kinds = {a.dtype.kind for a in arrays}
    for a in arrays:
        if a.dtype.kind not in "uibf":
            raise MedsynthError(f"{source}: image dtype {a.dtype} is not a number type")
    if not (kinds <= {"u", "i", "b"} or kinds <= {"f"}):
        names = names or [f"array {i}" for i in range(len(arrays))]
        listing = ", ".join(f"{n} {a.dtype}" for n, a in zip(names, arrays))
        raise MedsynthError(f"{source}: integer and float images mixed ({listing}); integers are read as 0..max of "
                            "their type and floats by their range, so one file needs one kind: store every split "
                            "with the same dtype")
    if kinds <= {"u", "i", "b"}:
        if "b" in kinds:
            return [_scaled(a, 0.0, 1.0) for a in arrays]
        top = max(float(np.iinfo(a.dtype).max) for a in arrays)
        lo = min(float(np.iinfo(a.dtype).min) for a in arrays)
        if lo < 0:  # signed integers: use the data's own range
            return _minmax(arrays)
        return [_scaled(a, 0.0, top) for a in arrays]
    if kinds <= {"f"}:
        for a in arrays:
            check_finite(a, source)
        lo = min(float(a.min()) for a in arrays if a.size)
        hi = max(float(a.max()) for a in arrays if a.size)
        if lo >= 0.0 and hi <= 1.0:
            return [_scaled(a, 0.0, 1.0) for a in arrays]
        return _minmax(arrays)
    raise MedsynthError(f"{source}: image dtype {arrays[0].dtype} is not a number type")


def _minmax(arrays: list[np.ndarray]) -> list[np.ndarray]:
    lo = min(float(a.min()) for a in arrays if a.size)
    hi = max(float(a.max()) for a in arrays if a.size)
    scale = (hi - lo) or 1.0
    return [_scaled(a, lo, scale) for a in arrays]


def _scaled(a: np.ndarray, lo: float, scale: float) -> np.ndarray:
    """float32 ((a - lo) / scale) * 2 - 1 in one new array: in place after the copy, so 50 000
    images at 64 px cost their 800 MB once, not three times (the same float32 operations, in the
    same order, as the expression)."""
    out = a.astype(np.float32)  # always a copy: the caller's array is left as it was
    if lo:
        out -= lo
    out /= scale
    out *= 2.0
    out -= 1.0
    return out


# CT display windows as (level, width) in Hounsfield units.
CT_WINDOWS = {"abdomen": (40.0, 400.0), "lung": (-600.0, 1500.0), "bone": (400.0, 1800.0), "brain": (40.0, 80.0)}


def ct_mapping(window) -> tuple[float, float]:
    """(scale, offset) of a CT window (a preset name or (level, width)): HU = scale * x + offset for
    x in [-1, 1], the inverse of ct_window inside the window."""
    if isinstance(window, str):
        if window not in CT_WINDOWS:
            raise MedsynthError(f"unknown CT window '{window}'; presets: {sorted(CT_WINDOWS)} or [level, width]")
        level, width = CT_WINDOWS[window]
    else:
        try:
            level, width = (float(v) for v in window)
        except (TypeError, ValueError):
            raise MedsynthError(f"CT window {window!r} is not a preset name or [level, width]") from None
    if width <= 0:
        raise MedsynthError(f"CT window width must be positive, got {width}")
    return width / 2.0, level


def ct_window(hu: np.ndarray, window) -> np.ndarray:
    """Clip Hounsfield units to a window (a preset name or (level, width)) and map it to [-1, 1]."""
    scale, offset = ct_mapping(window)
    return np.clip((hu.astype(np.float32) - offset) / scale, -1.0, 1.0).astype(np.float32)


def mr_mapping(volume: np.ndarray, mask: np.ndarray | None = None, mode: str = "zscore",
               percentiles: tuple[float, float] = (1.0, 99.0)) -> tuple[float, float]:
    """(scale, offset) of mr_normalise for this volume: signal = scale * x + offset for x in [-1, 1]
    (z-score: 3 std and the mean inside the mask; percentile: half the range and the midpoint)."""
    inside = volume[mask > 0] if mask is not None else volume.ravel()
    if inside.size == 0:
        raise MedsynthError("MR normalisation: the mask is empty")
    if mode == "zscore":
        return 3.0 * (float(inside.std()) or 1.0), float(inside.mean())
    if mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(inside, percentiles))
        return ((hi - lo) or 2.0) / 2.0, (hi + lo) / 2.0
    raise MedsynthError(f"MR normalisation mode must be zscore or percentile, got {mode!r}")


def mr_normalise(volume: np.ndarray, mask: np.ndarray | None = None, mode: str = "zscore",
                 percentiles: tuple[float, float] = (1.0, 99.0)) -> np.ndarray:
    """MR intensities to [-1, 1] from statistics inside `mask` (e.g. the brain): z-score clipped at
    +-3 standard deviations, or the given percentiles mapped to -1 and 1. Outside the mask -> -1."""
    scale, offset = mr_mapping(volume, mask, mode, percentiles)
    out = np.clip((volume - offset) / scale, -1.0, 1.0)
    if mask is not None:
        out = np.where(mask > 0, out, -1.0)
    return out.astype(np.float32)


def from_unit_range(x: np.ndarray, scale: float, offset: float) -> np.ndarray:
    """[-1, 1] model intensities back to the source's units (HU, the MR input's scale): float32."""
    return (np.asarray(x, dtype=np.float32) * np.float32(scale) + np.float32(offset)).astype(np.float32)


def tissue_bands(image: np.ndarray, indices: np.ndarray, num_classes: int, bands: int,
                 sigma: float = 1.0) -> np.ndarray:
    """A label map's background split into `bands` intensity bands of its image, for a model that
    draws images from maps (brainSPADE conditions on tissue classes the same way): without them
    the generator is told only where the labelled structures are and paints the rest of the field
    as it likes, which a segmentation model trained on the pairs never learns to tell apart from
    real surroundings (vessels and other chambers as bright as the left atrium).

    image: *spatial (the first contrast, normalised), indices: *spatial class indices 0..K-1.
    The image is smoothed (Gaussian, `sigma` voxels: bands follow tissue, not noise) and the
    background voxels are cut at the quantiles of their own intensities into equal-count bands:
    the darkest band stays class 0, the others become classes K .. K + bands - 2, so the labelled
    classes keep their indices. bands < 2 returns the map as it is. -> uint8 *spatial."""
    if bands < 2:
        return indices
    from scipy.ndimage import gaussian_filter

    background = indices == 0
    if not background.any():
        return indices
    smooth = gaussian_filter(np.asarray(image, dtype=np.float32), sigma)
    cuts = np.quantile(smooth[background], np.linspace(0, 1, bands + 1)[1:-1])
    band = np.searchsorted(cuts, smooth, side="right")  # 0 .. bands-1
    out = np.asarray(indices, dtype=np.uint8).copy()
    out[background & (band > 0)] = (num_classes - 1 + band[background & (band > 0)]).astype(np.uint8)
    return out


def structures_only(indices: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices with tissue bands (>= num_classes) folded back into the background (0)."""
    return np.where(indices < num_classes, indices, 0).astype(indices.dtype)
