"""Logs a person can read: off a terminal one line per epoch and no progress-bar or library spam;
--quiet prints only the result; --verbose lets Lightning's notices through."""

import subprocess
import sys

from conftest import ROOT


def run_cli(*args, data):
    cmd = [sys.executable, "-m", "medsynth.cli", "train", *args, "configs/vae_pneumonia.yaml",
           f"data.path={data}", f"runs_dir={data.parent / 'runs'}", "trainer.max_epochs=2", "model.channels=[8,16]",
           "trainer.samples_after_training=4"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)  # pipes: not a terminal


def test_piped_training_prints_one_line_per_epoch_and_no_noise(small_npz):
    res = run_cli(data=small_npz)
    assert res.returncode == 0, res.stderr
    both = res.stdout + res.stderr
    assert "\r" not in both and "it/s" not in both  # no progress bars
    for noise in ("Tip:", "litlogger", "deprecated", "GPU available", "LeafSpec"):
        assert noise not in both
    epochs = [ln.split(":")[0] for ln in res.stderr.splitlines() if ln.startswith("epoch ")]
    assert epochs == ["epoch 1/2", "epoch 2/2"]
    assert res.stdout.strip().splitlines()[-1].startswith(str(small_npz.parent / "runs"))


def test_quiet_prints_only_the_run_directory_and_verbose_the_library_notices(small_npz):
    quiet = run_cli("--quiet", data=small_npz)
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stderr.strip() == "" and len(quiet.stdout.strip().splitlines()) == 1
    loud = run_cli("--verbose", data=small_npz)
    assert loud.returncode == 0 and "GPU available" in loud.stdout + loud.stderr
