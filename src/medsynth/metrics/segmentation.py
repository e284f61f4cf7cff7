"""Segmentation quality: Dice and 95th-percentile Hausdorff distance per class and per BraTS region.

Label maps are integer arrays of the same shape (one volume or slice). MONAI
computes the numbers; this module adds the conventions MONAI leaves open:
a structure absent from both maps scores Dice 1 and HD95 0, a structure
present in only one scores Dice 0 and HD95 None (infinite), and distances are
in mm through the voxel spacing.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

from medsynth.errors import MedsynthError

# BraTS evaluation regions over the labels 1 necrosis, 2 edema, 3 non-enhancing, 4 enhancing tumour.
BRATS_REGIONS = {"whole_tumour": (1, 2, 3, 4), "tumour_core": (1, 3, 4), "enhancing_tumour": (4,)}


def _scores(pred: np.ndarray, target: np.ndarray, spacing) -> dict:
    p, t = pred.astype(bool), target.astype(bool)
    if not p.any() and not t.any():
        return {"dice": 1.0, "hd95": 0.0, "voxels_pred": 0, "voxels_target": 0}
    pt = torch.from_numpy(p)[None, None].float()
    tt = torch.from_numpy(t)[None, None].float()
    # ignore_empty=False: MONAI's default gives NaN, not 0, for a structure only the prediction has
    dice = float(compute_dice(pt, tt, include_background=True, ignore_empty=False).item())
    if p.any() and t.any():
        hd = float(compute_hausdorff_distance(pt, tt, include_background=True, percentile=95,
                                              spacing=list(spacing)).item())
    else:
        hd = None  # one of the two is empty: no finite distance
    return {"dice": dice, "hd95": hd, "voxels_pred": int(p.sum()), "voxels_target": int(t.sum())}


def segmentation_scores(pred: np.ndarray, target: np.ndarray, classes: list[int] | None = None,
                        regions: dict[str, tuple[int, ...]] | None = None, spacing=None) -> dict:
    """{"classes": {k: scores}, "regions": {name: scores}} for label maps `pred` and `target`."""
    pred, target = np.asarray(pred), np.asarray(target)
    if pred.shape != target.shape:
        raise MedsynthError(f"prediction of shape {pred.shape} and reference of shape {target.shape} differ")
    spacing = tuple(spacing) if spacing is not None else (1.0,) * pred.ndim
    if len(spacing) != pred.ndim:
        raise MedsynthError(f"spacing {spacing} does not have one value per axis of {pred.shape}")
    if classes is None:
        classes = sorted(int(v) for v in np.union1d(np.unique(pred), np.unique(target)) if v != 0)
    out = {"classes": {str(k): _scores(pred == k, target == k, spacing) for k in classes}, "spacing": list(spacing)}
    if regions:
        out["regions"] = {name: _scores(np.isin(pred, labels), np.isin(target, labels), spacing)
                          for name, labels in regions.items()}
    return out


def score_label_maps(pred_values: np.ndarray, target_values: np.ndarray, data_cfg, spacing=None) -> dict:
    """segmentation_scores with a run's label values (data.classes, background first) and regions
    (data.regions: "brats" or None): what `medsynth segment` and the end of training both report."""
    foreground = [c for c in data_cfg.classes if c != 0]
    regions = BRATS_REGIONS if data_cfg.regions == "brats" else None
    return segmentation_scores(pred_values, target_values, foreground, regions, spacing)
