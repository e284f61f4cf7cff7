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

# Wang et al. 2003 scale weights, coarsest last.
MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
DATA_RANGE = 2.0  # images live in [-1, 1]


def kl_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)) per sample, summed over latent units: B."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


def kl_categorical_uniform(logits: torch.Tensor) -> torch.Tensor:
    """KL(Cat(softmax(logits)) || uniform) per sample: B. logits: B x K."""
    log_q = F.log_softmax(logits, dim=-1)
    return (log_q.exp() * log_q).sum(-1) + math.log(logits.shape[-1])


def msssim_settings(size: tuple[int, ...] | list[int], scales: int | None = None,
                    kernel: int | None = None) -> tuple[int, int, float]:
    """(scales, kernel_size, sigma) that MS-SSIM can use on images of this spatial size.

    MONAI's defaults (5 scales, 11 px window) need images of at least 161 px;
    MedMNIST is 28-224 px. We keep as many scales as leave the coarsest scale
    wider than a 7 px window (fewer for tiny images), and shrink the window only
    when needed; sigma shrinks with the window, 1.5 at 11 px.
    """
    smallest = min(size)

    def widest_kernel(n_scales: int) -> int:
        k = min(11, smallest // 2 ** (n_scales - 1))
        return k if k % 2 else k - 1

    if scales is None:
        scales = 1
        for n in range(5, 0, -1):
            if widest_kernel(n) >= 7:
                scales = n
                break
    if not 1 <= scales <= 5:
        raise MedsynthError(f"MS-SSIM scales must be 1-5, got {scales}")
    if kernel is None:
        kernel = widest_kernel(scales)
    if kernel < 3 or kernel % 2 == 0:
        raise MedsynthError(f"MS-SSIM cannot use {scales} scales on images of size {tuple(size)}: "
                            f"window {kernel} px is too small or even")
    if smallest // 2 ** (scales - 1) < kernel:
        raise MedsynthError(f"MS-SSIM with {scales} scales and a {kernel} px window needs images of at least "
                            f"{kernel * 2 ** (scales - 1)} px, got {tuple(size)}")
    return scales, kernel, 1.5 * kernel / 11.0


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int | None = None, kernel: int | None = None,
            data_range: float = DATA_RANGE) -> torch.Tensor:
    """Multi-scale SSIM per image (B), for 2D (B x C x H x W) or 3D (B x C x D x H x W) images.

    Scales and window follow the image size (`msssim_settings`); the scale weights are the first
    `scales` of Wang et al.'s, renormalised; the Gaussian is the correct exp(-d^2 / 2 sigma^2)
    (equal to MONAI's, tested). Contrast terms are clamped to a small positive floor rather than
    relu'd, so the gradient stays finite when a term reaches zero. One implementation with the
    batched diversity metric (`metrics.similarity`).
    """
    from medsynth.metrics.similarity import paired_ms_ssim

    if data_range != DATA_RANGE:  # the SSIM constants scale with the range: rescale the images instead
        x, y = x * (DATA_RANGE / data_range), y * (DATA_RANGE / data_range)
    return paired_ms_ssim(x.float(), y.float(), scales, kernel, floor=1e-6)


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
        return (1.0 - ms_ssim(recon, target, **msssim_kw)) * pixels
    else:
        raise MedsynthError(f"unknown reconstruction loss '{kind}'")
    return err.flatten(1).sum(1)
