"""Vox2Vox and the UNet baseline on real BraTS data, cropped around each tumour so that a few real
training steps and whole-case inference take seconds."""

import json
import subprocess
import sys

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch

from medsynth.config import load_config
from medsynth.errors import DiscriminatorCollapse, MedsynthError
from medsynth.models import build_recipe
from medsynth.nets.unet_gan import UNetGenerator
from medsynth.training import build_data, train

from conftest import BOX, FILES


def overrides(root, runs, *extra):
    return [f"data.path={root}", f"runs_dir={runs}", "data.patch_size=32", "data.patches_per_epoch=4",
            "data.val_patches=1", "model.depth=3", "model.width=0.125", "trainer.max_epochs=1",
            "trainer.precision=32", *extra]


def test_generator_shapes_and_constant_bottleneck():
    for dims in (2, 3):
        net = UNetGenerator(dims, in_channels=2, out_channels=5, width=0.125, depth=3, bottleneck_blocks=3)
        x = torch.randn(1, 2, *([32] * dims))
        widths = []
        hooks = [b.register_forward_hook(lambda m, i, o: widths.append((i[0].shape[1], o.shape))) for b in net.bottleneck]
        assert net(x).shape == (1, 5, *([32] * dims))
        c = 8 * 4  # 64 * 0.125 * 2^2
        assert [w for w, _ in widths] == [c, 2 * c, 2 * c]  # each block sees the previous two outputs
        assert {o for _, o in widths} == {torch.Size([1, c, *([4] * dims)])}
        for h in hooks:
            h.remove()
    small = sum(p.numel() for p in UNetGenerator(3, 2, 5, width=0.125).parameters())
    large = sum(p.numel() for p in UNetGenerator(3, 2, 5, width=0.25).parameters())
    assert 3.5 < large / small < 4.1  # conv weights scale with width^2


def test_patches_are_class_balanced_and_inside_the_brain(mini_brats):
    from medsynth.data.patches import PatchSampler, load_segmentation_splits

    cfg = load_config("configs/vox2vox_brats.yaml", [f"data.path={mini_brats}", "data.patch_size=16"])
    splits = load_segmentation_splits(cfg.data)
    assert [len(splits.train), len(splits.val), len(splits.test)] == [2, 2, 2]
    assert splits.in_channels == 2 and splits.num_classes == 5
    case = splits.train[0]
    assert case.image.min() >= -1 and case.image.max() <= 1 and case.label.dtype == np.uint8
    sampler = PatchSampler(splits.train[:1], 16, 5, length=400, seed=0)
    for i in range(400):
        item = sampler[i]
        assert item["image"].shape == (2, 16, 16, 16) and item["label"].shape == (1, 16, 16, 16)
        assert item["image"][:, 8, 8, 8].max() > -1  # the centre is brain, never background air
    # MONAI shifts a centre near the volume's edge so the patch fits; 1-voxel patches show the
    # drawn centres themselves
    single = PatchSampler(splits.train[:1], 1, 5, length=400, seed=0)
    counts = np.bincount([int(single[i]["label"].item()) for i in range(400)], minlength=5) / 400
    present = np.unique(case.label)
    assert set(np.flatnonzero(counts)) == set(present.tolist())
    share = 1 / len(present)
    assert np.all(np.abs(counts[present] - share) < 0.08), counts  # equal ratios, not voxel frequencies
    # the raw voxel frequency of the rarest class is far below its share of patch centres
    assert (case.label == present[np.argmin([(case.label == k).sum() for k in present])]).mean() < share / 3


def test_dice_loss_falls_over_real_steps(mini_brats):
    cfg = load_config("configs/vox2vox_brats.yaml", overrides(mini_brats, "unused", "data.batch_size=4"))
    _, data = build_data(cfg)
    recipe = build_recipe(cfg)
    batch = next(iter(data.train_dataloader()))
    opt = torch.optim.Adam(recipe.generator.parameters(), lr=3e-3)
    losses = []
    torch.manual_seed(0)
    for _ in range(25):
        loss = recipe.dice_loss(recipe.generator(batch["image"]), batch["label"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert 0 <= min(losses) and max(losses) <= 1
    assert np.mean(losses[-5:]) < 0.85 * np.mean(losses[:5]), losses


TINY = ["model.family=segmentation", "data.format=segmentation", "data.classes=[0,1]", "model.in_channels=1",
        "model.image_size=[16,16,16]", "model.num_classes=2", "model.spatial_dims=3", "model.depth=2",
        "model.width=0.125"]


def test_adversarial_criteria_have_the_expected_signs():
    cfg = load_config(None, TINY)
    adversary = build_recipe(cfg).adversary
    ones, zeros = torch.ones(2, 1, 3, 3, 3), torch.zeros(2, 1, 3, 3, 3)
    assert adversary.discriminator_loss(ones, zeros).item() == 0  # LSGAN: a perfect discriminator
    assert adversary.discriminator_loss(zeros, ones).item() == pytest.approx(1.0)
    assert adversary.generator_loss(zeros).item() == pytest.approx(1.0)
    assert adversary.accuracy(ones, zeros).item() == 1.0
    assert adversary.accuracy(zeros, ones).item() == 0.0
    assert adversary.updates(torch.tensor(0.79)) and not adversary.updates(torch.tensor(0.8))
    hinge = build_recipe(load_config(None, [*TINY, "loss.adversarial=hinge"])).adversary
    assert hinge.discriminator_loss(ones * 3, -ones * 3).item() < hinge.discriminator_loss(-ones * 3, ones * 3).item()
    cfg.loss.d_collapse_steps = 3
    adversary = build_recipe(cfg).adversary
    adversary.check_collapse(torch.tensor(0.0), 0)
    adversary.check_collapse(torch.tensor(0.3), 1)  # a non-zero loss resets the count
    adversary.check_collapse(torch.tensor(0.0), 1)
    adversary.check_collapse(torch.tensor(0.0), 1)
    with pytest.raises(DiscriminatorCollapse, match="3 steps in a row"):
        adversary.check_collapse(torch.tensor(0.0), 1)


@pytest.mark.parametrize("threshold", [0.0, None])
def test_discriminator_accuracy_threshold_holds_back_updates(mini_brats, threshold):
    extra = [f"loss.d_accuracy_threshold={'null' if threshold is None else threshold}", "data.patches_per_epoch=6",
             "data.batch_size=2"]
    cfg = load_config("configs/vox2vox_brats.yaml", overrides(mini_brats, "unused", *extra))
    _, data = build_data(cfg)
    recipe = build_recipe(cfg)
    d_before = [p.detach().clone() for p in recipe.discriminator.parameters()]
    g_before = [p.detach().clone() for p in recipe.generator.parameters()]
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                        enable_progress_bar=False, enable_model_summary=False, precision="32")
    trainer.fit(recipe, datamodule=data)
    d_same = all(torch.equal(a, b) for a, b in zip(d_before, recipe.discriminator.parameters()))
    g_same = all(torch.equal(a, b) for a, b in zip(g_before, recipe.generator.parameters()))
    assert not g_same
    assert d_same == (threshold == 0.0)  # accuracy is never below 0: D never steps
    assert trainer.global_step == (3 if threshold == 0.0 else 6)  # Lightning counts optimizer steps


def test_sliding_window_matches_one_window_and_respects_the_mask(mini_brats):
    cfg = load_config("configs/vox2vox_brats.yaml", overrides(mini_brats, "unused"))
    splits, _ = build_data(cfg)
    recipe = build_recipe(cfg).eval()
    case = splits.test[0]
    whole = recipe.segment(case.image)
    assert whole.shape == case.image.shape[1:] and whole.dtype == np.uint8
    window = case.image[:, :32, :32, :32]
    with torch.no_grad():
        direct = recipe.generator(torch.from_numpy(window)[None]).argmax(1)[0].numpy()
    assert np.array_equal(recipe.segment(window), direct)  # one window: exactly the network's output
    masked = recipe.segment(case.image, case.mask)
    assert not masked[~case.mask].any() and np.array_equal(masked[case.mask], whole[case.mask])


def test_vox2vox_cli_end_to_end(mini_brats, tmp_path):
    env_bin = [sys.executable, "-m", "medsynth.cli"]
    out = subprocess.run([*env_bin, "train", "configs/vox2vox_brats.yaml", *overrides(mini_brats, tmp_path / "runs")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    run = next((tmp_path / "runs").iterdir())
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert {"train/d_loss", "train/g_adv", "train/dice", "dice_whole_tumour"} <= set(summary["metrics"])
    seg = json.loads((run / "segmentation.json").read_text())
    assert sorted(seg["cases"]) == ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]  # the test split
    assert set(seg["cases"]["brats_2013_pat0001_1"]["regions"]) == {"whole_tumour", "tumour_core", "enhancing_tumour"}
    assert (run / "segmentation.png").is_file()
    header = open(run / "metrics.csv").readline()
    assert "train/d_loss" in header and "train/g_adv" in header  # G and D logged separately
    from medsynth.report import report

    page = report(run).read_text()  # per case Dice / HD95, no sample grid, no failing evaluate hint
    assert "<h2>Segmentations</h2>" in page and "brats_2013_pat0001_1</td><td>whole_tumour" in page
    assert "<h2>Samples</h2>" not in page and "Not evaluated yet" not in page

    case = mini_brats / "test" / "brats_2013_pat0002_1"
    target = tmp_path / "pred.nii.gz"
    out = subprocess.run([*env_bin, "segment", str(run), "--input", str(case), "--out", str(target)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    printed = json.loads(out.stdout[out.stdout.index("{"):])
    assert 0 <= printed["brats_2013_pat0002_1"]["whole_tumour"] <= 1
    pred, flair = nib.load(str(target)), nib.load(str(case / FILES[0]))
    assert pred.shape == flair.shape and np.allclose(pred.affine, flair.affine)
    assert pred.get_data_dtype() == np.uint8
    assert np.allclose(pred.header.get_zooms(), flair.header.get_zooms())
    assert pred.header["qform_code"] == flair.header["qform_code"]
    assert pred.header["descrip"].tobytes().startswith(b"MODEL LABELS")
    values = np.unique(np.asarray(pred.dataobj))
    assert set(values.tolist()) <= {0, 1, 2, 3, 4}
    brain = np.asarray(nib.load(str(case / "brainmask.nii.gz")).dataobj) > 0
    assert not np.asarray(pred.dataobj)[~brain].any()

    # a folder of cases -> a folder of label maps
    out = subprocess.run([*env_bin, "segment", str(run), "--input", str(mini_brats / "validation"),
                          "--out", str(tmp_path / "val_pred")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "val_pred").iterdir()) == [
        "brats_2013_pat0003_1_seg.nii.gz", "brats_2013_pat0004_1_seg.nii.gz"]

    # bad inputs: one line each, naming what is wrong
    for args, expected in [
        (["--input", str(case / FILES[0]), "--out", str(tmp_path / "x.nii.gz")], "takes 2 contrast"),
        (["--input", str(tmp_path), "--out", str(tmp_path / "x.nii.gz")], "neither a case"),
        (["--input", str(case), "--out", str(tmp_path / "x.npz")], "written as NIfTI"),
        (["--input", str(case), "--out", str(tmp_path / "x.nii.gz"), "--overlap", "1.5"], "overlap"),
    ]:
        out = subprocess.run([*env_bin, "segment", str(run), *args], capture_output=True, text=True)
        assert out.returncode == 2 and expected in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_unet_baseline_has_no_discriminator_and_resampled_runs_write_the_input_grid(mini_brats, tmp_path):
    run = train("configs/unet_brats.yaml", overrides(mini_brats, tmp_path / "runs", "data.spacing=[2.0,2.0,2.0]",
                                                     "data.patch_size=16", "model.depth=2"), log=lambda *_: None)
    from safetensors.torch import load_file

    assert not any(k.startswith("discriminator") for k in load_file(str(run / "model.safetensors")))
    from medsynth.segment import segment

    case = mini_brats / "test" / "brats_2013_pat0001_1"
    records = segment(run, case, tmp_path / "p.nii.gz", log=lambda *_: None)
    assert nib.load(str(tmp_path / "p.nii.gz")).shape == BOX  # predicted at 2 mm, written at 1 mm
    assert "whole_tumour" in records[0]["scores"]["regions"]


def test_bad_segmentation_inputs(mini_brats, tmp_path):
    def refused(match, *extra, config="configs/vox2vox_brats.yaml"):
        with pytest.raises(MedsynthError, match=match):
            train(config, overrides(mini_brats, tmp_path / "runs", *extra), log=lambda *_: None)

    refused("smaller than data.patch_size", "data.patch_size=64")
    refused("outside the declared classes", "data.classes=[0,1,2]")
    refused("divisible by 2", "data.patch_size=24", "model.depth=4")
    refused("data.format=segmentation", "data.format=volumes")
    refused("needs data.classes", "data.classes=[]")
    refused("0 files match", "data.label=missing*.nii.gz")
    assert not (tmp_path / "runs").exists()  # nothing written by a refused run
    bad = tmp_path / "bad"
    case = bad / "train" / "c1"
    case.mkdir(parents=True)
    src = mini_brats / "train" / "brats_2013_pat0005_1"
    for name in FILES:
        (case / name).write_bytes((src / name).read_bytes())
    label = nib.load(str(case / "OTMultiClass.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(label.dataobj)[:-1], label.affine), str(case / "OTMultiClass.nii.gz"))
    with pytest.raises(MedsynthError, match="OTMultiClass.nii.gz: label map of shape"):
        train("configs/vox2vox_brats.yaml", overrides(bad, tmp_path / "runs"), log=lambda *_: None)


def test_test_time_flips_make_segmentation_flip_equivariant():
    """With model.test_time_flips the probabilities are averaged over the 8 flips of the volume, so
    segmenting a flipped volume gives the flipped segmentation (an untrained network is not
    equivariant by itself: without flips the two differ)."""
    torch.manual_seed(0)
    recipe = build_recipe(load_config(None, [*TINY, "model.generator=monai_unet", "model.sw_overlap=0.5"]))
    x = torch.randn(1, 24, 20, 18).numpy()
    for axis in (1, 2, 3):
        flipped = np.flip(x, axis).copy()
        with_flips = recipe.segment(flipped, flips=True)
        assert np.array_equal(with_flips, np.flip(recipe.segment(x, flips=True), axis - 1)), axis
    plain = recipe.segment(np.flip(x, 1).copy(), flips=False)
    assert not np.array_equal(plain, np.flip(recipe.segment(x, flips=False), 0))


def test_dataloader_workers_draw_different_patches(mini_brats):
    """Each worker holds a copy of the sampler; reseeded per worker, their patches differ (before,
    worker 1 repeated worker 0's patches batch for batch), and a seeded run draws the same ones again."""

    def batches():
        L.seed_everything(0, workers=True, verbose=False)
        cfg = load_config("configs/vox2vox_brats.yaml", overrides(mini_brats, "unused", "data.num_workers=2",
                                                                  "data.patches_per_epoch=8", "data.augment=true"))
        _, data = build_data(cfg)
        return [b["image"] for b in data.train_dataloader()]

    first = batches()
    assert len(first) == 4
    assert all(not torch.equal(a, b) for i, a in enumerate(first) for b in first[i + 1:])
    assert all(torch.equal(a, b) for a, b in zip(first, batches()))
