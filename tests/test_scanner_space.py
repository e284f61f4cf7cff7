"""Outputs in scanner space: the DICOM series writer against SimpleITK (an independent reader)
and pydicom on an oblique grid, and a 3D model trained on NIfTI cases whose samples come out
on the training grid's affine, in the input's intensity scale, as NIfTI and as DICOM series."""

import json

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from conftest import ROOT, run_cli
from medsynth.data.volumes import read_dicom_series
from medsynth.dicom import write_dicom_series
from medsynth.provenance import read_provenance, synthetic_lineage

LPS = np.diag([-1.0, -1.0, 1.0])


def sitk_series(folder):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def oblique_affine():
    """Voxel -> RAS with anisotropic spacing, a rotation about two axes and an offset."""
    a, b = np.deg2rad(20), np.deg2rad(-35)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    affine = np.eye(4)
    affine[:3, :3] = rz @ rx @ np.diag([0.7, 0.9, 2.5])
    affine[:3, 3] = [-80.0, 40.0, 12.5]
    return affine


def test_dicom_series_opens_in_simpleitk_where_the_affine_says(tmp_path):
    rng = np.random.default_rng(0)
    hu = rng.integers(-1000, 1500, (20, 16, 7)).astype(np.float32)  # i x j x k, whole HU
    affine = oblique_affine()
    prov = {"synthetic": True, "generator": "medsynth test", "run": "run-x"}
    files = write_dicom_series(tmp_path / "series", hu, affine, prov, "CT", "test volume")
    assert len(files) == 7
    image = sitk_series(tmp_path / "series")
    assert np.array_equal(sitk.GetArrayFromImage(image).transpose(2, 1, 0), hu)  # whole HU survive exactly
    for index in [(0, 0, 0), (19, 0, 0), (0, 15, 0), (3, 7, 6), (19, 15, 6)]:
        expected = LPS @ (affine @ [*index, 1])[:3]
        assert np.allclose(image.TransformIndexToPhysicalPoint(index), expected, atol=1e-3)
    ours = read_dicom_series(tmp_path / "series")  # medsynth's own reader: axes slice, row, column = k, j, i
    assert np.array_equal(ours.array, hu.transpose(2, 1, 0))
    assert np.allclose(ours.affine[:, [2, 1, 0, 3]], affine, atol=1e-4)

    import pydicom

    ds = pydicom.dcmread(files[0])
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY"] and ds.Modality == "CT"
    assert ds.SeriesDescription.startswith("SYNTHETIC") and "run run-x" in ds.ImageComments
    assert str(ds.PatientName) == "SYNTHETIC^MEDSYNTH"
    assert read_provenance(files[0]) == prov and synthetic_lineage(tmp_path)["run"] == "run-x"
    again = write_dicom_series(tmp_path / "again", hu, affine, prov, "CT")
    other = pydicom.dcmread(again[0])
    assert other.SeriesInstanceUID != ds.SeriesInstanceUID and other.StudyInstanceUID != ds.StudyInstanceUID


def test_float_intensities_survive_to_the_rescale_step(tmp_path):
    signal = np.random.default_rng(1).normal(300.0, 80.0, (8, 8, 3)).astype(np.float32)
    write_dicom_series(tmp_path / "mr", signal, np.eye(4), {"synthetic": True}, "MR")
    back = sitk.GetArrayFromImage(sitk_series(tmp_path / "mr")).transpose(2, 1, 0)
    step = (signal.max() - signal.min()) / 64000
    assert np.abs(back - signal).max() <= step


@pytest.fixture(scope="module")
def run3d(mini_brats, tmp_path_factory):
    """A 3D VAE trained one epoch on the BraTS FLAIR volumes (48 x 48 x 40 crops) resized to 16^3."""
    runs = tmp_path_factory.mktemp("runs3d")
    code = run_cli_plain("train", ROOT / "configs/vae_pneumonia.yaml", "data.format=volumes", f"data.path={mini_brats}",
                         "data.contrasts=[Flair*]", "data.mask=brainmask*", "data.image_size=16", "data.batch_size=2",
                         "model.spatial_dims=3", "model.channels=[8,16]", "model.conditional=false",
                         "trainer.max_epochs=1", "trainer.precision=32", f"runs_dir={runs}", "name=vae3d")
    assert code == 0
    return next(runs.iterdir())


def run_cli_plain(*args):
    from medsynth.cli import main

    return main([str(a) for a in args])


def test_a_3d_model_samples_on_the_training_grid_in_the_input_scale(run3d, mini_brats, tmp_path, capsys):
    from medsynth.config import load_config

    space = load_config(run3d / "config.yaml").model.output_space
    first = sorted((mini_brats / "train").iterdir())[0]  # the first training case sets the grid
    flair = nib.load(str(next(first.glob("Flair*"))))
    affine = np.array(space.affine)
    # same extent: the centre of the 16^3 grid is the centre of the 48 x 48 x 40 case, and its
    # spacing is the case's times 48/16, 48/16, 40/16
    centre_old = flair.affine @ [*(np.array(flair.shape) - 1) / 2, 1]
    assert np.allclose(affine @ [7.5, 7.5, 7.5, 1], centre_old, atol=1e-4)
    assert np.allclose(space.spacing, np.array(flair.header.get_zooms()) * np.array(flair.shape) / 16, atol=1e-4)
    brain = np.asarray(nib.load(str(next(first.glob("brainmask*")))).dataobj) > 0
    inside = np.asarray(flair.dataobj, np.float32)[brain]
    cases = sorted((mini_brats / "train").iterdir())
    assert len(cases) >= 1 and space.units.startswith("MR signal")
    if len(cases) == 1:
        assert space.offset[0] == pytest.approx(float(inside.mean()), rel=1e-4)

    assert run_cli(capsys, "sample", run3d, "-n", "2", "--out", tmp_path / "s.nii.gz")[0] == 0
    image = nib.load(str(tmp_path / "s.nii.gz"))
    assert image.shape == (16, 16, 16, 2) and np.allclose(image.affine, affine, atol=1e-5)
    values = np.asarray(image.dataobj)
    lo, hi = space.offset[0] - space.scale[0], space.offset[0] + space.scale[0]
    assert lo - 1e-3 <= values.min() and values.max() <= hi + 1e-3 and values.std() > 0
    assert json.loads(image.header.extensions[0].get_content())["output_space"]["units"] == space.units

    assert run_cli(capsys, "sample", run3d, "-n", "2", "--out", tmp_path / "dicom")[0] == 0
    series = sorted((tmp_path / "dicom").iterdir())
    assert [s.name for s in series] == ["sample_00000", "sample_00001"]
    volume = sitk_series(series[1])
    got = sitk.GetArrayFromImage(volume).transpose(2, 1, 0)
    assert np.abs(got - values[..., 1]).max() <= (hi - lo) / 60000
    assert np.allclose(volume.GetOrigin(), LPS @ affine[:3, 3], atol=1e-3)
    assert np.allclose(volume.GetSpacing(), space.spacing, atol=1e-4)

    code, err = run_cli(capsys, "sample", run3d, "-n", "2", "--out", tmp_path / "x.nii.gz", "--dtype", "uint8")
    assert code == 2 and "scanner units" in err


def test_evaluate_3d_sets_of_volumes_dicom_series_and_4d_files(run3d, tmp_path, capsys):
    """Volume sets: a folder of NIfTI files (real, train), the DICOM series `sample` writes (fake);
    fidelity on the three orthogonal middle slices in a 2D feature space, 3D MS-SSIM diversity,
    voxel-space memorisation and authenticity, all with intervals."""
    import torch
    from monai.networks.nets import DenseNet121

    from medsynth.evaluate import evaluate

    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, 16)] * 3, indexing="ij"))
    for name in ("real", "train"):
        (tmp_path / name).mkdir()
        for i in range(12):
            r = rng.uniform(0.3, 0.9, (3, 1, 1, 1))
            blob = (1 - ((grid / r) ** 2).sum(0)).clip(0, 1) * 800 + rng.normal(0, 20, (16, 16, 16))
            nib.save(nib.Nifti1Image(blob.astype(np.float32), np.eye(4)), str(tmp_path / name / f"v{i:02d}.nii.gz"))
    assert run_cli(capsys, "sample", run3d, "-n", "12", "--out", tmp_path / "fake")[0] == 0
    torch.manual_seed(0)
    torch.save(DenseNet121(spatial_dims=2, in_channels=1, out_channels=2).state_dict(), tmp_path / "dn.pt")
    result = evaluate(tmp_path / "real", tmp_path / "fake", train=tmp_path / "train", features=tmp_path / "dn.pt",
                      out=tmp_path / "e.json", utility=False, resamples=20, log=lambda *_: None)
    assert result["sets"]["fake"]["shape"] == [1, 16, 16, 16] and result["sets"]["fake"]["images"] == 12
    assert result["sets"]["real"]["split"] == "volumes" and result["features"]["dim"] == 1024
    f = result["fidelity"]
    assert f["fid"] > 0 and f["fid_interval"][0] <= f["fid"] + 1e-9
    d = result["diversity"]["fake"]
    assert d["all_pairs"] and 0 < d["ms_ssim_mean"] < 1 and len(d["ms_ssim_interval"]) == 2
    p = result["privacy"]["pixel"]
    assert 0 <= p["authenticity"] <= 1 and 0 <= p["rate"] <= 1
    assert (tmp_path / "e_nearest.png").is_file()
