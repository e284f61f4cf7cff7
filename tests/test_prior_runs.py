"""`medsynth fit-prior` (medsynth.prior_runs): a trained VAE run's latent mixture fitted again with
another number of components into a new run, the weights and the source run untouched, checked
against the analytic one-component fit (the sample mean and covariance of the encoder's means)."""

import hashlib
import json
import shutil

import numpy as np
import torch
from safetensors.torch import load_file

from conftest import OLD_RUNS, overrides, run_cli
from medsynth.config import load_config
from medsynth.data import load_splits
from medsynth.models import load_run
from medsynth.training import train

quiet = dict(log=lambda *_: None)


def digest(folder) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_normal_prior_run_gains_a_mixture_in_a_new_run(small_npz, tmp_path, capsys):
    source = train("configs/cvae_pneumonia.yaml", overrides(small_npz, tmp_path / "runs"), **quiet)
    before = digest(source)
    one, two = tmp_path / "k1", tmp_path / "k2"
    for out, k in ((one, 1), (two, 2)):
        code, err = run_cli(capsys, "fit-prior", source, "--components", k, "--out", out)
        assert code == 0, err
    assert digest(source) == before  # the source run is never written to
    old = load_file(source / "model.safetensors")
    assert not any(k.startswith("net.prior_") for k in old)
    for out, k in ((one, 1), (two, 2)):
        new = load_file(out / "model.safetensors")
        assert new["net.prior_means"].shape == (k, 8) and new["net.prior_scale_tril"].shape == (k, 8, 8)
        assert all(torch.equal(new[name], old[name]) for name in old)  # encoder and decoder unchanged
        cfg = load_config(out / "config.yaml")
        assert cfg.model.latent_prior == "gmm" and cfg.model.latent_prior_components == k
        summary = json.loads((out / "summary.json").read_text())
        assert summary["prior_refitted_from"] == str(source.resolve())
        assert summary["metrics"]["latent_prior_components"] == k
        assert summary["metrics"]["latent_prior_images"] == 96
        assert (out / "samples.png").is_file() and (out / "metrics.csv").read_bytes() == (source / "metrics.csv").read_bytes()
    # the one-component mixture is the Gaussian of the training codes: their mean and (maximum-
    # likelihood) covariance, computed here from the encoder directly
    recipe = load_run(one)
    cfg = load_config(source / "config.yaml")
    train_split = load_splits(cfg.data, 2).train
    with torch.no_grad():
        mu = recipe.net.encode(train_split.images, recipe.condition_vector(train_split.labels))[0].double().numpy()
    cov = recipe.net.prior_scale_tril[0].double() @ recipe.net.prior_scale_tril[0].double().T
    assert float(recipe.net.prior_weights[0]) == 1.0
    assert np.allclose(recipe.net.prior_means[0].numpy(), mu.mean(0), atol=1e-5)
    assert np.allclose(cov.numpy(), np.cov(mu.T, bias=True), atol=1e-5)
    # a run that has a mixture is refitted from its weights alone: two components -> one gives the
    # same single Gaussian (the old buffers of another shape are dropped, not loaded)
    code, err = run_cli(capsys, "fit-prior", two, "--components", 1, "--out", tmp_path / "k2to1")
    assert code == 0, err
    again = load_file(tmp_path / "k2to1" / "model.safetensors")
    for name in ("net.prior_weights", "net.prior_means", "net.prior_scale_tril"):
        assert torch.allclose(again[name], load_file(one / "model.safetensors")[name], atol=1e-6)
    # the new run samples from its mixture, and says so
    code, err = run_cli(capsys, "sample", two, "-n", "8", "--out", tmp_path / "s.npz")
    assert code == 0, err
    with np.load(tmp_path / "s.npz") as f:
        assert f["images"].shape[0] == 8 and json.loads(str(f["provenance"]))["prior"] == "mixture"


def test_a_refit_that_cannot_be_made_is_refused_before_anything_is_written(small_npz, tmp_path, capsys):
    source = train("configs/cvae_pneumonia.yaml", overrides(small_npz, tmp_path / "runs"), **quiet)
    out = tmp_path / "new"
    for k, says in ((0, "--components 0: give a whole number"),
                    (11, "11 full-covariance components over 8 latent dims need at least 99 training images")):
        code, err = run_cli(capsys, "fit-prior", source, "--components", k, "--out", out)
        assert code == 2 and says in err and "Traceback" not in err, err
        assert k == 0 or "Lower --components" in err
        assert not out.exists()
    if not torch.cuda.is_available():  # a device this machine lacks: one message, not a traceback
        code, err = run_cli(capsys, "fit-prior", source, "--components", 2, "--out", out, "--device", "cuda")
        assert code == 2 and "CUDA is not available" in err and "Traceback" not in err, err
        assert not out.exists()
    edited = shutil.copytree(OLD_RUNS / "cvae", tmp_path / "edited")  # a config its weights do not fit
    text = (edited / "config.yaml").read_text()
    assert "latent_dim: 4" in text  # the edit below must change the net, or the refusal is not tested
    (edited / "config.yaml").write_text(text.replace("latent_dim: 4", "latent_dim: 6"))
    code, err = run_cli(capsys, "fit-prior", edited, "--components", 1, "--out", out)
    assert code == 2 and "weights do not fit" in err and "Traceback" not in err, err
    assert not out.exists()
    code, err = run_cli(capsys, "fit-prior", OLD_RUNS / "dcgan", "--components", 2, "--out", out)
    assert code == 2 and "a gan run; a latent mixture prior is fitted for the VAE family" in err, err
    assert not out.exists()
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli(capsys, "fit-prior", source, "--components", 2, "--out", out)
    assert code == 2 and str(out) in err and "Traceback" not in err, err
    assert (out / "keep.txt").read_text() == "mine" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]


def test_a_bf16_run_is_refitted_in_bf16_and_keeps_its_weights_dtype(small_npz, tmp_path, capsys):
    """trainer.precision=bf16-true stores bf16 weights: the refit encodes in bf16 as training's own
    fit did (same K, same mixture) and writes the weights back bf16, the mixture float32."""
    source = train("configs/cvae_pneumonia.yaml",
                   overrides(small_npz, tmp_path / "runs", "trainer.precision=bf16-true", "model.latent_prior=gmm",
                             "model.latent_prior_components=2"), **quiet)
    code, err = run_cli(capsys, "fit-prior", source, "--components", 2, "--out", tmp_path / "same")
    assert code == 0, err
    old, new = load_file(source / "model.safetensors"), load_file(tmp_path / "same" / "model.safetensors")
    assert set(old) == set(new)
    for name, value in old.items():
        assert new[name].dtype == value.dtype, name
        if "prior_" in name:
            assert value.dtype == torch.float32 and torch.allclose(new[name], value, atol=1e-4), name
        else:
            assert torch.equal(new[name], value), name
