"""3D segmentation on the real LA heart cases (one HDF5 file per case holding image and label):
a split file, the files' missing spacing, box patches, augmentation, a learning-rate schedule, the
largest connected component, and `medsynth segment` on an HDF5 case."""

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import la_split_file, tiny_la
from medsynth.config import load_config
from medsynth.data.augment import patch_augmentation, remap_intensities
from medsynth.data.patches import load_segmentation_splits, read_split_file
from medsynth.errors import MedsynthError
from medsynth.models.base import lr_factor
from medsynth.models.segmentation import keep_largest_components
from medsynth.training import train

ROOT = Path(__file__).resolve().parents[1]
LA = ROOT / "../shared/data/la_heart"
SPLIT = json.loads((ROOT / "configs/splits/la_heart.json").read_text())


def tiny(runs, split_file, *extra):
    return tiny_la(runs, split_file, "[32,32,16]", "optim.warmup_steps=1", *extra)


@pytest.fixture
def three_cases(tmp_path):
    """A split file naming one real case per split (the shipped split's first of each)."""
    return la_split_file(tmp_path / "split.json")


def test_shipped_split_is_disjoint_and_covers_the_40_cases():
    names = [line.strip() for line in (LA / "cases.list").read_text().splitlines() if line.strip()]
    split = read_split_file(ROOT / "configs/splits/la_heart.json")
    assert [len(split[s]) for s in ("train", "val", "test")] == [26, 4, 10]
    assert sorted(split["train"] + split["val"] + split["test"]) == sorted(names)


def test_split_files_are_read_and_checked(tmp_path):
    csv = tmp_path / "s.csv"
    csv.write_text("case,split\na,train\nb,validation\nc,test\nd,train\n")
    assert read_split_file(csv) == {"train": ["a", "d"], "val": ["b"], "test": ["c"]}
    for text, match in [('{"train": ["a"], "test": ["a"]}', "both train and test"),
                        ('{"train": ["a"], "holdout": ["b"]}', "unknown split"),
                        ('{"train": "a"}', "list of case names"), ("[1, 2]", "cannot read")]:
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        with pytest.raises(MedsynthError, match=match):
            read_split_file(bad)
    short = tmp_path / "short.csv"
    short.write_text("case,split\na,train\nb\n")
    with pytest.raises(MedsynthError, match="line 3 lacks a case or a split"):
        read_split_file(short)
    with pytest.raises(MedsynthError, match="split file not found"):
        read_split_file(tmp_path / "none.json")


def test_cases_come_from_the_split_file_with_their_spacing(three_cases):
    cfg = load_config(ROOT / "configs/unet_la_heart.yaml", [f"data.splits={three_cases}"])
    splits = load_segmentation_splits(cfg.data)
    assert [[c.name for c in s] for s in (splits.train, splits.val, splits.test)] == [
        SPLIT["train"][:1], SPLIT["validation"][:1], SPLIT["test"][:1]]
    case = splits.test[0]
    assert case.spacing == (0.625, 0.625, 0.625) and np.allclose(np.diag(case.affine), [0.625] * 3 + [1])
    assert splits.image_size == [112, 112, 80] and set(np.unique(case.label).tolist()) == {0, 1}
    only_test = load_segmentation_splits(cfg.data, which=("test",))
    assert not only_test.train and [c.name for c in only_test.test] == SPLIT["test"][:1]
    missing = three_cases.with_name("missing.json")
    missing.write_text(json.dumps({"train": ["NOT_A_CASE"]}))
    with pytest.raises(MedsynthError, match="NOT_A_CASE"):
        load_segmentation_splits(load_config(ROOT / "configs/unet_la_heart.yaml", [f"data.splits={missing}"]).data)
    with pytest.raises(MedsynthError, match="patch_size"):
        load_config(ROOT / "configs/unet_la_heart.yaml", ["data.patch_size=[112,112]"])


def test_augmentation_moves_image_and_label_together():
    """An image that is its label map (+1 inside, -1 outside) stays so after flips, rotation, zoom
    and intensity jitter: the geometry is shared, the label stays integer."""
    rng = np.random.default_rng(0)
    label = np.zeros((40, 40, 24), dtype=np.float32)
    label[10:30, 12:26, 6:18] = 1
    label[rng.random(label.shape) < 0.001] = 1
    augment = patch_augmentation(15.0, 0.1, seed=3, p_affine=1.0)
    changed = 0
    for _ in range(6):
        out = augment({"image": torch.from_numpy(label * 2 - 1)[None], "label": torch.from_numpy(label)[None]})
        assert out["image"].shape == (1, 40, 40, 24) and out["label"].shape == (1, 40, 40, 24)
        assert set(torch.unique(out["label"]).tolist()) <= {0.0, 1.0}
        agree = ((out["image"] > 0) == (out["label"] > 0.5)).float().mean()
        assert agree > 0.98
        changed += not torch.equal(out["label"][0], torch.from_numpy(label))
    assert changed >= 5  # p_affine=1: each draw moves the patch
    again = patch_augmentation(15.0, 0.1, seed=3, p_affine=1.0)
    first = again({"image": torch.from_numpy(label * 2 - 1)[None], "label": torch.from_numpy(label)[None]})
    repeat = patch_augmentation(15.0, 0.1, seed=3, p_affine=1.0)(
        {"image": torch.from_numpy(label * 2 - 1)[None], "label": torch.from_numpy(label)[None]})
    assert torch.equal(first["image"], repeat["image"])  # seeded


def test_intensity_remap_is_a_curve_of_intensity_that_can_invert_contrast():
    """remap_intensities is a function of the voxel's value within its channel: a two-valued image
    stays two-valued, inside the channel's range, and each channel gets its own curve. About half
    the curves invert the order of the two values (the drawn slope sign), and none moves a value
    outside [min, max]. The analytic case: a curve through `bins` points on a ramp image is the
    piecewise-linear interpolant, so the ramp's values at the grid points are the curve itself."""
    rng = np.random.RandomState(0)
    two = torch.zeros(2, 8, 8, 8)
    two[0, 2:6] = 1.0
    two[1] = -1.0
    two[1, :, 2:6] = 3.0
    inverted = 0
    for _ in range(200):
        out = remap_intensities(two, rng)
        for c, (low, high) in enumerate([(0.0, 1.0), (-1.0, 3.0)]):
            values = torch.unique(out[c])
            assert len(values) == 2 and low <= float(values.min()) and float(values.max()) <= high + 1e-6
            top = out[c] == values.max()
            assert torch.equal(top, two[c] == high) or torch.equal(top, two[c] == low)
        inverted += bool(out[0][two[0] == 1.0][0] < out[0][two[0] == 0.0][0])
    assert 70 <= inverted <= 130  # a fair sign: 200 draws, binomial sd 7
    same = torch.stack([two[0], two[0]])  # two identical channels get their own curves
    assert sum(not torch.equal(*remap_intensities(same, rng)) for _ in range(20)) == 20
    ramp = torch.linspace(-2, 5, 64).reshape(1, 4, 4, 4)  # exactly the 64 grid points
    out = remap_intensities(ramp, np.random.RandomState(5), bins=64)
    rng5 = np.random.RandomState(5)
    noise = torch.from_numpy(rng5.uniform(0, 1, 64 + 15)).float().unfold(0, 16, 1).mean(1)
    curve = noise + rng5.choice([-0.35, 0.35]) * torch.linspace(0, 1, 64)
    curve = (curve - curve.min()) / (curve.max() - curve.min())
    assert torch.allclose(out.flatten(), -2 + 7 * curve, atol=1e-5)
    # in the patch pipeline: seeded, and remap_prob=0 leaves the jittered intensities' order alone
    label = torch.zeros(1, 16, 16, 8)
    label[:, 4:12, 4:12] = 1
    item = {"image": label * 2 - 1, "label": label}
    first = patch_augmentation(0.0, 0.0, seed=1, remap_prob=1.0)(item)
    again = patch_augmentation(0.0, 0.0, seed=1, remap_prob=1.0)(item)
    assert torch.equal(first["image"], again["image"]) and torch.equal(first["label"], again["label"])
    def inverted_share(remap_prob: float) -> int:
        images = [patch_augmentation(0.0, 0.0, seed=s, remap_prob=remap_prob)(item)["image"] for s in range(40)]
        return sum(bool(x[label > 0].mean() < x[label == 0].mean()) for x in images)

    assert 8 <= inverted_share(1.0) <= 32 and inverted_share(0.0) == 0
    # remap_prob=0.5: about half the patches differ from the same seed's patch without the remap
    # (the remap comes last, so everything before it is drawn alike)
    differ = sum(not torch.equal(patch_augmentation(0.0, 0.0, seed=s, remap_prob=0.5)(item)["image"],
                                 patch_augmentation(0.0, 0.0, seed=s)(item)["image"]) for s in range(40))
    assert 10 <= differ <= 30
    with pytest.raises(MedsynthError, match="intensity_remap"):
        load_config(ROOT / "configs/unet_la_heart.yaml", ["data.intensity_remap=0.5", "data.augment=false"])
    with pytest.raises(MedsynthError, match="intensity_remap"):
        load_config(ROOT / "configs/unet_la_heart.yaml", ["data.intensity_remap=1.5"])
    with pytest.raises(MedsynthError, match="for segmentation models"):
        load_config(ROOT / "configs/spade_la_heart.yaml", ["data.intensity_remap=0.5"])


def test_learning_rate_schedules_follow_their_formulas():
    cos, poly = lr_factor("cosine", 110, warmup=10), lr_factor("poly", 100)
    assert [cos(i) for i in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert cos(60) == pytest.approx(0.5) and cos(110) == pytest.approx(0.0)
    assert poly(50) == pytest.approx(0.5 ** 0.9) and poly(100) == 0.0
    assert lr_factor("constant", 100)(77) == 1.0


def test_largest_component_keeps_the_biggest_piece_per_class():
    pred = np.zeros((20, 20, 20), dtype=np.uint8)
    pred[2:8, 2:8, 2:8] = 1  # 216 voxels
    pred[12:14, 12:14, 12:14] = 1  # 8, apart
    pred[15:18, 2:5, 2:5] = 2  # one piece of class 2
    pred[9, 9, 9] = 2
    out = keep_largest_components(pred, 3)
    assert (out == 1).sum() == 216 and (out == 2).sum() == 27 and not out[12:14, 12:14, 12:14].any()
    diagonal = np.zeros((5, 5, 5), dtype=np.uint8)
    diagonal[1, 1, 1] = diagonal[2, 2, 2] = 1  # corner neighbours: one 26-connected piece
    assert (keep_largest_components(diagonal, 2) == 1).sum() == 2


def test_la_heart_trains_and_segments_an_hdf5_case(three_cases, tmp_path):
    run = train("configs/unet_la_heart.yaml", tiny(tmp_path / "runs", three_cases), log=lambda *_: None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and "train/ce" in summary["metrics"]
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    # poly decay stepped once per batch (2 epochs x 2 batches): at the end of the run the rate is 0
    assert state["lr_schedulers"][0]["last_epoch"] == 4 and state["optimizer_states"][0]["param_groups"][0]["lr"] == 0
    seg = json.loads((run / "segmentation.json").read_text())
    assert list(seg["cases"]) == SPLIT["test"][:1] and seg["cases"][SPLIT["test"][0]]["spacing"] == [0.625] * 3
    case = LA / SPLIT["test"][0]
    target = tmp_path / "pred.nii.gz"
    out = subprocess.run([sys.executable, "-m", "medsynth.cli", "segment", str(run), "--input", str(case),
                          "--out", str(target), "--no-largest-component"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    pred = nib.load(str(target))
    import h5py

    with h5py.File(case / "mri_norm2.h5") as f:
        shape = f["image"].shape
    assert pred.shape == shape and np.allclose(np.diag(pred.affine), [0.625] * 3 + [1])
    assert set(np.unique(np.asarray(pred.dataobj)).tolist()) <= {0, 1}

    # evaluate: the run's held-out cases (the split file's test case), scored as segment scores them
    from medsynth.compare import compare
    from medsynth.evaluate import evaluate
    from medsynth.report import report

    result = evaluate(None, run, resamples=20, log=lambda *_: None)
    name = SPLIT["test"][0]
    assert result["task"] == "segmentation" and list(result["segmentation"]["cases"]) == [name]
    assert result["segmentation"]["mean"]["dice_class_1"] == pytest.approx(seg["cases"][name]["classes"]["1"]["dice"])
    assert (run / "evaluation.json").is_file()
    page = report(run).read_text()
    assert "held-out cases" in page and "dice_class_1" in page
    folder = tmp_path / "cases"  # a folder of case folders
    folder.mkdir()
    for n in SPLIT["validation"][:2]:
        (folder / n).symlink_to(LA / n)
    again = evaluate(folder, run, out=tmp_path / "again.json", log=lambda *_: None)
    assert sorted(again["segmentation"]["cases"]) == sorted(SPLIT["validation"][:2])
    md = compare([run / "evaluation.json", tmp_path / "again.json"])
    assert "| dice_class_1 | higher |" in md


def test_a_schedule_needs_a_known_length(three_cases, tmp_path):
    with pytest.raises(MedsynthError, match="needs a known length"):
        train("configs/unet_la_heart.yaml", tiny(tmp_path / "runs", three_cases, "trainer.max_epochs=-1",
                                                 "trainer.max_time=00:00:00:05"), log=lambda *_: None)
    assert not (tmp_path / "runs").exists()  # refused before anything is written


def test_source_spacing_applies_to_hdf5_cases_only():
    from medsynth.data.cases import Case
    from medsynth.data.patches import with_source_spacing

    case = Case("c", np.zeros((1, 4, 4, 4), np.float32), None, np.diag([2.0, 2.0, 3.0, 1.0]), (2.0, 2.0, 3.0))
    assert with_source_spacing(case, [0.625] * 3, "x/mri_norm2.h5:image").spacing == (0.625,) * 3
    assert with_source_spacing(case, [0.625] * 3, "x/image.nii.gz") is case  # NIfTI keeps its own geometry
    with pytest.raises(MedsynthError, match="three positive"):
        with_source_spacing(case, [0.625, 0], "a.h5")


def test_case_means_leave_out_undefined_scores():
    """HD95 is undefined when a map is empty: left out of the mean, and counted."""
    from medsynth.case_evaluation import _means

    means = _means({"a": {"dice": 0.8, "hd95": 2.0}, "b": {"dice": 0.0, "hd95": None}, "c": {"dice": 0.7, "hd95": 4.0}},
                   resamples=50, seed=0)
    assert means["dice"] == pytest.approx(0.5) and means["hd95"] == pytest.approx(3.0)
    assert means["hd95_undefined_cases"] == 1 and "dice_undefined_cases" not in means
    lo, hi = means["hd95_interval"]
    assert 2.0 <= lo <= hi <= 4.0


def test_a_resumed_run_continues_its_schedule(three_cases, tmp_path):
    """Resumed with more epochs, the schedule goes on from the batch it reached (its state is in the
    checkpoint) to the new end, instead of starting over."""
    quick = tiny(tmp_path / "runs", three_cases, "trainer.max_epochs=1", "data.limit=1")
    run = train("configs/unet_la_heart.yaml", quick, log=lambda *_: None)
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert first["lr_schedulers"][0]["last_epoch"] == 2
    train(None, ["trainer.max_epochs=2"], resume=run, log=lambda *_: None)
    state = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert state["global_step"] == 4 and state["lr_schedulers"][0]["last_epoch"] == 4
    assert state["optimizer_states"][0]["param_groups"][0]["lr"] == 0.0  # poly's end, over the new length
