import csv
import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import overrides
from medsynth.errors import MedsynthError
from medsynth.runs import last_checkpoint
from medsynth.training import train

quiet = dict(log=lambda *_: None)


def rows(run):
    with open(run / "metrics.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_run_directory_contents_and_repeatability(small_npz, tmp_path):
    a = train(None, overrides(small_npz, tmp_path / "runs", "trainer.precision=bf16-mixed"), **quiet)
    b = train(None, overrides(small_npz, tmp_path / "runs", "trainer.precision=bf16-mixed"), **quiet)
    assert a != b  # two runs never share a directory
    for name in ("config.yaml", "model.safetensors", "samples.png", "reconstructions.png", "metrics.csv",
                 "summary.json", "checkpoints/last.ckpt", "checkpoints/best.ckpt"):
        assert (a / name).is_file(), name
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)  # same seed and config -> same weights
    c = train(None, overrides(small_npz, tmp_path / "runs", "trainer.precision=bf16-mixed", "seed=1"), **quiet)
    wc = load_file(c / "model.safetensors")
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    summary = json.loads((a / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 3  # 96 images / batch 32
    assert "val_loss" in summary["metrics"]
    saved = (a / "config.yaml").read_text()
    assert "in_channels: 1" in saved and "num_classes: 2" in saved


def test_resume_continues_to_the_same_step_count(small_npz, tmp_path):
    run = train(None, overrides(small_npz, tmp_path / "runs"), **quiet)
    assert json.loads((run / "summary.json").read_text())["global_step"] == 3
    again = train(None, ["trainer.max_epochs=3"], resume=run, **quiet)
    assert again == run
    summary = json.loads((run / "summary.json").read_text())
    assert summary["global_step"] == 9 and summary["epochs"] == 3
    epochs = {r["epoch"] for r in rows(run) if r.get("val/loss")}
    assert epochs == {"0", "1", "2"}  # the first session's metrics survive the resume


def test_diverging_loss_stops_and_keeps_last_good_checkpoint(small_npz, tmp_path):
    run = train(None, overrides(small_npz, tmp_path / "runs", "trainer.precision=32"), **quiet)
    ckpt = last_checkpoint(run)
    before = ckpt.read_bytes()
    # A KL weight that overflows fp32: the loss is inf at the first step of the next epoch.
    with pytest.raises(MedsynthError) as err:
        train(None, ["trainer.max_epochs=2", "loss.kl_weight=1e39"], resume=run, **quiet)
    message = str(err.value)
    assert "inf" in message and "step 3" in message and str(ckpt) in message
    assert ckpt.read_bytes() == before
    state = torch.load(ckpt, weights_only=True)
    assert state["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point())
    assert json.loads((run / "summary.json").read_text())["status"] == "diverged"


@pytest.mark.parametrize("bad", [["data.path=/no/such/file.npz"], ["model.conditional=true", "data.path={unlabelled}"],
                                 ["loss.reconstruction=msssim", "loss.msssim_scales=5"]])
def test_refused_runs_leave_nothing_behind(small_npz, tmp_path, bad):
    import numpy as np

    unlabelled = tmp_path / "unlabelled.npz"
    np.savez(unlabelled, train_images=np.zeros((10, 28, 28), np.uint8))
    runs = tmp_path / "runs"
    with pytest.raises(MedsynthError):
        train(None, overrides(small_npz, runs) + [b.format(unlabelled=unlabelled) for b in bad], **quiet)
    assert not runs.exists() or not any(runs.iterdir())


def test_mlflow_tracking_in_sqlite_store(small_npz, tmp_path):
    mlflow = pytest.importorskip("mlflow")
    runs = tmp_path / "runs"
    run = train(None, overrides(small_npz, runs, "tracking.mlflow=true", "name=tracked"), **quiet)
    db = runs / "mlflow.db"
    assert db.is_file()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{db}")
    experiment = client.get_experiment_by_name("tracked")
    found = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in found] == [run.name]
    assert "val/loss" in found[0].data.metrics
    run_id = found[0].info.run_id
    artifacts = {a.path for a in client.list_artifacts(run_id, "training")}
    assert {"training/samples.png", "training/summary.json"} <= artifacts
    # evaluate and report log to the same MLflow run: metrics, the JSON, the strip and the page
    from medsynth.evaluate import evaluate
    from medsynth.report import report

    evaluate(small_npz, run, utility=False, resamples=10, **quiet)
    report(run)
    metrics = client.get_run(run_id).data.metrics
    assert "eval/diversity/fake/ms_ssim_mean" in metrics and "eval/privacy/pixel/authenticity" in metrics
    assert {a.path for a in client.list_artifacts(run_id, "evaluation")} == {"evaluation/evaluation.json",
                                                                              "evaluation/evaluation_nearest.png"}
    assert [a.path for a in client.list_artifacts(run_id, "report")] == ["report/report.html"]
