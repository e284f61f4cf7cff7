"""CT windows, MR normalisation and the 2.5D organ-slice dataset on the shared abdominal CT."""

import json

import numpy as np
import pytest
import torch

from conftest import DATA
from medsynth.config import load_config
from medsynth.data import MedsynthDataModule, load_splits
from medsynth.data.intensity import ct_window, mr_normalise
from medsynth.data.slices import organ_slices, stack_2_5d
from medsynth.data.volumes import read_nifti
from medsynth.writers import write_nifti
from medsynth.errors import MedsynthError

CT = DATA / "ct_example"


def test_ct_window_presets_and_custom():
    hu = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    assert np.allclose(ct_window(hu, "abdomen"), [-1, -1, 0, 1, 1])  # level 40, width 400
    assert np.allclose(ct_window(hu, [0, 2000]), [-1, -0.16, 0.04, 0.24, 1])
    with pytest.raises(MedsynthError, match="unknown CT window 'liver'"):
        ct_window(hu, "liver")
    with pytest.raises(MedsynthError, match="width must be positive"):
        ct_window(hu, [40, 0])


def test_mr_normalise_within_the_brain_mask():
    case = DATA / "brats2013" / "train" / "brats_2013_pat0005_1"
    flair = read_nifti(case / "Flair_subtrMeanDivStd.nii.gz").array
    mask = read_nifti(case / "brainmask.nii.gz").array
    z = mr_normalise(flair, mask, "zscore")
    assert z.min() >= -1 and z.max() <= 1 and np.all(z[mask == 0] == -1)
    assert abs(float(z[mask > 0].mean())) < 0.05  # zero mean inside the brain, scaled by 3 sd
    p = mr_normalise(flair, mask, "percentile")
    inside = p[mask > 0]
    assert np.isclose(np.percentile(inside, 99), 1.0, atol=0.02) and np.isclose(np.percentile(inside, 1), -1, atol=0.02)


def test_organ_slices_stack_neighbours():
    seg = read_nifti(CT / "example_seg.nii.gz").array
    idx = organ_slices(seg, 7)
    assert list(idx) == list(range(2, 20))  # the pancreas of this CT
    vol = np.arange(4 * 2 * 3, dtype=np.float32).reshape(2, 3, 4)  # 4 slices along axis 2
    stacks = stack_2_5d(vol, np.array([0, 3]))
    assert stacks.shape == (2, 3, 2, 3)
    assert np.array_equal(stacks[0, 0], vol[:, :, 0]) and np.array_equal(stacks[0, 2], vol[:, :, 1])
    assert np.array_equal(stacks[1, 0], vol[:, :, 2]) and np.array_equal(stacks[1, 2], vol[:, :, 3])


def ct_cfg(*extra):
    return load_config("configs/ct_vae.yaml", [f"data.path={CT / 'example_ct_sm.nii.gz'}",
                                               f"data.label_path={CT / 'example_seg.nii.gz'}", *extra])


def test_ct_slice_dataset_crops():
    splits = load_splits(ct_cfg().data)
    assert len(splits.train) + len(splits.val) == 18 and splits.image_size == [96, 96]
    assert splits.train.images.shape[1:] == (3, 122, 101) and splits.val.images.shape[1:] == (3, 96, 96)
    loader = MedsynthDataModule(splits, 8).train_dataloader()
    a, b = next(iter(loader))["image"], next(iter(loader))["image"]
    assert a.shape == (8, 3, 96, 96) and not torch.equal(a, b)  # fresh random crops each pass


def test_bad_ct_slice_inputs(tmp_path):
    with pytest.raises(MedsynthError, match="organ label 12 appears in no slice"):
        load_splits(ct_cfg("data.organ=12").data)
    with pytest.raises(MedsynthError, match="crop size 128 is larger"):
        load_splits(ct_cfg("data.crop_size=128").data)
    seg = read_nifti(CT / "example_seg.nii.gz")
    write_nifti(tmp_path / "short.nii.gz", seg.array[:, :, :20], seg.affine)
    with pytest.raises(MedsynthError, match="does not match the image"):
        load_splits(ct_cfg(f"data.label_path={tmp_path / 'short.nii.gz'}").data)
    with pytest.raises(MedsynthError, match="needs data.label_path"):
        load_splits(ct_cfg("data.label_path=null").data)


def test_ct_vae_recipe_trains_on_real_pancreas_slices(tmp_path):
    from medsynth.models import load_run
    from medsynth.training import train

    run = train("configs/ct_vae.yaml", [f"data.path={CT / 'example_ct_sm.nii.gz'}",
                                        f"data.label_path={CT / 'example_seg.nii.gz'}", f"runs_dir={tmp_path}",
                                        "trainer.max_steps=3", "trainer.samples_after_training=4"],
                log=lambda *_: None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 3
    recipe = load_run(run)
    assert recipe.net.encoder.blocks[9].kernel_size == (3, 3)  # the "8x8 at 256 px" conv is 3x3 at 96 px
    assert recipe.sample(2).shape == (2, 3, 96, 96)
