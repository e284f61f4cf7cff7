"""Translation quality against a paired target, inside a mask (e.g. the brain): mean absolute
error and PSNR over the mask's pixels, SSIM over whole slices with everything outside the mask set
to the background value in both images (so the background neither helps nor hurts)."""

from __future__ import annotations

import math

import torch

from medsynth.metrics.similarity import ssim
from medsynth.msssim import DATA_RANGE


def translation_scores(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """pred, target: B x C x H x W in [-1, 1]; mask: B x 1 x H x W bool."""
    mask = mask.expand_as(target)
    diff = (pred.float() - target.float())[mask]
    mse = float((diff ** 2).mean())
    background = torch.tensor(-1.0)
    masked_pred = torch.where(mask, pred.float(), background)
    masked_target = torch.where(mask, target.float(), background)
    return {"mae": float(diff.abs().mean()), "psnr": 10 * math.log10(DATA_RANGE ** 2 / max(mse, 1e-12)),
            "ssim": float(ssim(masked_pred, masked_target).mean())}
