"""Faults a tester tried: each is one line naming the file or value (exit 2), no traceback, and
nothing already written is lost. A full disk is made real with RLIMIT_FSIZE in a subprocess."""

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, run_cli


@pytest.mark.parametrize("write, message", [
    (lambda run: None, "file not found"),
    (lambda run: (run / "e.json").write_text('{"fidelity": {"fid": 1.2'), "not a readable evaluation file"),
    (lambda run: (run / "e.json").write_text("[1, 2]"), "holds a JSON object, this holds a list"),
    (lambda run: (run / "e.json").write_text('{"features": 5, "sets": []}'), "not the structure"),
])
def test_report_with_a_bad_evaluation_file(run, capsys, write, message):
    write(run)
    code, err = run_cli(capsys, "report", run, "--evaluation", run / "e.json")
    assert code == 2 and message in err and "Traceback" not in err
    assert not (run / "report.html").exists()


def test_report_with_a_truncated_summary_or_a_non_numeric_metric(run, capsys):
    (run / "summary.json").write_text('{"status": "finis')
    code, err = run_cli(capsys, "report", run)
    assert code == 2 and "summary.json: not a readable summary file" in err
    (run / "summary.json").unlink()
    (run / "metrics.csv").write_text("epoch,step,train/loss\n0,10,1.5\n0,20,oops\n")
    code, err = run_cli(capsys, "report", run)
    assert code == 2 and "line 3, column train/loss: 'oops' is not a number" in err


def test_report_does_not_embed_a_file_outside_the_run(run, tmp_path, capsys):
    secret = tmp_path / "elsewhere" / "secret.png"
    secret.parent.mkdir()
    secret.write_bytes(b"\\x89PNG not for the report")
    (run / "evaluation.json").write_text(json.dumps({"privacy": {"strip": str(secret)}}))
    assert run_cli(capsys, "report", run)[0] == 0
    page = (run / "report.html").read_text()
    assert "Nearest-pairs strip not shown" in page


@pytest.mark.parametrize("labels, message", [
    (np.array([[0.5], [1.0], [0.0], [1.0]] * 4), "class labels must be whole numbers, found 0.5"),
    (np.array([[10 ** 9], [1], [0], [1]] * 4), "more than 10000 classes"),
])
def test_labels_that_are_not_class_indices(tmp_path, capsys, labels, message):
    data = tmp_path / "bad.npz"
    np.savez(data, train_images=np.zeros((16, 28, 28), np.uint8), train_labels=labels)
    code, err = run_cli(capsys, "train", ROOT / "configs" / "cvae_pneumonia.yaml", f"data.path={data}",
                        f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and message in err and str(data) in err
    assert not (tmp_path / "runs").exists()


def test_an_output_where_no_folder_can_be(run, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", blocker / "s.npz")
    assert code == 2 and "cannot write here" in err and "Traceback" not in err


def _with_file_size_limit(limit: int, *args) -> subprocess.CompletedProcess:
    """The CLI in a subprocess that may write no file larger than `limit` bytes (a full disk)."""
    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (%d, %d)); "
            "from medsynth.cli import main; sys.exit(main(sys.argv[1:]))" % (limit, limit))
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


def test_a_full_disk_while_sampling_is_one_error_and_leaves_nothing(run, tmp_path):
    out = tmp_path / "big.npz"
    res = _with_file_size_limit(20_000, "sample", run, "-n", "400", "--out", out)
    assert res.returncode == 2 and "could not be written" in res.stderr and "Traceback" not in res.stderr
    assert list(tmp_path.glob("*big*")) == [] and list(tmp_path.glob(".*")) == []


def test_a_full_disk_while_training_is_one_error_and_keeps_the_run_readable(small_npz, tmp_path):
    res = _with_file_size_limit(60_000, "train", ROOT / "configs" / "vae_pneumonia.yaml", f"data.path={small_npz}",
                                f"runs_dir={tmp_path / 'runs'}", "trainer.max_epochs=1")
    assert res.returncode == 2 and "could not be written" in res.stderr and "Traceback" not in res.stderr
    run = next((tmp_path / "runs").iterdir())
    assert (run / "config.yaml").is_file() and not (run / "model.safetensors").exists()
    assert not [p for p in run.rglob(".*") if p.name != ".lock"]  # no temporary file left behind


@pytest.mark.parametrize("args, message", [(["-n", "-3"], "-n must be >= 1"),
                                           (["--utility-steps", "0"], "--utility-steps must be >= 1"),
                                           (["--diversity-images", "1"], "--diversity-images must be >= 2")])
def test_evaluate_refuses_counts_that_would_quietly_mislead(run, small_npz, capsys, args, message):
    code, err = run_cli(capsys, "evaluate", "--real", small_npz, "--fake", run, *args)
    assert code == 2 and message in err and not (run / "evaluation.json").exists()


def _nifti(path, array):
    import nibabel as nib

    nib.save(nib.Nifti1Image(array.astype(np.float32), np.diag([0.8, 0.8, 3.0, 1.0])), str(path))
    return path


def test_a_2d_nifti_given_to_3d_recipes_is_one_clear_error(tmp_path, capsys):
    case = tmp_path / "cases" / "case1"
    case.mkdir(parents=True)
    _nifti(case / "flair.nii.gz", np.random.default_rng(0).random((32, 32)))
    code, err = run_cli(capsys, "train", ROOT / "configs/ldm_brats3d.yaml", f"data.path={tmp_path / 'cases'}",
                        "data.contrasts=[flair*]", "data.mask=null", f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and "flair.nii.gz: a 2D image of shape (32, 32); this recipe needs 3D volumes" in err
    assert "Traceback" not in err
    ct, seg = _nifti(tmp_path / "ct.nii.gz", np.zeros((64, 64))), _nifti(tmp_path / "seg.nii.gz", np.ones((64, 64)))
    code, err = run_cli(capsys, "train", ROOT / "configs/ct_vae.yaml", f"data.path={ct}", f"data.label_path={seg}",
                        f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and "ct.nii.gz: a 2D image of shape (64, 64); data.format=ct_slices needs 3D volumes" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize("config, message", [
    ("vae_pneumonia.yaml", "images of 1 x 1 px are smaller than this model can use: model.channels (3 levels) halves "
                           "them 3 times, so every side must be at least 8 px"),
    ("features_pneumonia.yaml", "every side must be at least 4 px"),
])
def test_images_too_small_for_the_model_are_refused_with_the_minimum(tmp_path, capsys, config, message):
    data = tmp_path / "tiny.npz"
    np.savez(data, train_images=np.random.default_rng(0).integers(0, 255, (40, 1, 1), dtype=np.uint8),
             train_labels=np.arange(40) % 2)
    code, err = run_cli(capsys, "train", ROOT / "configs" / config, f"data.path={data}", f"runs_dir={tmp_path / 'runs'}")
    assert code == 2 and message in err and "Traceback" not in err
