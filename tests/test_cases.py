"""Cases of volumes (BraTS): folder layout, manifest, bad pairs, and 3D generation from them."""

import json

import numpy as np
import pytest

from conftest import DATA
from medsynth.data.cases import cases_from_folder, cases_from_manifest
from medsynth.data.volumes import read_nifti
from medsynth.writers import write_nifti
from medsynth.errors import MedsynthError

BRATS = DATA / "brats2013"


def test_brats_folder_layout_with_labels():
    cases = cases_from_folder(BRATS / "train", ["Flair*", "T1c*"], "OTMultiClass*", classes=[0, 1, 2, 3, 4])
    assert [c.name for c in cases] == ["brats_2013_pat0005_1", "brats_2013_pat0006_1"]
    assert cases[0].image.shape == (2, 240, 240, 155) and cases[0].label.shape == (240, 240, 155)
    assert set(np.unique(cases[0].label)) <= {0, 1, 2, 3, 4} and cases[0].spacing == (1.0, 1.0, 1.0)


def test_manifest(tmp_path):
    case = BRATS / "test" / "brats_2013_pat0001_1"
    rows = ["case,flair,t1c,label", f"p1,{case / 'Flair_subtrMeanDivStd.nii.gz'},{case / 'T1c_subtrMeanDivStd.nii.gz'},"
                                    f"{case / 'OTMultiClass.nii.gz'}"]
    (tmp_path / "m.csv").write_text("\n".join(rows))
    cases = cases_from_manifest(tmp_path / "m.csv", ["flair", "t1c"])
    assert cases[0].name == "p1" and cases[0].image.shape[0] == 2 and cases[0].label is not None
    with pytest.raises(MedsynthError, match="expected columns"):
        cases_from_manifest(tmp_path / "m.csv", ["flair", "t2"])


def test_bad_pairs(tmp_path):
    src = BRATS / "train" / "brats_2013_pat0005_1"
    flair = read_nifti(src / "Flair_subtrMeanDivStd.nii.gz")
    label = read_nifti(src / "OTMultiClass.nii.gz")
    case = tmp_path / "cases" / "c1"
    case.mkdir(parents=True)
    write_nifti(case / "flair.nii.gz", flair.array[:120], flair.affine)
    write_nifti(case / "seg.nii.gz", label.array, label.affine)
    with pytest.raises(MedsynthError, match="seg.nii.gz: label map of shape"):
        cases_from_folder(tmp_path / "cases", ["flair*"], "seg*")
    write_nifti(case / "flair.nii.gz", flair.array, flair.affine)
    shifted = flair.affine.copy()
    shifted[0, 3] += 5
    write_nifti(case / "seg.nii.gz", label.array, shifted)
    with pytest.raises(MedsynthError, match="seg.nii.gz: label map affine differs"):
        cases_from_folder(tmp_path / "cases", ["flair*"], "seg*")
    write_nifti(case / "seg.nii.gz", label.array, label.affine)
    with pytest.raises(MedsynthError, match=r"labels \[3, 4\] are outside the declared classes"):
        cases_from_folder(tmp_path / "cases", ["flair*"], "seg*", classes=[0, 1, 2])
    with pytest.raises(MedsynthError, match="0 files match 't2\\*'"):
        cases_from_folder(tmp_path / "cases", ["t2*"])
    with pytest.raises(MedsynthError, match="2 files match"):
        cases_from_folder(tmp_path / "cases", ["*.nii.gz"])


def test_3d_vae_on_brats_volumes(tmp_path):
    from medsynth.models import load_run
    from medsynth.training import train

    run = train(None, ["data.format=volumes", f"data.path={BRATS}", "data.contrasts=[Flair*,T1c*]",
                       "data.image_size=16", "model.spatial_dims=3", "model.channels=[8,16]", "model.latent_dim=8",
                       "data.batch_size=2", "trainer.max_epochs=2", "trainer.samples_after_training=2",
                       f"runs_dir={tmp_path}"], log=lambda *_: None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished" and summary["global_step"] == 2
    assert load_run(run).sample(3).shape == (3, 2, 16, 16, 16)
    with pytest.raises(MedsynthError, match="needs data.image_size"):
        train(None, ["data.format=volumes", f"data.path={BRATS}", "data.contrasts=[Flair*]", "model.spatial_dims=3",
                     f"runs_dir={tmp_path / 'x'}"], log=lambda *_: None)


def test_json_manifest_mask_and_spacing(tmp_path):
    from medsynth.config import load_config
    from medsynth.data import load_splits
    from medsynth.data.cases import resample_to_spacing

    case = BRATS / "test" / "brats_2013_pat0001_1"
    (tmp_path / "m.json").write_text(json.dumps([{"case": "p1", "flair": str(case / "Flair_subtrMeanDivStd.nii.gz")}]))
    cases = cases_from_manifest(tmp_path / "m.json", ["flair"], label=None)
    assert cases[0].image.shape == (1, 240, 240, 155)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(MedsynthError, match="cannot read the manifest"):
        cases_from_manifest(tmp_path / "bad.json", ["flair"], label=None)
    labels = read_nifti(case / "OTMultiClass.nii.gz").array
    coarse = resample_to_spacing(labels, (1.0, 1.0, 1.0), (2.0, 2.0, 2.5), order=0)
    assert coarse.shape == (120, 120, 62) and set(np.unique(coarse)) <= set(np.unique(labels))
    cfg = load_config(None, ["data.format=volumes", f"data.path={BRATS}", "data.contrasts=[Flair*]",
                             "data.mask=brainmask*", "data.image_size=16", "data.spacing=[2,2,2]"])
    s = load_splits(cfg.data, 3)
    assert s.train.images.shape == (2, 1, 16, 16, 16)
    assert s.train.images.min() == -1.0  # outside the brain mask -> -1


def test_a_nifti_label_map_of_a_dicom_series_is_put_on_the_series_grid():
    """The shared CT: a DICOM series read as (slice, row, column) and its TotalSegmentator map as a
    NIfTI (x, y, z). The map is permuted and flipped onto the series' voxels; checked voxel by voxel
    through world coordinates with the two files' own affines."""
    from medsynth.data.cases import load_case
    from medsynth.data.volumes import read_nifti

    ct = DATA / "ct_example"
    case = load_case("ct", [ct / "dicom"], ct / "example_seg_dicom.nii.gz")
    raw = read_nifti(ct / "example_seg_dicom.nii.gz")
    assert case.image.shape[1:] == case.label.shape == (20, 512, 512) and raw.array.shape == (512, 512, 20)
    rng = np.random.default_rng(0)
    picks = np.argwhere(raw.array > 0)[rng.choice(int((raw.array > 0).sum()), 200, replace=False)]
    world = raw.affine @ np.c_[picks, np.ones(len(picks))].T
    voxels = np.round(np.linalg.solve(case.affine, world)[:3].T).astype(int)
    assert np.array_equal(case.label[tuple(voxels.T)], raw.array[tuple(picks.T)].astype(np.int64))
    assert (case.label > 0).sum() == (raw.array > 0).sum()
