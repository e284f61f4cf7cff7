"""Loss terms, thin over MONAI where MONAI has the piece.

Conventions: images are in [-1, 1]; reconstruction errors are summed over
pixels and averaged over the batch, and KL terms are summed over latent units,
so that a KL weight of 1 is the evidence lower bound and beta > 1 means what
Higgins et al. mean by it, whatever the image size.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError
from medsynth.msssim import ms_ssim

LOSS_FLOOR = 1e-6  # MS-SSIM loss: each scale's term floored here, not at 0, so the gradient stays finite


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent units: B."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def kl_categorical_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits)) || uniform) per sample: B. logits: B x K."""
    log_q = F.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


def reconstruction_loss(kind: str, logits: torch.Tensor, target: torch.Tensor, **msssim_kw) -> torch.Tensor:
    """Per-sample reconstruction error (B) of decoder output `logits` (image = tanh(logits)).

    bce reads the [-1, 1] image as a Bernoulli mean: (image + 1) / 2 = sigmoid(2 * logits),
    so BCE-with-logits on 2 * logits is the stable form. msssim is 1 - MS-SSIM
    scaled by the pixel count, to sit on the same scale as the summed errors.
    """
    recon = torch.tanh(logits)
    if kind == "mse":
        err = (recon.float() - target).pow(2)
    elif kind == "l1":
        err = (recon.float() - target).abs()
    elif kind == "bce":
        err = F.binary_cross_entropy_with_logits(2.0 * logits.float(), (target + 1.0) / 2.0, reduction="none")
    elif kind == "msssim":
        pixels = target[0].numel()
        return (1.0 - ms_ssim(recon, target, **msssim_kw, floor=LOSS_FLOOR)) * pixels
    else:
        raise MedsynthError(f"unknown reconstruction loss '{kind}'")
    return err.flatten(1).sum(1)


def mind_descriptor(images: torch.Tensor, sigma: float = 1.0, distance: int = 1, eps: float = 1e-6) -> torch.Tensor:
    """MIND, the modality independent neighbourhood descriptor (Heinrich et al. 2012), per pixel.

    images: B x C x H x W (or B x C x D x H x W). For each offset r of the search region (the 2n
    neighbours at `distance` along each of the n axes), the patch distance D_r(x) is the squared
    difference I(x) - I(x + r) averaged over a Gaussian patch (sigma, truncated at 2 sigma; edges
    replicated); V(x) = mean_r D_r(x), kept within 1e-3 to 1e3 times its mean over the image;
    MIND_r(x) = exp(-D_r(x) / V(x)), divided by its maximum over r.
    Returns B x (C * 2n) x spatial, values in (0, 1]. It describes where edges and shapes lie,
    not which way the intensities go: MIND(a I + b) = MIND(I) for any a != 0, which is what lets
    it compare a translation with its source in another contrast (Yang et al. 2018's
    structure-constrained CycleGAN). Flat regions (V ~ 0) come out as all ones.
    """
    x = images.float()
    dims = x.ndim - 2
    if dims not in (2, 3):
        raise MedsynthError(f"MIND needs B x C x H x W or B x C x D x H x W images, got shape {list(x.shape)}")
    from monai.networks.layers import separable_filtering  # here: every recipe imports this module
    from monai.networks.layers.convutils import gaussian_1d

    kernel = gaussian_1d(torch.tensor(float(sigma)), truncated=2.0, approx="sampled", normalize=True).to(x.device)

    def smooth(d: torch.Tensor) -> torch.Tensor:  # the Gaussian patch sum, per channel, edges replicated
        return separable_filtering(d, [kernel] * dims, mode="replicate")

    def shifted(axis: int, step: int) -> torch.Tensor:  # I(x + step along axis), edges replicated
        n = x.shape[2 + axis]
        index = torch.arange(n, device=x.device).add(step).clamp(0, n - 1)
        return x.index_select(2 + axis, index)

    distances = torch.stack([smooth((x - shifted(axis, step)) ** 2)
                             for axis in range(dims) for step in (-distance, distance)], dim=2)
    variance = distances.mean(2, keepdim=True)
    # bounded by the image's own mean variance (Heinrich et al.'s implementation does the same):
    # where a region is nearly flat, V ~ 0 would turn rounding noise into full-contrast descriptors
    # and huge gradients
    typical = variance.mean(dim=tuple(range(3, variance.ndim)), keepdim=True)
    variance = torch.maximum(torch.minimum(variance, 1e3 * typical), 1e-3 * typical).clamp_min(eps)
    mind = torch.exp(-distances / variance)
    mind = mind / mind.amax(2, keepdim=True)
    return mind.flatten(1, 2)


def structure_loss(translated: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Mean |MIND(translated) - MIND(source)|: a scalar that is low when a translation keeps its
    source's edges and shapes, whatever the contrast (images B x C x spatial, same shape)."""
    return (mind_descriptor(translated) - mind_descriptor(source)).abs().mean()
