"""Noise schedules and the reverse-process loop, apart from any model (as diffusers keeps its
schedulers apart from its pipelines).

A denoiser is any callable (x_t: B x *shape, t: B long, condition) -> prediction (epsilon, v or
x0, whichever the scheduler was built for); `condition` is whatever that denoiser understands
(latent diffusion: a dict of UNet keyword arguments, or None). The loop knows nothing about
autoencoders, EMA weights or precision, so a sampler can be tested with an analytic denoiser
(tests/test_diffusion.py) and swapped without building a model.

Schedulers: MONAI's DDPMScheduler and DDIMScheduler (`set_timesteps`, `step`, `add_noise`,
`get_velocity`), built from the run's diffusion settings.
"""

from __future__ import annotations

from typing import Callable

import torch

from medsynth.errors import MedsynthError

Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
SAMPLERS = ("ddpm", "ddim")


def build_scheduler(d, sampler: str = "ddpm"):
    """A MONAI DDPM or DDIM scheduler with the noise schedule of `d` (a run's cfg.diffusion:
    num_train_timesteps, schedule, beta_start, beta_end, prediction_type). Predicted x0 is not
    clipped to [-1, 1]: scaled latents have unit variance and often lie outside it."""
    from monai.networks.schedulers import DDIMScheduler, DDPMScheduler

    if sampler not in SAMPLERS:
        raise MedsynthError(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
    kwargs = {"num_train_timesteps": d.num_train_timesteps, "schedule": d.schedule,
              "prediction_type": d.prediction_type, "clip_sample": False}
    if d.schedule != "cosine":
        kwargs.update(beta_start=d.beta_start, beta_end=d.beta_end)
    return (DDIMScheduler if sampler == "ddim" else DDPMScheduler)(**kwargs)


def _join(null, condition):
    """[null; condition] along the batch: tensors, or dicts of tensors (UNet keyword arguments)."""
    if isinstance(condition, dict):
        return {k: torch.cat([null[k], v]) for k, v in condition.items()}
    return torch.cat([null, condition])


def classifier_free_guidance(denoiser: Denoiser, null_condition, scale: float) -> Denoiser:
    """Ho & Salimans 2022: pred = pred(null) + scale * (pred(c) - pred(null)), both halves in
    one doubled batch. scale 1 is the conditional model alone."""
    def guided(x: torch.Tensor, t: torch.Tensor, condition) -> torch.Tensor:
        both = denoiser(torch.cat([x, x]), torch.cat([t, t]), _join(null_condition, condition))
        uncond, cond = both.chunk(2)
        return uncond + scale * (cond - uncond)
    return guided


@torch.no_grad()
def sample_loop(denoiser: Denoiser, noise: torch.Tensor, scheduler, steps: int, condition=None,
                generator: torch.Generator | None = None, progress: bool = False,
                desc: str = "sampling") -> torch.Tensor:
    """Denoise `noise` (x_T, B x *shape) over `steps` of the scheduler's timesteps; returns x_0
    (same shape). The scheduler's arithmetic runs in fp32 whatever the denoiser's precision."""
    from tqdm.auto import tqdm

    scheduler.set_timesteps(steps)
    x = noise
    for t in tqdm(scheduler.timesteps.tolist(), desc=desc, disable=None if progress else True, leave=False):
        pred = denoiser(x, torch.full((len(x),), t, device=x.device, dtype=torch.long), condition).float()
        x, _ = scheduler.step(pred, t, x, generator=generator)
    return x
