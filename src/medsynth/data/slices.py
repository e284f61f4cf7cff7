"""2D slices of volumes: the 2.5D CT dataset of the abdominal-CT tutorial, and paired MR slices
for modality translation.

Slices are taken only where a given organ label is present (e.g. pancreas = 7
in TotalSegmentator's map), each stacked with the slices before and after it as
3 channels (edge slices repeat themselves), so a 2D network sees some of the
third dimension. Random crops of `crop_size` are drawn per batch in training
(centre crops for validation and test) by the datamodule.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medsynth.data.intensity import ct_window
from medsynth.errors import MedsynthError


def grid_channel(data_cfg) -> int | None:
    """The channel a grid shows of this data's images: the centre slice of a 2.5D stack (its three
    channels are neighbouring slices, not colours); None (all channels) otherwise."""
    return 1 if data_cfg.format == "ct_slices" else None


def organ_slices(labels: np.ndarray, organ: int, axis: int = 2) -> np.ndarray:
    """Indices along `axis` of the slices that hold label `organ`."""
    other = tuple(a for a in range(labels.ndim) if a != axis)
    return np.flatnonzero((labels == organ).any(axis=other))


def stack_2_5d(volume: np.ndarray, indices: np.ndarray, axis: int = 2) -> np.ndarray:
    """N x 3 x H x W: each slice between its neighbours (clamped at the volume's ends)."""
    moved = np.moveaxis(volume, axis, 0)
    last = len(moved) - 1
    return np.stack([np.stack([moved[max(k - 1, 0)], moved[k], moved[min(k + 1, last)]]) for k in indices])


def read_ct_slices(data_cfg) -> np.ndarray:
    """Windowed 2.5D stacks (float32 in [-1, 1], N x 3 x H x W) of the CT at data.path (NIfTI,
    NRRD or a DICOM folder) along data.slice_axis: the slices where data.organ is labelled in
    data.label_path, widened by data.organ_margin slices each way. With data.crop_to_mask, each
    is cut to that many px around the organ's in-plane bounding box (over all its slices). With
    data.segment, a 4th channel holds the centre slice's class index (k for the k-th label of
    data.segment, 0 for every other label) as float: the target of a segmentation network."""
    from medsynth.data.cases import on_image_grid, read_any_volume, read_volume
    from medsynth.data.volumes import require_3d

    d = data_cfg
    if d.label_path is None or d.organ is None:
        raise MedsynthError("data.format=ct_slices needs data.label_path (the label map) and data.organ")
    axis = int(d.slice_axis)
    window = d.window if isinstance(d.window, str) else list(d.window)
    ct = require_3d(read_any_volume(Path(d.path)), "data.format=ct_slices")
    labels = on_image_grid(read_volume(Path(d.label_path)), ct, Path(d.label_path), "label map").array
    if not np.allclose(labels, np.round(labels)) or labels.min() < 0:
        raise MedsynthError(f"{d.label_path}: label map holds values that are not non-negative integers")
    labels = np.round(labels).astype(np.int64)
    organ = labels == int(d.organ)
    indices = organ_slices(labels, int(d.organ), axis)
    if len(indices) == 0:
        present = sorted(int(v) for v in np.unique(labels))[:20]
        raise MedsynthError(f"{d.label_path}: organ label {d.organ} appears in no slice (labels present: {present})")
    margin = int(d.organ_margin)
    indices = np.arange(max(0, indices[0] - margin), min(labels.shape[axis], indices[-1] + margin + 1))
    stacks = stack_2_5d(ct_window(ct.array, window), indices, axis)
    if d.segment is not None:
        stacks = np.concatenate([stacks, class_slices(labels, list(d.segment), indices, axis, d.label_path)], 1)
    if d.crop_to_mask is not None:
        size, corner = int(d.crop_to_mask), mask_box(organ, axis, int(d.crop_to_mask))
        image = crop_in_plane(stacks[:, :3], corner, size)
        stacks = np.concatenate([image, crop_in_plane(stacks[:, 3:], corner, size, fill=0.0)], 1)
    return np.ascontiguousarray(stacks, dtype=np.float32)


def class_slices(labels: np.ndarray, segment: list[int], indices: np.ndarray, axis: int, source) -> np.ndarray:
    """N x 1 x H x W float class indices of the label map's slices `indices`: k + 1 where it holds
    segment[k], 0 elsewhere (labels not listed, e.g. TotalSegmentator's other organs, are background)."""
    if not segment or len(set(segment)) != len(segment) or min(segment) <= 0:
        raise MedsynthError(f"data.segment={segment}: give distinct positive labels to segment (0 is background)")
    missing = sorted(set(segment) - set(np.unique(labels).tolist()))
    if missing:
        raise MedsynthError(f"{source}: data.segment labels {missing} do not occur in the label map")
    lookup = np.zeros(int(labels.max()) + 1, dtype=np.float32)
    lookup[segment] = np.arange(1, len(segment) + 1)
    return lookup[np.moveaxis(labels, axis, 0)[indices]][:, None]


def center_crop_array(images: np.ndarray, size: int) -> np.ndarray:
    h, w = images.shape[-2:]
    if h < size or w < size:
        raise MedsynthError(f"crop size {size} is larger than the slices ({h} x {w})")
    top, left = (h - size) // 2, (w - size) // 2
    return images[..., top:top + size, left:left + size]


def mask_box(inside: np.ndarray, axis: int, size: int) -> list[int]:
    """The in-plane corner (first index along each axis other than `axis`) of a size x size box
    centred on the bounding box of `inside` (X x Y x Z bool) over all its slices; the box may reach
    past the image's edges, which crop_in_plane pads."""
    other = [a for a in range(3) if a != axis]
    corner = []
    for a in other:
        rest = tuple(b for b in range(3) if b != a)
        hit = np.flatnonzero(inside.any(axis=rest))
        centre = (int(hit[0]) + int(hit[-1]) + 1) // 2 if len(hit) else inside.shape[a] // 2
        corner.append(centre - size // 2)
    return corner


def crop_in_plane(slices: np.ndarray, corner: list[int], size: int, fill: float = -1.0) -> np.ndarray:
    """... x H x W -> ... x size x size from `corner` (may be negative or reach past the edge: padded with fill)."""
    h, w = slices.shape[-2:]
    (top, left), lead = corner, [(0, 0)] * (slices.ndim - 2)
    pad = [(max(0, -top), max(0, top + size - h)), (max(0, -left), max(0, left + size - w))]
    if any(p for pair in pad for p in pair):
        slices = np.pad(slices, lead + pad, constant_values=fill)
        top, left = top + pad[0][0], left + pad[1][0]
    return slices[..., top:top + size, left:left + size]


def paste_in_plane(crops: np.ndarray, corner: list[int], shape: tuple[int, int], fill: float = -1.0) -> np.ndarray:
    """The inverse of crop_in_plane: ... x size x size back into ... x H x W (outside the box: fill)."""
    size = crops.shape[-1]
    out = np.full((*crops.shape[:-2], *shape), fill, dtype=crops.dtype)
    (top, left), (h, w) = corner, shape
    t0, l0 = max(0, top), max(0, left)
    t1, l1 = min(h, top + size), min(w, left + size)
    if t1 > t0 and l1 > l0:
        out[..., t0:t1, l0:l1] = crops[..., t0 - top:t1 - top, l0 - left:l1 - left]
    return out


def mask_slices(inside: np.ndarray, axis: int, min_fraction: float = 0.0) -> np.ndarray:
    """Indices along `axis` of the slices whose mask covers at least `min_fraction` of the largest
    mask slice (0: any of the mask)."""
    area = inside.sum(axis=tuple(a for a in range(3) if a != axis))
    if not area.max():
        return np.zeros(0, dtype=int)
    return np.flatnonzero((area >= min_fraction * area.max()) & (area > 0))


def slice_stacks(image: np.ndarray, keep: np.ndarray, axis: int, source_channels: int, neighbours: int = 0
                 ) -> np.ndarray:
    """C x X x Y x Z (source contrasts first) -> N x C' x (in-plane) slices at `keep` along `axis`:
    per source contrast its slices k - neighbours .. k + neighbours (clamped at the volume's ends; the
    2.5D input), then the target contrasts at k. C' = source_channels * (2 neighbours + 1) + targets."""
    moved = np.moveaxis(image, 1 + axis, 1)  # C x D x H x W, D along the slice axis
    last = moved.shape[1] - 1
    offsets = range(-neighbours, neighbours + 1)
    source = [moved[c, np.clip(keep + o, 0, last)] for c in range(source_channels) for o in offsets]
    target = [moved[c, keep] for c in range(source_channels, len(moved))]
    return np.ascontiguousarray(np.stack(source + target, axis=1))


def case_slices(image: np.ndarray, inside: np.ndarray, data_cfg, source_channels: int,
                min_fraction: float = 0.0) -> tuple[np.ndarray, np.ndarray, list[int] | None]:
    """A normalised case (C x X x Y x Z in [-1, 1], `inside` its mask) as translation input:
    (N x C' x H x W slice stacks, the slice indices along data.slice_axis, the in-plane crop corner
    or None). Slices whose mask covers at least `min_fraction` of the largest mask slice (0: any
    mask); with data.crop_to_mask, cut to that size around the case's mask at native resolution."""
    axis = int(data_cfg.slice_axis)
    keep = mask_slices(inside, axis, min_fraction)
    stacks = slice_stacks(image, keep, axis, source_channels, int(data_cfg.neighbours))
    corner = None
    if data_cfg.crop_to_mask is not None:
        corner = mask_box(inside, axis, int(data_cfg.crop_to_mask))
        stacks = np.ascontiguousarray(crop_in_plane(stacks, corner, int(data_cfg.crop_to_mask)))
    return stacks, keep, corner


def read_paired_slices(data_cfg) -> tuple[dict, dict]:
    """Paired MR slices for translation (pix2pix): per split (train / validation / test case
    folders), every slice along `data.slice_axis` whose mask covers at least `data.min_mask_fraction`
    of the case's largest mask slice, with all `data.contrasts` as channels, each normalised within
    the case's mask (`data.mr_normalise`; outside it -1), 2.5D (`data.neighbours`) and cut around
    the mask (`data.crop_to_mask`) as case_slices says. The last `data.target_channels` channels
    are the target, the others the source.
    -> ({split: (N x C' x H x W float32, None)}, the space: per contrast the median over training
    cases of the normalisation's scale and offset, so a translation goes back to the target
    contrast's units of the training data, and the first training case's orientation (axis codes)
    and voxel spacing, which volumes to translate are turned and resampled to)."""
    from pathlib import Path

    import nibabel as nib

    from medsynth.data.cases import SPLIT_FOLDERS, cases_from_folder
    from medsynth.data.intensity import mr_mapping
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
    source_channels = len(contrasts) - int(data_cfg.target_channels)
    out, mappings, axcodes = {}, [], None
    for split, folder in groups.items():
        stacks = []
        for case in cases_from_folder(folder, contrasts, mask=data_cfg.mask):
            if split == "train":
                mappings.append([mr_mapping(ch, case.mask, data_cfg.mr_normalise) for ch in case.image])
                if axcodes is None:  # the grid volumes to translate are brought to
                    axcodes = list(nib.aff2axcodes(case.affine))
                    spacing = [float(v) for v in (data_cfg.spacing or case.spacing)]
            case = prepare_case(case, data_cfg.mr_normalise, data_cfg.spacing)
            inside = case.mask if case.mask is not None else (case.image > -1).any(0)
            slices, keep, _ = case_slices(case.image, inside, data_cfg, source_channels, data_cfg.min_mask_fraction)
            if len(keep):
                stacks.append(slices)
        if not stacks:
            raise MedsynthError(f"{folder}: no slices with enough of the mask (data.min_mask_fraction)")
        if data_cfg.unpaired and split == "train":
            stacks = _unpair(stacks, source_channels, folder)
        out[split] = (np.ascontiguousarray(np.concatenate(stacks)), None)
    space = None
    if mappings:
        space = {"units": "MR signal of the training data", "contrasts": contrasts, "axcodes": axcodes,
                 "spacing": spacing,
                 "scale": np.median([[m[0] for m in c] for c in mappings], 0).tolist(),
                 "offset": np.median([[m[1] for m in c] for c in mappings], 0).tolist(),
                 "note": f"per contrast, the median {data_cfg.mr_normalise} mapping over {len(mappings)} training "
                         "cases: a translation is written in the target contrast's units of the training data"}
    return out, space


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
