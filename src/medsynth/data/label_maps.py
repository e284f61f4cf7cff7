"""Label maps to condition generation on: checks, one-hot encoding, and new maps made from real
ones by random deformation.

A map is class indices (0..K-1, as `data.patches.to_indices` gives) of shape *spatial. New maps
come from training maps through MONAI's random elastic deformation with an affine part (rotation,
zoom), the label resampled by nearest neighbour so it stays a map of the same classes: anatomy in
poses and shapes near, but not equal to, a patient's.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError


def check_label_map(values: np.ndarray, classes: list[int], spatial_dims: int, name: str) -> np.ndarray:
    """A label map as read (label values) -> class indices (uint8), or one clear error naming `name`:
    wrong number of axes, values outside `classes`, nothing but background."""
    values = np.asarray(values)
    if values.ndim != spatial_dims:
        raise MedsynthError(f"{name}: label map of shape {list(values.shape)} is not {spatial_dims}D "
                            f"(this model draws {spatial_dims}D images)")
    if not np.allclose(values, np.round(values)):
        raise MedsynthError(f"{name}: label map holds non-integer values")
    present = np.unique(np.round(values).astype(np.int64))
    extra = sorted(set(present.tolist()) - set(classes))
    if extra:
        raise MedsynthError(f"{name}: label values {extra[:10]} are outside the model's classes {list(classes)}")
    if present.tolist() == [0]:
        raise MedsynthError(f"{name}: label map is all background (class 0): nothing to draw the image around")
    lut = np.zeros(max(classes) + 1, dtype=np.uint8)
    lut[np.asarray(classes)] = np.arange(len(classes), dtype=np.uint8)
    return lut[np.round(values).astype(np.int64)]


def one_hot(indices: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Class indices B x 1 x *spatial (any integer or float dtype) -> B x K x *spatial float32."""
    return F.one_hot(indices[:, 0].long(), num_classes).movedim(-1, 1).float()


def pad_to_multiple(onehot: torch.Tensor, multiple: int) -> tuple[torch.Tensor, list[slice]]:
    """B x K x *spatial -> padded at the far end of each axis to a multiple of `multiple` (background
    one-hot in the padding), and the slices that cut the original size back out."""
    sizes = onehot.shape[2:]
    extra = [(-s) % multiple for s in sizes]
    pads = [p for e in reversed(extra) for p in (0, e)]
    padded = F.pad(onehot, pads)
    padded[:, 0][padded.sum(1) == 0] = 1.0  # the padding is background
    return padded, [slice(None), slice(None), *(slice(0, s) for s in sizes)]


def deform_label_map(indices: np.ndarray, seed: int, rotate_degrees: float = 10.0, scale_range: float = 0.1,
                     elastic: float = 1.0) -> np.ndarray:
    """Class indices *spatial (2D or 3D) -> a randomly deformed map of the same shape and classes:
    MONAI Rand3DElastic (or Rand2DElastic) with rotation up to `rotate_degrees` about each axis, zoom
    in [1 - scale_range, 1 + scale_range] and an elastic field whose strength scales with `elastic`
    (0: affine only), nearest-neighbour resampling, zeros (background) from outside. Seeded."""
    from monai.transforms import Rand2DElastic, Rand3DElastic

    dims = indices.ndim
    angle = math.radians(rotate_degrees)
    rotate = [angle] * (3 if dims == 3 else 1)
    scale = [scale_range] * dims
    if dims == 3:
        # offsets uniform in [-1, 1] per voxel, smoothed by a Gaussian of sigma voxels, times magnitude:
        # on an LA heart map (0.625 mm) the elastic part alone leaves Dice 0.91 to the original (boundaries
        # move ~2 voxels); the rotation and zoom move the structure as a whole (Dice ~0.76 alone)
        transform = Rand3DElastic(sigma_range=(6.0, 8.0), magnitude_range=(180.0 * elastic, 360.0 * elastic + 1e-6),
                                  prob=1.0, rotate_range=rotate, scale_range=scale, mode="nearest",
                                  padding_mode="zeros")
    elif dims == 2:
        transform = Rand2DElastic(spacing=(24, 24), magnitude_range=(1.0 * elastic, 2.0 * elastic + 1e-6), prob=1.0,
                                  rotate_range=rotate, scale_range=scale, mode="nearest", padding_mode="zeros")
    else:
        raise MedsynthError(f"label map of shape {list(indices.shape)}: expected 2D or 3D")
    transform.set_random_state(seed)
    out = transform(torch.from_numpy(np.ascontiguousarray(indices[None]).astype(np.float32)))
    out = out.as_tensor() if hasattr(out, "as_tensor") else torch.as_tensor(out)
    return out[0].round().to(torch.uint8).numpy()


def foreground_box(image: np.ndarray, label: np.ndarray, size: list[int]) -> np.ndarray:
    """C x D x H x W -> C x *size around the label's foreground centre (the volume's centre when it
    has none), shifted to stay inside, zero-padded where the volume is smaller."""
    centre = np.argwhere(label > 0).mean(axis=0) if label.any() else np.array(label.shape) / 2
    out = np.zeros((image.shape[0], *size), dtype=np.float32)
    src, dst = [], []
    for c, s, n in zip(centre, size, label.shape):
        start = int(np.clip(np.floor(c - s / 2 + 0.5), 0, max(0, n - s)))
        length = min(s, n)
        src.append(slice(start, start + length))
        dst.append(slice(0, length))
    out[(slice(None), *dst)] = image[(slice(None), *src)]
    return out


def label_map_set(data_cfg, seed: int = 0) -> dict[str, tuple[np.ndarray, None]]:
    """data.format=label_maps: the label maps of segmentation cases (data.path, data.splits,
    data.label, data.classes as for data.format=segmentation) as images, for a model that draws new
    maps: each map cut to data.patch_size around its foreground's centre, as K one-hot channels,
    resized to data.image_size^3 (trilinear on the one-hot channels), in [-1, 1]. Split name ->
    (N x K x S^3 float32, None)."""
    from medsynth.data.patches import load_segmentation_splits

    if data_cfg.image_size is None:
        raise MedsynthError("data.format=label_maps needs data.image_size (maps are resized to size^3)")
    splits = load_segmentation_splits(data_cfg, seed)
    size, k = list(splits.patch_size), splits.num_classes
    out = {}
    for name in ("train", "val", "test"):
        cases = getattr(splits, name)
        if not cases:
            continue
        boxes = torch.stack([one_hot(torch.from_numpy(foreground_box(c.label[None].astype(np.float32), c.label,
                                                                     size)).long()[None], k)[0] for c in cases])
        resized = F.interpolate(boxes, size=(int(data_cfg.image_size),) * 3, mode="trilinear", align_corners=False)
        out[name] = ((resized * 2 - 1).numpy().astype(np.float32), None)
    return out


def maps_from_images(images: torch.Tensor, size: list[int]) -> np.ndarray:
    """Drawn one-hot maps N x K x S^3 (any values; [-1, 1] as a model of maps draws them) -> class
    indices N x *size: resized back to the box the maps were cut to (trilinear), then the class of
    the largest channel per voxel."""
    resized = F.interpolate(images.float(), size=tuple(size), mode="trilinear", align_corners=False)
    return resized.argmax(1).to(torch.uint8).numpy()
