"""Augmentation of 3D training patches (MONAI dictionary transforms), image and label map together.

Geometry (the label map follows by nearest neighbour): a flip along each axis with probability
1/2; with probability `p_affine` one affine with a rotation of up to `rotate_degrees` about each
axis and a zoom in [1 - scale_range, 1 + scale_range] (border values fill what comes in from
outside the patch). Intensity (image only, per patch): scale by 1 +- 0.1, shift by +- 0.1 (the
images are in [-1, 1]), Gaussian noise of std 0.05 in 15% of patches. Small rotations and zooms
are what scanners and patients vary by; larger ones would show anatomy in poses no scan has.

Optionally (`remap_prob` > 0), a random intensity remapping curve per patch and channel: smooth
random values plus a linear component of slope +-0.35, so half the curves keep the order of
intensities roughly and half invert it, none exactly monotonic, some flattening the contrast
(Ivanovska et al., "Intensity augmentation for domain transfer of whole breast segmentation in
MRI", 2020). It is meant to teach a model
shape and edges rather than one sequence's brightness, for scans whose contrast differs from every
training case's (one LA heart test case shows the atrium's blood pool no brighter than the tissue
around it, dark against a bright wall, where every training case shows it bright). The curve comes
last, so it also reshapes the jitter's noise and the image's own texture: where a curve is steep
(up to about 9x in the median draw) they are amplified, which is part of the augmentation as
measured. Measured at remap_prob 0.5 on LA heart it lowered every test case's Dice (RESULTS,
2026-12-06), so it is off by default and in every shipped config.
"""

from __future__ import annotations

import math

import numpy as np
import torch


def remap_intensities(image: torch.Tensor, rng: np.random.RandomState, bins: int = 64, kernel: int = 16,
                       slope: float = 0.35) -> torch.Tensor:
    """One random intensity curve per channel of `image` (C x ...), from the channel's minimum to its
    maximum, onto the same range. The curve at `bins` points: uniform random values smoothed by a
    `kernel`-wide moving average, plus slope * t (t in [0, 1]) with the slope's sign drawn, rescaled
    to [0, 1]; voxels between points are interpolated linearly. The paper's slope is 0.7 against
    noise in raw intensity units (where the noise dominates); with noise in [0, 1] as here, 0.35 on
    an LA heart patch gives atrium-to-background contrasts from -1.6 to +1.7 background standard
    deviations, a quarter of them within +-0.7 (200 draws; the 26 training and 10 test cases:
    -0.1 to +1.8).

    MONAI's RandIntensityRemap draws one value per distinct intensity, which suits the integer MRI
    of its paper but maps neighbouring values of a float image to unrelated ones (noise), and adds
    the input's minimum after scaling by its maximum, which shifts images with negative values;
    hence this version on a fixed grid of the channel's range."""
    if bins < 2 or kernel < 1:
        raise ValueError(f"remap_intensities needs bins >= 2 and kernel >= 1, got {bins}, {kernel}")
    out = image.clone()
    t = torch.linspace(0, 1, bins)
    for c in range(image.shape[0]):
        lo, hi = float(image[c].min()), float(image[c].max())
        if hi <= lo:
            continue
        noise = torch.from_numpy(rng.uniform(0, 1, bins + kernel - 1)).float()
        curve = noise.unfold(0, kernel, 1).mean(1) + rng.choice([-slope, slope]) * t
        curve = (curve - curve.min()) / (curve.max() - curve.min())
        x = (image[c] - lo) / (hi - lo) * (bins - 1)  # position on the grid
        left = x.floor().clamp(0, bins - 2).long()
        frac = x - left
        out[c] = lo + (hi - lo) * (curve[left] * (1 - frac) + curve[left + 1] * frac)
    return out


def patch_augmentation(rotate_degrees: float, scale_range: float, seed: int, p_affine: float = 0.5,
                       flat_axis: int | None = None, remap_prob: float = 0.0):
    """A callable {"image": C x D x H x W, "label": 1 x D x H x W float} -> the same keys, augmented;
    seeded, so a run's patches repeat. flat_axis: the patches are 2D slices one voxel thick along
    this axis, so they are flipped and zoomed in their plane only and rotated about this axis.
    remap_prob: the share of patches whose intensities go through a random curve (remap_intensities)."""
    from monai.transforms import (Compose, MapTransform, RandAffined, RandFlipd, RandGaussianNoised,
                                  RandomizableTransform, RandScaleIntensityd, RandShiftIntensityd)
    from monai.utils import convert_to_dst_type

    class RandRemapd(RandomizableTransform, MapTransform):
        """remap_intensities on "image" with probability `prob`, drawn from the Compose's seeded stream."""

        def __init__(self, prob: float):
            RandomizableTransform.__init__(self, prob)
            MapTransform.__init__(self, ["image"])

        def __call__(self, item: dict) -> dict:
            self.randomize(None)
            if not self._do_transform:
                return item
            out = dict(item)
            for key in self.key_iterator(out):
                image = out[key]
                plain = image.as_tensor() if hasattr(image, "as_tensor") else torch.as_tensor(image)
                remapped = remap_intensities(plain, self.R)
                out[key] = convert_to_dst_type(remapped, dst=image)[0]  # keeps a MetaTensor's metadata
            return out

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
    if remap_prob > 0:
        # last, so each curve spans the patch's final range of values
        transforms.append(RandRemapd(remap_prob))
    compose = Compose(transforms)
    compose.set_random_state(seed)

    def apply(item: dict) -> dict:
        out = compose(item)
        return {k: (v.as_tensor() if hasattr(v, "as_tensor") else torch.as_tensor(v)).contiguous()
                for k, v in out.items()}

    apply.reseed = compose.set_random_state  # a DataLoader worker's own stream (data/patches.py)
    return apply
