"""Runs are never corrupted: a refused resume writes nothing, one training per run directory
(a lock, checked with two real processes), and `name` is a plain name."""

import subprocess
import sys

import pytest

from conftest import ROOT
from medsynth import runs
from medsynth.config import load_config
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.training import train

QUIET = dict(log=lambda *_: None)


def overrides(data, runs_dir, *extra):
    return [f"data.path={data}", f"runs_dir={runs_dir}", "trainer.max_epochs=1", "model.channels=[8,16]",
            "trainer.samples_after_training=4", *extra]


@pytest.fixture
def finished_run(small_npz, tmp_path):
    return train(ROOT / "configs" / "vae_pneumonia.yaml", overrides(small_npz, tmp_path / "runs"), **QUIET)


def snapshot(run):
    return {p.relative_to(run): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def test_a_resume_whose_overrides_do_not_fit_the_weights_writes_nothing(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(MedsynthError, match="do not fit its config.*model.latent_dim=16"):
        train(resume=finished_run, overrides=["model.latent_dim=16", "trainer.max_epochs=2"], **QUIET)
    assert snapshot(finished_run) == before
    assert load_run(finished_run).sample(2).shape == (2, 1, 28, 28)  # still usable


def test_resuming_a_finished_run_with_nothing_left_to_train_is_refused(finished_run):
    before = snapshot(finished_run)
    with pytest.raises(MedsynthError, match="this run finished .* nothing to train: give trainer.max_epochs=11"):
        train(resume=finished_run, **QUIET)
    assert snapshot(finished_run) == before
    train(resume=finished_run, overrides=["trainer.max_epochs=2"], **QUIET)  # more epochs: it continues
    assert '"epochs": 2' in (finished_run / runs.SUMMARY).read_text()


def test_a_second_training_into_a_locked_run_directory_is_refused(small_npz, tmp_path):
    target = tmp_path / "shared_run"
    target.mkdir()
    runs.lock_run_dir(target)  # this process holds it, as a running training would
    try:
        cmd = [sys.executable, "-m", "medsynth.cli", "train", "configs/vae_pneumonia.yaml",
               *overrides(small_npz, tmp_path / "runs", f"run_dir={target}")]
        res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert res.returncode == 2 and "another training is writing into this run directory" in res.stderr
        assert "Traceback" not in res.stderr and not (target / runs.CONFIG).exists()
    finally:
        runs.unlock_run_dir(target)
    assert not (target / runs.LOCK).exists()
    run = train(ROOT / "configs" / "vae_pneumonia.yaml", overrides(small_npz, tmp_path / "runs", f"run_dir={target}"),
                **QUIET)  # free again
    assert run == target and (target / runs.WEIGHTS).is_file() and not (target / runs.LOCK).exists()


@pytest.mark.parametrize("name", ["../../x", "a/b", "..", "/abs", "", "${oc.env:HOME}"])
def test_name_is_a_plain_name(name, small_npz, tmp_path):
    with pytest.raises(MedsynthError, match="name=|interpolation"):
        train(ROOT / "configs" / "vae_pneumonia.yaml", [*overrides(small_npz, tmp_path / "runs"), f"name={name}"],
              **QUIET)
    assert not (tmp_path / "runs").exists() and sorted(p.name for p in tmp_path.iterdir()) == ["small.npz"]


def test_interpolations_are_refused_anywhere(tmp_path):
    with pytest.raises(MedsynthError, match=r"data.path holds an interpolation"):
        load_config(ROOT / "configs" / "vae_pneumonia.yaml", ["data.path=${oc.env:HOME}/x.npz"])
    assert load_config(ROOT / "configs" / "vae_pneumonia.yaml", ["name=vae.v2_run-1"]).name == "vae.v2_run-1"
    assert runs.new_run_dir(tmp_path, "vae.v2_run-1").name.startswith("vae.v2_run-1-")
