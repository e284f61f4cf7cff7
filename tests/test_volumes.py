"""NIfTI and DICOM volumes: real files, geometry, bad series, hostile bytes, synthetic NIfTI output."""

import shutil
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import DATA, damaged
from medsynth.data.volumes import read_dicom_series, read_nifti
from medsynth.writers import write_nifti
from medsynth.errors import MedsynthError

BRATS = DATA / "brats2013" / "train" / "brats_2013_pat0005_1"
CT = DATA / "ct_example"
FUZZ = settings(max_examples=15, deadline=5000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def test_real_nifti_and_dicom():
    flair = read_nifti(BRATS / "Flair_subtrMeanDivStd.nii.gz")
    assert flair.array.shape == (240, 240, 155) and flair.spacing == (1.0, 1.0, 1.0)
    ct = read_dicom_series(CT / "dicom")
    assert ct.array.shape == (20, 512, 512) and ct.spacing == pytest.approx((2.0, 0.9765625, 0.9765625))
    assert ct.array.min() == -1024 and 1000 < ct.array.max() < 3000  # Hounsfield units after rescale


def test_dicom_geometry_matches_the_shared_segmentation():
    """Each DICOM voxel maps (through both affines) onto a whole voxel of the label map made from this series."""
    ct = read_dicom_series(CT / "dicom")
    seg = read_nifti(CT / "example_seg_dicom.nii.gz")
    rng = np.random.default_rng(0)
    vox = np.stack([rng.integers(0, n, 50) for n in ct.array.shape] + [np.ones(50)], axis=0)
    world = ct.affine @ vox
    idx = np.linalg.inv(seg.affine) @ world
    assert np.allclose(idx[:3], np.round(idx[:3]), atol=1e-3)
    assert all(((idx[a] > -0.5) & (idx[a] < seg.array.shape[a] - 0.5)).all() for a in range(3))


def test_bad_dicom_folders(tmp_path):
    import pydicom

    files = sorted((CT / "dicom").iterdir())
    gap = tmp_path / "gap"
    gap.mkdir()
    for i, f in enumerate(files[:8]):
        if i != 4:
            shutil.copy(f, gap / f.name)
    with pytest.raises(MedsynthError, match="not evenly spaced"):
        read_dicom_series(gap)
    two = tmp_path / "two"
    two.mkdir()
    for f in files[:3]:
        shutil.copy(f, two / f.name)
    ds = pydicom.dcmread(files[3])
    ds.SeriesInstanceUID = "1.2.3.4.5"
    ds.save_as(two / "other")
    with pytest.raises(MedsynthError, match="holds 2 DICOM series"):
        read_dicom_series(two)
    junk = tmp_path / "junk"
    junk.mkdir()
    shutil.copy(files[0], junk / files[0].name)
    (junk / "notes.txt").write_text("not a slice")
    with pytest.raises(MedsynthError, match="notes.txt: not a"):
        read_dicom_series(junk)


@pytest.fixture(scope="module")
def small_nifti(tmp_path_factory):
    crop = read_nifti(BRATS / "Flair_subtrMeanDivStd.nii.gz").array[100:116, 100:116, 70:86]
    path = tmp_path_factory.mktemp("nii") / "crop.nii.gz"
    write_nifti(path, crop)
    return path


@FUZZ
@given(data=st.data())
def test_hostile_nifti_bytes(small_nifti, tmp_path_factory, data):
    raw, expect_refusal = damaged(small_nifti.read_bytes(), data)
    path = tmp_path_factory.mktemp("bad") / "bad.nii.gz"
    path.write_bytes(raw)
    try:
        read_nifti(path)
        assert not expect_refusal
    except MedsynthError as exc:
        assert "bad.nii.gz" in str(exc) and "\n" not in str(exc)


def test_nifti_header_claiming_absurd_dims(small_nifti, tmp_path):
    import gzip

    raw = bytearray(gzip.decompress(small_nifti.read_bytes()))
    raw[40:56] = struct.pack("<8h", 3, 30000, 30000, 30000, 1, 1, 1, 1)  # dim[0..7]
    path = tmp_path / "absurd.nii"
    path.write_bytes(bytes(raw))
    with pytest.raises(MedsynthError, match="claims shape"):
        read_nifti(path)


@FUZZ
@given(data=st.data())
def test_hostile_dicom_bytes(tmp_path_factory, data):
    files = sorted((CT / "dicom").iterdir())[:3]
    folder = tmp_path_factory.mktemp("dcm")
    for f in files[:2]:
        shutil.copy(f, folder / f.name)
    raw, _ = damaged(files[2].read_bytes(), data)
    (folder / "zz_bad").write_bytes(raw)
    try:
        read_dicom_series(folder)
    except MedsynthError as exc:
        assert "\n" not in str(exc)


def test_3d_vae_samples_are_written_as_marked_nifti(tmp_path):
    from medsynth.provenance import read_provenance
    from medsynth.sampling import sample
    from medsynth.training import train

    flair = read_nifti(BRATS / "Flair_subtrMeanDivStd.nii.gz").array
    rng = np.random.default_rng(0)
    crops = []
    while len(crops) < 48:  # 16^3 crops of real FLAIR inside the head
        x, y, z = rng.integers(40, 184), rng.integers(40, 184), rng.integers(20, 120)
        c = flair[x:x + 16, y:y + 16, z:z + 16]
        if (c != 0).mean() > 0.9:
            crops.append(c)
    vols = np.stack(crops)
    vols = ((vols - vols.min()) / (vols.max() - vols.min()) * 255).astype(np.uint8)
    np.savez(tmp_path / "vol.npz", train_images=vols)
    run = train(None, [f"data.path={tmp_path / 'vol.npz'}", f"runs_dir={tmp_path / 'runs'}", "model.spatial_dims=3",
                       "model.channels=[8,16]", "model.latent_dim=8", "trainer.max_epochs=1", "data.batch_size=16",
                       "data.val_fraction=0.25", "trainer.samples_after_training=4"], log=lambda *_: None)
    out = sample(run, 5, tmp_path / "s.nii.gz", seed=2)
    vol = read_nifti(out)
    assert vol.array.shape == (16, 16, 16, 5) and np.abs(vol.array).max() <= 1.0
    prov = read_provenance(out)
    assert prov["synthetic"] is True and prov["n"] == 5 and len(prov["model_sha256"]) == 64
    import nibabel as nib

    assert nib.load(str(out)).header["descrip"].tobytes().startswith(b"SYNTHETIC")


@pytest.fixture(scope="module")
def brats_crop():
    vol = read_nifti(BRATS / "Flair_subtrMeanDivStd.nii.gz")
    return vol.array[100:124, 100:124, 70:90].copy()


def test_nrrd_and_hdf5_round_trip(brats_crop, tmp_path):
    import h5py
    import nrrd

    from medsynth.data.volumes import read_hdf5, read_nrrd

    nrrd.write(str(tmp_path / "v.nrrd"), brats_crop, {"space": "left-posterior-superior",
                                                       "space directions": np.diag([1.0, 1.0, 2.5]),
                                                       "space origin": [10.0, 20.0, 30.0]})
    v = read_nrrd(tmp_path / "v.nrrd")
    assert np.array_equal(v.array, brats_crop) and v.spacing == (1.0, 1.0, 2.5)
    assert np.allclose(v.affine[:3, 3], [-10, -20, 30])  # LPS origin as RAS
    with h5py.File(tmp_path / "v.h5", "w") as f:
        f["image"] = brats_crop
        f["image"].attrs["spacing"] = (1.0, 1.0, 2.0)
        f["label"] = (brats_crop > 1).astype(np.uint8)
    h = read_hdf5(tmp_path / "v.h5")
    assert np.array_equal(h.array, brats_crop) and h.spacing == (1.0, 1.0, 2.0)
    assert read_hdf5(tmp_path / "v.h5", "label").array.max() == 1
    with pytest.raises(MedsynthError, match="no dataset 'mask'"):
        read_hdf5(tmp_path / "v.h5", "mask")


@FUZZ
@given(data=st.data(), kind=st.sampled_from(["nrrd", "h5"]))
def test_hostile_nrrd_and_hdf5_bytes(brats_crop, tmp_path_factory, data, kind):
    import h5py
    import nrrd

    from medsynth.data.volumes import read_hdf5, read_nrrd

    folder = tmp_path_factory.mktemp("vol")
    good = folder / f"good.{kind}"
    if kind == "nrrd":
        nrrd.write(str(good), brats_crop, {"encoding": "gzip"})
    else:
        with h5py.File(good, "w") as f:
            f.create_dataset("image", data=brats_crop, compression="gzip", chunks=(8, 8, 8))
    raw, _ = damaged(good.read_bytes(), data)
    bad = folder / f"bad.{kind}"
    bad.write_bytes(raw)
    reader = read_nrrd if kind == "nrrd" else read_hdf5
    try:
        reader(bad)
    except MedsynthError as exc:
        assert "bad." in str(exc) and "\n" not in str(exc)


def test_nrrd_header_claiming_absurd_sizes(tmp_path):
    from medsynth.data.volumes import read_nrrd

    path = tmp_path / "absurd.nrrd"
    path.write_bytes(b"NRRD0004\ntype: float\ndimension: 3\nsizes: 100000 100000 100000\nencoding: raw\n\n" + b"\0" * 64)
    with pytest.raises(MedsynthError, match="claims shape"):
        read_nrrd(path)


def test_one_hdf5_file_gives_image_and_label_by_key(tmp_path):
    """The LA heart cases hold image and label in one mri_norm2.h5: FILE.h5:KEY names each role,
    in a case folder's patterns and in a manifest, with no conversion by hand."""
    from medsynth.data.cases import cases_from_folder, cases_from_manifest

    la = DATA / "la_heart"
    case = sorted(d for d in la.iterdir() if d.is_dir())[0]
    (tmp_path / "cases").mkdir()
    (tmp_path / "cases" / case.name).symlink_to(case)
    [loaded] = cases_from_folder(tmp_path / "cases", ["*.h5"], label="*.h5:label")
    assert loaded.image.shape[1:] == loaded.label.shape and loaded.image.ndim == 4
    assert set(np.unique(loaded.label).tolist()) == {0, 1} and loaded.label.mean() > 0.005
    (tmp_path / "m.csv").write_text(f"case,image,label\n{case.name},{case}/mri_norm2.h5:image,{case}/mri_norm2.h5:label\n")
    [again] = cases_from_manifest(tmp_path / "m.csv", ["image"], label="label")
    assert np.array_equal(again.label, loaded.label) and np.array_equal(again.image, loaded.image)
    with pytest.raises(MedsynthError, match="no dataset 'segmentation'"):
        cases_from_folder(tmp_path / "cases", ["*.h5"], label="*.h5:segmentation")
