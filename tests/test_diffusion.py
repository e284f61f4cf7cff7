"""Samplers against analytic cases, with no model.

Latents x0 ~ N(0, S^2 I) have an exact denoiser, and DDIM and DDPM then act on x_t linearly, so
the variance of their output has a closed-form recursion: an independent reference for the
library samplers we wrap. Rectified flow's Euler and Heun steps are linear on that data too,
with their own recursion, and MONAI's RFlowScheduler (an Euler step written apart from
diffusers') is a second reference. A two-component Gaussian mixture (posterior mean also closed
form) checks that the mixture weights and modes are kept. Every correct sampler returns std S as
steps grow; at few steps they shrink the spread a little (a sharp data scale is a hard case)."""

import math

import pytest
import torch

from conftest import ROOT
from medsynth.config import load_config
from medsynth.diffusion import (FLOW_SAMPLERS, SAMPLERS, build_sampler, build_scheduler, check_sampler,
                                classifier_free_guidance, sample_loop)
from medsynth.errors import MedsynthError

S = 0.5  # data std
PREDICTIONS = ["epsilon", "v_prediction"]
DIFFUSION_SAMPLERS = [name for name in SAMPLERS if name not in FLOW_SAMPLERS]
T = 1000


def schedule(*overrides):
    return load_config(ROOT / "configs" / "ldm_pneumonia.yaml", list(overrides)).diffusion


def to_prediction(eps, x0, a, prediction_type):
    return eps if prediction_type == "epsilon" else torch.sqrt(a) * eps - torch.sqrt(1 - a) * x0


def gaussian_denoiser(abar, prediction_type):
    """Exact E[eps | x_t] (or v) for x0 ~ N(0, S^2): linear in x_t."""
    def denoise(x, t, condition):
        a = abar[t].reshape(-1, *[1] * (x.ndim - 1)).to(x.dtype)
        var = a * S ** 2 + 1 - a
        eps = torch.sqrt(1 - a) * x / var
        return to_prediction(eps, torch.sqrt(a) * S ** 2 * x / var, a, prediction_type)
    return denoise


def mixture_denoiser(abar, prediction_type, means=(-1.0, 1.0), std=0.2, weights=(0.5, 0.5)):
    """Exact E[x0 | x_t] for x0 ~ sum_k w_k N(m_k, std^2) per coordinate, and the eps / v it implies."""
    def denoise(x, t, condition):
        a = abar[t].reshape(-1, *[1] * (x.ndim - 1)).to(torch.float64)
        xd = x.double()
        var = a * std ** 2 + 1 - a
        logp = torch.stack([math.log(w) - (xd - torch.sqrt(a) * m) ** 2 / (2 * var) for m, w in zip(means, weights)])
        r = torch.softmax(logp, 0)
        x0 = sum(r[k] * (m + torch.sqrt(a) * std ** 2 * (xd - torch.sqrt(a) * m) / var) for k, m in enumerate(means))
        eps = (xd - torch.sqrt(a) * x0) / torch.sqrt(1 - a)
        return to_prediction(eps, x0, a, prediction_type).float()
    return denoise


def flow_gaussian_velocity(x, t, condition):
    """Exact E[noise - x0 | x_s] for x0 ~ N(0, S^2), x_s = (1 - s) x0 + s noise, s = t / T."""
    s = (t.double() / T).reshape(-1, *[1] * (x.ndim - 1))
    var = (1 - s) ** 2 * S ** 2 + s ** 2
    return ((s - (1 - s) * S ** 2) * x.double() / var).float()


def flow_mixture_velocity(x, t, condition, means=(-1.0, 1.0), std=0.2, weights=(0.5, 0.5)):
    """Exact E[noise - x0 | x_s] for the mixture of mixture_denoiser on the flow path."""
    s = (t.double() / T).reshape(-1, *[1] * (x.ndim - 1))
    xd = x.double()
    var = (1 - s) ** 2 * std ** 2 + s ** 2
    logp = torch.stack([math.log(w) - (xd - (1 - s) * m) ** 2 / (2 * var) for m, w in zip(means, weights)])
    r = torch.softmax(logp, 0)
    x0 = sum(r[k] * (m + (1 - s) * std ** 2 * (xd - (1 - s) * m) / var) for k, m in enumerate(means))
    return ((xd - (1 - s) * x0) / s - x0).float()


def draw(sampler, steps, denoiser_of, prediction_type="epsilon", seed=0, n=8192, spacing=None):
    """n x 4 samples of `sampler`; flow samplers use the rectified flow form of the same data
    (flow_gaussian_velocity for gaussian_denoiser, flow_mixture_velocity for mixture_denoiser)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 4, generator=g)
    if sampler in FLOW_SAMPLERS:
        scheduler = build_sampler(schedule("diffusion.objective=rectified_flow"), sampler)
        flow = {gaussian_denoiser: flow_gaussian_velocity, mixture_denoiser: flow_mixture_velocity}[denoiser_of]
        return sample_loop(flow, noise, scheduler, steps, generator=g)
    scheduler = build_sampler(schedule(f"diffusion.objective={prediction_type}"), sampler, spacing)
    return sample_loop(denoiser_of(scheduler.alphas_cumprod, prediction_type), noise, scheduler, steps, generator=g)


def flow_closed_form_std(sampler: str, steps: int, levels: list[float] | None = None) -> float:
    """The output std of Euler or Heun on the flow path of N(0, S^2) with the exact velocity,
    from the noise levels alone: the velocity is g(s) x, so an Euler step multiplies x by
    1 + h g(s) and a Heun step by 1 + h (g(s) + g(s') (1 + h g(s))) / 2, h = s' - s < 0.
    The last step, to s' = 0, is an Euler step in both (the velocity is not evaluated at 0).
    levels: the noise levels visited before 0 (default diffusers': 1 .. 1/T evenly)."""
    def g(s):
        return (s - (1 - s) * S ** 2) / ((1 - s) ** 2 * S ** 2 + s ** 2)
    if levels is None:
        levels = [1 - i * (1 - 1 / T) / (steps - 1) for i in range(steps)] if steps > 1 else [1.0]
    levels = [*levels, 0.0]
    k = 1.0
    for s, s_next in zip(levels, levels[1:]):
        h = s_next - s
        euler = 1 + h * g(s)
        k *= euler if sampler == "euler" or s_next == 0 else 1 + h * (g(s) + g(s_next) * euler) / 2
    return abs(k)


def closed_form_std(sampler: str, steps: int, spacing: str = "trailing") -> float:
    """The output std of DDIM (eta 0) or DDPM on Gaussian data with the exact denoiser, by the
    variance recursion over the chain's timesteps (no sampling): for x_prev = k x + sigma z,
    V_prev = k^2 V + sigma^2."""
    scheduler = build_sampler(schedule(), sampler, spacing)
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    ts = [int(t) for t in scheduler.timesteps]
    v = 1.0
    for i, t in enumerate(ts):
        a = abar[t]
        last = i + 1 == len(ts)
        a_prev = (abar[0] if sampler == "ddim" else torch.tensor(1.0, dtype=torch.float64)) if last else abar[ts[i + 1]]
        var = a * S ** 2 + 1 - a
        x0_gain = (1 - (1 - a) / var) / torch.sqrt(a)  # x0_hat = x0_gain * x_t
        eps_gain = torch.sqrt(1 - a) / var  # eps_hat = eps_gain * x_t
        if sampler == "ddim":
            k, sigma2 = torch.sqrt(a_prev) * x0_gain + torch.sqrt(1 - a_prev) * eps_gain, 0.0
        else:  # DDPM posterior mean and fixed-small variance (Ho et al. 2020, eq. 7)
            beta = 1 - a / a_prev
            k = torch.sqrt(a_prev) * beta / (1 - a) * x0_gain + torch.sqrt(1 - beta) * (1 - a_prev) / (1 - a)
            sigma2 = 0.0 if last else float((1 - a_prev) / (1 - a) * beta)
        v = float(k) ** 2 * v + sigma2
    return math.sqrt(v)


def sde_closed_form_std(steps: int, spacing: str = "trailing") -> float:
    """The output std of DPM-Solver++ 2M SDE (Lu et al. 2022, the midpoint form) on Gaussian data
    with the exact denoiser, by the covariance recursion over diffusers' noise levels: with
    alpha = 1/sqrt(1 + sigma^2), lambda = log(alpha / (sigma alpha)), h = lambda_t - lambda_s, a step is
    x_t = (s_t / s_s) e^-h x + a_t (1 - e^-2h) (D0 + D1 / 2) + s_t sqrt(1 - e^-2h) z with D0 the
    current x0 estimate and D1 = (D0 - previous) / r0; first order at the first step and, below
    15 steps, the last; the last level is 0 (x0 estimate returned). x0 estimates are c x, so the
    state is the variance of x and its covariance with the previous x."""
    sch = build_sampler(schedule(), "dpmpp_sde", spacing)
    sch.set_timesteps(steps)
    sig = [float(s) for s in sch.sigmas.double()]
    def al(s): return 1 / math.sqrt(s * s + 1)
    def lam(s): return math.log(al(s)) - math.log(s * al(s)) if s > 0 else math.inf
    def c(s):  # x0_hat = c x
        a, sg = al(s), s * al(s)
        return a * S * S / (a * a * S * S + sg * sg)
    V, Vprev, C = 1.0, None, None  # init_noise_sigma is 1 for this scheduler
    n = len(sig) - 1
    lower_final = n < 15
    for i in range(n):
        s, t = sig[i], sig[i + 1]
        at, st = al(t), t * al(t)
        order1 = i == 0 or (lower_final and i == n - 1)
        if t == 0:
            e, noise = 0.0, 0.0
            A0 = 0.0; coef = at
        else:
            h = lam(t) - lam(s)
            e = math.exp(-h)
            A0 = (st / (s * al(s))) * e
            coef = at * (1 - e * e)
            noise = st * st * (1 - e * e)
        if order1:
            A, B = A0 + coef * c(s), 0.0
        else:
            sp = sig[i - 1]
            h = lam(t) - lam(s) if t > 0 else math.inf
            h0 = lam(s) - lam(sp)
            r0 = h0 / h if t > 0 else 0.0
            # D0 = m0, D1 = (m0 - m1)/r0; x += coef*(D0 + 0.5 D1)
            if t == 0:
                A, B = A0 + coef * c(s), 0.0
            else:
                A = A0 + coef * (c(s) + 0.5 * c(s) / r0)
                B = -coef * 0.5 * c(sp) / r0
        Vn = A * A * V + (B * B * Vprev + 2 * A * B * C if B else 0.0) + noise
        Cn = A * V + (B * C if B else 0.0)
        Vprev, V, C = V, Vn, Cn
    return math.sqrt(V)


@pytest.mark.parametrize("steps", [5, 10, 20, 50])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_dpmpp_sde_matches_the_closed_form_recursion(steps, prediction_type):
    expected = sde_closed_form_std(steps)
    assert float(draw("dpmpp_sde", steps, gaussian_denoiser, prediction_type).std()) == pytest.approx(expected,
                                                                                                      abs=0.01)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
@pytest.mark.parametrize("steps", [10, 50, 200])
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_and_ddpm_match_the_closed_form_recursion(sampler, steps, prediction_type):
    expected = closed_form_std(sampler, steps)
    assert float(draw(sampler, steps, gaussian_denoiser, prediction_type).std()) == pytest.approx(expected, abs=0.01)


def test_the_closed_form_tells_the_old_monai_ddpm_fault_apart():
    """MONAI's DDPM took t - 1 as the previous timestep whatever the spacing: at 50 steps it ended
    near std 0.94 (issue 13). The reference recursion puts correct DDPM near 0.43, and the
    wrapped sampler agrees (test above), so the fault cannot return unnoticed."""
    assert closed_form_std("ddpm", 50) < 0.46
    assert closed_form_std("ddpm", 1000) == pytest.approx(S, rel=0.02)
    monai = build_scheduler(schedule())  # the training scheduler, once also the sampler
    g = torch.Generator().manual_seed(0)
    x = sample_loop(gaussian_denoiser(monai.alphas_cumprod, "epsilon"), torch.randn(8192, 4, generator=g), monai, 50,
                    generator=g)
    assert float(x.std()) > 0.9


@pytest.mark.parametrize("sampler", FLOW_SAMPLERS)
@pytest.mark.parametrize("steps", [5, 20, 100])
def test_flow_samplers_match_the_closed_form_recursion(sampler, steps):
    expected = flow_closed_form_std(sampler, steps)
    assert float(draw(sampler, steps, gaussian_denoiser).std()) == pytest.approx(expected, abs=0.01)


@pytest.mark.parametrize("steps", [5, 20, 200])
def test_euler_agrees_with_monai_rectified_flow_step(steps):
    """MONAI's RFlowScheduler takes Euler steps over its own grid (1000, 1000 - T/steps, ..., then
    to 0) with the velocity x0 - noise, written apart from diffusers' (ours, on 1 .. 1/T): each
    lands on the closed form for its own grid, and with many steps the grids agree."""
    from monai.networks.schedulers import RFlowScheduler

    monai = RFlowScheduler(num_train_timesteps=T, use_discrete_timesteps=False)
    monai.set_timesteps(steps)
    x = torch.randn(8192, 1, 2, 2, generator=torch.Generator().manual_seed(0))
    ts = [*monai.timesteps.float(), None]
    for t, t_next in zip(ts, ts[1:]):
        v = -flow_gaussian_velocity(x, torch.full((len(x),), float(t)), None)  # MONAI's sign: x0 - noise
        x, _ = monai.step(v, float(t), x, None if t_next is None else float(t_next))
    levels = [float(t) / T for t in monai.timesteps]
    assert float(x.std()) == pytest.approx(flow_closed_form_std("euler", steps, levels), abs=0.01)
    assert float(draw("euler", steps, gaussian_denoiser).std()) == pytest.approx(
        flow_closed_form_std("euler", steps), abs=0.01)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_every_sampler_converges_to_the_data_spread(sampler, prediction_type):
    if sampler in FLOW_SAMPLERS and prediction_type != "epsilon":
        pytest.skip("flow samplers have one objective, rectified flow (run once)")
    steps = 1000 if sampler == "ddpm" else 200
    assert float(draw(sampler, steps, gaussian_denoiser, prediction_type).std()) == pytest.approx(S, rel=0.02)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_mixture_weights_and_modes_are_kept(sampler):
    steps = 1000 if sampler == "ddpm" else 200
    x = draw(sampler, steps, mixture_denoiser, n=4096)
    assert float((x > 0).float().mean()) == pytest.approx(0.5, abs=0.02)
    assert float(x.abs().mean()) == pytest.approx(1.0, abs=0.03)  # modes at -1 and 1, std 0.2
    assert float(((x.abs() - 1).abs() < 0.6).float().mean()) > 0.97  # nothing left between the modes


@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_same_seed_same_samples(sampler):
    assert torch.equal(draw(sampler, 10, gaussian_denoiser, seed=3, n=64),
                       draw(sampler, 10, gaussian_denoiser, seed=3, n=64))


def test_the_check_can_fail():
    """The denoiser of another data scale (unit variance) ends at the wrong spread, so the analytic
    check tells a right sampler and denoiser from a wrong one."""
    def unit(abar, prediction_type):
        return lambda x, t, c: torch.sqrt(1 - abar[t]).reshape(-1, 1) * x
    assert float(draw("ddim", 50, unit).std()) == pytest.approx(1.0, abs=0.05)


def test_guidance_combines_the_two_halves_and_scale_one_is_the_conditional_model():
    def denoiser(x, t, condition):  # depends on the condition: null 0, class c -> c
        return x * 0.5 + condition["class_labels"].float().reshape(-1, 1)

    labels = {"class_labels": torch.tensor([1, 2, 1])}
    x, t = torch.randn(3, 2), torch.zeros(3, dtype=torch.long)
    guided = classifier_free_guidance(denoiser, {"class_labels": torch.zeros(3)}, scale=3.0)
    torch.testing.assert_close(guided(x, t, labels), x * 0.5 + 3.0 * torch.tensor([[1.0], [2.0], [1.0]]))
    plain = classifier_free_guidance(denoiser, {"class_labels": torch.zeros(3)}, scale=1.0)
    torch.testing.assert_close(plain(x, t, labels), denoiser(x, t, labels))


def test_bad_names_and_step_counts_are_one_clear_error_listing_the_valid_ones():
    with pytest.raises(MedsynthError, match="not one of .*'dpmpp'"):
        check_sampler("euler_a", 10, 1000)
    with pytest.raises(MedsynthError, match="does not fit .*rectified_flow; use one of \\['euler', 'heun'\\]"):
        check_sampler("ddim", 10, 1000, objective="rectified_flow")
    with pytest.raises(MedsynthError, match="does not fit .*objective=epsilon; use one of \\['ddpm'"):
        check_sampler("heun", 10, 1000)
    with pytest.raises(MedsynthError, match="must be in 1..1000"):
        check_sampler("ddim", 0, 1000)
    with pytest.raises(MedsynthError, match="spacing 'even' is not one of"):
        check_sampler("ddim", 10, 1000, "even")
