"""Nothing overwritten without asking: every output flag refuses an existing file unless
--overwrite, never writes over an input or a run's own files, checks its suffix, and a refused
request leaves nothing behind; interrupted writes leave no hidden file for readers to trip on."""

import json

import numpy as np
import pytest
import torch

from conftest import ROOT, run_cli  # noqa: F401 (the `run` fixture comes from conftest too)
from medsynth.data.folder import list_images
from medsynth.writers import atomic_path, write_text


def test_sample_refuses_an_existing_out_unless_overwrite(run, tmp_path, capsys):
    out = tmp_path / "synth.npz"
    out.write_bytes(b"precious")
    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", out)
    assert code == 2 and "already exists; give --overwrite" in err and out.read_bytes() == b"precious"
    assert run_cli(capsys, "sample", run, "-n", "4", "--out", out, "--overwrite")[0] == 0
    assert np.load(out)["images"].shape == (4, 28, 28)


@pytest.mark.parametrize("args, message", [
    (["--grid", "{run}/model.safetensors"], "must end with .png"),
    (["--grid", "{run}/samples.png", "--overwrite"], "is a file of the run directory"),
    (["--out", "{run}/config.yaml", "--overwrite"], "must end with .npz"),
    (["--out", "{run}/checkpoints/x.npz", "--overwrite"], "inside a run directory's checkpoints"),
    (["--grid", "{tmp}/grid.txt"], "must end with .png"),
])
def test_a_runs_own_files_and_wrong_suffixes_are_refused(run, tmp_path, capsys, args, message):
    (run / "checkpoints").mkdir(exist_ok=True)
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = [a.format(run=run, tmp=tmp_path) for a in args]
    if "--out" not in args:
        args += ["--out", str(tmp_path / "s.npz")]
    code, err = run_cli(capsys, "sample", run, "-n", "4", *args)
    assert code == 2 and message in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before


def test_report_never_replaces_a_runs_config(run, capsys):
    before = (run / "config.yaml").read_bytes()
    code, err = run_cli(capsys, "report", run, "--out", run / "config.yaml", "--overwrite")
    assert code == 2 and (run / "config.yaml").read_bytes() == before
    assert run_cli(capsys, "report", run)[0] == 0 and (run / "report.html").is_file()


def test_evaluate_never_writes_over_its_input(run, small_npz, capsys):
    before = small_npz.read_bytes()
    code, err = run_cli(capsys, "evaluate", "--real", small_npz, "--fake", run, "--out", small_npz, "--overwrite")
    assert code == 2 and ("is an input of this command" in err or "must end with .json" in err)
    assert small_npz.read_bytes() == before


def test_an_earlier_evaluation_is_kept_unless_overwrite_and_the_strip_says_what_it_holds(run, small_npz, tmp_path,
                                                                                      capsys, monkeypatch):
    from medsynth.provenance import read_provenance

    args = ["evaluate", "--real", small_npz, "--fake", run, "-n", "32", "--no-utility"]
    assert run_cli(capsys, *args)[0] == 0
    first = (run / "evaluation.json").read_bytes()
    code, err = run_cli(capsys, *args, "--seed", "1")
    assert code == 2 and f"evaluation output {run / 'evaluation.json'}: already exists; give --overwrite" in err
    assert (run / "evaluation.json").read_bytes() == first
    assert run_cli(capsys, *args, "--seed", "1", "--overwrite")[0] == 0
    assert (run / "evaluation.json").read_bytes() != first
    strip = read_provenance(run / "evaluation_nearest.png")
    assert strip["synthetic"] and strip["contains_real_images"] and str(small_npz) in strip["train"]

    monkeypatch.chdir(tmp_path)  # a data file as the fake set: ./metrics.json, kept the same way
    (tmp_path / "metrics.json").write_text("mine")
    code, err = run_cli(capsys, "evaluate", "--real", small_npz, "--fake", small_npz, "--no-utility")
    assert code == 2 and "metrics.json: already exists" in err and (tmp_path / "metrics.json").read_text() == "mine"


@pytest.mark.parametrize("bad", [["--shard-size", "0"], ["--label", "99"], ["--batch-size", "0"]])
def test_a_refused_sharded_request_leaves_nothing_behind(run, tmp_path, capsys, bad):
    out_dir = tmp_path / "shards"
    code, err = run_cli(capsys, "sample", run, "-n", "8", "--out-dir", out_dir, *bad)
    assert code == 2 and "Traceback" not in err
    assert not out_dir.exists()
    assert run_cli(capsys, "sample", run, "-n", "8", "--out-dir", out_dir, "--shard-size", "4")[0] == 0


def test_a_killed_write_leaves_no_hidden_file_behind(tmp_path):
    target = tmp_path / "images" / "a.png"
    target.parent.mkdir()
    stale = target.parent / ".a.png.abc123.tmp.png"  # what a SIGKILL inside atomic_path leaves
    stale.write_bytes(b"half")
    (target.parent / "b.png").write_bytes(b"x")
    assert list_images(target.parent) == [target.parent / "b.png"]  # readers skip hidden files
    write_text(target, "done")  # the next write of the same target clears it
    assert not stale.exists() and target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("killed")
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["a.png", "b.png"]


def test_written_files_follow_the_umask(tmp_path):
    import os

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        os.umask(0o077)
        write_text(tmp_path / "b.txt", "x")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o600


def test_an_output_may_not_hold_the_inputs_or_run_directories(tmp_path):
    from medsynth.errors import MedsynthError
    from medsynth.runs import check_output

    pngs = tmp_path / "data" / "pngs"
    pngs.mkdir(parents=True)
    with pytest.raises(MedsynthError, match="holds an input"):  # translate --out data --overwrite would delete it
        check_output(tmp_path / "data", True, [pngs])
    (tmp_path / "runs" / "r1").mkdir(parents=True)
    (tmp_path / "runs" / "r1" / "config.yaml").write_text("x")
    with pytest.raises(MedsynthError, match="holds run directories"):
        check_output(tmp_path / "runs", True, [])


def test_synthetic_lineage_is_noticed_by_evaluate_and_carried_by_training(run, small_npz, tmp_path, capsys):
    """A synthetic set given as --real is refused unless --allow-synthetic-real (then the output
    and the report say so); a model trained on synthetic data records the lineage, and its own
    samples carry it on."""
    from medsynth.provenance import read_provenance

    fake = tmp_path / "fake.npz"
    assert run_cli(capsys, "sample", run, "-n", "48", "--out", fake)[0] == 0
    code, err = run_cli(capsys, "evaluate", "--real", fake, "--fake", small_npz, "--out", tmp_path / "e.json",
                        "--no-utility")
    assert code == 2 and f"--real {fake}: marked synthetic" in err and "--allow-synthetic-real" in err
    assert not (tmp_path / "e.json").exists()
    assert run_cli(capsys, "evaluate", "--real", fake, "--fake", small_npz, "--out", tmp_path / "e.json",
                   "--no-utility", "--allow-synthetic-real")[0] == 0
    assert json.loads((tmp_path / "e.json").read_text())["sets"]["real"]["synthetic"]["run"] == run.name

    # train a second generation on the synthetic set: its run and its samples name the parent
    data = tmp_path / "gen1.npz"
    with np.load(fake) as f:
        np.savez(data, train_images=f["images"], train_labels=f["labels"], provenance=f["provenance"])
    child = tmp_path / "runs"
    code, _ = run_cli(capsys, "train", ROOT / "configs/cvae_pneumonia.yaml", f"data.path={data}",
                      f"runs_dir={child}", "trainer.max_epochs=1", "trainer.precision=32")
    assert code == 0
    child_run = next(child.iterdir())
    assert json.loads((child_run / "lineage.json").read_text())["run"] == run.name
    assert run_cli(capsys, "sample", child_run, "-n", "4", "--out", tmp_path / "gen2.npz")[0] == 0
    assert read_provenance(tmp_path / "gen2.npz")["trained_on_synthetic"]["run"] == run.name


def test_samples_in_every_2d_format_read_back_the_same(run, tmp_path, capsys):
    """npz as uint8 / uint16 / float32, a PNG folder (8 and 16 bit, with labels.csv) and a 2D
    NIfTI stack hold the same draw; medsynth's readers map each back to the same [-1, 1] images."""
    import nibabel as nib
    from PIL import Image

    from medsynth.config import load_config
    from medsynth.data import load_splits

    def read(path, *extra):
        return load_splits(load_config(None, [f"data.path={path}", "data.val_fraction=0", *extra]).data).train

    outs = {}
    for dtype in ("uint8", "uint16", "float32"):
        outs[dtype] = tmp_path / f"s_{dtype}.npz"
        assert run_cli(capsys, "sample", run, "-n", "12", "--out", outs[dtype], "--dtype", dtype)[0] == 0
    with np.load(outs["uint16"]) as f:
        assert f["images"].dtype == np.uint16 and f["images"].max() > 255
    with np.load(outs["float32"]) as f:
        assert f["images"].dtype == np.float32 and 0 <= f["images"].min() and f["images"].max() <= 1
    ref = read(outs["float32"])
    for dtype, step in (("uint8", 1 / 255), ("uint16", 1 / 65535)):
        assert (read(outs[dtype]).images - ref.images).abs().max() <= step + 1e-6
        assert torch.equal(read(outs[dtype]).labels, ref.labels)

    for dtype, step in (("uint8", 1 / 255), ("uint16", 1 / 65535)):
        folder = tmp_path / f"png_{dtype}"
        assert run_cli(capsys, "sample", run, "-n", "12", "--out", folder, "--dtype", dtype)[0] == 0
        files = sorted(folder.glob("*.png"))
        assert len(files) == 12 and (folder / "labels.csv").is_file()
        with Image.open(files[0]) as im:
            assert im.mode == ("I;16" if dtype == "uint16" else "L") and im.text["medsynth:synthetic"] == "true"
        back = read(folder, f"data.labels_csv={folder / 'labels.csv'}")
        assert (back.images - ref.images).abs().max() <= step + 1e-6 and torch.equal(back.labels, ref.labels)

    assert run_cli(capsys, "sample", run, "-n", "12", "--out", tmp_path / "s.nii.gz")[0] == 0
    stack = nib.load(str(tmp_path / "s.nii.gz"))
    assert stack.shape == (28, 28, 12) and stack.get_data_dtype() == np.float32
    with np.load(outs["float32"]) as f:
        assert np.array_equal(np.moveaxis(np.asarray(stack.dataobj), -1, 0), f["images"])

    code, err = run_cli(capsys, "sample", run, "-n", "4", "--out", tmp_path / "f32", "--dtype", "float32")
    assert code == 2 and "PNG images are 8 or 16 bit" in err and not (tmp_path / "f32").exists()


def test_16_bit_png_inputs_keep_all_16_bits(tmp_path):
    from PIL import Image

    from medsynth.config import load_config
    from medsynth.data import load_splits
    from medsynth.errors import MedsynthError

    folder = tmp_path / "png16"
    folder.mkdir()
    for i in range(6):  # values 1000 apart out of 65535: distinct in 16 bits, up to 4 apart in 8
        Image.fromarray(np.full((8, 8), 30000 + i, np.uint16)).save(folder / f"{i}.png")
    images = load_splits(load_config(None, [f"data.path={folder}", "data.val_fraction=0"]).data).train.images
    values = images[:, 0, 0, 0].double().sort().values  # the training split comes shuffled
    expected = torch.tensor([(30000 + i) / 65535 * 2 - 1 for i in range(6)], dtype=torch.float64)
    assert (values - expected).abs().max() < 1e-6 and len(set(values.tolist())) == 6
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "9.png")
    with pytest.raises(MedsynthError, match="9.png: 8-bit, but 0.png is 16-bit"):
        load_splits(load_config(None, [f"data.path={folder}"]).data)
