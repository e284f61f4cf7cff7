"""The command line end to end, as a user runs it: real subprocesses on a slice of real data."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import ROOT, overrides, run_cli


def medsynth(*args, check=True):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, "-m", "medsynth.cli", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_sampling_on_a_missing_device_is_one_clear_error(small_npz, tmp_path):
    import torch

    from medsynth.errors import MedsynthError
    from medsynth.models import load_run

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(MedsynthError, match="CUDA is not available"):
        load_run(tmp_path, device="cuda")
    with pytest.raises(MedsynthError, match="not a torch device"):
        load_run(tmp_path, device="toaster")


def test_help_explains_every_command():
    out = medsynth("--help").stdout
    assert "train" in out and "sample" in out
    train_help = medsynth("train", "--help").stdout
    assert "--resume" in train_help and "key=value" in train_help
    sample_help = medsynth("sample", "--help").stdout
    for option in ("-n", "--out", "--grid", "--label", "--seed"):
        assert option in sample_help


def test_train_then_sample(small_npz, tmp_path):
    runs = tmp_path / "runs"
    proc = medsynth("train", "configs/cvae_pneumonia.yaml", *overrides(small_npz, runs))
    run = Path(proc.stdout.strip().splitlines()[-1])
    assert run.parent == runs and (run / "model.safetensors").is_file()
    assert "samples.png" in proc.stdout  # tells the user where the grids went

    out, grid = tmp_path / "s.npz", tmp_path / "s.png"
    medsynth("sample", run, "-n", 10, "--out", out, "--grid", grid, "--seed", 3)
    with np.load(out) as f:
        assert f["images"].shape == (10, 28, 28) and f["images"].dtype == np.uint8
        assert f["labels"].ravel().tolist() == [0, 1] * 5  # a conditional model cycles the classes
        first = f["images"].copy()
    assert Image.open(grid).format == "PNG"
    medsynth("sample", run, "-n", 10, "--out", out, "--seed", 3, "--label", 1, "--overwrite")
    with np.load(out) as f:
        assert set(f["labels"].ravel().tolist()) == {1}
    medsynth("sample", run, "-n", 10, "--out", out, "--seed", 3, "--overwrite")
    with np.load(out) as f:
        assert np.array_equal(f["images"], first)  # same seed, same samples
    # the output is itself a dataset medsynth can read
    from medsynth.config import load_config
    from medsynth.data import load_splits

    assert len(load_splits(load_config(None, [f"data.path={out}", "data.val_fraction=0"]).data).train) == 10


@pytest.mark.parametrize("args, words", [
    (["train", "configs/vae_pneumonia.yaml", "model.latnt_dim=3"], "latnt_dim"),
    (["train", "configs/vae_pneumonia.yaml", "data.path=/nowhere/x.npz"], "/nowhere/x.npz: data file not found"),
    (["train", "configs/none.yaml"], "configs/none.yaml: config file not found"),
    (["train", "loss.kl_weight=2"], "looks like an override"),
    (["sample", "/nowhere/run", "-n", "3", "--out", "x.npz"], "/nowhere/run: run directory not found"),
    (["train", "configs/vae_pneumonia.yaml", "trainer.strategy=nonsense"], "trainer settings refused"),
    (["train", "configs/vae_pneumonia.yaml", "data.limit=64", "trainer.accelerator=tpu"], "trainer settings refused"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, words):
    """The command line's own code in this process (a `medsynth` process costs ~15 s of imports on a
    slow CPU); the test below runs one case as a real process."""
    code, err = run_cli(capsys, *args, f"runs_dir={tmp_path / 'runs'}" if args[0] == "train" else "-n=3")
    assert code == 2, err
    assert words in err
    assert "Traceback" not in err
    assert err.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()


def test_bad_input_in_a_real_process_is_one_line_and_exit_2(tmp_path):
    proc = medsynth("train", "configs/vae_pneumonia.yaml", "data.path=/nowhere/x.npz", f"runs_dir={tmp_path / 'runs'}",
                    check=False)
    assert proc.returncode == 2, proc.stderr
    assert "/nowhere/x.npz: data file not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().count("\n") == 0
    assert not (tmp_path / "runs").exists()
