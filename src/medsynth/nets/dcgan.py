"""DCGAN networks (Radford et al. 2016), optionally class-conditional (Mirza & Osindero 2014).

Generator: z (plus a one-hot class, for the conditional GAN) -> a linear layer to
channels[0] x s0 x s0 -> transposed convolutions (kernel 4, stride 2) halving the channels and
doubling the size, batch norm and ReLU between, tanh at the end; s0 = image size / 2^len(channels),
so [128, 64] draws 28 px from 7 x 7 and [256, 128, 64, 32] 64 px from 4 x 4.
Discriminator: the mirror, strided convolutions with LeakyReLU 0.2 (batch norm after the first,
or spectral norm on every layer instead, Miyato et al. 2018), a linear layer to one logit; the
class enters as one-hot maps concatenated to the image.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from medsynth.errors import MedsynthError


def start_size(image_size: int, stages: int) -> int:
    s0 = image_size // 2 ** stages
    if s0 * 2 ** stages != image_size or s0 < 2:
        raise MedsynthError(f"image size {image_size} is not a multiple of 2^{stages} (one doubling per entry of "
                            f"model.channels) with at least 2 px to start from; change model.channels")
    return s0


class DCGANGenerator(nn.Module):
    def __init__(self, latent_dim: int, out_channels: int, image_size: int, channels: list[int], cond_dim: int = 0):
        super().__init__()
        self.s0 = start_size(image_size, len(channels))
        self.channels = channels
        self.project = nn.Sequential(nn.Linear(latent_dim + cond_dim, channels[0] * self.s0 ** 2, bias=False),
                                     nn.BatchNorm1d(channels[0] * self.s0 ** 2), nn.ReLU())
        layers = []
        for c_in, c_out in zip(channels, channels[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]
        layers += [nn.ConvTranspose2d(channels[-1], out_channels, 4, 2, 1), nn.Tanh()]
        self.body = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        h = z if c is None else torch.cat([z, c], dim=1)
        return self.body(self.project(h).view(len(z), self.channels[0], self.s0, self.s0))


class DCGANDiscriminator(nn.Module):
    def __init__(self, in_channels: int, image_size: int, channels: list[int], cond_dim: int = 0,
                 spectral: bool = False):
        super().__init__()
        s0 = start_size(image_size, len(channels))
        wrap = spectral_norm if spectral else (lambda m: m)
        widths = list(reversed(channels))  # 32, 64, ... up to channels[0] at s0
        layers, prev = [], in_channels + cond_dim
        for i, c in enumerate(widths):
            layers.append(wrap(nn.Conv2d(prev, c, 4, 2, 1, bias=spectral or i == 0)))
            if i > 0 and not spectral:
                layers.append(nn.BatchNorm2d(c))
            layers.append(nn.LeakyReLU(0.2))
            prev = c
        self.body = nn.Sequential(*layers)
        self.head = wrap(nn.Linear(prev * s0 * s0, 1))

    def forward(self, x: torch.Tensor, c: torch.Tensor | None = None, layer: int | None = None):
        """The logit (B x 1); with `layer` (1-based strided block), also that block's activations
        (the VAE-GAN's learned similarity features)."""
        if c is not None:  # the class as constant one-hot maps beside the image
            x = torch.cat([x, c[:, :, None, None].expand(-1, -1, *x.shape[2:])], dim=1)
        if layer is None:
            return self.head(self.body(x).flatten(1))
        features, block = None, 0
        for module in self.body:
            x = module(x)
            if isinstance(module, nn.LeakyReLU):
                block += 1
                if block == layer:
                    features = x
        if features is None:
            raise MedsynthError(f"the discriminator has {block} blocks; feature layer {layer} does not exist")
        return self.head(x.flatten(1)), features
