"""One unconditional model per class (data.keep_labels) and the labelled set drawn from such runs
(`medsynth sample RUN_0 RUN_1 ...`, medsynth.class_runs), on real PneumoniaMNIST."""

import json
import shutil

import numpy as np
import pytest

from conftest import overrides, run_cli
from medsynth.class_runs import class_counts, class_order
from medsynth.config import load_config
from medsynth.data.datasets import load_splits
from medsynth.errors import MedsynthError
from medsynth.evaluate import evaluate
from medsynth.training import train

quiet = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def class_runs(tmp_path_factory, pneumonia):
    from conftest import subset_npz

    data = subset_npz(pneumonia, tmp_path_factory.mktemp("data") / "small.npz", {"train": 96, "val": 32, "test": 64})
    runs = tmp_path_factory.mktemp("runs")
    made = {c: train("configs/vae_pneumonia.yaml", overrides(data, runs, f"data.keep_labels=[{c}]"), **quiet)
            for c in (0, 1)}
    return data, made


def test_class_shares_follow_the_weights_and_spread_evenly():
    for weights, n in (({0: 1214, 1: 3494}, 624), ({0: 1, 1: 1, 2: 1}, 100), ({3: 5, 7: 1}, 13), ({0: 1, 1: 1}, 1)):
        counts = class_counts(weights, n)
        total = sum(weights.values())
        assert sum(counts.values()) == n
        assert all(abs(counts[c] - n * w / total) < 1 for c, w in weights.items())
        order = class_order(counts)
        assert {c: order.count(c) for c in counts} == counts
        for i in range(1, n + 1):  # every prefix holds each class within one image of its share
            assert all(abs(order[:i].count(c) - i * counts[c] / n) <= 1 for c in counts)
    assert class_order({0: 3, 1: 3}) == [0, 1, 0, 1, 0, 1]


def test_keep_labels_keeps_one_class_in_every_split(small_npz):
    cfg = load_config(None, [f"data.path={small_npz}", "data.keep_labels=[1]"])
    splits = load_splits(cfg.data)
    with np.load(small_npz) as f:
        for name, part in (("train", splits.train), ("val", splits.val), ("test", splits.test)):
            assert set(part.labels.tolist()) == {1}
            assert len(part) == int((f[f"{name}_labels"] == 1).sum())
            # the images kept are the file's images of that class, in file order
            kept = f[f"{name}_images"][f[f"{name}_labels"][:, 0] == 1]
            assert np.allclose(part.images[:, 0].numpy(), kept / 255 * 2 - 1, atol=1e-6)


def test_keep_labels_refuses_what_it_cannot_select(small_npz, tmp_path):
    with pytest.raises(MedsynthError, match=r"keep_labels=\[5\].*holds no image of these classes \(its labels: \[0, 1\]\)"):
        load_splits(load_config(None, [f"data.path={small_npz}", "data.keep_labels=[5]"]).data)
    with np.load(small_npz) as f:
        np.savez(tmp_path / "unlabelled.npz", images=f["train_images"])
    with pytest.raises(MedsynthError, match=r"unlabelled\.npz.*no class labels to select by"):
        load_splits(load_config(None, [f"data.path={tmp_path / 'unlabelled.npz'}", "data.keep_labels=[0]"]).data)
    # formats whose images carry no class label are refused when the config is read
    with pytest.raises(MedsynthError, match=r"data.keep_labels selects images by their class label.*'volumes'"):
        load_config(None, ["data.format=volumes", "data.keep_labels=[0]"])
    with pytest.raises(MedsynthError, match=r"data.keep_labels selects.*model.family='segmentation'"):
        load_config("configs/unet_la_heart.yaml", ["data.keep_labels=[1]"])


def test_one_class_runs_draw_one_labelled_set(class_runs, tmp_path, capsys):
    data, runs = class_runs
    # a run trained on one class labels what it draws with that class
    code, _ = run_cli(capsys, "sample", runs[0], "-n", "21", "--out", tmp_path / "zero.npz")
    assert code == 0
    with np.load(tmp_path / "zero.npz") as f:
        assert f["labels"][:, 0].tolist() == [0] * 21
        alone = f["images"]
    code, _ = run_cli(capsys, "sample", runs[1], runs[0], "-n", "41", "--out", tmp_path / "set.npz",
                      "--grid", tmp_path / "set.png", "--class-ratio", "balanced")
    assert code == 0 and (tmp_path / "set.png").is_file()
    with np.load(tmp_path / "set.npz") as f:
        labels, images, prov = f["labels"][:, 0], f["images"], json.loads(str(f["provenance"]))
    assert labels.tolist() == [0, 1] * 20 + [0]  # classes in turn, sorted, whatever the runs' order
    # each class's images are those its run draws alone with the same seed and count
    assert np.array_equal(images[labels == 0], alone)
    assert prov["synthetic"] and set(prov["per_class"]) == {"0", "1"}
    assert prov["per_class"]["1"]["n"] == 20 and prov["per_class"]["0"]["label"] == 0
    # by default each class as often as in the data its run was trained on
    with np.load(data) as f:
        trained = {c: int((f["train_labels"] == c).sum()) for c in (0, 1)}
    for c in (0, 1):
        assert json.loads((runs[c] / "summary.json").read_text())["train_images"] == trained[c]
    code, _ = run_cli(capsys, "sample", runs[0], runs[1], "-n", "60", "--out", tmp_path / "mix.npz")
    assert code == 0
    with np.load(tmp_path / "mix.npz") as f:
        mix = f["labels"][:, 0]
    assert abs((mix == 0).sum() - 60 * trained[0] / sum(trained.values())) <= 0.5
    # a run from before summary.json said how many images it saw: its split is counted again
    old = shutil.copytree(runs[0], tmp_path / "old_run")
    summary = json.loads((old / "summary.json").read_text())
    del summary["train_images"]
    (old / "summary.json").write_text(json.dumps(summary))
    code, _ = run_cli(capsys, "sample", old, runs[1], "-n", "60", "--out", tmp_path / "mix_old.npz")
    with np.load(tmp_path / "mix_old.npz") as f:
        assert code == 0 and np.array_equal(f["labels"][:, 0], mix)
    # the labelled set has a train-on-synthetic utility; one class alone says why it has none
    both = evaluate(data, tmp_path / "set.npz", out=tmp_path / "both.json", utility_steps=5, utility_repeats=1,
                    resamples=0, **quiet)
    assert 0 <= both["utility"]["synthetic"]["auc"] <= 1
    one = evaluate(data, tmp_path / "zero.npz", out=tmp_path / "one.json", utility_steps=5, utility_repeats=1,
                   resamples=0, **quiet)
    assert "holds one class (0)" in one["utility"]["not_computed"]


def test_several_runs_refused_unless_one_class_each(class_runs, run, tmp_path, capsys):
    _, runs = class_runs
    out = tmp_path / "out"
    out.mkdir()
    for args, message in (
        ([runs[0], runs[0], "--out", out / "x.npz"], "trained on class 0, as"),
        ([runs[0], run, "--out", out / "x.npz"], "a conditional model; several runs make one labelled set only when each is an "
                         "unconditional model trained on one class"),
        ([runs[0], runs[1], "--out-dir", out / "shards"], "--out-dir does not apply"),
        ([runs[0], runs[1], "--label", "1", "--out", out / "x.npz"], "--label does not apply"),
        ([runs[0], runs[1]], "are drawn into one --out FILE.npz or PNG folder"),
        ([runs[0], runs[1], "--out", out / "x.nii.gz"], "written as an .npz or a folder of PNGs"),
    ):
        code, err = run_cli(capsys, "sample", *args[:2], "-n", "4", *args[2:])
        assert code != 0 and message in err and "Traceback" not in err, err
    code, err = run_cli(capsys, "sample", runs[0], "-n", "4", "--class-ratio", "train", "--out", out / "x.npz")
    assert code != 0 and "--class-ratio is for several runs" in err
    assert not any(out.iterdir())  # nothing written
