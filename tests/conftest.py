import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data"))
PNEUMONIA = DATA / "medmnist" / "pneumoniamnist.npz"
BREAST = DATA / "medmnist" / "breastmnist.npz"


@pytest.fixture(scope="session")
def pneumonia() -> Path:
    if not PNEUMONIA.is_file():
        pytest.fail(f"real test data missing: {PNEUMONIA} (set MEDSYNTH_SHARED_DATA to the shared data folder)")
    return PNEUMONIA


@pytest.fixture
def small_npz(tmp_path, pneumonia) -> Path:
    """A slice of real PneumoniaMNIST: 96 train / 32 val / 32 test images."""
    with np.load(pneumonia) as src:
        out = tmp_path / "small.npz"
        np.savez(out, **{f"{s}_{k}": src[f"{s}_{k}"][:n] for s, n in (("train", 96), ("val", 32), ("test", 32))
                         for k in ("images", "labels")})
    return out


def overrides(data_path, runs_dir, *extra):
    """Quick-run overrides: small batches, one epoch, fp32 unless a test says otherwise."""
    return [f"data.path={data_path}", f"runs_dir={runs_dir}", "data.batch_size=32", "trainer.max_epochs=1",
            "trainer.samples_after_training=16", "model.channels=[8,16]", "model.latent_dim=8", *extra]
