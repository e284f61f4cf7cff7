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
