"""Noise schedules and the reverse-process loop, apart from any model (as diffusers keeps its
schedulers apart from its pipelines).

A denoiser is any callable (x_t: B x *shape, t: B long, condition) -> prediction (epsilon, v or
x0, whichever the scheduler was built for); `condition` is whatever that denoiser understands
(latent diffusion: a dict of UNet keyword arguments, or None). The loop knows nothing about
autoencoders, EMA weights or precision, so a sampler can be tested with an analytic denoiser
(tests/test_diffusion.py) and swapped without building a model.

Two kinds of scheduler, both on the run's noise schedule:
- training: MONAI's DDPMScheduler (`add_noise`, `get_velocity`) for the epsilon and v objectives,
  RectifiedFlow (`add_noise`) for rectified flow; `build_scheduler`;
- sampling: diffusers' schedulers (`set_timesteps`, `step`), `build_sampler`, one per name in
  SAMPLERS. MONAI's DDPM step assumes the previous timestep is t - 1, so below 1000 steps its
  posterior used the wrong alphas and left noise in the samples; MONAI's DDIM stepped to
  t - T/steps from a timestep list spaced otherwise. diffusers' samplers take any subset of the
  trained timesteps, and offer DPM-Solver++ (ODE and SDE) and UniPC for 10-20 steps, and Euler
  and Heun for flow models.

Rectified flow (Liu et al. 2023; the objective of SD3 and MONAI's MAISI): x_s = (1 - s) x0 + s
noise for s = t / T in [0, 1], and the network predicts the velocity dx_s/ds = noise - x0
(diffusers' convention, so its flow samplers take the prediction as it is). The timestep the
network sees is continuous, t = s * T.
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
    "dpmpp": "DPM-Solver++ 2M (Lu et al. 2022), deterministic: 10-20 steps",
    "dpmpp_sde": "DPM-Solver++ 2M SDE (Lu et al. 2022), stochastic: 10-20 steps; the pick for an epsilon model "
                 "(its fresh noise each step corrects the model's errors, as DDPM's does)",
    "unipc": "UniPC (Zhao et al. 2023): 10-20 steps",
    "euler": "Euler ODE steps, for rectified flow models: 10-50 steps",
    "heun": "Heun (2nd order, 2 network evaluations a step), for rectified flow models: 5-25 steps",
}
OBJECTIVES = ("epsilon", "v_prediction", "rectified_flow")
FLOW_SAMPLERS = ("euler", "heun")
SPACINGS = ("leading", "trailing", "linspace")


def samplers_for(objective: str) -> tuple[str, ...]:
    """The samplers that fit a training objective: the flow ODE solvers for rectified flow, the
    diffusion samplers for epsilon and v prediction."""
    flow = objective == "rectified_flow"
    return tuple(name for name in SAMPLERS if (name in FLOW_SAMPLERS) == flow)


def default_sampler(objective: str) -> str:
    """`medsynth sample`'s sampler when the run names none: the one that drew the best samples in few
    network evaluations in benchmarks/ldm_pneumonia.py (RESULTS.md): DPM-Solver++ 2M SDE for the
    diffusion objectives (FID 0.43 at 10 steps, 0.47 at 20, against DDPM-1000's 0.99; the deterministic ODE
    samplers 3-5), Euler for rectified flow."""
    return "euler" if objective == "rectified_flow" else "dpmpp_sde"


class RectifiedFlow:
    """The forward process of rectified flow: x_s = (1 - s) x0 + s noise, s = t / T.

    MONAI 1.6's RFlowScheduler computes the same, but its __init__ skips nn.Module's, so a recipe
    holding one fails on .eval() or .to(); tests/test_diffusion.py uses it as a reference instead."""

    def __init__(self, num_train_timesteps: int):
        self.num_train_timesteps = num_train_timesteps

    def add_noise(self, x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """x0, noise: B x *shape; t: B (float, in [0, T]) -> x_t, B x *shape."""
        s = (t.float() / self.num_train_timesteps).reshape(-1, *[1] * (x0.ndim - 1))
        return (1 - s) * x0 + s * noise


def build_scheduler(d):
    """The training scheduler for `d` (a run's cfg.diffusion: num_train_timesteps, objective,
    schedule, beta_start, beta_end): MONAI's DDPMScheduler with that noise schedule (add_noise,
    get_velocity), or RectifiedFlow (add_noise). Sampling uses `build_sampler`, on the same schedule."""
    from monai.networks.schedulers import DDPMScheduler

    if d.objective == "rectified_flow":
        return RectifiedFlow(d.num_train_timesteps)
    kwargs = {"num_train_timesteps": d.num_train_timesteps, "schedule": d.schedule,
              "prediction_type": d.objective, "clip_sample": False}
    if d.schedule != "cosine":
        kwargs.update(beta_start=d.beta_start, beta_end=d.beta_end)
    return DDPMScheduler(**kwargs)


def check_sampler(sampler: str, steps: int, num_train_timesteps: int, spacing: str | None = None,
                  objective: str = "epsilon") -> None:
    """One clear error for a sampler name, step count or spacing that cannot be used, or a sampler
    that does not fit the objective the model was trained with."""
    if sampler not in SAMPLERS:
        raise MedsynthError(f"sampler {sampler!r} is not one of {list(SAMPLERS)}")
    if sampler not in samplers_for(objective):
        raise MedsynthError(f"sampler {sampler!r} does not fit a model trained with diffusion.objective={objective}; "
                            f"use one of {list(samplers_for(objective))}")
    if not 0 < steps <= num_train_timesteps:
        raise MedsynthError(f"sampling steps must be in 1..{num_train_timesteps}, got {steps}")
    if spacing is not None and spacing not in SPACINGS:
        raise MedsynthError(f"timestep spacing {spacing!r} is not one of {list(SPACINGS)}")


def build_sampler(d, sampler: str, spacing: str | None = None):
    """A diffusers scheduler for `sampler` on the run's noise schedule (the training scheduler's
    betas, so the two cannot drift apart). spacing: which trained timesteps a short chain visits
    (default d.timestep_spacing; "trailing" is the recommendation for few steps, Lin et al. 2024).
    Flow samplers step over noise levels 1 .. 1/T evenly (no spacing; shift 1, as trained)."""
    from diffusers import (DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler, FlowMatchEulerDiscreteScheduler,
                           FlowMatchHeunDiscreteScheduler, UniPCMultistepScheduler)

    spacing = spacing or d.timestep_spacing
    check_sampler(sampler, 1, d.num_train_timesteps, spacing, d.objective)
    if sampler == "euler":
        return FlowMatchEulerDiscreteScheduler(num_train_timesteps=d.num_train_timesteps, shift=1.0)
    if sampler == "heun":
        return FlowMatchHeunDiscreteScheduler(num_train_timesteps=d.num_train_timesteps, shift=1.0)
    common = {"num_train_timesteps": d.num_train_timesteps, "trained_betas": build_scheduler(d).betas.numpy(),
              "prediction_type": d.objective, "timestep_spacing": spacing}
    if sampler == "ddpm":  # predicted x0 is not clipped: scaled latents often lie outside [-1, 1]
        return DDPMScheduler(**common, clip_sample=False, variance_type="fixed_small")
    if sampler == "ddim":  # the last step lands on the first trained timestep, not on alpha 1
        return DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=False)
    if sampler in ("dpmpp", "dpmpp_sde"):
        algorithm = "sde-dpmsolver++" if sampler == "dpmpp_sde" else "dpmsolver++"
        return DPMSolverMultistepScheduler(**common, algorithm_type=algorithm, solver_order=2)
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
    The denoiser gets the timesteps as the scheduler holds them: long for the diffusion samplers,
    float (s * T) for the flow samplers. eta: DDIM's stochasticity (0: deterministic). The progress
    bar counts network evaluations (`evaluations_per_step`: 2 under classifier-free guidance; Heun
    evaluates twice a step, so its timestep list holds 2 steps - 1 entries)."""
    from tqdm.auto import tqdm

    scheduler.set_timesteps(steps)
    step = _stepper(scheduler, generator, eta)
    x = noise * getattr(scheduler, "init_noise_sigma", 1.0)
    bar = tqdm(total=len(scheduler.timesteps) * evaluations_per_step, desc=desc, unit="NFE",
               disable=None if progress else True, leave=False)
    for t in scheduler.timesteps:
        t_batch = torch.full((len(x),), t.item(), device=x.device, dtype=t.dtype)
        pred = denoiser(x, t_batch, condition).float()
        x = step(pred, t, x)
        bar.update(evaluations_per_step)
    bar.close()
    return x
