"""The domain feature network: a small VGG-style classifier for 2D or 3D images.

Its penultimate layer is the embedding for FID / KID / PRDC and nearest-neighbour
privacy checks; forward hooks on chosen blocks give the perceptual loss taps
(the abdominal-CT tutorial tapped a domain-trained VGG at layers 2, 5 and 9).
"""

from __future__ import annotations

import torch
import torch.nn as nn

from medsynth.nets.blocks import conv_cls


def _norm(spatial_dims: int, c: int) -> nn.Module:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](c)


class VGGClassifier(nn.Module):
    """B x C x *spatial -> logits B x num_classes.

    `features` is a flat nn.Sequential (conv, BN, ReLU, ..., max-pool), so taps
    are addressed by index like torchvision's VGG: with channels [32, 64, 128]
    the ReLU outputs sit at 2, 5, 9, 12, 16, 19.
    embed(x) -> B x embed_dim (after global average pooling and one linear + ReLU).
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: list[int],
                 embed_dim: int = 128):
        super().__init__()
        conv = conv_cls(spatial_dims)
        pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
        layers, cin = [], in_channels
        for i, c in enumerate(channels):
            layers += [conv(cin, c, 3, padding=1), _norm(spatial_dims, c), nn.ReLU(inplace=True),
                       conv(c, c, 3, padding=1), _norm(spatial_dims, c), nn.ReLU(inplace=True)]
            if i < len(channels) - 1:
                layers.append(pool(2))
            cin = c
        self.features = nn.Sequential(*layers)
        self.pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(cin, embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, num_classes)
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))
