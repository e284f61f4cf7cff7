"""Run directories written before the house reorganisation (tests/data/old_runs, made at commit
085544d) still load, draw the very samples they drew then, and evaluate. The latent diffusion
run's samplers changed since (MONAI's -> diffusers' schedulers, see tests/test_diffusion.py), so
for it the autoencoder's reconstructions are compared, and its samples must be deterministic."""

from pathlib import Path

import numpy as np
import pytest
import torch

from medsynth.evaluate import evaluate
from medsynth.models import load_run
from medsynth.sampling import draw, sample

OLD = Path(__file__).parent / "data" / "old_runs"


@pytest.mark.parametrize("name", ["cvae", "dcgan"])
def test_an_old_run_samples_as_it_did(name):
    recipe = load_run(OLD / name)
    images, labels = draw(recipe, 4, seed=0)
    expected = np.load(OLD / name / "expected_samples.npz")
    assert images.shape == expected["images"].shape
    np.testing.assert_allclose(images.numpy(), expected["images"], atol=1e-5)
    if recipe.conditional:
        assert labels.tolist() == expected["labels"].tolist()


def test_an_old_latent_diffusion_run_reconstructs_as_it_did_and_samples():
    recipe = load_run(OLD / "ldm")
    expected = np.load(OLD / "ldm" / "expected_reconstructions.npz")
    recon = recipe.reconstruct(torch.from_numpy(expected["inputs"]))
    np.testing.assert_allclose(recon.numpy(), expected["reconstructions"], atol=1e-5)
    for sampler in ("ddim", "dpmpp"):  # settings missing from its config (timestep_spacing) take the defaults
        a, _ = draw(recipe, 4, seed=0, sampler=sampler, steps=10)
        b, _ = draw(recipe, 4, seed=0, sampler=sampler, steps=10)
        assert torch.equal(a, b) and torch.isfinite(a).all() and a.shape == (4, 1, 28, 28)


def test_an_old_run_samples_and_evaluates_from_the_cli_api(tmp_path, small_npz):
    out = sample(OLD / "cvae", 40, tmp_path / "synth.npz", seed=1)
    with np.load(out) as f:
        assert f["images"].shape == (40, 28, 28) and f["labels"][:, 0].tolist() == [i % 2 for i in range(40)]
    result = evaluate(small_npz, OLD / "cvae", out=tmp_path / "eval.json", n=32, utility=False, log=lambda *_: None)
    assert 0 < result["diversity"]["fake"]["ms_ssim_mean"] < 1
    assert result["reconstruction"]["images"] == 32 and torch.isfinite(torch.tensor(result["reconstruction"]["psnr"]))
