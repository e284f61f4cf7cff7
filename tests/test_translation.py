"""pix2pix T1c -> FLAIR on real BraTS slices (cases cropped around the tumour), and
`medsynth translate` on NIfTI, .npz and image folders."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import BOX, overrides as quick
from medsynth.config import load_config
from medsynth.data.intensity import mr_normalise
from medsynth.errors import MedsynthError
from medsynth.models import load_run
from medsynth.metrics.translation import translation_scores
from medsynth.translate import translate

CLI = [sys.executable, "-m", "medsynth.cli"]


# the 64 px recipe of before: slices resized, no 2.5D (the native-size
# 2.5D recipe is tested on its own below)
RESIZED = ["data.image_size=48", "data.crop_to_mask=null", "data.neighbours=0", "data.min_mask_fraction=0.3"]


def p2p(root, runs, *extra):
    return [f"data.path={root}", f"runs_dir={runs}", *RESIZED, "data.batch_size=8", "model.depth=3",
            "model.width=0.125", "model.bottleneck_blocks=1", "trainer.max_epochs=1", "trainer.precision=32", *extra]


@pytest.fixture(scope="module")
def pix2pix_run(mini_brats, tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs")
    out = subprocess.run([*CLI, "train", "configs/pix2pix_brats.yaml", *p2p(mini_brats, runs)],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    return next(runs.iterdir())


def test_paired_slices_are_source_then_target_inside_the_brain(mini_brats):
    from medsynth.data.slices import read_paired_slices

    cfg = load_config("configs/pix2pix_brats.yaml", [f"data.path={mini_brats}", *RESIZED])
    splits, space = read_paired_slices(cfg.data)
    assert set(splits) == {"train", "val", "test"}
    train, _ = splits["train"]
    assert train.shape[1:] == (2, 48, 48) and train.dtype == np.float32
    case = mini_brats / "train" / "brats_2013_pat0005_1"
    mask = np.asarray(nib.load(str(case / "brainmask.nii.gz")).dataobj) > 0
    area = mask.sum(axis=(0, 1))
    kept = np.flatnonzero(area >= 0.3 * area.max())
    other = np.asarray(nib.load(str(mini_brats / "train" / "brats_2013_pat0006_1" / "brainmask.nii.gz")).dataobj) > 0
    other_area = other.sum(axis=(0, 1))
    assert len(train) == len(kept) + (other_area >= 0.3 * other_area.max()).sum()  # both cases, in order
    flair = mr_normalise(np.asarray(nib.load(str(case / "Flair_subtrMeanDivStd.nii.gz")).dataobj, np.float32), mask)
    t1c = mr_normalise(np.asarray(nib.load(str(case / "T1c_subtrMeanDivStd.nii.gz")).dataobj, np.float32), mask)
    assert np.allclose(train[0, 0], t1c[:, :, kept[0]]) and np.allclose(train[0, 1], flair[:, :, kept[0]])
    assert np.allclose(train[len(kept) - 1, 1], flair[:, :, kept[-1]])


def test_translation_scores():
    x = torch.rand(4, 1, 32, 32) * 2 - 1
    mask = torch.zeros(4, 1, 32, 32, dtype=torch.bool)
    mask[..., 8:24, 8:24] = True
    same = translation_scores(x, x, mask)
    assert same["mae"] == 0 and same["ssim"] == pytest.approx(1.0) and same["psnr"] > 100
    off = x.clone()
    off[~mask] = 0.5  # outside the mask: ignored
    assert translation_scores(off, x, mask)["mae"] == 0
    assert translation_scores(x + 0.1, x, mask)["mae"] == pytest.approx(0.1, abs=1e-6)


def test_pix2pix_trains_and_reports_against_the_trivial_baseline(pix2pix_run):
    summary = json.loads((pix2pix_run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert {"train/g_adv", "train/l1", "train/d_loss", "val_loss"} <= set(summary["metrics"])
    scores = json.loads((pix2pix_run / "translation.json").read_text())
    assert set(scores["model"]) == set(scores["baseline_source"]) == {"mae", "psnr", "ssim"}
    assert scores["images"] > 0 and (pix2pix_run / "translations.png").is_file()
    # the report shows what a translation run has, the baseline beside the model, and no sample section
    from medsynth.report import report

    page = report(pix2pix_run).read_text()
    assert "<h2>Translations</h2>" in page and "baseline: the source as it is" in page
    assert "<h2>Samples</h2>" not in page and "Not evaluated yet" not in page and "family</th><td>pix2pix" in page


def test_evaluate_scores_each_held_out_volume_beside_copying_the_source(pix2pix_run, mini_brats, tmp_path):
    """`medsynth evaluate --fake RUN` of a translation run: per whole test case, inside the brain,
    the model and the copy-the-T1c baseline; the baseline checked against a direct computation."""
    from medsynth.evaluate import evaluate
    from medsynth.report import report

    out = tmp_path / "ev.json"
    result = evaluate(None, pix2pix_run, out=out, resamples=50, log=lambda *_: None)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["task"] == "translation" and result["sets"]["real"]["cases"] == 2
    cases = result["translation"]["cases"]
    assert sorted(cases) == ["brats_2013_pat0001_1", "brats_2013_pat0002_1"]
    case = mini_brats / "test" / "brats_2013_pat0001_1"
    brain = np.asarray(nib.load(str(case / "brainmask.nii.gz")).dataobj) > 0
    t1c, flair = (mr_normalise(np.asarray(nib.load(str(case / f)).dataobj, np.float32), brain)
                  for f in ("T1c_subtrMeanDivStd.nii.gz", "Flair_subtrMeanDivStd.nii.gz"))
    assert cases[case.name]["baseline_source"]["mae"] == pytest.approx(np.abs(t1c - flair)[brain].mean(), rel=1e-5)
    mean = result["translation"]["mean"]
    values = [c["model"]["ssim"] for c in cases.values()]
    assert mean["ssim"] == pytest.approx(np.mean(values))
    lo, hi = mean["ssim_interval"]
    assert min(values) - 1e-9 <= lo <= hi <= max(values) + 1e-9
    page = report(pix2pix_run, out=tmp_path / "r.html", evaluation=out).read_text()
    assert "held-out cases" in page and "baseline: the source as it is" in page
    with pytest.raises(MedsynthError, match="neither a case"):
        evaluate(tmp_path, pix2pix_run, out=tmp_path / "x.json", log=lambda *_: None)


def test_translate_nifti_keeps_geometry_and_equals_the_model_on_each_slice(pix2pix_run, mini_brats, tmp_path):
    case = mini_brats / "test" / "brats_2013_pat0001_1"
    src, mask = case / "T1c_subtrMeanDivStd.nii.gz", case / "brainmask.nii.gz"
    out = subprocess.run([*CLI, "translate", str(pix2pix_run), "--input", str(src), "--mask", str(mask),
                          "--out", str(tmp_path / "flair.nii.gz")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    result, original = nib.load(str(tmp_path / "flair.nii.gz")), nib.load(str(src))
    assert result.shape == original.shape == BOX and np.allclose(result.affine, original.affine)
    assert np.allclose(result.header.get_zooms(), original.header.get_zooms())
    assert result.header["descrip"].tobytes().startswith(b"SYNTHETIC")
    recipe = load_run(pix2pix_run)
    brain = np.asarray(nib.load(str(mask)).dataobj) > 0
    signal = np.asarray(original.dataobj, np.float32)
    t1c = mr_normalise(signal, brain)
    k = 20
    expected = recipe.translate(torch.from_numpy(t1c[:, :, k])[None, None])[0, 0].numpy()  # 48 px: no resize
    # in FLAIR units of the training data: the median over the training cases of the z-score mapping
    # inside the brain (3 std, mean), independent of the T1c input's own scale
    scales, offsets = [], []
    for folder in sorted((mini_brats / "train").iterdir()):
        brain_t = np.asarray(nib.load(str(folder / "brainmask.nii.gz")).dataobj) > 0
        flair_t = np.asarray(nib.load(str(folder / "Flair_subtrMeanDivStd.nii.gz")).dataobj, np.float32)[brain_t]
        scales.append(3 * flair_t.std())
        offsets.append(flair_t.mean())
    expected = expected * np.median(scales) + np.median(offsets)
    got = np.asarray(result.dataobj)[:, :, k]
    assert np.allclose(got[brain[:, :, k]], expected[brain[:, :, k]], atol=1e-4 * np.median(scales))
    provenance = json.loads(result.header.extensions[0].get_content())
    assert provenance["output_space"]["units"].startswith("Flair_*")
    assert (got[~brain[:, :, k]] == 0).all()

    # the same translation as a DICOM series in the input's scanner space, opened by SimpleITK
    import SimpleITK as sitk

    out = subprocess.run([*CLI, "translate", str(pix2pix_run), "--input", str(src), "--mask", str(mask),
                          "--out", str(tmp_path / "flair_dicom")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(tmp_path / "flair_dicom")))
    series = reader.Execute()
    volume = sitk.GetArrayFromImage(series).transpose(2, 1, 0)  # SimpleITK: k, j, i
    assert volume.shape == BOX
    assert np.allclose(volume, np.asarray(result.dataobj), atol=np.abs(expected).max() / 3000)
    lps = np.diag([-1, -1, 1])
    assert np.allclose(series.GetOrigin(), lps @ original.affine[:3, 3], atol=1e-3)
    assert np.allclose(series.GetSpacing(), original.header.get_zooms()[:3], atol=1e-4)


def test_translate_npz_and_image_folders_keep_shape(pix2pix_run, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "in.npz", images=rng.integers(0, 255, (5, 60, 60), dtype=np.uint8))
    translate(pix2pix_run, tmp_path / "in.npz", tmp_path / "out.npz", log=lambda *_: None)
    with np.load(tmp_path / "out.npz") as f:
        assert f["images"].shape == (5, 60, 60) and json.loads(str(f["provenance"]))["synthetic"] is True
    (tmp_path / "pngs" / "sub").mkdir(parents=True)
    Image.fromarray(rng.integers(0, 255, (40, 56), dtype=np.uint8)).save(tmp_path / "pngs" / "a.png")
    Image.fromarray(rng.integers(0, 255, (48, 48), dtype=np.uint8)).save(tmp_path / "pngs" / "sub" / "b.jpg")
    translate(pix2pix_run, tmp_path / "pngs", tmp_path / "pngs_out", log=lambda *_: None)
    a, b = Image.open(tmp_path / "pngs_out" / "a.png"), Image.open(tmp_path / "pngs_out" / "sub" / "b.png")
    assert a.size == (56, 40) and b.size == (48, 48) and a.text["medsynth:synthetic"] == "true"


def test_translation_bad_inputs(pix2pix_run, mini_brats, small_npz, tmp_path):
    case = mini_brats / "test" / "brats_2013_pat0001_1"
    for args, expected in [
        (["--input", str(case / "T1c_subtrMeanDivStd.nii.gz"), "--out", str(tmp_path / "x.npz")], "NIfTI file"),
        (["--input", str(tmp_path / "none.nii.gz"), "--out", str(tmp_path / "x.nii.gz")], "input not found"),
        (["--input", str(case / "T1c_subtrMeanDivStd.nii.gz"), "--mask", str(mini_brats / "train" /
          "brats_2013_pat0005_1" / "brainmask.nii.gz"), "--out", str(tmp_path / "x.nii.gz")], None),
    ]:
        out = subprocess.run([*CLI, "translate", str(pix2pix_run), *args], capture_output=True, text=True)
        if expected is None:
            assert out.returncode == 0  # same shape masks from another case are accepted
            continue
        assert out.returncode == 2 and expected in out.stderr and out.stderr.count("\n") == 1, out.stderr
    # unpaired shapes: a FLAIR that does not match its T1c is refused by name
    bad = tmp_path / "bad" / "train" / "c1"
    bad.mkdir(parents=True)
    src = mini_brats / "train" / "brats_2013_pat0005_1"
    for f in src.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    flair = nib.load(str(bad / "Flair_subtrMeanDivStd.nii.gz"))
    nib.save(nib.Nifti1Image(np.asarray(flair.dataobj)[:, :, :-2], flair.affine), str(bad / "Flair_subtrMeanDivStd.nii.gz"))
    from medsynth.training import train

    with pytest.raises(MedsynthError, match="Flair_subtrMeanDivStd.nii.gz: shape"):
        train("configs/pix2pix_brats.yaml", p2p(tmp_path / "bad", tmp_path / "runs"), log=lambda *_: None)
    with pytest.raises(MedsynthError, match="0 files match 'PD"):
        train("configs/pix2pix_brats.yaml", p2p(mini_brats, tmp_path / "runs", "data.contrasts=[PD*,Flair*]"),
              log=lambda *_: None)
    vae = subprocess.run([*CLI, "train", "configs/vae_pneumonia.yaml", *quick(small_npz, tmp_path / "vr")],
                         capture_output=True, text=True)
    assert vae.returncode == 0, vae.stderr[-1000:]
    with pytest.raises(MedsynthError, match="does not translate"):
        translate(next((tmp_path / "vr").iterdir()), small_npz, tmp_path / "o.npz")


def test_unpaired_training_slices_come_from_different_patients(mini_brats, tmp_path):
    from medsynth.data.slices import read_paired_slices

    def slices(path, config="configs/pix2pix_brats.yaml"):
        return read_paired_slices(load_config(config, [f"data.path={path}", *RESIZED]).data)[0]

    per_case = {}
    for name in ("brats_2013_pat0005_1", "brats_2013_pat0006_1"):  # each training case on its own
        (tmp_path / name).mkdir()
        (tmp_path / name / name).symlink_to(mini_brats / "train" / name)
        per_case[name] = slices(tmp_path / name)["train"][0]
    unpaired = slices(mini_brats, "configs/cyclegan_brats.yaml")
    train = unpaired["train"][0]
    t1c_5, flair_6 = per_case["brats_2013_pat0005_1"][:, 0], per_case["brats_2013_pat0006_1"][:, 1]
    assert len(train) == max(len(t1c_5), len(flair_6))
    assert np.array_equal(train[:len(t1c_5), 0], t1c_5)  # sources: pat0005's T1c only
    assert np.array_equal(train[:len(flair_6), 1], flair_6)  # targets: pat0006's FLAIR only
    assert np.array_equal(unpaired["test"][0], slices(mini_brats)["test"][0])  # held-out splits stay paired


def test_history_pool():
    from medsynth.models.translation import HistoryPool

    pool = HistoryPool(size=4, seed=0)
    first = torch.arange(4.0)[:, None]
    assert torch.equal(pool(first), first)  # filling the pool: everything passes through
    mixed = pool(torch.full((200, 1), 9.0))
    old = (mixed < 9).sum().item()
    assert old == 4  # each of the 4 old images comes back exactly once, its slot taken by a new one
    assert sorted(v.item() for v in mixed[mixed < 9]) == [0.0, 1.0, 2.0, 3.0]
    assert all(v.item() == 9.0 for v in pool.images)
    assert torch.equal(HistoryPool(size=0)(first), first)


def test_cyclegan_trains_both_directions(mini_brats, tmp_path):
    from medsynth.training import train

    # with the MIND structure term too (the plain recipe trains in the EMA test below)
    run = train("configs/cyclegan_brats.yaml", p2p(mini_brats, tmp_path / "runs", "loss.structure_weight=5"),
                log=lambda *_: None)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert {"train/g_adv", "train/cycle", "train/identity", "train/structure", "train/d_loss"} <= set(summary["metrics"])
    assert 0 < summary["metrics"]["train/structure"] < 2
    assert (run / "translation.json").is_file()
    recipe = load_run(run)
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    forward, backward = recipe.translate(x), recipe.translate(x, reverse=True)
    assert forward.shape == backward.shape == x.shape and not torch.allclose(forward, backward)
    np.savez(tmp_path / "in.npz", images=np.zeros((2, 48, 48), np.uint8))
    translate(run, tmp_path / "in.npz", tmp_path / "back.npz", reverse=True, log=lambda *_: None)
    assert np.load(tmp_path / "back.npz")["images"].shape == (2, 48, 48)


def test_pix2pix_translates_one_way(pix2pix_run, tmp_path):
    np.savez(tmp_path / "in.npz", images=np.zeros((2, 48, 48), np.uint8))
    with pytest.raises(MedsynthError, match="one way only"):
        translate(pix2pix_run, tmp_path / "in.npz", tmp_path / "o.npz", reverse=True)


NATIVE = ["data.crop_to_mask=32", "data.neighbours=1", "data.min_mask_fraction=0.3", "data.batch_size=8",
          "model.depth=3", "model.width=0.125", "model.bottleneck_blocks=1", "trainer.max_epochs=1",
          "trainer.precision=32"]


def _nifti(path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj, np.float32)


def test_native_size_2_5d_recipe_translates_whole_volumes_in_their_own_format(mini_brats, tmp_path):
    """data.crop_to_mask + data.neighbours: training slices are the T1c at k-1, k, k+1 and the FLAIR
    at k, cut around the brain at native resolution; a whole volume (NIfTI, NRRD or DICOM) comes
    back with its shape and geometry, each slice the model's output on the same stack, pasted in
    place, in FLAIR units of the training data."""
    import nrrd

    from medsynth.data.slices import mask_box, read_paired_slices
    from medsynth.dicom import write_dicom_series
    from medsynth.training import train

    cfg = load_config("configs/pix2pix_brats.yaml", [f"data.path={mini_brats}", *NATIVE])
    splits, space = read_paired_slices(cfg.data)
    slices = splits["train"][0]
    assert slices.shape[1:] == (4, 32, 32)
    case = mini_brats / "train" / "brats_2013_pat0005_1"
    brain = _nifti(case / "brainmask.nii.gz") > 0
    t1c, flair = (mr_normalise(_nifti(case / f), brain) for f in ("T1c_subtrMeanDivStd.nii.gz",
                                                                   "Flair_subtrMeanDivStd.nii.gz"))
    area = brain.sum(axis=(0, 1))
    kept = np.flatnonzero(area >= 0.3 * area.max())
    top, left = mask_box(brain, 2, 32)
    hit = np.flatnonzero(brain.any(axis=(1, 2)))
    assert top == (hit[0] + hit[-1] + 1) // 2 - 16
    j = 3
    k = kept[j]
    crop = (slice(max(top, 0), top + 32), slice(max(left, 0), left + 32))
    for c, (volume, z) in enumerate([(t1c, k - 1), (t1c, k), (t1c, k + 1), (flair, k)]):
        expected = volume[crop + (z,)]
        assert expected.shape == (32, 32) and np.array_equal(slices[j, c], expected), c
    assert space["axcodes"] == list(nib.aff2axcodes(nib.load(str(case / "brainmask.nii.gz")).affine))
    assert space["contrasts"] == list(cfg.data.contrasts) and len(space["scale"]) == 2

    run = train("configs/pix2pix_brats.yaml", [f"data.path={mini_brats}", f"runs_dir={tmp_path / 'runs'}", *NATIVE],
                log=lambda *_: None)
    recipe = load_run(run)
    assert recipe.cfg.model.upsample == "bilinear" and recipe.source_channels == 3
    test = mini_brats / "test" / "brats_2013_pat0001_1"
    src, mask = test / "T1c_subtrMeanDivStd.nii.gz", test / "brainmask.nii.gz"
    translate(run, src, tmp_path / "f.nii.gz", mask=mask, log=lambda *_: None)
    out = _nifti(tmp_path / "f.nii.gz")
    assert out.shape == BOX
    brain = _nifti(mask) > 0
    t1c = mr_normalise(_nifti(src), brain)
    top, left = mask_box(brain, 2, 32)
    assert 0 <= top <= 16 and 0 <= left <= 16  # the box lies inside these 48 x 48 slices
    k = 20
    stack = np.stack([t1c[top:top + 32, left:left + 32, z] for z in (k - 1, k, k + 1)])
    y = recipe.translate(torch.from_numpy(stack)[None])[0, 0].numpy()
    scale, offset = space_of(recipe)
    inside = brain[..., k]
    sel = inside[top:top + 32, left:left + 32]
    assert np.allclose(out[top:top + 32, left:left + 32, k][sel], (y * scale + offset)[sel], atol=1e-4 * scale)
    assert (out[..., k][~inside] == 0).all()
    box = np.zeros_like(inside)
    box[top:top + 32, left:left + 32] = True
    assert (out[..., k][inside & ~box] == 0).all()  # brain outside the crop is not translated

    # evaluation scores the same whole-volume translation beside the centre T1c slice copied
    from medsynth.evaluate import evaluate

    result = evaluate(None, run, out=tmp_path / "ev.json", resamples=20, log=lambda *_: None)
    flair = mr_normalise(_nifti(test / "Flair_subtrMeanDivStd.nii.gz"), brain)
    baseline = result["translation"]["cases"]["brats_2013_pat0001_1"]["baseline_source"]["mae"]
    assert baseline == pytest.approx(np.abs(t1c - flair)[brain].mean(), rel=1e-5)

    # NRRD in, NRRD out: the input's geometry fields, the same translation
    image = nib.load(str(src))
    lps = np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, :3]
    header = {"space": "left-posterior-superior", "space directions": lps.T,
              "space origin": np.diag([-1.0, -1.0, 1.0]) @ image.affine[:3, 3], "kinds": ["domain"] * 3}
    nrrd.write(str(tmp_path / "t1c.nrrd"), _nifti(src), header)
    translate(run, tmp_path / "t1c.nrrd", tmp_path / "f.nrrd", mask=mask, log=lambda *_: None)
    back, back_header = nrrd.read(str(tmp_path / "f.nrrd"))
    assert np.allclose(back, out, atol=1e-5) and back_header["content"].startswith("SYNTHETIC")
    assert np.allclose(back_header["space directions"], header["space directions"])
    assert np.allclose(back_header["space origin"], header["space origin"])

    # a DICOM series (stored slice, row, column) is turned to the training orientation and back
    write_dicom_series(tmp_path / "t1c_dcm", _nifti(src), image.affine, {"generator": "test"}, "MR")
    write_dicom_series(tmp_path / "mask_dcm", brain.astype(np.float32), image.affine, {"generator": "test"}, "MR")
    translate(run, tmp_path / "t1c_dcm", tmp_path / "d.nii.gz", mask=tmp_path / "mask_dcm", log=lambda *_: None)
    from_dicom = nib.as_closest_canonical(nib.load(str(tmp_path / "d.nii.gz")))
    from_nifti = nib.as_closest_canonical(nib.load(str(tmp_path / "f.nii.gz")))
    assert np.allclose(from_dicom.affine, from_nifti.affine, atol=1e-3)
    assert np.allclose(from_dicom.get_fdata(), from_nifti.get_fdata(), atol=0.02 * scale)

    # another voxel size: translated at the training spacing and resampled back to the input's grid
    coarse = tmp_path / "coarse.nii.gz"
    nib.save(nib.Nifti1Image(_nifti(src), image.affine @ np.diag([1.5, 1.5, 1.0, 1.0])), str(coarse))
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), image.affine @ np.diag([1.5, 1.5, 1.0, 1.0])),
             str(tmp_path / "coarse_mask.nii.gz"))
    translate(run, coarse, tmp_path / "c.nii.gz", mask=tmp_path / "coarse_mask.nii.gz", log=lambda *_: None)
    result = nib.load(str(tmp_path / "c.nii.gz"))
    assert result.shape == BOX
    assert "resampled back" in json.loads(result.header.extensions[0].get_content())["output_space"]["note"]
    with pytest.raises(MedsynthError, match="give --mask"):
        translate(run, src, tmp_path / "nomask.nii.gz")
    shifted = tmp_path / "shifted_mask.nii.gz"  # same shape, first axis reversed: refused, not misapplied
    nib.save(nib.Nifti1Image(brain.astype(np.uint8), image.affine @ np.diag([-1.0, 1.0, 1.0, 1.0])), str(shifted))
    with pytest.raises(MedsynthError, match="mask's affine differs"):
        translate(run, src, tmp_path / "m.nii.gz", mask=shifted)
    with pytest.raises(MedsynthError, match="NRRD output keeps an NRRD input"):
        translate(run, src, tmp_path / "x.nrrd", mask=mask)


def space_of(recipe) -> tuple[float, float]:
    """The FLAIR (target) mapping the run stored: [-1, 1] -> FLAIR units of the training data."""
    space = recipe.cfg.model.output_space
    return float(space["scale"][-1]), float(space["offset"][-1])


def test_cyclegan_translates_with_the_average_of_its_generators_and_trains_the_same(mini_brats, tmp_path):
    """model.ema_decay: the EMA generators translate (both directions) and are saved with the run;
    they only watch training, so the trained generators equal those of the same run without them."""
    from safetensors.torch import load_file

    from medsynth.training import train

    plain = train("configs/cyclegan_brats.yaml", p2p(mini_brats, tmp_path / "a"), log=lambda *_: None)
    averaged = train("configs/cyclegan_brats.yaml", p2p(mini_brats, tmp_path / "b", "model.ema_decay=0.9"),
                     log=lambda *_: None)
    a, b = load_file(plain / "model.safetensors"), load_file(averaged / "model.safetensors")
    assert not any("_ema." in k for k in a)
    assert all(torch.equal(v, b[k]) for k, v in a.items())  # same trained weights, bit for bit
    for ema in ("generator_ema", "generator_ba_ema"):
        own = {k: v for k, v in b.items() if k.startswith(f"{ema}.module.") and v.is_floating_point()}
        raw = ema.replace("_ema", "")
        assert own and not all(torch.equal(v, b[k.replace(f"{ema}.module.", f"{raw}.")]) for k, v in own.items())
    recipe = load_run(averaged)
    x = torch.rand(2, 1, 48, 48) * 2 - 1
    with torch.no_grad():
        for reverse, net in ((False, recipe.generator_ema.module), (True, recipe.generator_ba_ema.module)):
            expected = torch.tanh(net.eval()(x))
            assert torch.allclose(recipe.translate(x, reverse=reverse), expected, atol=1e-6)
            raw = torch.tanh((recipe.generator_ba if reverse else recipe.generator).eval()(x))
            assert not torch.allclose(expected, raw, atol=1e-3)
