"""Intensity mapping into the [-1, 1] range every model trains in."""

from __future__ import annotations

import numpy as np

from medsynth.errors import MedsynthError


def check_finite(array: np.ndarray, source: str) -> None:
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array.reshape(len(array), -1)).all(axis=1))[0])
        raise MedsynthError(f"{source}: image {bad} holds NaN or inf values")


def to_unit_range(arrays: list[np.ndarray], source: str) -> list[np.ndarray]:
    """Map arrays sharing one intensity scale to float32 in [-1, 1].

    Integer images are divided by their dtype's maximum (uint8 / 255), as
    MedMNIST intends. Float images already in [0, 1] are taken as they are;
    other float images are rescaled by the joint min / max of all the arrays, so
    the splits of one file keep one scale.
    """
    arrays = [a for a in arrays]
    if not arrays:
        return []
    kinds = {a.dtype.kind for a in arrays}
    if kinds <= {"u", "i", "b"}:
        if "b" in kinds:
            return [a.astype(np.float32) * 2.0 - 1.0 for a in arrays]
        top = max(float(np.iinfo(a.dtype).max) for a in arrays)
        lo = min(float(np.iinfo(a.dtype).min) for a in arrays)
        if lo < 0:  # signed integers: use the data's own range
            return _minmax(arrays)
        return [a.astype(np.float32) / top * 2.0 - 1.0 for a in arrays]
    if kinds <= {"f"}:
        for a in arrays:
            check_finite(a, source)
        lo = min(float(a.min()) for a in arrays if a.size)
        hi = max(float(a.max()) for a in arrays if a.size)
        if lo >= 0.0 and hi <= 1.0:
            return [a.astype(np.float32) * 2.0 - 1.0 for a in arrays]
        return _minmax(arrays)
    raise MedsynthError(f"{source}: image dtype {arrays[0].dtype} is not a number type")


def _minmax(arrays: list[np.ndarray]) -> list[np.ndarray]:
    lo = min(float(a.min()) for a in arrays if a.size)
    hi = max(float(a.max()) for a in arrays if a.size)
    scale = (hi - lo) or 1.0
    return [((a.astype(np.float32) - lo) / scale) * 2.0 - 1.0 for a in arrays]
