"""The sampling loop against an analytic case, with no model: latents x0 ~ N(0, s^2 I) have an
exact denoiser, so the loop's output spread shows the sampler's own error. As steps grow every
correct sampler returns std s; at few steps DDIM shrinks it a little."""

import math

import pytest
import torch

from conftest import ROOT
from medsynth.config import load_config
from medsynth.diffusion import build_scheduler, classifier_free_guidance, sample_loop
from medsynth.errors import MedsynthError

S = 0.5  # data std: a sharp scale, a hard case for few steps


def schedule(*overrides):
    return load_config(ROOT / "configs" / "ldm_pneumonia.yaml", list(overrides)).diffusion


def exact_denoiser(scheduler, prediction_type: str):
    """E[eps | x_t] (or E[v | x_t]) for x0 ~ N(0, S^2): linear in x_t with the cumulative alpha of t."""
    abar = scheduler.alphas_cumprod

    def denoise(x, t, condition):
        a = abar[t].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        var = a * S ** 2 + 1 - a
        eps = torch.sqrt(1 - a) * x / var
        if prediction_type == "epsilon":
            return eps
        x0 = torch.sqrt(a) * S ** 2 * x / var
        return torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0  # v = sqrt(abar) eps - sqrt(1 - abar) x0
    return denoise


def spread(sampler: str, steps: int, *overrides) -> float:
    d = schedule(*overrides)
    scheduler = build_scheduler(d, sampler)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(8192, 4, generator=g)
    x = sample_loop(exact_denoiser(scheduler, d.prediction_type), noise, scheduler, steps, generator=g)
    return float(x.std())


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_full_chains_recover_the_data_spread(sampler):
    assert spread(sampler, 1000) == pytest.approx(S, abs=0.02)


def test_v_prediction_on_the_cosine_schedule_recovers_the_data_spread():
    assert spread("ddim", 1000, "diffusion.schedule=cosine", "diffusion.prediction_type=v_prediction") == \
        pytest.approx(S, abs=0.02)


def test_ddim_at_few_steps_shrinks_the_spread_only_a_little():
    """diffusers' DDIM on the same schedule and denoiser gives 0.46-0.47 at 50 steps."""
    assert 0.44 < spread("ddim", 50) < S + 0.01


def test_the_check_can_fail():
    """The denoiser of another data scale (unit variance: eps = sqrt(1 - abar) x_t) ends at the
    wrong spread, so the analytic check tells a right sampler and denoiser from a wrong one."""
    scheduler = build_scheduler(schedule(), "ddim")
    abar = scheduler.alphas_cumprod
    x = sample_loop(lambda x, t, c: torch.sqrt(1 - abar[t]).reshape(-1, 1) * x,
                    torch.randn(4096, 4, generator=torch.Generator().manual_seed(1)), scheduler, 50)
    assert float(x.std()) == pytest.approx(1.0, abs=0.05)


def test_guidance_combines_the_two_halves():
    def denoiser(x, t, condition):  # depends on the condition linearly: null 0, class c -> c
        return x * 0 + condition["class_labels"].float().reshape(-1, 1)

    guided = classifier_free_guidance(denoiser, {"class_labels": torch.zeros(3)}, scale=3.0)
    out = guided(torch.zeros(3, 2), torch.zeros(3, dtype=torch.long), {"class_labels": torch.tensor([1, 2, 1])})
    assert out[:, 0].tolist() == [3.0, 6.0, 3.0]  # 0 + 3 * (c - 0)
    assert math.isclose(float(classifier_free_guidance(denoiser, {"class_labels": torch.zeros(1)}, 1.0)(
        torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), {"class_labels": torch.tensor([2])})[0, 0]), 2.0)


def test_an_unknown_sampler_is_refused():
    with pytest.raises(MedsynthError, match="not one of"):
        build_scheduler(schedule(), "euler")
