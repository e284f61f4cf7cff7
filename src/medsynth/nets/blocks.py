"""Conv building blocks shared by our encoders and decoders, 2D or 3D."""

from __future__ import annotations

import torch
import torch.nn as nn

from medsynth.errors import MedsynthError

UPSAMPLE_MODES = ("transposed", "bilinear", "nearest")


def check_min_size(image_size, halvings: int, what: str) -> None:
    """Refuse images smaller than 2^halvings per side: below that the strided layers pad a 1-pixel
    map and the model trains on nothing (1 x 1 images used to train without a word)."""
    least = 2 ** halvings
    if min(image_size) < least:
        raise MedsynthError(f"images of {' x '.join(str(int(s)) for s in image_size)} px are smaller than this model "
                            f"can use: {what} halves them {halvings} times, so every side must be at least {least} px "
                            "(resize with data.image_size, or use fewer levels)")


def conv_cls(spatial_dims: int):
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_block(spatial_dims: int, cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3x3 conv -> BatchNorm -> LeakyReLU (stride 2 halves the size, rounding up)."""
    norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
    return nn.Sequential(conv_cls(spatial_dims)(cin, cout, 3, stride=stride, padding=1),
                         norm(cout), nn.LeakyReLU(0.2, inplace=True))


def resize_conv(spatial_dims: int, cin: int, cout: int, mode: str) -> list[nn.Module]:
    """Twice the size without a checkerboard (Odena et al. 2016): interpolation (bilinear /
    trilinear, or nearest) then a 3x3 convolution. A list, so callers keep their flat layer names."""
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"unknown resize mode {mode!r}; expected bilinear or nearest")
    interp = mode if mode == "nearest" else ("bilinear" if spatial_dims == 2 else "trilinear")
    extra = {} if mode == "nearest" else {"align_corners": False}
    return [nn.Upsample(scale_factor=2, mode=interp, **extra), conv_cls(spatial_dims)(cin, cout, 3, padding=1)]


def upsample_block(spatial_dims: int, cin: int, cout: int, mode: str) -> nn.Sequential:
    """Doubles the spatial size.

    transposed: a stride-2 transposed conv (prone to checkerboard artefacts,
    Odena et al. 2016); bilinear / nearest: interpolate then a 3x3 conv, the
    artefact-free alternative compared in the abdominal-CT tutorial.
    """
    norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims]
    if mode == "transposed":
        up = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]
        layers = [up(cin, cout, 3, stride=2, padding=1, output_padding=1)]
    elif mode in ("bilinear", "nearest"):
        layers = resize_conv(spatial_dims, cin, cout, mode)
    else:
        raise ValueError(f"unknown upsample mode {mode!r}; expected one of {UPSAMPLE_MODES}")
    return nn.Sequential(*layers, norm(cout), nn.LeakyReLU(0.2, inplace=True))


def center_crop(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crop B x C x *spatial to `size` around the centre (decoders overshoot odd sizes like 28 -> 32)."""
    slices = [slice(None), slice(None)]
    for have, want in zip(x.shape[2:], size):
        start = (have - want) // 2
        slices.append(slice(start, start + want))
    return x[tuple(slices)]
