"""VAE encoders and decoders, and the VAE network that joins them.

Two architectures:
- `conv`: the PyTorch-VAE layout (stride-2 3x3 conv blocks, a linear layer to
  the latent heads, a mirrored decoder), any channel list, 2D or 3D;
- `ct`: the abdominal-CT tutorial VAE for 3 x 256 x 256 2.5D slices: nine
  Conv-BN-LeakyReLU blocks (16 -> 64 channels, stride 2 in every other block),
  an (H/32) x (H/32) conv to 1024 channels (8 x 8 at 256 px), 512-d heads, and
  a mirrored decoder.

The latent may hold continuous units (mu, logvar) and, for JointVAE (Dupont
2018), categorical units sampled with the Gumbel-softmax. A condition vector
(one-hot class, or multi-hot labels) enters the encoder as constant channels
and the decoder beside z.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from medsynth.errors import MedsynthError
from medsynth.nets.blocks import center_crop, check_min_size, conv_block, conv_cls, upsample_block

CT_CHANNELS = (16, 16, 32, 32, 48, 48, 64, 64, 64)  # nine blocks, stride 2 at blocks 1, 3, 5, 7, 9
CT_FEATURES = 1024


class ConvEncoder(nn.Module):
    """B x C x *spatial -> B x features (PyTorch-VAE style)."""

    def __init__(self, spatial_dims: int, in_channels: int, channels: list[int], image_size: list[int]):
        super().__init__()
        blocks, cin = [], in_channels
        for c in channels:
            blocks.append(conv_block(spatial_dims, cin, c, stride=2))
            cin = c
        self.blocks = nn.Sequential(*blocks)
        self.bottom = [math.ceil(s / 2 ** len(channels)) for s in image_size]
        self.out_features = channels[-1] * math.prod(self.bottom)

    def forward(self, x):
        return self.blocks(x).flatten(1)


class ConvDecoder(nn.Module):
    """B x latent -> logits B x C x *spatial (mirror of ConvEncoder, cropped to the image size)."""

    def __init__(self, spatial_dims: int, latent: int, out_channels: int, channels: list[int],
                 image_size: list[int], upsample: str):
        super().__init__()
        self.bottom = [math.ceil(s / 2 ** len(channels)) for s in image_size]
        self.image_size = list(image_size)
        rev = list(reversed(channels))
        self.top_channels = rev[0]
        self.fc = nn.Linear(latent, rev[0] * math.prod(self.bottom))
        ups = [upsample_block(spatial_dims, a, b, upsample) for a, b in zip(rev, rev[1:] + [rev[-1]])]
        self.ups = nn.Sequential(*ups)
        self.out = conv_cls(spatial_dims)(rev[-1], out_channels, 3, padding=1)

    def forward(self, z):
        h = self.fc(z).view(len(z), self.top_channels, *self.bottom)
        return center_crop(self.out(self.ups(h)), self.image_size)


class CTEncoder(nn.Module):
    """B x C x H x W (H = W, divisible by 32; 256 in the tutorial) -> B x 1024."""

    def __init__(self, in_channels: int, image_size: list[int]):
        super().__init__()
        _check_ct_size(image_size)
        blocks, cin = [], in_channels
        for i, c in enumerate(CT_CHANNELS):
            blocks.append(conv_block(2, cin, c, stride=2 if i % 2 == 0 else 1))
            cin = c
        side = image_size[0] // 32
        # The "8x8 conv to 1024 channels" of the tutorial: it sees the whole 8 x 8 map.
        self.blocks = nn.Sequential(*blocks, nn.Conv2d(cin, CT_FEATURES, side), nn.LeakyReLU(0.2, inplace=True))
        self.out_features = CT_FEATURES

    def forward(self, x):
        return self.blocks(x).flatten(1)


class CTDecoder(nn.Module):
    """B x latent -> logits B x C x H x W: 1x1 conv to 1024, an 8x8 transposed conv to 64 channels,
    then conv blocks alternating with upsampling blocks, and a final conv."""

    def __init__(self, latent: int, out_channels: int, image_size: list[int], upsample: str):
        super().__init__()
        _check_ct_size(image_size)
        side = image_size[0] // 32
        layers = [nn.Conv2d(latent, CT_FEATURES, 1), nn.LeakyReLU(0.2, inplace=True),
                  nn.ConvTranspose2d(CT_FEATURES, CT_CHANNELS[-1], side), nn.LeakyReLU(0.2, inplace=True)]
        rev = list(reversed(CT_CHANNELS))[::2]  # 64, 64, 48, 32, 16: one per resolution
        cin = CT_CHANNELS[-1]
        for c in rev:
            layers += [conv_block(2, cin, c), upsample_block(2, c, c, upsample)]
            cin = c
        layers.append(nn.Conv2d(cin, out_channels, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


def _check_ct_size(image_size: list[int]) -> None:
    if len(image_size) != 2 or image_size[0] != image_size[1] or image_size[0] % 32:
        raise MedsynthError(f"the ct architecture needs square 2D images with a side divisible by 32 "
                         f"(256 in the tutorial), got {image_size}")


class VAENet(nn.Module):
    """Encoder, latent heads and decoder.

    encode(x, c) -> (mu B x Z, logvar B x Z, [logits B x K_i for each categorical latent])
    decode(z, c) -> logits B x C x *spatial (the image is tanh(logits), in [-1, 1])
    where z is B x (Z + sum K_i) and c is B x cond_dim (or None).
    """

    def __init__(self, arch: str, spatial_dims: int, in_channels: int, image_size: list[int],
                 channels: list[int], latent_dim: int, upsample: str = "transposed",
                 cond_dim: int = 0, discrete_dims: list[int] | tuple[int, ...] = (), prior_components: int = 0):
        super().__init__()
        self.latent_dim = latent_dim
        self.discrete_dims = list(discrete_dims)
        self.cond_dim = cond_dim
        self.in_channels = in_channels
        self.image_size = list(image_size)
        self.spatial_dims = spatial_dims
        z_total = latent_dim + sum(self.discrete_dims) + cond_dim
        if arch == "conv":
            self.encoder = ConvEncoder(spatial_dims, in_channels + cond_dim, channels, image_size)
            self.decoder = ConvDecoder(spatial_dims, z_total, in_channels, channels, image_size, upsample)
        elif arch == "ct":
            if spatial_dims != 2:
                raise ValueError("the ct architecture is 2D (2.5D slices as channels)")
            self.encoder = CTEncoder(in_channels + cond_dim, image_size)
            self.decoder = CTDecoder(z_total, in_channels, image_size, upsample)
        else:
            raise ValueError(f"unknown architecture {arch!r}")
        feats = self.encoder.out_features
        # Linear heads on the flat features; for the ct encoder the features are a
        # 1024 x 1 x 1 map, where a 1x1 conv head (the tutorial's) is exactly this.
        self.fc_mu = nn.Linear(feats, latent_dim)
        self.fc_logvar = nn.Linear(feats, latent_dim)
        self.fc_alpha = nn.ModuleList(nn.Linear(feats, k) for k in self.discrete_dims)
        # A Gaussian-mixture prior over the continuous units (model.latent_prior=gmm): buffers, so
        # they travel with the weights; until medsynth.latent_prior fits them after training every
        # component is N(0, I), i.e. the usual prior.
        self.prior_components = prior_components
        if prior_components:
            self.register_buffer("prior_weights", torch.full((prior_components,), 1.0 / prior_components))
            self.register_buffer("prior_means", torch.zeros(prior_components, latent_dim))
            self.register_buffer("prior_scale_tril", torch.eye(latent_dim).repeat(prior_components, 1, 1))

    def encode(self, x, c=None):
        if self.cond_dim:
            maps = c.to(x.dtype).view(len(x), -1, *([1] * self.spatial_dims)).expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, maps], dim=1)
        h = self.encoder(x)
        # logvar is clamped: exp() of an unbounded head overflows in bf16 early in training.
        return self.fc_mu(h), self.fc_logvar(h).clamp(-30.0, 20.0), [fc(h) for fc in self.fc_alpha]

    def decode(self, z, c=None):
        if self.cond_dim:
            z = torch.cat([z, c.to(z.dtype)], dim=1)
        return self.decoder(z)

    def latent(self, mu, logvar, alphas, temperature: float, sample: bool = True, generator=None):
        """z from the posterior: reparameterised normal + Gumbel-softmax per categorical
        (hard one-hot of the mode when not sampling)."""
        if sample:
            eps = torch.randn(mu.shape, generator=generator, device=mu.device, dtype=mu.dtype)
            parts = [mu + eps * (0.5 * logvar).exp()]
            for a in alphas:
                u = torch.rand(a.shape, generator=generator, device=a.device, dtype=a.dtype).clamp(1e-10, 1.0)
                gumbel = -torch.log((-torch.log(u)).clamp_min(1e-10))
                parts.append(F.softmax((a + gumbel) / temperature, dim=-1))
        else:
            parts = [mu] + [F.one_hot(a.argmax(-1), a.shape[-1]).to(mu.dtype) for a in alphas]
        return torch.cat(parts, dim=1)

    def prior(self, n: int, generator=None, device=None, dtype=torch.float32, mixture: bool = True):
        """z (n x (Z + sum K_i)) from the prior: N(0, I) continuous units, or with a mixture prior a
        component k ~ weights and z = mean_k + L_k eps (eps ~ N(0, I), L_k the Cholesky factor of its
        covariance); uniform one-hot categoricals. mixture=False: N(0, I) even with a mixture (what
        training draws: the prior the KL term pulls towards, with the same random stream as without)."""
        if self.prior_components and mixture:
            comp = torch.multinomial(self.prior_weights.float(), n, replacement=True, generator=generator)
            eps = torch.randn(n, self.latent_dim, generator=generator, device=device)
            z = self.prior_means.float()[comp] + (self.prior_scale_tril.float()[comp] @ eps.unsqueeze(-1)).squeeze(-1)
            parts = [z.to(dtype)]
        else:
            parts = [torch.randn(n, self.latent_dim, generator=generator, device=device, dtype=dtype)]
        for k in self.discrete_dims:
            idx = torch.randint(0, k, (n,), generator=generator, device=device)
            parts.append(F.one_hot(idx, k).to(dtype))
        return torch.cat(parts, dim=1)

    def encoder_parameters(self):
        """The encoder with its posterior heads (the VAE-GAN updates it on its own)."""
        return [*self.encoder.parameters(), *self.fc_mu.parameters(), *self.fc_logvar.parameters(),
                *self.fc_alpha.parameters()]

    def decoder_parameters(self):
        return list(self.decoder.parameters())

    def forward(self, x, c=None, temperature: float = 0.67):
        mu, logvar, alphas = self.encode(x, c)
        z = self.latent(mu, logvar, alphas, temperature)
        return self.decode(z, c), mu, logvar, alphas


def build_vae_net(model_cfg) -> VAENet:
    if model_cfg.arch == "conv":
        check_min_size(model_cfg.image_size, len(model_cfg.channels), f"model.channels ({len(model_cfg.channels)} levels)")
    cond_dim = model_cfg.num_classes if model_cfg.conditional else 0
    return VAENet(model_cfg.arch, model_cfg.spatial_dims, model_cfg.in_channels, list(model_cfg.image_size),
                  list(model_cfg.channels), model_cfg.latent_dim, model_cfg.upsample, cond_dim or 0,
                  list(model_cfg.discrete_dims),
                  model_cfg.latent_prior_components if model_cfg.get("latent_prior", "normal") == "gmm" else 0)
