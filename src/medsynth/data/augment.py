"""Augmentation of 3D training patches (MONAI dictionary transforms), image and label map together.

Geometry (the label map follows by nearest neighbour): a flip along each axis with probability
1/2; with probability `p_affine` one affine with a rotation of up to `rotate_degrees` about each
axis and a zoom in [1 - scale_range, 1 + scale_range] (border values fill what comes in from
outside the patch). Intensity (image only, per patch): scale by 1 +- 0.1, shift by +- 0.1 (the
images are in [-1, 1]), Gaussian noise of std 0.05 in 15% of patches. Small rotations and zooms
are what scanners and patients vary by; larger ones would show anatomy in poses no scan has.
"""

from __future__ import annotations

import math

import torch


def patch_augmentation(rotate_degrees: float, scale_range: float, seed: int, p_affine: float = 0.5,
                       flat_axis: int | None = None):
    """A callable {"image": C x D x H x W, "label": 1 x D x H x W float} -> the same keys, augmented;
    seeded, so a run's patches repeat. flat_axis: the patches are 2D slices one voxel thick along
    this axis, so they are flipped and zoomed in their plane only and rotated about this axis."""
    from monai.transforms import (Compose, RandAffined, RandFlipd, RandGaussianNoised, RandScaleIntensityd,
                                  RandShiftIntensityd)

    keys = ["image", "label"]
    angle = math.radians(rotate_degrees)
    in_plane = [a for a in range(3) if a != flat_axis]
    transforms = [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in in_plane]
    if angle > 0 or scale_range > 0:
        rotate = [angle if flat_axis is None or a == flat_axis else 0.0 for a in range(3)]
        scale = [scale_range if a in in_plane else 0.0 for a in range(3)]
        transforms.append(RandAffined(keys, prob=p_affine, rotate_range=rotate, scale_range=scale,
                                      mode=("bilinear", "nearest"), padding_mode="border"))
    transforms += [RandScaleIntensityd("image", factors=0.1, prob=1.0),
                   RandShiftIntensityd("image", offsets=0.1, prob=1.0),
                   RandGaussianNoised("image", prob=0.15, std=0.05)]
    compose = Compose(transforms)
    compose.set_random_state(seed)

    def apply(item: dict) -> dict:
        out = compose(item)
        return {k: (v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)).contiguous()
                for k, v in out.items()}

    apply.reseed = compose.set_random_state  # a DataLoader worker's own stream (data/patches.py)
    return apply
