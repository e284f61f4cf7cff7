"""The conditional-GAN generators and discriminators of pix2pix (Isola et al. 2017) and Vox2Vox
(Cirillo et al. 2020), in 2D or 3D.

Generator (Vox2Vox, Fig. 1 of the paper): an encoder of `depth` strided convolutions (kernel 4,
stride 2; instance norm except on the first; LeakyReLU 0.2; dropout), a bottleneck of
`bottleneck_blocks` convolutions at the coarsest scale in which each block's output is
concatenated with the output of the block before it (the encoder's for the first), so the
bottleneck keeps one shape (2C channels) however many blocks it has, and a decoder of transposed
convolutions whose outputs are concatenated with the encoder block of the same scale (or, with
upsample="bilinear" / "nearest", an interpolation to twice the size then a 3x3 convolution:
the resize-convolution of Odena et al. 2016, which has no checkerboard). The
paper's bottleneck kernel is 4; it is 3 here, since an even kernel cannot keep the shape with
symmetric padding. Widths are 64 * width * 2^i, so `width` < 1 makes it small enough for a CPU.

Discriminator: MONAI's PatchDiscriminator on the input volume concatenated with a target (the
conditional PatchGAN), instance-normalised as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from medsynth.nets.blocks import resize_conv


def widths(width: float, depth: int, base: int = 64) -> list[int]:
    return [max(2, int(round(base * width * 2 ** i))) for i in range(depth)]


class UNetGenerator(nn.Module):
    """Input B x in_channels x S^d (S divisible by 2^depth) -> B x out_channels x S^d logits."""

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, width: float = 1.0,
                 depth: int = 4, bottleneck_blocks: int = 4, dropout: float = 0.2, upsample: str = "transposed"):
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        transposed = nn.ConvTranspose3d if spatial_dims == 3 else nn.ConvTranspose2d

        def up(cin: int, cout: int) -> nn.Module:
            """Twice the size: a stride-2 transposed convolution (kernel 4), or resize + 3x3 conv."""
            if upsample == "transposed":
                return transposed(cin, cout, 4, stride=2, padding=1)
            return nn.Sequential(*resize_conv(spatial_dims, cin, cout, upsample))
        norm = nn.InstanceNorm3d if spatial_dims == 3 else nn.InstanceNorm2d
        ch = widths(width, depth)
        self.depth = depth

        def block(layers, act):
            return nn.Sequential(*layers, act, nn.Dropout(dropout))

        self.down = nn.ModuleList()
        prev = in_channels
        for i, c in enumerate(ch):
            layers = [conv(prev, c, 4, stride=2, padding=1)] + ([norm(c, affine=True)] if i > 0 else [])
            self.down.append(block(layers, nn.LeakyReLU(0.2)))
            prev = c
        c = ch[-1]
        self.bottleneck = nn.ModuleList(
            block([conv(c if i == 0 else 2 * c, c, 3, padding=1), norm(c, affine=True)], nn.LeakyReLU(0.2))
            for i in range(bottleneck_blocks))
        prev = 2 * c if bottleneck_blocks else c
        self.up = nn.ModuleList()
        for c in reversed(ch[:-1]):
            self.up.append(block([up(prev, c), norm(c, affine=True)], nn.ReLU()))
            prev = 2 * c  # after concatenation with the encoder block of this scale
        self.out = up(prev, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for layer in self.down:
            x = layer(x)
            skips.append(x)
        previous = x
        for layer in self.bottleneck:
            y = layer(x)
            x = torch.cat([previous, y], dim=1)
            previous = y
        for layer, skip in zip(self.up, reversed(skips[:-1])):
            x = torch.cat([layer(x), skip], dim=1)
        return self.out(x)


def build_generator(m, out_channels: int) -> nn.Module:
    """model.generator: unet (the pix2pix / Vox2Vox U-Net above) or monai_unet (MONAI's residual
    UNet, the plain segmentation baseline)."""
    if m.generator == "monai_unet":
        from monai.networks.nets import UNet

        ch = widths(m.width, m.depth + 1, base=32)
        return UNet(spatial_dims=m.spatial_dims, in_channels=m.in_channels, out_channels=out_channels,
                    channels=ch, strides=[2] * m.depth, num_res_units=2, norm="INSTANCE", dropout=m.dropout)
    return UNetGenerator(m.spatial_dims, m.in_channels, out_channels, m.width, m.depth, m.bottleneck_blocks,
                         m.dropout, m.upsample)


def build_discriminator(m, in_channels: int) -> nn.Module:
    from monai.networks.nets import PatchDiscriminator

    return PatchDiscriminator(spatial_dims=m.spatial_dims, channels=widths(m.width, 1)[0], in_channels=in_channels,
                              out_channels=1, num_layers_d=m.disc_layers, norm="INSTANCE")
