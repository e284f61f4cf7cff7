"""Noise schedules and the reverse-process loop, apart from any model (as diffusers keeps its
schedulers apart from its pipelines).

A denoiser is any callable (x_t: B x *shape, t: B long, condition) -> prediction (epsilon, v or
x0, whichever the scheduler was built for); `condition` is whatever that denoiser understands
(latent diffusion: a dict of UNet keyword arguments, or None). The loop knows nothing about
autoencoders, EMA weights or precision, so a sampler can be tested with an analytic denoiser
(tests/test_diffusion.py) and swapped without building a model.

Two kinds of scheduler, both on the run's noise schedule (the same betas):
- training: MONAI's DDPMScheduler (`add_noise`, `get_velocity`), `build_scheduler`;
- sampling: diffusers' schedulers (`set_timesteps`, `step`), `build_sampler`, one per name in
  SAMPLERS. MONAI's DDPM step assumes the previous timestep is t - 1, so below 1000 steps its
  posterior used the wrong alphas and left noise in the samples; MONAI's DDIM stepped to
  t - T/steps from a timestep list spaced otherwise. diffusers' samplers take any subset of the
  trained timesteps, and offer DPM-Solver++ and UniPC for 10-20 steps.
"""

from __future__ import annotations

import inspect
from typing import Callable

import torch

from medsynth.errors import MedsynthError

Denoiser = Callable[[torch.Tensor, torch.Tensor, object], torch.Tensor]
# name -> what it is for (the `medsynth sample --help` text)
SAMPLERS = {
    "ddpm": "ancestral DDPM (stochastic): the reference, at its best with all 1000 steps",
    "ddim": "DDIM (deterministic with diffusion.ddim_eta=0): 50-100 steps",
    "dpmpp": "DPM-Solver++ 2M (Lu et al. 2022): 10-20 steps",
    "unipc": "UniPC (Zhao et al. 2023): 10-20 steps",
}
SPACINGS = ("leading", "trailing", "linspace")


def build_scheduler(d):
    """The training scheduler: MONAI's DDPMScheduler with the noise schedule of `d` (a run's
    cfg.diffusion: num_train_timesteps, schedule, beta_start, beta_end, prediction_type), for
    add_noise and get_velocity. Sampling uses `build_sampler`, on these same betas."""
    from monai.networks.schedulers import DDPMScheduler

    kwargs = {"num_train_timesteps": d.num_train_timesteps, "schedule": d.schedule,
              "prediction_type": d.prediction_type, "clip_sample": False}
    if d.schedule != "cosine":
        kwargs.update(beta_start=d.beta_start, beta_end=d.beta_end)
    return DDPMScheduler(**kwargs)


def check_sampler(sampler: str, steps: int, num_train_timesteps: int, spacing: str | None = None) -> None:
    """One clear error for a sampler name, step count or spacing that cannot be used."""
    if sampler not in SAMPLERS:
        raise MedsynthError(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
    if not 0 < steps <= num_train_timesteps:
        raise MedsynthError(f"sampling steps must be in 1..{num_train_timesteps}, got {steps}")
    if spacing is not None and spacing not in SPACINGS:
        raise MedsynthError(f"timestep spacing {spacing!r} is not one of {list(SPACINGS)}")


def build_sampler(d, sampler: str, spacing: str | None = None):
    """A diffusers scheduler for `sampler` on the run's noise schedule (the training scheduler's
    betas, so the two cannot drift apart). spacing: which trained timesteps a short chain visits
    (default d.timestep_spacing; "trailing" is the recommendation for few steps, Lin et al. 2024)."""
    from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, UniPCMultistepScheduler

    spacing = spacing or d.timestep_spacing
    check_sampler(sampler, 1, d.num_train_timesteps, spacing)
    common = {"num_train_timesteps": d.num_train_timesteps, "trained_betas": build_scheduler(d).betas.numpy(),
              "prediction_type": d.prediction_type, "timestep_spacing": spacing}
    if sampler == "ddpm":  # predicted x0 is not clipped: scaled latents often lie outside [-1, 1]
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if sampler == "ddim":  # the last step lands on the first trained timestep, not on alpha 1
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if sampler == "dpmpp":
        return DPMSolverMultistepScheduler(**common, algorithm_type="dpmsolver++", solver_order=2)
    return UniPCMultistepScheduler(**common)


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


def _stepper(scheduler, generator, eta: float):
    """scheduler.step as (pred, t, x) -> x_prev, for MONAI's and diffusers' schedulers alike."""
    params = inspect.signature(scheduler.step).parameters
    kwargs = {"generator": generator} if "generator" in params else {}
    if "eta" in params:
        kwargs["eta"] = eta
    if "return_dict" not in params:  # MONAI: (prev_sample, pred_original_sample)
        return lambda pred, t, x: scheduler.step(pred, t, x, **kwargs)[0]
    return lambda pred, t, x: scheduler.step(pred, t, x, return_dict=False, **kwargs)[0]


@torch.no_grad()
def sample_loop(denoiser: Denoiser, noise: torch.Tensor, scheduler, steps: int, condition=None,
                generator: torch.Generator | None = None, progress: bool = False, desc: str = "sampling",
                eta: float = 0.0, evaluations_per_step: int = 1) -> torch.Tensor:
    """Denoise `noise` (x_T, B x *shape) over `steps` of the scheduler's timesteps; returns x_0
    (same shape). The scheduler's arithmetic runs in fp32 whatever the denoiser's precision.
    eta: DDIM's stochasticity (0: deterministic). The progress bar counts network evaluations
    (`evaluations_per_step`: 2 under classifier-free guidance)."""
    from tqdm.auto import tqdm

    scheduler.set_timesteps(steps)
    step = _stepper(scheduler, generator, eta)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    bar = tqdm(total=len(scheduler.timesteps) * evaluations_per_step, desc=desc, unit="NFE",
               disable=None if progress else True, leave=False)
    for t in scheduler.timesteps:
        t_batch = torch.full((len(x),), int(t), device=x.device, dtype=torch.long)
        pred = denoiser(x, t_batch, condition).float()
        x = step(pred, t, x)
        bar.update(evaluations_per_step)
    bar.close()
    return x
