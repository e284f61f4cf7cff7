"""Latent diffusion: the noise schedule and sampler steps against their formulas, the v target, the
scale factor, classifier-free guidance, real training steps of both stages, save/load, 3D, the
multi-label context path, and the refusals (stage 2 without stage 1)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT, subset_npz
from medsynth.config import load_config
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.models import build_recipe
from medsynth.diffusion import build_sampler, build_scheduler
from medsynth.training import train

QUIET = dict(log=lambda *_: None)
RECIPE = ROOT / "configs" / "ldm_pneumonia.yaml"
TINY = ["data.batch_size=32", "model.channels=[8,16]", "model.latent_channels=2", "model.attention_levels=[false,false]",
        "model.width=0.125", "diffusion.unet_channels=[16,32]", "diffusion.unet_attention_levels=[false,true]",
        "diffusion.num_head_channels=16", "diffusion.sampling_steps=10", "trainer.samples_after_training=8",
        "trainer.precision=32", "data.image_size=null"]


def ldm_overrides(data, runs, *extra):
    return [f"data.path={data}", f"runs_dir={runs}", *TINY, "trainer.max_epochs=2", "diffusion.autoencoder_epochs=1",
            "diffusion.adversarial_warmup_epochs=0", "model.ema_decay=0.5", *extra]


def tiny_recipe(data, *extra):
    cfg = load_config(RECIPE, ldm_overrides(data, "unused", *extra))
    cfg.model.update(in_channels=1, image_size=[28, 28], num_classes=2, multilabel=False)
    return build_recipe(cfg)


@pytest.fixture(scope="module")
def ldm_run(pneumonia, tmp_path_factory):
    """One real run: a stage-1 epoch then a stage-2 epoch on 96 PneumoniaMNIST images at 28 px."""
    tmp = tmp_path_factory.mktemp("ldm")
    data = subset_npz(pneumonia, tmp / "small.npz", {"train": 96, "val": 32, "test": 32})
    return train(RECIPE, ldm_overrides(data, tmp), **QUIET), data


@pytest.mark.parametrize("schedule", ["linear_beta", "scaled_linear_beta", "cosine"])
def test_noise_schedule_adds_noise_and_steps_as_the_formulas_say(schedule):
    cfg = load_config(RECIPE, [f"diffusion.schedule={schedule}"])
    d = cfg.diffusion
    ddpm = build_scheduler(d)
    T = d.num_train_timesteps
    if schedule == "linear_beta":
        betas = torch.linspace(d.beta_start, d.beta_end, T)
    elif schedule == "scaled_linear_beta":
        betas = torch.linspace(d.beta_start ** 0.5, d.beta_end ** 0.5, T) ** 2
    if schedule != "cosine":
        abar = torch.cumprod(1 - betas, 0)
    else:  # Nichol & Dhariwal 2021: abar_t = f(t) / f(0), f(t) = cos^2(((t / T) + s) / (1 + s) * pi / 2)
        f = torch.cos(((torch.arange(T + 1) / T) + 0.008) / 1.008 * torch.pi / 2) ** 2
        abar = (f / f[0])[1:]
    assert torch.allclose(ddpm.alphas_cumprod.double(), abar.double(), rtol=1e-3, atol=1e-4)
    assert torch.all(ddpm.alphas_cumprod.diff() < 0)  # noise only grows

    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(4, 3, 8, 8, generator=g), torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    a = ddpm.alphas_cumprod[t].view(-1, 1, 1, 1)
    xt = ddpm.add_noise(x0, eps, t)
    assert torch.allclose(xt, a.sqrt() * x0 + (1 - a).sqrt() * eps, atol=1e-6)

    # Given the true noise, DDPM's step recovers x0 and its mean is the posterior mean of q(x_{t-1} | x_t, x0)
    ts = 500
    x_t = ddpm.add_noise(x0, eps, torch.tensor([ts]))
    prev, x0_hat = ddpm.step(eps, ts, x_t, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(x0_hat, x0, atol=1e-4)
    ab_t, ab_p, beta = ddpm.alphas_cumprod[ts], ddpm.alphas_cumprod[ts - 1], ddpm.betas[ts]
    mean = ab_p.sqrt() * beta / (1 - ab_t) * x0 + (1 - beta).sqrt() * (1 - ab_p) / (1 - ab_t) * x_t
    noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(prev, mean + ((1 - ab_p) / (1 - ab_t) * beta).sqrt() * noise, atol=1e-4)

    # the samplers (diffusers) run on exactly the training schedule
    for name in ("ddpm", "ddim", "dpmpp", "dpmpp_sde", "unipc"):
        assert torch.allclose(build_sampler(d, name).alphas_cumprod.double(), ddpm.alphas_cumprod.double(), atol=1e-6)

    # DDIM (eta 0) with the true noise lands exactly on the forward process at the previous timestep
    ddim = build_sampler(d, "ddim")
    ddim.set_timesteps(50)
    ts, t_prev = int(ddim.timesteps[10]), int(ddim.timesteps[11])
    x_t = ddpm.add_noise(x0, eps, torch.tensor([ts]))
    prev = ddim.step(eps, ts, x_t).prev_sample
    assert torch.allclose(prev, ddpm.add_noise(x0, eps, torch.tensor([t_prev])), atol=1e-4)


def loss_and_its_draws(data, objective):
    """(recipe, its diffusion loss on 8 real images, the scaled latents, a generator): the latents
    and the generator replay the loss's own draws, so a test can take the same noise and
    timesteps by hand."""
    recipe = tiny_recipe(data, f"diffusion.objective={objective}", "model.conditional=false").eval()
    recipe.scale_factor.fill_(0.7)
    x = torch.from_numpy(np.load(data)["train_images"][:8]).float()[:, None] / 127.5 - 1
    torch.manual_seed(0)
    loss = recipe.diffusion_loss({"image": x}, torch.Generator().manual_seed(1))
    torch.manual_seed(0)  # the same latent draw
    with torch.no_grad():
        z = recipe.autoencoder.encode_stage_2_inputs(x) * 0.7
    return recipe, loss, z, torch.Generator().manual_seed(1)


def test_v_prediction_trains_on_alpha_eps_minus_sigma_x0(small_npz):
    recipe, loss, z, g = loss_and_its_draws(small_npz, "v_prediction")
    with torch.no_grad():
        eps = torch.randn(z.shape, generator=g)
        t = torch.randint(0, 1000, (8,), generator=g)
        abar = recipe.scheduler.alphas_cumprod[t].view(-1, 1, 1, 1)
        alpha, sigma = abar.sqrt(), (1 - abar).sqrt()
        v = alpha * eps - sigma * z
        expected = F.mse_loss(recipe.unet(alpha * z + sigma * eps, t), v)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert torch.allclose(recipe.scheduler.get_velocity(z, eps, t), v, atol=1e-6)


def test_rectified_flow_trains_on_noise_minus_x0_on_the_straight_path(small_npz):
    recipe, loss, z, g = loss_and_its_draws(small_npz, "rectified_flow")
    with torch.no_grad():  # x_s = (1 - s) z + s eps, target eps - z
        eps = torch.randn(z.shape, generator=g)
        t = torch.rand(8, generator=g) * 1000
        s = (t / 1000).view(-1, 1, 1, 1)
        expected = F.mse_loss(recipe.unet((1 - s) * z + s * eps, t), eps - z)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    assert 0 < float(t.min()) and float(t.max()) < 1000 and t.dtype == torch.float32  # continuous timesteps

    # its samplers are the flow ODE solvers: euler by default, ddim refused with the list that fits
    assert recipe.sampler_settings()["sampler"] == "euler"
    images = recipe.sample(3, sampler="heun", steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (3, 1, 28, 28) and torch.isfinite(images).all()
    with pytest.raises(MedsynthError, match="does not fit .*rectified_flow; use one of \\['euler', 'heun'\\]"):
        recipe.sampler_settings("ddim")
    with pytest.raises(MedsynthError, match="diffusion.sampler=ddim does not fit diffusion.objective=rectified_flow"):
        load_config(RECIPE, ["diffusion.objective=rectified_flow", "diffusion.sampler=ddim"])


def test_the_old_objective_key_still_loads():
    """Runs saved before 2026-11-30 name the objective diffusion.prediction_type."""
    assert load_config(RECIPE, ["diffusion.prediction_type=v_prediction"]).diffusion.objective == "v_prediction"


def test_a_few_real_steps_lower_each_stage_loss(small_npz):
    torch.manual_seed(0)
    recipe = tiny_recipe(small_npz, "model.conditional=true")
    f = np.load(small_npz)
    batch = {"image": torch.from_numpy(f["train_images"][:32]).float()[:, None] / 127.5 - 1,
             "label": torch.from_numpy(f["train_labels"][:32, 0]).long()}
    opt = torch.optim.Adam(recipe.autoencoder.parameters(), lr=2e-3)
    first = None
    for _ in range(25):
        _, loss, _ = recipe._autoencoder_terms(batch["image"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.7 * first
    recipe._set_scale_factor(batch["image"])
    recipe.eval()  # no condition dropout: the same conditions every step
    opt = torch.optim.Adam(recipe.unet.parameters(), lr=2e-3)
    losses = []
    for _ in range(25):
        loss = recipe.diffusion_loss(batch, torch.Generator().manual_seed(3))  # the same noise and timesteps
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_run_computes_the_scale_factor_from_its_data(ldm_run):
    run, data = ldm_run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    stage1 = json.loads((run / "autoencoder.json").read_text())
    assert 0 < stage1["ms_ssim"] <= 1 and stage1["split"] == "test"
    recipe = load_run(run)
    scale = recipe.scale_factor.item()
    x = torch.from_numpy(np.load(data)["train_images"]).float()[:, None] / 127.5 - 1
    torch.manual_seed(0)
    with torch.no_grad():
        z = recipe.autoencoder.encode_stage_2_inputs(x)
    assert scale == pytest.approx(1 / z.std().item(), rel=0.15)  # one batch of 32 vs all 96
    assert (z * scale).std().item() == pytest.approx(1.0, abs=0.15)
    assert scale != pytest.approx(1.0, abs=0.05)  # not a default left standing
    for name in ("samples.png", "reconstructions.png", "model.safetensors"):
        assert (run / name).is_file()
    assert {"train/diffusion_mse", "train/l1", "train/kl"} <= set(summary["metrics"])


def test_guidance_scale_one_is_plain_conditional_sampling(ldm_run):
    recipe = load_run(ldm_run[0])
    # Three training steps leave MONAI's zero-initialised layers (the output and each residual
    # branch's last conv) near zero, so the class barely matters yet; jitter every weight so guidance
    # has a visible effect to check (the equality at scale 1 must hold for any weights).
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in recipe.unet_ema.module.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    for sampler in ("ddpm", "ddim", "dpmpp", "dpmpp_sde", "unipc"):  # guidance works with every sampler
        draw = lambda **kw: recipe.sample(6, condition=torch.tensor([0, 1, 0, 1, 0, 1]),  # noqa: E731
                                          generator=torch.Generator().manual_seed(5), steps=10, sampler=sampler, **kw)
        plain, one, three = draw(), draw(guidance=1.0), draw(guidance=3.0)
        assert torch.allclose(plain, one, atol=1e-4), sampler
        assert not torch.allclose(plain, three, atol=1e-3)  # guidance does change the samples
        assert plain.shape == (6, 1, 28, 28) and plain.abs().max() <= 1


def test_save_load_and_the_cli_give_identical_samples(ldm_run, tmp_path):
    run, _ = ldm_run
    a, b = load_run(run), load_run(run)
    for sampler, steps in (("ddim", 10), ("ddpm", 20), ("dpmpp", 5), ("unipc", 5)):
        x = a.sample(4, condition=1, generator=torch.Generator().manual_seed(2), sampler=sampler, steps=steps)
        y = b.sample(4, condition=1, generator=torch.Generator().manual_seed(2), sampler=sampler, steps=steps)
        assert torch.equal(x, y)
    cli = [sys.executable, "-m", "medsynth.cli", "sample", str(run), "-n", "4", "--sampler", "ddim", "--steps", "10",
           "--label", "1", "--guidance", "2", "--seed", "3"]
    for name in ("one.npz", "two.npz"):
        out = subprocess.run([*cli, "--out", str(tmp_path / name)], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
    one, two = np.load(tmp_path / "one.npz"), np.load(tmp_path / "two.npz")
    assert np.array_equal(one["images"], two["images"]) and one["images"].shape == (4, 28, 28)
    prov = json.loads(str(one["provenance"]))
    assert prov["synthetic"] and (prov["sampler"], prov["steps"], prov["guidance"]) == ("ddim", 10, 2.0)
    bad = subprocess.run([*cli[:-2], "--steps", "2000", "--out", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert bad.returncode == 2 and "steps must be in 1..1000" in bad.stderr
    zero = subprocess.run([*cli[:-2], "--steps", "0", "--out", str(tmp_path / "x.npz")], capture_output=True, text=True)
    assert zero.returncode == 2 and "got 0" in zero.stderr  # not silently the default
    from medsynth.sampling import sample
    with pytest.raises(MedsynthError, match="steps must be in"):  # refused before a shard or request is written
        sample(run, 4, out_dir=tmp_path / "shards", steps=2000)
    assert not (tmp_path / "shards").exists() and not (tmp_path / "x.npz").exists()
    with pytest.raises(MedsynthError, match=r"--prior: for the VAE family .* only \(this run is model.family=ldm\)"):
        sample(run, 4, out=tmp_path / "x.npz", prior="normal")
    assert not (tmp_path / "x.npz").exists()


def test_stage2_refuses_to_start_without_a_trained_stage1(small_npz, tmp_path, ldm_run):
    with pytest.raises(MedsynthError, match="stage 2 .* needs a trained stage 1"):
        load_config(RECIPE, ldm_overrides(small_npz, tmp_path, "diffusion.autoencoder_epochs=0"))
    not_ldm = tmp_path / "empty_run"
    not_ldm.mkdir()
    with pytest.raises(MedsynthError, match="no trained stage 1 there"):
        train(RECIPE, ldm_overrides(small_npz, tmp_path, "diffusion.autoencoder_epochs=0",
                                    f"diffusion.autoencoder={not_ldm}"), **QUIET)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty_run", "small.npz"]  # a refused run writes nothing
    # a finished stage 1 is reused: its weights and scale factor, and stage 2 trains on them
    stage1 = load_run(ldm_run[0])
    run = train(RECIPE, ldm_overrides(small_npz, tmp_path, "diffusion.autoencoder_epochs=0", "trainer.max_epochs=1",
                                      f"diffusion.autoencoder={ldm_run[0]}"), **QUIET)
    reused = load_run(run)
    assert reused.scale_factor.item() == stage1.scale_factor.item()
    assert all(torch.equal(p, q) for p, q in zip(reused.autoencoder.state_dict().values(),
                                                 stage1.autoencoder.state_dict().values()))


def test_a_stage1_run_continues_into_stage2_with_resume(small_npz, tmp_path):
    run = train(RECIPE, ldm_overrides(small_npz, tmp_path, "trainer.max_epochs=1"), **QUIET)
    assert (run / "autoencoder.json").is_file() and not (run / "samples.png").exists()
    with pytest.raises(MedsynthError, match="diffusion stage has not been trained"):
        load_run(run).sample(2, condition=0)
    train(resume=run, overrides=["trainer.max_epochs=2"], **QUIET)
    recipe = load_run(run)
    assert recipe.scale_factor.item() > 0 and recipe.sample(2, condition=0, steps=5).shape == (2, 1, 28, 28)
    steps = json.loads((run / "summary.json").read_text())["global_step"]
    assert steps == 3 * 2 + 3  # 96 images / 32: three batches of autoencoder + discriminator steps, then diffusion


def test_3d_volumes_train_and_sample_to_nifti(tmp_path):
    import nibabel as nib

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    def blobs(n):  # MedMNIST-3D layout: N x D x H x W uint8, a bright ellipsoid of random size
        r = rng.uniform(0.3, 0.8, (n, 3, 1, 1, 1))
        return (255 * ((grid[None] / r) ** 2).sum(1).clip(0, 1).__rsub__(1)).astype(np.uint8)
    data = tmp_path / "vol3d.npz"
    np.savez(data, train_images=blobs(16), val_images=blobs(4), test_images=blobs(4))
    run = train(RECIPE, ldm_overrides(data, tmp_path, "model.spatial_dims=3", "model.conditional=false", "model.disc_layers=2",
                                      "data.batch_size=8"), **QUIET)
    out = tmp_path / "synth.nii.gz"
    res = subprocess.run([sys.executable, "-m", "medsynth.cli", "sample", str(run), "-n", "2", "--steps", "5",
                          "--out", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    img = nib.load(str(out))
    assert img.shape == (16, 16, 16, 2) and b"SYNTHETIC" in img.header["descrip"].tobytes()


def test_multilabel_conditions_go_through_cross_attention(pneumonia, tmp_path):
    rng = np.random.default_rng(1)
    with np.load(pneumonia) as f:
        arrays = {f"{s}_images": f[f"{s}_images"][:n] for s, n in (("train", 64), ("val", 16), ("test", 16))}
    arrays.update({f"{s}_labels": rng.integers(0, 2, (len(arrays[f"{s}_images"]), 3)).astype(np.uint8)
                   for s in ("train", "val", "test")})
    data = tmp_path / "multi.npz"
    np.savez(data, **arrays)
    run = train(RECIPE, ldm_overrides(data, tmp_path), **QUIET)
    recipe = load_run(run)
    assert recipe.unet.with_conditioning and recipe.unet.num_class_embeds is None
    labels = torch.tensor([[1, 0, 1], [0, 0, 0]])
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    plain = recipe.sample(2, condition=labels, generator=g(), steps=5)
    assert torch.allclose(plain, recipe.sample(2, condition=labels, generator=g(), steps=5, guidance=1.0), atol=1e-4)
    with pytest.raises(MedsynthError, match="multi-label"):
        from medsynth.sampling import sample
        sample(run, 2, tmp_path / "x.npz")


def test_bad_settings_are_one_clear_error(small_npz):
    with pytest.raises(MedsynthError, match="must be divisible by 16"):
        tiny_recipe(small_npz, "model.channels=[8,16,16]", "model.attention_levels=[]", "diffusion.unet_channels=[16,32,32]",
                    "diffusion.unet_attention_levels=[false,false,true]")
    with pytest.raises(MedsynthError, match="too small for model.disc_layers=5"):
        tiny_recipe(small_npz, "model.disc_layers=5")
    with pytest.raises(MedsynthError, match="diffusion.schedule"):
        load_config(RECIPE, ["diffusion.schedule=quadratic"])
    with pytest.raises(MedsynthError, match="guidance needs a conditional model"):
        recipe = tiny_recipe(small_npz, "model.conditional=false")
        recipe.scale_factor.fill_(1.0)
        recipe.sample(2, guidance=3.0)


def test_ema_decay_warms_up_before_it_reaches_its_setting():
    from torch.optim.swa_utils import AveragedModel

    from medsynth.models.base import ema_with_warmup

    net = torch.nn.Linear(1, 1, bias=False)
    ema = AveragedModel(net, multi_avg_fn=ema_with_warmup(0.999))
    expected = None
    for n in range(200):
        net.weight.data.fill_(float(n))
        ema.update_parameters(net)
        d = min(0.999, (1 + n) / (10 + n))  # n updates (the first a copy) came before this one
        expected = 0.0 if n == 0 else d * expected + (1 - d) * n  # the first update copies
    assert ema.module.weight.item() == pytest.approx(expected, rel=1e-5)
    assert ema.module.weight.item() > 150  # a fixed 0.999 would still sit near 18
