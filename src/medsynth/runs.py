"""Run directories: one per run, never shared, holding everything the run made.

    <runs_dir>/<name>-<YYYYmmdd-HHMMSS>[-k]/
        config.yaml          resolved config (rebuilds the model on its own)
        checkpoints/         last.ckpt, best.ckpt (Lightning, for --resume)
        metrics.csv          per-step and per-epoch metrics
        model.safetensors    portable weights (no pickle)
        samples.png, reconstructions.png, summary.json
"""

from __future__ import annotations

import time
from pathlib import Path

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


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LAST
