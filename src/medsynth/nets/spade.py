"""A SPADE generator (Park et al. 2019, "Semantic image synthesis with spatially-adaptive
normalization") that draws an image from a label map, in 2D or 3D, at any size that divides by
2^depth.

The paper's generator starts from a noise vector through a linear layer to a fixed 4 x 8 map;
MONAI's SPADEDecoder does the same (its input_shape is fixed). Here the noise is a *map* at
1/2^depth of the output size, concatenated with the label map resized to that size, so one trained
generator draws a whole case (e.g. 192 x 144 x 88) after training on patches. Each level is a
nearest-neighbour upsampling followed by MONAI's SPADE residual block (instance norm whose scale and
shift come from the label map through a small conv net, at that level's resolution), so the last
block works at full resolution; the last layer is a 3x3 convolution to the image channels (tanh in
the recipe).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def level_widths(width: float, depth: int, base: int = 16) -> list[int]:
    """Channels from the coarsest level to the finest: base * width * 2^(depth - i), halving each level."""
    return [max(4, int(round(base * width * 2 ** (depth - i)))) for i in range(depth + 1)]


class SPADEGenerator(nn.Module):
    """One-hot label map B x K x S^d (S divisible by 2^depth) and a noise map B x noise_channels x
    (S / 2^depth)^d -> image logits B x out_channels x S^d."""

    def __init__(self, spatial_dims: int, label_channels: int, out_channels: int, width: float = 1.0,
                 depth: int = 4, noise_channels: int = 16, spade_hidden: int = 32):
        super().__init__()
        from monai.networks.nets.spade_network import SPADENetResBlock

        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.depth, self.noise_channels, self.spatial_dims = depth, noise_channels, spatial_dims
        ch = level_widths(width, depth)
        self.init = conv(label_channels + noise_channels, ch[0], 3, padding=1)
        # the label map's conv net inside each norm costs hidden x voxels at that level: kept no wider
        # than the level itself, so the finest levels of a 3D volume stay affordable on a CPU
        self.blocks = nn.ModuleList(
            SPADENetResBlock(spatial_dims, ch[i], ch[i + 1], label_channels,
                             spade_intermediate_channels=min(spade_hidden, ch[i]), norm="INSTANCE")
            for i in range(depth))
        self.out = conv(ch[-1], out_channels, 3, padding=1)

    def noise_shape(self, label_shape) -> list[int]:
        """The noise map's shape for a label map of shape B x K x *spatial."""
        return [label_shape[0], self.noise_channels, *(s // 2 ** self.depth for s in label_shape[2:])]

    def forward(self, onehot: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        coarse = F.interpolate(onehot, size=tuple(noise.shape[2:]), mode="nearest")
        x = self.init(torch.cat([coarse, noise], dim=1))
        for block in self.blocks:
            x = block(F.interpolate(x, scale_factor=2, mode="nearest"), onehot)
        return self.out(F.leaky_relu(x, 0.2))
