"""`sample(run_dir, n, out)`: draw synthetic images from a trained run."""

from __future__ import annotations

from pathlib import Path

import torch

from medsynth.errors import MedsynthError
from medsynth.io import load_run, save_grid, save_npz


def draw(recipe, n: int, label: int | None = None, seed: int = 0, batch_size: int = 256):
    """n samples (B x C x *spatial, [-1, 1]) and their labels (None for unconditional models).

    A conditional model with no label given cycles through its classes, so the
    output is a balanced labelled set.
    """
    if n <= 0:
        raise MedsynthError(f"number of samples must be positive, got {n}")
    if label is not None and not getattr(recipe, "conditional", False):
        raise MedsynthError("--label given, but this model is not conditional")
    if getattr(recipe, "conditional", False) and recipe.cfg.model.num_classes and label is None:
        labels = torch.arange(n) % recipe.cfg.model.num_classes
    elif label is not None:
        labels = torch.full((n,), int(label))
    else:
        labels = None
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    chunks = []
    for start in range(0, n, batch_size):
        part = None if labels is None else labels[start:start + batch_size]
        chunks.append(recipe.sample(min(batch_size, n - start), condition=part, generator=generator).cpu())
    return torch.cat(chunks), labels


def sample(run_dir: str | Path, n: int, out: str | Path, grid: str | Path | None = None,
           label: int | None = None, seed: int = 0, batch_size: int = 256, device: str = "cpu") -> Path:
    """Write n samples to `out` (.npz with keys images, labels) and optionally a PNG grid."""
    out = Path(out)
    if out.suffix != ".npz":
        raise MedsynthError(f"{out}: output must be a .npz file")
    recipe = load_run(run_dir, device)
    images, labels = draw(recipe, n, label, seed, batch_size)
    save_npz(out, images, labels)
    if grid is not None:
        save_grid(grid, images[:64])
    return out
