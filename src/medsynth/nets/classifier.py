"""The domain feature networks: a small VGG-style classifier for 2D or 3D images, and the same
VGG trunk as a fully convolutional segmentation network (the abdominal-CT tutorial's perceptual
network was a VGG-like FCN trained to segment the pancreas).

The classifier's penultimate layer (the FCN's globally pooled trunk) is the embedding for FID /
KID / PRDC and nearest-neighbour privacy checks; forward hooks on chosen layers of the shared
`features` sequence give the perceptual loss taps (the tutorial tapped layers 2, 5 and 9).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsynth.nets.blocks import conv_cls


def _norm(spatial_dims: int, c: int) -> nn.Module:
    return {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[spatial_dims](c)


def vgg_features(spatial_dims: int, in_channels: int, channels: list[int]) -> nn.Sequential:
    """The VGG trunk: per entry of `channels` two (conv 3, BN, ReLU), a max-pool between entries.
    Flat, so taps are addressed by index like torchvision's VGG: with channels [32, 64, 128] the
    ReLU outputs sit at 2, 5, 9, 12, 16, 19."""
    conv = conv_cls(spatial_dims)
    pool = {2: nn.MaxPool2d, 3: nn.MaxPool3d}[spatial_dims]
    layers, cin = [], in_channels
    for i, c in enumerate(channels):
        layers += [conv(cin, c, 3, padding=1), _norm(spatial_dims, c), nn.ReLU(inplace=True),
                   conv(c, c, 3, padding=1), _norm(spatial_dims, c), nn.ReLU(inplace=True)]
        if i < len(channels) - 1:
            layers.append(pool(2))
        cin = c
    return nn.Sequential(*layers)


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
        self.features = vgg_features(spatial_dims, in_channels, channels)
        cin = channels[-1]
        self.pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)
        self.embedding = nn.Sequential(nn.Flatten(), nn.Linear(cin, embed_dim), nn.ReLU(inplace=True))
        self.head = nn.Linear(embed_dim, num_classes)
        self.embed_dim = embed_dim

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.embedding(self.pool(self.features(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


class VGGFCN(nn.Module):
    """B x C x *spatial -> class logits B x K x *spatial: the VGG trunk (`features`, as in
    VGGClassifier), then FCN-8s-style scoring: a 1x1 conv on the last three resolutions' outputs,
    each upsampled (bilinear) to the input size and summed, so small organs keep their outline.
    embed(x) -> B x channels[-1]: the trunk's output, globally average-pooled.
    """

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: list[int]):
        super().__init__()
        conv = conv_cls(spatial_dims)
        self.features = vgg_features(spatial_dims, in_channels, channels)
        # the last ReLU of each resolution: before each pool, and the trunk's end
        self.skips = [i - 1 for i, m in enumerate(self.features) if isinstance(m, (nn.MaxPool2d, nn.MaxPool3d))]
        self.skips = (self.skips + [len(self.features) - 1])[-3:]
        widths = [self.features[i - 1].num_features for i in self.skips]
        self.scores = nn.ModuleList(conv(c, num_classes, 1) for c in widths)
        self.pool = {2: nn.AdaptiveAvgPool2d, 3: nn.AdaptiveAvgPool3d}[spatial_dims](1)
        self.embed_dim = channels[-1]
        self.mode = {2: "bilinear", 3: "trilinear"}[spatial_dims]

    def _skip_outputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The trunk's outputs at `skips` (coarsest last)."""
        kept = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.skips:
                kept.append(x)
        return kept

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.features(x)).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[2:]
        return sum(F.interpolate(score(h), size=size, mode=self.mode, align_corners=False)
                   for score, h in zip(self.scores, self._skip_outputs(x)))
