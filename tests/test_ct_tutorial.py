"""The abdominal-CT tutorial's pieces on the shared 512 px DICOM CT: 2.5D slices with an organ class
channel, the segmentation feature network (features train --task segmentation), its perceptual taps
with the L1 distance, and the tutorial's VAE recipes trained with them."""

import json

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import DATA, run_cli
from medsynth.config import load_config
from medsynth.data.slices import read_ct_slices
from medsynth.errors import MedsynthError
from medsynth.features import FeatureNet, PerceptualLoss
from medsynth.nets.classifier import VGGFCN, VGGClassifier

CT = DATA / "ct_example"
DICOM, LABELS = CT / "dicom", CT / "example_seg_dicom.nii.gz"
SEGMENT = [1, 5, 6, 7, 20, 52]  # spleen, liver, stomach, pancreas, colon, aorta


def seg_cfg(*extra):
    return load_config("configs/features_ct_seg.yaml", [f"data.path={DICOM}", f"data.label_path={LABELS}", *extra])


def test_dicom_ct_slices_carry_the_organ_classes_of_the_label_map():
    stacks = read_ct_slices(seg_cfg().data)
    assert stacks.shape == (20, 4, 320, 320) and stacks.dtype == np.float32
    assert stacks[:, :3].min() >= -1 and stacks[:, :3].max() <= 1
    # independent count from the NIfTI label map itself: every voxel of each organ lands in the
    # class channel (the 320 px box around the pancreas holds them all in this series)
    labels = np.asarray(nib.load(LABELS).dataobj).round().astype(int)
    classes = stacks[:, 3].round().astype(int)
    for k, organ in enumerate(SEGMENT, start=1):
        if organ == 7:
            assert (classes == k).sum() == (labels == organ).sum() == 1327
        else:
            assert 0 < (classes == k).sum() <= (labels == organ).sum()
    assert set(np.unique(classes)) == set(range(len(SEGMENT) + 1))  # other labels became background
    # only the pancreas slices without a margin: the first four of the series
    assert read_ct_slices(seg_cfg("data.organ_margin=0").data).shape[0] == 4


def test_bad_segmentation_inputs_get_one_clear_error():
    with pytest.raises(MedsynthError, match=r"data.segment labels \[2, 3\] do not occur"):
        read_ct_slices(seg_cfg("data.segment=[2,3,7]").data)
    with pytest.raises(MedsynthError, match="distinct positive labels"):
        read_ct_slices(seg_cfg("data.segment=[7,7]").data)
    with pytest.raises(MedsynthError, match="model.family=fcn .* and data.segment"):
        seg_cfg("data.segment=null")
    with pytest.raises(MedsynthError, match="data.segment and data.organ_margin apply to data.format=ct_slices"):
        load_config(None, ["data.segment=[7]"])


def test_fcn_taps_are_the_classifiers_and_it_segments_at_the_input_size():
    fcn, vgg = VGGFCN(2, 3, 7, [32, 64, 128]), VGGClassifier(2, 3, 2, [32, 64, 128])
    assert [type(fcn.features[i]) for i in (2, 5, 9)] == [nn.ReLU] * 3
    assert [type(m) for m in fcn.features] == [type(m) for m in vgg.features]
    assert fcn(torch.zeros(2, 3, 40, 48)).shape == (2, 7, 40, 48)
    assert fcn.embed(torch.zeros(2, 3, 40, 48)).shape == (2, 128)


def test_perceptual_distances_against_the_analytic_value():
    """A feature network whose tap 0 is the image itself: the L1 distance is the summed absolute
    difference (mean times pixel count), the squared one the summed squared difference."""
    identity = nn.Module()
    identity.features = nn.Sequential(nn.Identity())
    net = FeatureNet(identity, lambda x: x.flatten(1), 1, {"source": "identity"})
    a, b = torch.rand(3, 2, 5, 7), torch.rand(3, 2, 5, 7)
    assert torch.allclose(PerceptualLoss(net, [0], distance="l1")(a, b), (a - b).abs().flatten(1).sum(1))
    assert torch.allclose(PerceptualLoss(net, [0])(a, b), (a - b).pow(2).flatten(1).sum(1))
    with pytest.raises(MedsynthError, match="expected mse or l1"):
        PerceptualLoss(net, [0], distance="cosine")


def test_segmentation_feature_network_trains_and_gives_the_vae_its_perceptual_loss(tmp_path, capsys):
    from medsynth.feature_runs import load_feature_net
    from medsynth.models import load_run
    from medsynth.training import train

    small = ["data.crop_to_mask=96", "data.crop_size=64", "data.batch_size=4", "trainer.samples_after_training=4"]
    code, err = run_cli(capsys, "features", "train", "--task", "segmentation", "--data", DICOM, "--labels", LABELS,
                        f"runs_dir={tmp_path}", "trainer.max_epochs=6", "optim.lr=0.003", *small[:3])
    assert code == 0, err
    feature_run = sorted(tmp_path.glob("features_seg-*"))[0]
    info = json.loads((feature_run / "features.json").read_text())
    assert info["task"] == "segmentation" and info["in_channels"] == 3 and info["test_images"] == 4
    dice = {k: v for k, v in info.items() if k.startswith("dice_label_")}
    assert set(dice) <= {f"dice_label_{k}" for k in SEGMENT} and all(0 <= v <= 1 for v in dice.values())
    assert (info["dice_mean"] is None) == (not dice)
    summary = json.loads((feature_run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert load_run(feature_run).task == "segmentation"
    net = load_feature_net(feature_run)
    assert net.image_size is None and net.in_channels == 3  # fully convolutional: any crop size
    assert net.embed(torch.zeros(2, 3, 64, 64)).shape == (2, 128)
    with pytest.raises(MedsynthError, match="3-channel"):
        net.embed(torch.zeros(2, 1, 64, 64))
    # the tutorial's (c): perceptual loss from the segmenting network, bilinear decoder
    run = train("configs/ct_vae_perceptual_bilinear.yaml",
                [f"data.path={DICOM}", f"data.label_path={LABELS}", f"runs_dir={tmp_path}", f"loss.perceptual_net={feature_run}",
                 "trainer.max_steps=2", *small], log=lambda *_: None)
    vae = load_run(run)
    assert json.loads((run / "summary.json").read_text())["status"] == "finished"
    assert vae.sample(2).shape == (2, 3, 64, 64)
    from PIL import Image  # the 3 channels are neighbouring slices: grids show the centre one in grey
    assert {Image.open(run / name).mode for name in ("samples.png", "reconstructions.png")} == {"L"}
    code, err = run_cli(capsys, "features", "train", "--task", "segmentation", "--data", DICOM, f"runs_dir={tmp_path}")
    assert code != 0 and "needs --labels" in err


def test_fcn_training_lowers_its_loss(tmp_path):
    """A few real steps on the same batch of real slices lower Dice + cross-entropy."""
    from medsynth.data import MedsynthDataModule, load_splits
    from medsynth.models import build_recipe
    from medsynth.training import fill_data_shape

    cfg = seg_cfg("data.crop_to_mask=96", "data.crop_size=64")
    splits = load_splits(cfg.data)
    fill_data_shape(cfg, splits)
    recipe = build_recipe(cfg)
    batch = next(iter(MedsynthDataModule(splits, 8).train_dataloader()))
    opt = torch.optim.Adam(recipe.parameters(), lr=3e-3)
    first = recipe.loss_terms(batch)["loss"].item()
    for _ in range(15):
        opt.zero_grad()
        loss = recipe.loss_terms(batch)["loss"]
        loss.backward()
        opt.step()
    assert loss.item() < 0.8 * first
