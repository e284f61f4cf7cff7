"""Run directories: one per run, never shared, holding everything the run made.

    <runs_dir>/<name>-<YYYYmmdd-HHMMSS>[-k]/
        config.yaml          resolved config (rebuilds the model on its own)
        checkpoints/         last.ckpt, best.ckpt (Lightning, for --resume)
        metrics.csv          per-step and per-epoch metrics
        model.safetensors    portable weights (no pickle)
        samples.png, reconstructions.png, summary.json
"""

from __future__ import annotations

import os
import pickle
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medsynth.errors import MedsynthError, reason
from medsynth.io import atomic_path

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create a fresh directory; an existing one is never reused (mkdir without exist_ok is atomic)."""
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = root / (stem if k == 1 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


def launched_rank() -> tuple[int, int]:
    """(global rank, world size) set by torchrun or SLURM for this process; (0, 1) otherwise."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    return rank, world


def claim_run_dir(path: str | Path, rank: int) -> Path:
    """An explicit run directory: rank 0 refuses one that already holds a run; other ranks join it."""
    path = Path(path)
    if rank == 0:
        if (path / "config.yaml").exists():
            raise MedsynthError(f"{path}: already holds a run (use --resume, or another run_dir)")
        path.mkdir(parents=True, exist_ok=True)
    else:
        path.mkdir(parents=True, exist_ok=True)
    return path


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LAST


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically beside the target (temp file, fsync, rename: a SIGKILL leaves
    the old file or the new one) and loaded without running code (weights_only=True)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                torch.save(checkpoint, fh)
                fh.flush()
                os.fsync(fh.fileno())

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise MedsynthError(f"{path}: refused to load, the checkpoint holds more than weights "
                                f"(objects that would run code when unpickled): {reason(exc)}") from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise MedsynthError(f"{path}: not a readable checkpoint ({reason(exc)})") from None
