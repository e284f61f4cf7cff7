"""The VAE family's mixture prior (model.latent_prior=gmm, medsynth.latent_prior): draws follow the
mixture's analytic moments, the fit recovers a known mixture, and a real run fits, saves and
samples from it."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import overrides, run_cli
from medsynth.config import load_config
from medsynth.errors import MedsynthError
from medsynth.latent_prior import fit_gaussian_mixture, posterior_means
from medsynth.models import load_run
from medsynth.nets.vae import VAENet
from medsynth.training import train
from medsynth.writers import to_stored

quiet = dict(log=lambda *_: None)


def net_with_prior(components: int, latent_dim: int = 2) -> VAENet:
    return VAENet("conv", 2, 1, [28, 28], [8, 16], latent_dim, prior_components=components)


def test_mixture_prior_draws_have_the_mixtures_moments():
    net = net_with_prior(2)
    weights = torch.tensor([0.25, 0.75])
    means = torch.tensor([[-6.0, 0.0], [6.0, 2.0]])
    covs = torch.tensor([[[1.0, 0.0], [0.0, 0.25]], [[2.0, 0.9], [0.9, 1.0]]])
    net.prior_weights.copy_(weights)
    net.prior_means.copy_(means)
    net.prior_scale_tril.copy_(torch.linalg.cholesky(covs))
    z = net.prior(40_000, generator=torch.Generator().manual_seed(0)).numpy()
    right = z[:, 0] > 0  # the components are 12 standard deviations apart: the sign tells them apart
    assert right.mean() == pytest.approx(0.75, abs=0.01)
    for side, k in ((~right, 0), (right, 1)):
        assert np.allclose(z[side].mean(0), means[k], atol=0.05)
        assert np.allclose(np.cov(z[side].T), covs[k], atol=0.06)
    # same generator seed, same draws; the normal prior is untouched by the option
    again = net.prior(40_000, generator=torch.Generator().manual_seed(0)).numpy()
    assert np.array_equal(z, again)
    plain = VAENet("conv", 2, 1, [28, 28], [8, 16], 2)
    assert not any(name.startswith("prior_") for name, _ in plain.named_buffers())
    ref = torch.randn(5, 2, generator=torch.Generator().manual_seed(3))
    assert torch.equal(plain.prior(5, generator=torch.Generator().manual_seed(3)), ref)


def test_fit_recovers_a_known_mixture():
    rng = np.random.default_rng(0)
    truth = np.array([[0.0, 0.0, 0.0], [8.0, 0.0, 0.0], [0.0, 8.0, 0.0]])
    scale = np.array([0.5, 1.0, 1.5])
    codes = np.concatenate([rng.normal(truth[k], scale[k], size=(n, 3)) for k, n in enumerate((1000, 2000, 3000))])
    fitted = fit_gaussian_mixture(codes, 3, seed=0)
    order = [int(np.argmin(np.linalg.norm(fitted["means"] - t, axis=1))) for t in truth]
    assert sorted(order) == [0, 1, 2]
    assert np.allclose(fitted["weights"][order], [1 / 6, 2 / 6, 3 / 6], atol=0.01)
    assert np.allclose(fitted["means"][order], truth, atol=0.1)
    for k, j in enumerate(order):  # the Cholesky factor gives back the covariance: scale^2 I
        cov = fitted["scale_tril"][j] @ fitted["scale_tril"][j].T
        assert np.allclose(cov, scale[k] ** 2 * np.eye(3), atol=0.1 * scale[k] ** 2)
    with pytest.raises(MedsynthError, match="more than the 2 training images"):
        fit_gaussian_mixture(codes[:2], 3, seed=0)


def test_a_conditional_vae_run_fits_saves_and_samples_from_its_mixture(small_npz, tmp_path, capsys):
    run = train("configs/cvae_pneumonia.yaml",
                overrides(small_npz, tmp_path / "runs", "model.latent_prior=gmm", "model.latent_prior_components=3"),
                **quiet)
    summary = json.loads((run / "summary.json").read_text())["metrics"]
    assert summary["latent_prior_components"] == 3 and summary["latent_prior_images"] == 96
    weights = load_file(run / "model.safetensors")
    assert weights["net.prior_means"].shape == (3, 8)
    recipe = load_run(run)
    assert torch.equal(recipe.net.prior_means, weights["net.prior_means"])
    # the mixture is the one fitted to the training images' posterior means, not the N(0, I) it starts as
    cfg = load_config(run / "config.yaml")
    from medsynth.data import load_splits

    splits = load_splits(cfg.data, 2)
    codes = posterior_means(recipe.net, splits.train.images, recipe.condition_vector(splits.train.labels))
    refit = fit_gaussian_mixture(codes, 3, seed=cfg.seed)
    assert np.allclose(np.sort(recipe.net.prior_weights.numpy()), np.sort(refit["weights"]), atol=1e-4)
    assert not torch.allclose(recipe.net.prior_scale_tril, torch.eye(8).expand(3, 8, 8))
    # the recipe samples through the mixture, not N(0, I)
    labels = torch.arange(8) % 2
    drawn = recipe.sample(8, condition=labels, generator=torch.Generator().manual_seed(5))
    c = recipe.condition_vector(labels, 8)
    with torch.no_grad():
        for mixture, same in ((True, True), (False, False)):
            z = recipe.net.prior(8, generator=torch.Generator().manual_seed(5), mixture=mixture)
            assert torch.allclose(drawn, torch.tanh(recipe.net.decode(z, c)), atol=1e-6) == same
    code, err = run_cli(capsys, "sample", run, "-n", "16", "--out", tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape[0] == 16
    # --prior normal: the same weights drawn from N(0, I); the default is the mixture; provenance says which
    drawn = {}
    for given in ((), ("--prior", "mixture"), ("--prior", "normal")):
        out = tmp_path / f"prior{len(drawn)}.npz"
        code, err = run_cli(capsys, "sample", run, "-n", "8", "--seed", "5", "--out", out, *given)
        assert code == 0, err
        with np.load(out) as f:
            drawn[given[1] if given else "default"] = (f["images"], json.loads(str(f["provenance"]))["prior"])
    assert drawn["default"][1] == drawn["mixture"][1] == "mixture" and drawn["normal"][1] == "normal"
    assert np.array_equal(drawn["default"][0], drawn["mixture"][0])
    with torch.no_grad():
        z = recipe.net.prior(8, generator=torch.Generator().manual_seed(5), mixture=False)
        expected = to_stored(torch.tanh(recipe.net.decode(z, c))).astype(float)
    assert np.abs(drawn["normal"][0].astype(float) - expected).max() <= 1  # uint8 rounding
    assert not np.array_equal(drawn["normal"][0], drawn["mixture"][0])
    # a run whose fit failed keeps N(0, I) components: it samples, and says it drew from N(0, I)
    import shutil

    from safetensors.torch import save_file

    unfitted = shutil.copytree(run, tmp_path / "unfitted")
    weights = load_file(unfitted / "model.safetensors")
    weights["net.prior_weights"].fill_(1 / 3)
    weights["net.prior_means"].zero_()
    weights["net.prior_scale_tril"].copy_(torch.eye(8).expand(3, 8, 8))
    save_file(weights, str(unfitted / "model.safetensors"))
    code, err = run_cli(capsys, "sample", unfitted, "-n", "4", "--out", tmp_path / "unfitted.npz")
    assert code == 0, err
    with np.load(tmp_path / "unfitted.npz") as f:
        assert json.loads(str(f["provenance"]))["prior"] == "normal"


def test_prior_option_is_checked_before_anything_is_written(run, tmp_path, capsys):
    """A run without a mixture draws from N(0, I) only: --prior mixture is refused with why, --prior
    normal is what it does anyway; a name that is no prior is refused by the command line."""
    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "a.npz", "--prior", "mixture")
    assert code == 2 and "--prior mixture: this run has no mixture prior" in err and "Traceback" not in err
    assert not (tmp_path / "a.npz").exists()
    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "b.npz", "--prior", "normal")
    assert code == 0, err
    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "c.npz")
    assert code == 0, err
    with np.load(tmp_path / "b.npz") as b, np.load(tmp_path / "c.npz") as c:
        assert np.array_equal(b["images"], c["images"]) and "prior" not in json.loads(str(b["provenance"]))
    with pytest.raises(SystemExit):
        run_cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "d.npz", "--prior", "vamp")
    assert "invalid choice: 'vamp'" in capsys.readouterr().err


def test_provenance_says_normal_for_a_mixture_that_was_never_fitted():
    """A run whose fit failed keeps N(0, I) components: its samples are N(0, I) draws and the
    recorded prior says so; once fitted, the default is the mixture, and N(0, I) can be asked for."""
    from medsynth.latent_prior import prior_setting

    net = net_with_prior(2)
    # options go to recipe.sample as keywords: nothing but the prior may be in them
    assert prior_setting(net, None) == prior_setting(net, "mixture") == {"prior": "normal"}
    net.prior_means.copy_(torch.tensor([[-1.0, 0.0], [1.0, 0.0]]))
    assert prior_setting(net, None) == {"prior": "mixture"} and prior_setting(net, "normal") == {"prior": "normal"}
    with pytest.raises(MedsynthError, match="--prior vamp: not one of mixture, normal"):
        prior_setting(net, "vamp")


def test_a_bf16_net_keeps_its_fitted_mixture_in_float32():
    """Under trainer.precision=bf16-true the net's buffers are bf16: the fitted mixture must not be
    rounded to bf16's 3 digits, so it is stored (and saved) in float32, equal to the fit."""
    from medsynth.latent_prior import fit_latent_prior

    torch.manual_seed(0)
    net = net_with_prior(2, latent_dim=3).to(torch.bfloat16)
    images = torch.rand(64, 1, 28, 28) * 2 - 1
    fit_latent_prior(net, images, None, seed=0)
    refit = fit_gaussian_mixture(posterior_means(net, images, None), 2, seed=0)
    for name in ("weights", "means", "scale_tril"):
        buffer = getattr(net, f"prior_{name}")
        assert buffer.dtype == torch.float32 and f"prior_{name}" in dict(net.named_buffers())
        assert torch.allclose(buffer, torch.as_tensor(refit[name], dtype=torch.float32), rtol=1e-6, atol=1e-7)
    # not what bf16 storage would give: the fitted means carry digits beyond bf16's
    assert not torch.equal(net.prior_means, net.prior_means.to(torch.bfloat16).float())
    assert net.state_dict()["prior_means"].dtype == torch.float32


def test_a_mixture_the_training_split_cannot_support_is_refused_before_training(small_npz, tmp_path):
    # 12 components x (8 latent dims + 1) = 108 codes needed; the split has 96 training images
    with pytest.raises(MedsynthError, match="need at least 108 training images.*has 96"):
        train("configs/cvae_pneumonia.yaml", overrides(small_npz, tmp_path / "runs", "model.latent_prior=gmm",
                                                       "model.latent_prior_components=12"), **quiet)
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_mixture_prior_is_refused_outside_the_vae_family(tmp_path):
    with pytest.raises(MedsynthError, match="model.latent_prior=gmm is for model.family=vae or vaegan"):
        load_config("configs/dcgan_pneumonia.yaml", ["model.latent_prior=gmm"])
    with pytest.raises(MedsynthError, match="model.latent_prior"):
        load_config("configs/cvae_pneumonia.yaml", ["model.latent_prior=vamp"])


def test_training_is_the_same_with_the_option_only_sampling_differs(small_npz, tmp_path):
    """VAE-GAN draws prior samples while training: with model.latent_prior=gmm it still draws them
    from N(0, I) with the same random stream, so every trained weight equals the plain run's."""
    plain = train("configs/vaegan_pneumonia.yaml", overrides(small_npz, tmp_path / "runs"), **quiet)
    mixed = train("configs/vaegan_pneumonia.yaml",
                  overrides(small_npz, tmp_path / "runs", "model.latent_prior=gmm", "model.latent_prior_components=2"),
                  **quiet)
    a, b = load_file(plain / "model.safetensors"), load_file(mixed / "model.safetensors")
    assert set(b) - set(a) == {"net.prior_weights", "net.prior_means", "net.prior_scale_tril"}
    assert all(torch.equal(a[k], b[k]) for k in a)
