"""2D slices of volumes: the 2.5D CT dataset of the abdominal-CT tutorial, and paired MR slices
for modality translation.

Slices are taken only where a given organ label is present (e.g. pancreas = 7
in TotalSegmentator's map), each stacked with the slices before and after it as
3 channels (edge slices repeat themselves), so a 2D network sees some of the
third dimension. Random crops of `crop_size` are drawn per batch in training
(centre crops for validation and test) by the datamodule.
"""

from __future__ import annotations

import numpy as np

from medsynth.data.intensity import ct_window
from medsynth.data.volumes import read_nifti, require_3d
from medsynth.errors import MedsynthError


def organ_slices(labels: np.ndarray, organ: int, axis: int = 2) -> np.ndarray:
    """Indices along `axis` of the slices that hold label `organ`."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    return np.flatnonzero((labels == organ).any(axis=other))


def stack_2_5d(volume: np.ndarray, indices: np.ndarray, axis: int = 2) -> np.ndarray:
    """N x 3 x H x W: each slice between its neighbours (clamped at the volume's ends)."""
    moved = np.moveaxis(volume, axis, 0)
    last = len(moved) - 1
    return np.stack([np.stack([moved[max(k - 1, 0)], moved[k], moved[min(k + 1, last)]]) for k in indices])


def read_ct_slices(ct_path, label_path, organ: int, window, axis: int = 2) -> np.ndarray:
    """Windowed 2.5D stacks (float32 in [-1, 1], N x 3 x H x W) of the slices where `organ` is labelled."""
    if label_path is None or organ is None:
        raise MedsynthError("data.format=ct_slices needs data.label_path (the label map) and data.organ")
    use = "data.format=ct_slices"
    ct, labels = require_3d(read_nifti(ct_path), use), require_3d(read_nifti(label_path), use)
    if ct.array.shape != labels.array.shape:
        raise MedsynthError(f"{label_path}: label map of shape {labels.array.shape} does not match the CT "
                            f"{ct_path} of shape {ct.array.shape}")
    if not np.allclose(ct.affine, labels.affine, atol=1e-3):
        raise MedsynthError(f"{label_path}: label map affine differs from the CT's ({ct_path})")
    if not np.allclose(labels.array, np.round(labels.array)) or labels.array.min() < 0:
        raise MedsynthError(f"{label_path}: label map holds values that are not non-negative integers")
    indices = organ_slices(labels.array, organ, axis)
    if len(indices) == 0:
        present = sorted(int(v) for v in np.unique(labels.array))[:20]
        raise MedsynthError(f"{label_path}: organ label {organ} appears in no slice (labels present: {present})")
    return stack_2_5d(ct_window(ct.array, window), indices, axis)


def center_crop_array(images: np.ndarray, size: int) -> np.ndarray:
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise MedsynthError(f"crop size {size} is larger than the slices ({h} x {w})")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def read_paired_slices(data_cfg) -> dict:
    """Paired MR slices for translation (pix2pix): per split (train / validation / test case
    folders), every slice along `data.slice_axis` whose mask covers at least `data.min_mask_fraction`
    of the case's largest mask slice, with all `data.contrasts` as channels, each normalised within
    the case's mask (`data.mr_normalise`; outside it -1). The last `data.target_channels` channels
    are the target, the others the source. -> {split: (N x C x H x W float32, None)}."""
    from pathlib import Path

    from medsynth.data.cases import SPLIT_FOLDERS, cases_from_folder
    from medsynth.data.patches import prepare_case

    path = Path(data_cfg.path)
    contrasts = list(data_cfg.contrasts)
    if len(contrasts) <= data_cfg.target_channels:
        raise MedsynthError(f"data.format=paired_slices needs source and target contrasts: data.contrasts={contrasts} "
                            f"with data.target_channels={data_cfg.target_channels}")
    if not path.is_dir():
        raise MedsynthError(f"{path}: folder of case folders not found")
    present = {s: path / d for s, d in SPLIT_FOLDERS.items() if (path / d).is_dir()}
    groups = present or {"train": path}
    out = {}
    for split, folder in groups.items():
        stacks = []
        for case in cases_from_folder(folder, contrasts, mask=data_cfg.mask):
            case = prepare_case(case, data_cfg.mr_normalise, data_cfg.spacing)
            inside = case.mask if case.mask is not None else (case.image > -1).any(0)
            other = tuple(a for a in range(3) if a != data_cfg.slice_axis)
            area = inside.sum(axis=other)
            keep = np.flatnonzero(area >= data_cfg.min_mask_fraction * area.max()) if area.max() else []
            if len(keep):
                stacks.append(np.moveaxis(np.take(case.image, keep, axis=1 + data_cfg.slice_axis),
                                          1 + data_cfg.slice_axis, 0))
        if not stacks:
            raise MedsynthError(f"{folder}: no slices with enough of the mask (data.min_mask_fraction)")
        if data_cfg.unpaired and split == "train":
            stacks = _unpair(stacks, len(contrasts) - data_cfg.target_channels, folder)
        out[split] = (np.ascontiguousarray(np.concatenate(stacks)), None)
    return out


def _unpair(stacks: list[np.ndarray], source_channels: int, folder) -> list[np.ndarray]:
    """Training pairs from different patients (CycleGAN): sources from the 1st, 3rd, ... case,
    targets from the 2nd, 4th, ...; the shorter side repeats cyclically so no slice is dropped.
    Held-out splits stay paired, so translations can still be scored against the truth."""
    if len(stacks) < 2:
        raise MedsynthError(f"{folder}: data.unpaired=true needs at least two training cases")
    sources = np.concatenate([s[:, :source_channels] for s in stacks[0::2]])
    targets = np.concatenate([s[:, source_channels:] for s in stacks[1::2]])
    n = max(len(sources), len(targets))
    return [np.concatenate([np.resize(sources, (n, *sources.shape[1:])),
                            np.resize(targets, (n, *targets.shape[1:]))], axis=1)]
