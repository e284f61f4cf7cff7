import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs two workers on two cores: one thread each (set before numpy and torch are
    # imported, and inherited by the processes tests start), or four threads fight over two cores.
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import matplotlib

matplotlib.use("Agg")

import nibabel as nib
import numpy as np
import pytest
from hypothesis import settings

# CI runs the same examples every time (a red build must be reproducible); search afresh with
# `pytest --hypothesis-profile=explore --hypothesis-seed=N` (30 seeds were clean when this was set).
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"
BREAST = DATA / "medmnist" / "breastmnist.npz"


@pytest.fixture(scope="session")
def pneumonia() -> Path:
    if not PNEUMONIA.is_file():
        pytest.fail(f"real test data missing: {PNEUMONIA} (set MEDSYNTH_SHARED_DATA to the shared data folder)")
    return PNEUMONIA


def subset_npz(src: Path, out: Path, sizes: dict[str, int], seed: int = 0) -> Path:
    """A seeded random subset of each split (the shared PneumoniaMNIST train split is sorted by
    class, so its first images are all one class)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    with np.load(src) as f:
        for split, n in sizes.items():
            pick = np.sort(rng.choice(len(f[f"{split}_images"]), n, replace=False))
            arrays[f"{split}_images"] = f[f"{split}_images"][pick]
            arrays[f"{split}_labels"] = f[f"{split}_labels"][pick]
    np.savez(out, **arrays)
    return out


@pytest.fixture
def small_npz(tmp_path, pneumonia) -> Path:
    """Real PneumoniaMNIST: 96 train / 32 val / 32 test images, both classes."""
    return subset_npz(pneumonia, tmp_path / "small.npz", {"train": 96, "val": 32, "test": 32})


def damaged(raw: bytes, data) -> tuple[bytes, bool]:
    """For hypothesis tests: the bytes cut short at a drawn point, or with 1-10 drawn bytes
    overwritten; and whether they were cut (a cut file must always be refused)."""
    from hypothesis import strategies as st

    raw = bytearray(raw)
    if data.draw(st.booleans()):
        return bytes(raw[:data.draw(st.integers(0, len(raw) - 1))]), True
    for _ in range(data.draw(st.integers(1, 10))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw), False


def overrides(data_path, runs_dir, *extra):
    """Quick-run overrides: small batches, one epoch, fp32 unless a test says otherwise."""
    return [f"data.path={data_path}", f"runs_dir={runs_dir}", "data.batch_size=32", "trainer.max_epochs=1",
            "trainer.samples_after_training=16", "model.channels=[8,16]", "model.latent_dim=8", *extra]


BRATS = DATA / "brats2013"
FILES = ["Flair_subtrMeanDivStd.nii.gz", "T1c_subtrMeanDivStd.nii.gz", "brainmask.nii.gz", "OTMultiClass.nii.gz"]
BOX = (48, 48, 40)


@pytest.fixture(scope="session")
def mini_brats(tmp_path_factory):
    """The six BraTS cases in their train / validation / test folders, each cropped to 48 x 48 x 40
    voxels around its tumour's centre, affines shifted to match (real intensities and labels)."""
    root = tmp_path_factory.mktemp("brats")
    for split in ("train", "validation", "test"):
        for case in sorted((BRATS / split).iterdir()):
            label = nib.load(str(case / "OTMultiClass.nii.gz"))
            centre = np.round(np.argwhere(np.asarray(label.dataobj) > 0).mean(0)).astype(int)
            lo = [int(np.clip(c - b // 2, 0, s - b)) for c, b, s in zip(centre, BOX, label.shape)]
            box = tuple(slice(a, a + b) for a, b in zip(lo, BOX))
            out = root / split / case.name
            out.mkdir(parents=True)
            for name in FILES:
                img = nib.load(str(case / name))
                affine = img.affine.copy()
                affine[:3, 3] = img.affine[:3, :3] @ np.array(lo) + img.affine[:3, 3]
                nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[box], affine, img.header), str(out / name))
    return root


LA_SPLIT = ROOT / "configs/splits/la_heart.json"


# shipped recipes that name a run only a user can make: the overrides that let them load
NEEDS_A_RUN = {"ct_vae_perceptual": ["loss.perceptual_net=FEATURE_RUN"],
               "ct_vae_perceptual_bilinear": ["loss.perceptual_net=FEATURE_RUN"]}


def tiny_la(runs, split_file, patch: str, *extra) -> list[str]:
    """Overrides for a seconds-long run of an LA heart recipe on the cases of `split_file`."""
    return [f"runs_dir={runs}", f"data.splits={split_file}", f"data.patch_size={patch}", "data.patches_per_epoch=4",
            "data.val_patches=1", "model.depth=2", "model.width=0.125", "trainer.max_epochs=2", *extra]


def la_split_file(path: Path, train: int = 1) -> Path:
    """A split file at `path` naming real LA heart cases: the shipped split's first `train` training
    cases and its first validation and test case."""
    import json

    split = json.loads(LA_SPLIT.read_text())
    path.write_text(json.dumps({"train": split["train"][:train], "validation": split["validation"][:1],
                                "test": split["test"][:1]}))
    return path


OLD_RUNS = Path(__file__).parent / "data" / "old_runs"


def run_cli(capsys, *args) -> tuple[int, str]:
    """The command line in this process: (exit code, what it printed on stderr)."""
    from medsynth.cli import main

    code = main([str(a) for a in args])
    return code, capsys.readouterr().err


@pytest.fixture
def run(tmp_path):
    """A copy of a small finished run directory (tests/data/old_runs/cvae), free to damage."""
    import shutil

    return shutil.copytree(OLD_RUNS / "cvae", tmp_path / "cvae")
