"""DCGAN and the conditional DCGAN: networks, objectives, real training steps on PneumoniaMNIST,
EMA sampling, resume, and the CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import overrides
from medsynth.config import load_config
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.models import build_recipe
from medsynth.nets.dcgan import DCGANDiscriminator, DCGANGenerator
from medsynth.training import train

QUIET = dict(log=lambda *_: None)


def gan_overrides(data, runs, *extra):
    return [*overrides(data, runs), "model.channels=[32,16]", "model.latent_dim=16", *extra]


def test_dcgan_networks_draw_the_configured_sizes():
    for size, channels in ((28, [128, 64]), (64, [256, 128, 64, 32])):
        g = DCGANGenerator(100, 1, size, channels, cond_dim=2)
        d = DCGANDiscriminator(1, size, channels, cond_dim=2, spectral=True)
        x = g(torch.randn(4, 100), torch.eye(2)[[0, 1, 0, 1]])
        assert x.shape == (4, 1, size, size) and x.abs().max() <= 1
        assert d(x, torch.eye(2)[[0, 1, 0, 1]]).shape == (4, 1)
    with pytest.raises(MedsynthError, match="not a multiple of 2"):
        DCGANGenerator(100, 1, 28, [64, 32, 16])


def test_bce_and_hinge_objectives_have_the_expected_signs(small_npz):
    cfg = load_config("configs/dcgan_pneumonia.yaml", gan_overrides(small_npz, "unused"))
    cfg.model.update(in_channels=1, image_size=[28, 28])
    adversary = build_recipe(cfg).adversary
    sure, unsure = torch.full((8, 1), 10.0), torch.full((8, 1), -10.0)
    assert adversary.discriminator_loss(sure, unsure).item() < 1e-3  # D right about both: ~0
    assert adversary.discriminator_loss(unsure, sure).item() > 5  # D wrong about both
    assert adversary.generator_loss(unsure).item() > 5  # non-saturating: strong gradient when D wins
    assert adversary.generator_loss(sure).item() < 1e-3
    assert adversary.accuracy(sure, unsure).item() == 1.0


def test_dcgan_trains_samples_from_ema_and_resumes(small_npz, tmp_path):
    run = train("configs/dcgan_pneumonia.yaml", gan_overrides(small_npz, tmp_path, "trainer.max_epochs=2"), **QUIET)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["global_step"] == 3 * 2 * 2  # 96 images / 32 = 3 batches, G + D each, 2 epochs
    assert {"train/g_loss", "train/d_loss", "train/d_accuracy"} <= set(summary["metrics"])
    assert (run / "samples.png").is_file()
    weights = load_file(str(run / "model.safetensors"))
    ema = {k: v for k, v in weights.items() if k.startswith("generator_ema.module.")}
    assert ema and not all(torch.equal(v, weights[k.replace("generator_ema.module.", "generator.")])
                           for k, v in ema.items() if v.is_floating_point())
    recipe = load_run(run)
    g = torch.Generator().manual_seed(3)
    a = recipe.sample(8, generator=g)
    z = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(a, recipe.generator_ema.module.eval()(z))  # sampling uses the EMA weights
    # resume: both optimizers come back, and the run goes on to the new epoch count
    resumed = train(None, ["trainer.max_epochs=3"], resume=run, **QUIET)
    assert json.loads((resumed / "summary.json").read_text())["global_step"] == 18


def test_conditional_gan_cli_with_labels(small_npz, tmp_path):
    cli = [sys.executable, "-m", "medsynth.cli"]
    out = subprocess.run([*cli, "train", "configs/cgan_pneumonia.yaml",
                          *gan_overrides(small_npz, tmp_path / "runs", "model.channels=[32,16,8,8]")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    run = next((tmp_path / "runs").iterdir())
    out = subprocess.run([*cli, "sample", str(run), "-n", "10", "--label", "1", "--out", str(tmp_path / "s.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape == (10, 64, 64) and (f["labels"] == 1).all()
        assert json.loads(str(f["provenance"]))["family"] == "gan"
    out = subprocess.run([*cli, "sample", str(run), "-n", "4", "--label", "7", "--out", str(tmp_path / "t.npz")],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "outside the model's classes 0..1" in out.stderr
    recipe = load_run(run)
    sn = [m for m in recipe.discriminator.modules() if hasattr(m, "parametrizations")]
    assert sn  # spectral norm on the discriminator's layers
    for m in sn:  # the normalised weight's largest singular value is ~1
        w = m.weight.flatten(1)
        assert torch.linalg.matrix_norm(w, ord=2).item() == pytest.approx(1.0, abs=0.1)


def test_gan_config_errors(small_npz, tmp_path):
    for extra, match in [(["model.channels=[32,16,8]"], "not a multiple of 2"),
                         (["model.ema_decay=1.5"], "ema_decay"),
                         (["model.conditional=true", "data.path=" + str(tmp_path / "unlabelled.npz")], "labelled")]:
        np.savez(tmp_path / "unlabelled.npz", images=np.zeros((40, 28, 28), np.uint8))
        with pytest.raises(MedsynthError, match=match):
            train("configs/dcgan_pneumonia.yaml", gan_overrides(small_npz, tmp_path / "runs", *extra), **QUIET)
    assert not (tmp_path / "runs").exists()


def test_discriminator_feature_taps():
    d = DCGANDiscriminator(1, 28, [64, 32])
    x = torch.randn(3, 1, 28, 28)
    logit, feats = d(x, layer=2)
    assert feats.shape == (3, 64, 7, 7) and torch.equal(logit, d(x))
    with pytest.raises(MedsynthError, match="feature layer 3"):
        d(x, layer=3)


@pytest.mark.parametrize("config,size", [("configs/vaegan_pneumonia.yaml", 28), ("configs/vaegan_pneumonia64.yaml", 64)])
def test_vaegan_trains_each_network_on_its_own_objective(small_npz, tmp_path, config, size):
    cfg = load_config(config, gan_overrides(small_npz, tmp_path, "model.channels=[8,16]" if size == 28
                                            else "model.channels=[8,16,16]"))
    run = train(cfg, **QUIET)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert {"train/kl", "train/llike", "train/g_adv", "train/d_loss"} <= set(summary["metrics"])
    assert summary["metrics"]["train/llike"] > 0 and summary["metrics"]["train/kl"] > 0
    assert (run / "samples.png").is_file() and (run / "reconstructions.png").is_file()
    recipe = load_run(run)
    x = torch.rand(4, 1, size, size) * 2 - 1
    assert recipe.reconstruct(x).shape == x.shape and recipe.sample(4).shape == x.shape
    # three optimizers: encoder, decoder, discriminator, each over its own parameters only
    opt_enc, opt_dec, opt_d = recipe.configure_optimizers()
    ids = [{id(p) for g in o.param_groups for p in g["params"]} for o in (opt_enc, opt_dec, opt_d)]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert sum(map(len, ids)) == sum(1 for _ in recipe.parameters())
