"""Runs that survive: SIGKILL and resume, refused pickles, provenance, run records."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import ROOT, overrides, subset_npz


def cli(*args, **kw):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    return subprocess.Popen([sys.executable, "-m", "medsynth.cli", *map(str, args)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def checkpoint_step(path: Path) -> int:
    try:
        return torch.load(path, weights_only=True, map_location="cpu")["global_step"]
    except (FileNotFoundError, RuntimeError, EOFError):
        return -1


def test_sigkill_then_resume_ends_with_the_same_step_count(pneumonia, tmp_path):
    data = subset_npz(pneumonia, tmp_path / "d.npz", {"train": 640, "val": 64, "test": 64})
    runs = tmp_path / "runs"
    args = ["train", "configs/vae_pneumonia.yaml", f"data.path={data}", f"runs_dir={runs}", "data.batch_size=32",
            "trainer.max_epochs=8", "trainer.checkpoint_every_n_steps=5", "trainer.samples_after_training=8"]
    proc = cli(*args)
    deadline = time.time() + 300
    run = None
    while time.time() < deadline:
        found = list(runs.glob("*/checkpoints/last.ckpt")) if runs.exists() else []
        if found and checkpoint_step(found[0]) >= 25:
            run = found[0].parents[1]
            break
        if proc.poll() is not None:
            pytest.fail(f"training ended before it could be killed:\n{proc.stderr.read()[-2000:]}")
        time.sleep(0.05)
    assert run is not None, "no mid-run checkpoint appeared"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (run / "summary.json").exists() and not (run / "model.safetensors").exists()
    killed_at = checkpoint_step(run / "checkpoints" / "last.ckpt")
    assert 25 <= killed_at < 160  # a complete checkpoint, from mid-run (8 epochs x 20 steps = 160)

    resumed = cli("train", "--resume", run)
    out, err = resumed.communicate(timeout=600)
    assert resumed.returncode == 0, err[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 160 and summary["epochs"] == 8
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 160
    assert not list(run.rglob("*.tmp*"))  # no half-written file left under any name that is read


class _Payload:
    """Unpickling this runs code: it writes a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (exec, (f"open({self.marker!r}, 'w').write('pwned')",))


def test_checkpoint_with_a_pickle_payload_is_refused(small_npz, tmp_path):
    from medsynth.errors import MedsynthError
    from medsynth.training import train

    run = train(None, overrides(small_npz, tmp_path / "runs"), log=lambda *_: None)
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)
    marker = tmp_path / "payload-ran"
    state["callbacks"] = {"evil": _Payload(marker)}
    torch.save(state, ckpt)
    kept = {name: (run / name).read_bytes() for name in ("config.yaml", "summary.json", "model.safetensors")}
    with pytest.raises(MedsynthError, match="refused to load"):
        train(None, ["trainer.max_epochs=2"], resume=run, log=lambda *_: None)
    assert not marker.exists()
    assert {name: (run / name).read_bytes() for name in kept} == kept  # a refused resume writes nothing
    # and through the command line: one line, exit 2
    proc = cli("train", "--resume", run, "trainer.max_epochs=2")
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "refused to load" in err and "Traceback" not in err
    assert not marker.exists()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, pneumonia):
    from medsynth.training import train

    tmp = tmp_path_factory.mktemp("robust")
    data = subset_npz(pneumonia, tmp / "d.npz", {"train": 96, "val": 32, "test": 32})
    return train("configs/cvae_pneumonia.yaml", overrides(data, tmp / "runs"), log=lambda *_: None)


def test_run_records_its_environment(trained_run):
    env = json.loads((trained_run / "environment.json").read_text())["sessions"][0]
    assert env["packages"]["torch"] == torch.__version__
    assert env["packages"]["medsynth"] and env["python"]
    assert env["git_commit"] is None or len(env["git_commit"]) == 40


def test_every_output_is_marked_synthetic(trained_run, tmp_path):
    from PIL import Image

    from medsynth.provenance import file_sha256
    from medsynth.provenance import read_provenance
    from medsynth.sampling import sample

    model_hash = file_sha256(trained_run / "model.safetensors")
    out = sample(trained_run, 12, tmp_path / "s.npz", grid=tmp_path / "s.png", seed=5)
    for path in (out, tmp_path / "s.png", trained_run / "samples.png", trained_run / "reconstructions.png"):
        prov = read_provenance(path)
        assert prov["synthetic"] is True and prov["model_sha256"] == model_hash, path
        assert prov["recipe"] == "cvae_pneumonia" and prov["family"] == "vae"
    assert read_provenance(out)["seed"] == 5 and read_provenance(out)["n"] == 12
    with Image.open(tmp_path / "s.png") as im:
        assert im.text["medsynth:synthetic"] == "true" and "SYNTHETIC" in im.text["Description"]


def _manifest(out_dir):
    import csv

    with open(out_dir / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_sharded_sampling_killed_halfway_resumes_without_redoing_or_duplicating(trained_run, tmp_path):
    out = tmp_path / "shards"
    n, size = 30000, 500
    args = ["sample", trained_run, "-n", n, "--out-dir", out, "--shard-size", size, "--seed", 7]
    proc = cli(*args)
    deadline = time.time() + 300
    while time.time() < deadline and len(list(out.glob("shard_*.npz"))) < 4:
        if proc.poll() is not None:
            pytest.fail(f"sampling ended before it could be killed: {proc.stderr.read()[-1500:]}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npz")}
    assert 4 <= len(before) < n // size and not (out / "manifest.csv").exists()
    done = cli(*args)
    _, err = done.communicate(timeout=600)
    assert done.returncode == 0, err[-2000:]
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("shard_*.npz")}
    assert len(after) == n // size
    assert all(after[name] == t for name, t in before.items())  # finished shards were not redone
    rows = _manifest(out)
    assert len(rows) == n and len({int(r["index"]) for r in rows}) == n  # every index exactly once
    assert {r["label"] for r in rows} == {"0", "1"} and rows[0]["seed"] == "7" and rows[-1]["seed"] == str(7 + 59)
    # a shard is reproducible on its own: shard 3 drawn afresh with seed 7 + 3
    from medsynth.models import load_run
    from medsynth.sampling import draw
    import numpy as np

    images, labels = draw(load_run(trained_run), size, seed=7 + 3, start=3 * size)
    with np.load(out / "shard_00003.npz") as f:
        assert np.array_equal(f["images"], ((images.clamp(-1, 1) + 1) * 127.5).round().byte()[:, 0].numpy())
        assert np.array_equal(f["indices"], np.arange(1500, 2000))


def test_two_sampling_processes_give_the_same_shards_as_one(trained_run, tmp_path):
    import numpy as np

    from medsynth.errors import MedsynthError
    from medsynth.sampling import sample

    one = sample(trained_run, 60, out_dir=tmp_path / "one", shard_size=16, seed=1).parent
    two = sample(trained_run, 60, out_dir=tmp_path / "two", shard_size=16, seed=1, workers=2).parent
    assert len(_manifest(two)) == 60
    for k in range(4):
        with np.load(one / f"shard_{k:05d}.npz") as a, np.load(two / f"shard_{k:05d}.npz") as b:
            assert np.array_equal(a["images"], b["images"]) and np.array_equal(a["labels"], b["labels"])
    with pytest.raises(MedsynthError, match="another request"):
        sample(trained_run, 61, out_dir=tmp_path / "one", shard_size=16, seed=1)


@pytest.mark.xdist_group("ddp")  # one at a time: both launch two ranks on local ports
@pytest.mark.parametrize("launcher", ["ddp_spawn", "torchrun"])
def test_two_process_ddp_training_on_cpu(pneumonia, tmp_path, launcher):
    """The same `medsynth train` on 2 processes (gloo): each rank sees half the data per epoch."""
    from medsynth.models import load_run

    data = subset_npz(pneumonia, tmp_path / "d.npz", {"train": 256, "val": 64, "test": 32})
    common = ["train", "configs/vae_pneumonia.yaml", f"data.path={data}", "trainer.max_epochs=2",
              "data.batch_size=32", "trainer.accelerator=cpu", "trainer.devices=2"]
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    if launcher == "ddp_spawn":
        cmd = [sys.executable, "-m", "medsynth.cli", *common, "trainer.strategy=ddp_spawn", f"run_dir={run}"]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29531",
               "-m", "medsynth.cli", *common, "trainer.strategy=ddp", f"run_dir={run}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert summary["global_step"] == 2 * (256 // 32) // 2  # 2 epochs of 4 steps: each rank has 128 images
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["run"]  # one run directory, not one per rank
    samples = load_run(run).sample(4)
    assert torch.isfinite(samples).all()


def test_launched_processes_must_share_a_named_run_dir(small_npz, tmp_path, monkeypatch):
    from medsynth.errors import MedsynthError
    from medsynth.training import train

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(MedsynthError, match="same run_dir"):
        train(None, overrides(small_npz, tmp_path / "runs"), log=lambda *_: None)
