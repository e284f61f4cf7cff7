"""Images drawn from label maps (SPADE) on the real LA heart cases: the generator, map checks and
deformations, training, (image, label map) pairs from `medsynth sample`, segmentation models
trained on the pairs (data.synthetic) and the segmentation utility of `medsynth evaluate`."""

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from conftest import la_split_file, run_cli, tiny_la
from medsynth.config import load_config
from medsynth.data.label_maps import check_label_map, deform_label_map, one_hot, pad_to_multiple
from medsynth.data.patches import PatchSampler, load_segmentation_splits
from medsynth.errors import MedsynthError
from medsynth.models import build_recipe, load_run
from medsynth.nets.spade import SPADEGenerator
from medsynth.provenance import read_provenance
from medsynth.segmentation_utility import foreground_box, ratio_interval
from medsynth.training import build_data, train

ROOT = Path(__file__).resolve().parents[1]
SPLIT = json.loads((ROOT / "configs/splits/la_heart.json").read_text())
SPADE = ROOT / "configs/spade_la_heart.yaml"
UNET = ROOT / "configs/unet_la_heart.yaml"


def tiny(runs, split_file, *extra):
    return tiny_la(runs, split_file, "[32,32,32]", "model.num_discriminators=1", *extra)


@pytest.fixture
def cases(tmp_path):
    """A split file naming real cases: two for training, one each for validation and test."""
    return la_split_file(tmp_path / "split.json", train=2)


@pytest.fixture
def spade_run(cases, tmp_path):
    return train(SPADE, tiny(tmp_path / "runs", cases), log=lambda *_: None)


def sphere(shape=(40, 40, 40), radius=12.0) -> np.ndarray:
    grid = np.stack(np.meshgrid(*[np.arange(s) - s / 2 for s in shape], indexing="ij"))
    return (np.sqrt((grid ** 2).sum(0)) < radius).astype(np.uint8)


def dice(a, b) -> float:
    return 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def test_generator_draws_any_size_its_noise_decides_and_the_map_shapes_it():
    torch.manual_seed(0)
    g = SPADEGenerator(3, 2, 1, width=0.125, depth=2, noise_channels=4).eval()
    labels = torch.from_numpy(sphere((24, 32, 16)))[None, None]
    onehot = one_hot(labels, 2)
    assert onehot.shape == (1, 2, 24, 32, 16) and torch.equal(onehot.sum(1), torch.ones(1, 24, 32, 16))
    noise = torch.randn(g.noise_shape(onehot.shape))
    assert list(noise.shape) == [1, 4, 6, 8, 4]
    out = g(onehot, noise)
    assert out.shape == (1, 1, 24, 32, 16)
    assert torch.equal(out, g(onehot, noise))  # deterministic given map and noise
    assert not torch.allclose(out, g(onehot, torch.randn_like(noise)))  # the noise matters
    assert not torch.allclose(out, g(one_hot(1 - labels, 2), noise))  # and so does the map
    flat = SPADEGenerator(2, 3, 2, width=0.125, depth=3, noise_channels=2)
    maps = one_hot(torch.randint(0, 3, (2, 1, 40, 24)), 3)
    padded, keep = pad_to_multiple(maps, 8)
    assert padded.shape == (2, 3, 40, 24) and padded[tuple(keep)].shape == maps.shape
    odd, keep = pad_to_multiple(one_hot(torch.zeros(1, 1, 21, 13, dtype=torch.long) + 2, 3), 8)
    assert odd.shape == (1, 3, 24, 16) and odd[0, 0, 21:].eq(1).all() and odd[0, 2, 21:].eq(0).all()
    assert odd[tuple(keep)].shape == (1, 3, 21, 13)
    assert flat(padded, torch.randn(flat.noise_shape(padded.shape))).shape == (2, 2, 40, 24)


def test_every_shipped_spade_recipe_builds_and_a_too_small_patch_is_refused(tmp_path):
    """The discriminators must fit the patch: each shipped recipe's networks run a forward pass on its
    own patch size (the check once refused spade_la_heart's 48-voxel axis)."""
    for name, channels, classes in (("spade_la_heart", 1, 2), ("spade_brats3d", 2, 5), ("spade_brats2d", 2, 5)):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        size = list(cfg.data.patch_size) if hasattr(cfg.data.patch_size, "__len__") else [cfg.data.patch_size] * 3
        cfg.model.in_channels, cfg.model.num_classes, cfg.model.image_size = channels, classes, size
        recipe = build_recipe(cfg)
        onehot = one_hot(torch.zeros(1, 1, *size, dtype=torch.long), classes)
        outs, _ = recipe.discriminator(torch.cat([torch.zeros(1, channels, *size), onehot], 1))
        assert all(o.shape[2:].numel() > 1 for o in outs), name
    cfg = load_config(SPADE)
    cfg.model.in_channels, cfg.model.num_classes, cfg.model.image_size = 1, 2, [64, 64, 32]
    with pytest.raises(MedsynthError, match=r"too small for 2 discriminator\(s\) of up to 4 strided layers \(needs >= 48"):
        build_recipe(cfg)


def test_bad_label_maps_get_one_clear_error():
    good = sphere() * 4
    assert set(np.unique(check_label_map(good, [0, 4], 3, "m.nii.gz")).tolist()) == {0, 1}
    with pytest.raises(MedsynthError, match=r"m.nii.gz: label values \[2, 7\] are outside the model's classes"):
        check_label_map(np.where(good > 0, 7, 2 * (np.arange(40) % 2)[:, None, None]), [0, 4], 3, "m.nii.gz")
    with pytest.raises(MedsynthError, match=r"m.nii.gz: label map of shape \[40, 40\] is not 3D"):
        check_label_map(good[0], [0, 4], 3, "m.nii.gz")
    with pytest.raises(MedsynthError, match="all background"):
        check_label_map(np.zeros((8, 8, 8)), [0, 4], 3, "m.nii.gz")
    with pytest.raises(MedsynthError, match="non-integer"):
        check_label_map(good + 0.5, [0, 4], 3, "m.nii.gz")


def test_deformed_maps_keep_shape_and_classes_move_the_boundary_and_repeat():
    truth = sphere() + sphere(radius=5)  # classes 0, 1, 2
    elastic = deform_label_map(truth, seed=3, rotate_degrees=0, scale_range=0)
    assert elastic.shape == truth.shape and set(np.unique(elastic).tolist()) == {0, 1, 2}
    assert 0.75 < dice(elastic > 0, truth > 0) < 0.995  # moved, but the same structure
    assert np.array_equal(elastic, deform_label_map(truth, seed=3, rotate_degrees=0, scale_range=0))
    assert not np.array_equal(elastic, deform_label_map(truth, seed=4, rotate_degrees=0, scale_range=0))
    # affine only, a zoom: the sphere's volume scales by the cube of the zoom (nearest neighbour)
    zoomed = deform_label_map(truth, seed=0, rotate_degrees=0, scale_range=0.2, elastic=0)
    ratio = (zoomed > 0).sum() / (truth > 0).sum()
    assert 0.8 ** 3 * 0.9 < ratio < 1.2 ** 3 * 1.1 and abs(ratio - 1) > 0.01
    flat = deform_label_map(sphere((48, 48, 1))[..., 0], seed=1)
    assert flat.shape == (48, 48) and 0.5 < dice(flat > 0, sphere((48, 48, 1))[..., 0] > 0) < 1


def test_generator_learns_the_map_to_image_relation_on_real_patches(cases, tmp_path):
    cfg = load_config(SPADE, tiny(tmp_path, cases, "data.batch_size=2", "data.augment=false"))
    _, data = build_data(cfg)
    recipe = build_recipe(cfg)
    batch = next(iter(data.train_dataloader()))
    onehot = one_hot(batch["label"], 2)
    noise = torch.randn(recipe.generator.noise_shape(onehot.shape), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(recipe.generator.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = (torch.tanh(recipe.generator(onehot, noise)) - batch["image"]).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses


def test_spade_trains_and_writes_pairs_with_the_source_geometry(spade_run, cases, tmp_path, capsys):
    summary = json.loads((spade_run / "summary.json").read_text())
    assert summary["status"] == "finished" and (spade_run / "samples.png").is_file()
    out = tmp_path / "pairs"
    code, err = run_cli(capsys, "sample", spade_run, "-n", 3, "--out-dir", out, "--seed", 5)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["case"] for r in rows] == ["pair_00000", "pair_00001", "pair_00002"]
    assert [r["seed"] for r in rows] == ["5", "6", "7"]
    assert [r["mask_source"] for r in rows] == [f"deformed:{n}" for n in SPLIT["train"][:2] + SPLIT["train"][:1]]
    for r in rows:
        image, label = nib.load(out / r["image"]), nib.load(out / r["label"])
        assert image.shape == label.shape and len(image.shape) == 3 and min(image.shape) >= 80
        assert np.allclose(image.affine, label.affine) and np.allclose(np.diag(image.affine), [0.625] * 3 + [1])
        values = np.asarray(label.dataobj)
        assert set(np.unique(values).tolist()) == {0, 1}
        data = np.asarray(image.dataobj)
        assert np.isfinite(data).all() and -1 <= data.min() and data.max() <= 1
        for f in (r["image"], r["label"]):
            prov = read_provenance(out / f)
            assert prov["synthetic"] and prov["mask_source"] == r["mask_source"] and prov["seed"] == int(r["seed"])
    # a training case's map, deformed: same size as that case, not the same voxels
    case = load_segmentation_splits(load_config(SPADE, [f"data.splits={cases}"]).data, which=("train",)).train[0]
    first = np.asarray(nib.load(out / rows[0]["label"]).dataobj)
    assert first.shape == case.label.shape and 0.5 < dice(first > 0, case.label > 0) < 0.99
    # the same seed draws the same pair
    again = tmp_path / "again"
    assert run_cli(capsys, "sample", spade_run, "-n", 1, "--out-dir", again, "--seed", 5)[0] == 0
    assert np.array_equal(np.asarray(nib.load(again / "pair_00000_image.nii.gz").dataobj),
                          np.asarray(nib.load(out / rows[0]["image"]).dataobj))


def test_given_maps_are_drawn_as_they_are_and_bad_ones_refused(spade_run, tmp_path, capsys):
    maps = tmp_path / "maps"
    maps.mkdir()
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    nib.save(nib.Nifti1Image(sphere((48, 40, 36)).astype(np.int16), affine), maps / "ball.nii.gz")
    out = tmp_path / "pairs"
    code, err = run_cli(capsys, "sample", spade_run, "-n", 2, "--out-dir", out, "--label-maps", maps)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["mask_source"] for r in rows] == ["given:ball.nii.gz"] * 2
    label = nib.load(out / rows[1]["label"])
    assert np.array_equal(np.asarray(label.dataobj), sphere((48, 40, 36))) and np.allclose(label.affine, affine)
    images = [np.asarray(nib.load(out / r["image"]).dataobj) for r in rows]
    assert images[0].shape == (48, 40, 36) and not np.allclose(images[0], images[1])  # new noise per pair
    for name, array, match in [("classes.nii.gz", sphere() * 3, r"label values \[3\] are outside the model's classes"),
                               ("empty.nii.gz", np.zeros((16, 16, 16)), "all background"),
                               ("flat.nii.gz", sphere((16, 16, 1))[..., 0], "needs 3D volumes")]:
        bad = tmp_path / name
        nib.save(nib.Nifti1Image(array.astype(np.int16), np.eye(4)), bad)
        target = tmp_path / f"out-{name}"
        code, err = run_cli(capsys, "sample", spade_run, "-n", 1, "--out-dir", target, "--label-maps", bad)
        assert code == 2 and name in err and len(re_lines(err)) == 1 and match.split(r"\[")[0] in err, err
        assert not target.exists()
    code, err = run_cli(capsys, "sample", spade_run, "-n", 1, "--out", tmp_path / "x.npz")
    assert code == 2 and "--out-dir" in err
    recipe = load_run(spade_run)
    with pytest.raises(MedsynthError, match="draws images from label maps"):
        recipe.sample(2)


def re_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


def test_synthetic_pairs_join_or_replace_the_training_cases(spade_run, cases, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert run_cli(capsys, "sample", spade_run, "-n", 2, "--out-dir", out)[0] == 0
    base = [f"data.splits={cases}"]
    added = load_segmentation_splits(load_config(UNET, [*base, f"data.synthetic={out / 'manifest.csv'}"]).data)
    assert [c.name for c in added.train] == [*SPLIT["train"][:2], "pair_00000", "pair_00001"]
    assert [c.name for c in added.test] == SPLIT["test"][:1] and [c.name for c in added.val] == SPLIT["validation"][:1]
    replaced = load_segmentation_splits(load_config(UNET, [*base, f"data.synthetic={out / 'manifest.csv'}",
                                                           "data.synthetic_mode=replace"]).data)
    assert [c.name for c in replaced.train] == ["pair_00000", "pair_00001"]
    assert [c.name for c in replaced.test] == SPLIT["test"][:1]
    assert added.train_weights is None and replaced.train_weights is None
    # a share of the patches from the pairs: 80% here, 40% each, the two real cases 10% each
    shared = load_segmentation_splits(load_config(UNET, [*base, f"data.synthetic={out / 'manifest.csv'}",
                                                         "data.synthetic_share=0.8"]).data)
    assert shared.train_weights == pytest.approx([0.1, 0.1, 0.4, 0.4])
    sampler = PatchSampler(shared.train, [16, 16, 16], 2, 1, seed=0, weights=shared.train_weights)
    picks = np.array([sampler.pick(i) for i in range(2000)])
    assert np.mean(picks >= 2) == pytest.approx(0.8, abs=0.03) and set(picks.tolist()) == {0, 1, 2, 3}
    alike = PatchSampler(added.train, [16, 16, 16], 2, 1, seed=0)
    assert np.mean([alike.pick(i) >= 2 for i in range(2000)]) == pytest.approx(0.5, abs=0.04)
    for bad in (["data.synthetic_share=0.5"], [f"data.synthetic={out / 'manifest.csv'}", "data.synthetic_share=1"],
                [f"data.synthetic={out / 'manifest.csv'}", "data.synthetic_mode=replace", "data.synthetic_share=0.5"]):
        with pytest.raises(MedsynthError, match="synthetic_share"):
            load_config(UNET, [*base, *bad])
    pair = replaced.train[0]
    assert pair.spacing == (0.625, 0.625, 0.625) and set(np.unique(pair.label).tolist()) <= {0, 1}
    # a model trained on the pairs records that its data was synthetic
    run = train(UNET, [f"runs_dir={tmp_path / 'seg'}", *base, f"data.synthetic={out / 'manifest.csv'}",
                       "data.synthetic_mode=replace", "data.patch_size=[32,32,16]", "data.patches_per_epoch=2",
                       "model.depth=2", "model.width=0.125", "trainer.max_epochs=1", "optim.warmup_steps=1"],
                log=lambda *_: None)
    lineage = json.loads((run / "lineage.json").read_text())
    assert lineage["synthetic"] and lineage["family"] == "spade"
    with pytest.raises(MedsynthError, match="synthetic_mode"):
        load_config(UNET, ["data.synthetic_mode=instead"])
    with pytest.raises(MedsynthError, match="manifest not found"):
        load_segmentation_splits(load_config(UNET, [*base, f"data.synthetic={tmp_path / 'none.csv'}"]).data)


def test_segmentation_utility_trains_three_arms_on_the_same_budget(spade_run, cases, tmp_path, capsys):
    out = tmp_path / "pairs"
    assert run_cli(capsys, "sample", spade_run, "-n", 2, "--out-dir", out)[0] == 0
    seg = [f"data.splits={cases}", "data.patch_size=[32,32,16]", "data.patches_per_epoch=2", "model.depth=2",
           "model.width=0.125", "trainer.max_epochs=1", "optim.warmup_steps=1", "model.sw_overlap=0"]
    code, err = run_cli(capsys, "evaluate", "--fake", out, "--seg-config", UNET, "--resamples", 20,
                        "--synthetic-share", 0.25, *[a for o in seg for a in ("--seg-override", o)])
    assert code == 0, err
    result = json.loads((out / "evaluation.json").read_text())
    section = result["segmentation_utility"]
    assert result["task"] == "segmentation_utility" and list(section["arms"]) == ["real", "synthetic", "real+synthetic"]
    assert section["budget"]["batches"] == 1
    for arm in section["arms"].values():
        assert list(arm["cases"]) == SPLIT["test"][:1] and 0 <= arm["mean"]["dice_class_1"] <= 1
    runs = {arm: load_run(a["run"]).cfg.data for arm, a in section["arms"].items()}
    assert runs["real"].synthetic is None and runs["synthetic"].synthetic_mode == "replace"
    assert runs["real+synthetic"].synthetic_mode == "add" and runs["real+synthetic"].synthetic_share == 0.25
    assert runs["synthetic"].synthetic_share is None and section["synthetic_share"] == 0.25
    ratio = section["ratio"]["dice_class_1"]["synthetic_over_real"]
    expected = section["arms"]["synthetic"]["mean"]["dice_class_1"] / section["arms"]["real"]["mean"]["dice_class_1"]
    assert ratio == pytest.approx(expected)
    agreement = result["map_agreement"]
    assert list(agreement["pairs"]) == ["pair_00000", "pair_00001"] and 0 <= agreement["mean"]["dice_class_1"] <= 1
    privacy = result["privacy"]
    assert privacy["box"] == [32, 32, 16] and 0 <= privacy["pixel"]["rate"] <= 1
    assert {c["synthetic"] for c in privacy["closest"]} <= {"pair_00000", "pair_00001"}
    assert {c["train"] for c in privacy["closest"]} <= set(SPLIT["train"][:2])
    # a second synthetic set against the same real arm: reused, not trained again, same scores
    again = tmp_path / "again.json"
    code, err = run_cli(capsys, "evaluate", "--fake", out, "--seg-config", UNET, "--resamples", 20, "--out", again,
                        "--seg-real-run", section["arms"]["real"]["run"], *[a for o in seg for a in ("--seg-override", o)])
    assert code == 0, err
    second = json.loads(again.read_text())["segmentation_utility"]
    assert second["reused"] == {"real": section["arms"]["real"]["run"]}
    assert second["arms"]["real"]["run"] == section["arms"]["real"]["run"]
    assert second["arms"]["real"]["mean"]["dice_class_1"] == section["arms"]["real"]["mean"]["dice_class_1"]
    trained = sorted(d.name.rsplit("-", 2)[0] for d in (tmp_path / "utility_runs").iterdir())
    assert trained == ["utility-real-synthetic", "utility-synthetic"]  # the real arm was not trained again
    for run, override, named in ((section["arms"]["synthetic"]["run"], [], "data.synthetic="),
                                 (section["arms"]["real"]["run"], ["trainer.max_epochs=2"], "trainer.max_epochs=1")):
        code, err = run_cli(capsys, "evaluate", "--fake", out, "--seg-config", UNET, "--out", tmp_path / "no.json",
                            "--seg-real-run", run, *[a for o in [*seg, *override] for a in ("--seg-override", o)])
        assert code == 2 and named in err and "not the real arm" in err and "Traceback" not in err
        assert not (tmp_path / "no.json").exists()
    code, err = run_cli(capsys, "evaluate", "--fake", tmp_path, "--seg-config", UNET)
    assert code == 2 and "no manifest.csv" in err
    code, err = run_cli(capsys, "evaluate", "--fake", out, "--seg-config", UNET, "--synthetic-share", 1.5)
    assert code == 2 and "--synthetic-share=1.5" in err and "Traceback" not in err


def test_foreground_box_centres_the_structure_and_pads_small_volumes():
    label = np.zeros((30, 20, 10), dtype=np.uint8)
    label[20:24, 5:9, 2:6] = 1
    image = np.arange(6000, dtype=np.float32).reshape(1, 30, 20, 10)
    box = foreground_box(image, label, [8, 8, 8])
    assert box.shape == (1, 8, 8, 8)
    assert np.array_equal(box[0, :, :, :8], image[0, 18:26, 3:11, 0:8])  # shifted to stay inside along z
    small = foreground_box(image[:, :4], label[:4], [8, 8, 8])  # no foreground: centred; padded with 0
    assert np.array_equal(small[0, :4], image[0, :4, 6:14, 1:9]) and not small[0, 4:].any()


def test_ratio_interval_is_a_paired_bootstrap():
    real = np.array([0.8, 0.9, 0.7, 0.85])
    low, high = ratio_interval(0.5 * real, real, 200, 0)
    assert low == pytest.approx(0.5) and high == pytest.approx(0.5)  # the same cases resampled in both
    low, high = ratio_interval(np.array([0.4, 0.9, 0.2, 0.85]), real, 500, 0)
    assert low < (0.4 + 0.9 + 0.2 + 0.85) / real.sum() < high
    assert ratio_interval(real[:1], real[:1], 100, 0) is None


BRATS2D = ROOT / "configs/spade_brats2d.yaml"


def brats2d(data, runs, *extra):
    return [f"data.path={data}", f"runs_dir={runs}", "data.patch_size=[32,32]", "data.patches_per_epoch=4",
            "data.val_patches=1", "data.batch_size=2", "model.depth=2", "model.width=0.125",
            "model.num_discriminators=1", "trainer.max_epochs=2", *extra]


def test_2d_patches_are_slices_of_the_volumes_augmented_in_their_plane(mini_brats, tmp_path):
    cfg = load_config(BRATS2D, brats2d(mini_brats, tmp_path))
    splits, data = build_data(cfg)
    assert splits.patch_size == [32, 32, 1] and splits.image_size == [32, 32] and cfg.model.image_size == [32, 32]
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (2, 2, 32, 32) and batch["label"].shape == (2, 1, 32, 32)
    assert set(batch["label"].unique().tolist()) <= {0, 1, 2, 3, 4}
    plain = load_config(BRATS2D, brats2d(mini_brats, tmp_path, "data.augment=false"))
    _, data = build_data(plain)
    item = data.val_set[0]
    # a validation patch is a slice of a case's volumes: found among its axial slices
    case = next(c for c in splits.val)
    found = any(np.allclose(case.image[:, x:x + 32, y:y + 32, z], item["image"].numpy())
                for z in range(case.image.shape[3]) for x in range(case.image.shape[1] - 31)
                for y in range(case.image.shape[2] - 31) if case.label[x + 16, y + 16, z] == item["label"][0, 16, 16])
    assert found
    with pytest.raises(MedsynthError, match=r"2D models take \[H, W\] patches"):
        load_config(BRATS2D, brats2d(mini_brats, tmp_path, "model.spatial_dims=3"))
    with pytest.raises(MedsynthError, match="2D patches"):
        load_config(UNET, ["data.patch_size=[32,32]", "model.spatial_dims=2"])


def test_2d_spade_draws_pairs_of_slices_with_their_masks(mini_brats, tmp_path, capsys):
    run = train(BRATS2D, brats2d(mini_brats, tmp_path / "runs"), log=lambda *_: None)
    assert (run / "samples.png").is_file()
    out = tmp_path / "pairs"
    code, err = run_cli(capsys, "sample", run, "-n", 5, "--out-dir", out, "--seed", 2)
    assert code == 0, err
    with np.load(out / "pairs.npz") as f:
        images, masks = f["images"], f["masks"]
        prov = json.loads(str(f["provenance"]))
    assert images.shape == (5, 48, 48, 2) and images.dtype == np.float32 and 0 <= images.min() <= images.max() <= 1
    assert masks.shape == (5, 48, 48) and set(np.unique(masks).tolist()) <= {0, 1, 2, 3, 4} and masks.any(axis=(1, 2)).all()
    assert prov["synthetic"] and prov["family"] == "spade"
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    assert [r["seed"] for r in rows] == ["2", "3", "4", "5", "6"]
    assert all(r["mask_source"].startswith("deformed:brats_2013_pat000") and ":slice" in r["mask_source"] for r in rows)
    given = tmp_path / "maps.npz"
    np.savez(given, masks=masks[:2])
    again = tmp_path / "again"
    assert run_cli(capsys, "sample", run, "-n", 2, "--out-dir", again, "--label-maps", given)[0] == 0
    with np.load(again / "pairs.npz") as f:
        assert np.array_equal(f["masks"], masks[:2])
    np.savez(given, labels=masks[:2])
    code, err = run_cli(capsys, "sample", run, "-n", 1, "--out-dir", tmp_path / "bad", "--label-maps", given)
    assert code == 2 and "no `masks` array" in err and not (tmp_path / "bad").exists()


def test_pairs_of_resampled_cases_carry_the_resampled_grid():
    from medsynth.data.cases import Case
    from medsynth.pairs import grid_affine

    affine = np.array([[0, -0.9, 0, 10], [1.1, 0, 0, -5], [0, 0, 3.0, 7], [0, 0, 0, 1]])
    case = Case("c", np.zeros((1, 4, 4, 4), np.float32), None, affine, (1.1, 0.9, 3.0))
    assert np.array_equal(grid_affine(case, None), affine)
    out = grid_affine(case, [2.0, 2.0, 2.0])
    assert np.allclose(out, [[0, -2, 0, 10], [2, 0, 0, -5], [0, 0, 2, 7], [0, 0, 0, 1]])


def test_a_model_of_label_maps_draws_a_new_map_for_every_pair(spade_run, cases, tmp_path, capsys):
    from medsynth.data.label_maps import label_map_set, maps_from_images

    cfg = load_config(ROOT / "configs/vae_la_maps.yaml", [f"data.splits={cases}", "data.patch_size=[32,32,32]",
                                                          "data.image_size=16"])
    sets = label_map_set(cfg.data)
    images = sets["train"][0]
    assert images.shape == (2, 2, 16, 16, 16) and images.min() >= -1 and images.max() <= 1
    assert np.allclose(images.sum(1), 0, atol=1e-5)  # two one-hot channels in [-1, 1] sum to 0
    back = maps_from_images(torch.from_numpy(images), [32, 32, 32])
    truth = load_segmentation_splits(cfg.data, which=("train",)).train[0].label
    assert back.shape == (2, 32, 32, 32) and back[0].any() and 0.3 < back[0].mean() <= 1 and truth.any()
    maps = train(ROOT / "configs/vae_la_maps.yaml", [f"runs_dir={tmp_path / 'maps'}", f"data.splits={cases}",
                                                    "data.patch_size=[32,32,32]", "data.image_size=16",
                                                    # the recipe's fitted Gaussian needs latent_dim + 1 maps
                                                    "model.latent_dim=1", "trainer.max_epochs=1"], log=lambda *_: None)
    out = tmp_path / "pairs"
    code, err = run_cli(capsys, "sample", spade_run, "-n", 3, "--out-dir", out, "--label-maps", maps)
    assert code == 0, err
    rows = list(csv.DictReader(open(out / "manifest.csv")))
    # draw numbers, increasing; a drawn map without the atrium is skipped, so there may be gaps
    draws = [int(r["mask_source"].rsplit(":", 1)[1]) for r in rows]
    assert [r["mask_source"].rsplit(":", 1)[0] for r in rows] == [f"model:{maps.name}"] * 3
    assert draws == sorted(set(draws))
    label = nib.load(out / rows[0]["label"])
    assert label.shape == (32, 32, 32) and np.allclose(np.diag(label.affine), [0.625] * 3 + [1])
    assert all(np.asarray(nib.load(out / r["label"]).dataobj).any() for r in rows)
    code, err = run_cli(capsys, "sample", spade_run, "-n", 1, "--out-dir", tmp_path / "x", "--label-maps", spade_run)
    assert code == 2 and "not a model of label maps" in err
    # a model of maps whose decoder puts every voxel in the background (its output layer set so):
    # refused with why, nothing written, rather than pairs with empty label maps (10 x 2 draws)
    import shutil

    from safetensors.torch import load_file, save_file

    empty = shutil.copytree(maps, tmp_path / "empty_maps")
    weights = load_file(empty / "model.safetensors")
    weights["net.decoder.out.weight"].zero_()
    weights["net.decoder.out.bias"].copy_(torch.tensor([10.0, -10.0]))
    save_file(weights, str(empty / "model.safetensors"))
    code, err = run_cli(capsys, "sample", spade_run, "-n", 2, "--out-dir", tmp_path / "y", "--label-maps", empty)
    assert code == 2 and "20 maps drawn, 0 of them hold any structure" in err and "Traceback" not in err
    assert not (tmp_path / "y").exists()


def test_tissue_bands_cut_the_background_into_equal_count_intensity_bands():
    from medsynth.data.intensity import structures_only, tissue_bands

    rng = np.random.default_rng(0)
    image = rng.permutation(24 * 20 * 16).reshape(24, 20, 16).astype(np.float32)  # every value once
    labels = sphere((24, 20, 16), radius=6) * 2  # classes 0 and 2 of three
    out = tissue_bands(image, labels, num_classes=3, bands=4, sigma=0)
    background = labels == 0
    assert np.array_equal(out[~background], labels[~background])  # labelled voxels keep their class
    counts = np.bincount(out[background], minlength=6)
    assert counts[1] == counts[2] == 0 and counts[[0, 3, 4, 5]].min() >= background.sum() // 4 - 1
    assert counts[[0, 3, 4, 5]].max() <= background.sum() // 4 + 1  # equal-count bands (distinct values)
    # the band order is the intensity order, the darkest staying background (independent of the
    # quantile cut: each band's brightest voxel is darker than the next band's darkest)
    order = [0, 3, 4, 5]
    for dark, bright in zip(order, order[1:]):
        assert image[background & (out == dark)].max() < image[background & (out == bright)].min()
    assert np.array_equal(structures_only(out, 3), labels)
    assert tissue_bands(image, labels, 3, bands=1) is labels


def test_spade_told_where_the_tissue_lies_writes_maps_of_the_structures_only(cases, tmp_path, capsys):
    run = train(SPADE, tiny(tmp_path / "runs", cases, "data.tissue_bands=3"), log=lambda *_: None)
    recipe = load_run(run)
    assert recipe.cfg.model.num_classes == 4 and list(recipe.cfg.data.classes) == [0, 1]
    out = tmp_path / "pairs"
    code, err = run_cli(capsys, "sample", run, "-n", 2, "--out-dir", out)
    assert code == 0, err
    for r in csv.DictReader(open(out / "manifest.csv")):
        values = np.asarray(nib.load(out / r["label"]).dataobj)
        assert set(np.unique(values).tolist()) == {0, 1}  # the bands went back to background
    maps = tmp_path / "maps"
    maps.mkdir()
    nib.save(nib.Nifti1Image(sphere().astype(np.int16), np.eye(4)), maps / "ball.nii.gz")
    code, err = run_cli(capsys, "sample", run, "-n", 1, "--out-dir", tmp_path / "given", "--label-maps", maps)
    assert code == 2 and "tissue bands" in err and len(re_lines(err)) == 1 and not (tmp_path / "given").exists()
    with pytest.raises(MedsynthError, match="data.tissue_bands is for models that draw images from label maps"):
        load_config(UNET, ["data.tissue_bands=3"])
