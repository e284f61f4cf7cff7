"""Writers (npz, PNG grids) and portable weights (safetensors + YAML).

Every file is written to a temporary name in its folder and renamed into
place, so an interrupted write never leaves a half-file under the real name.
"""

from __future__ import annotations

import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from medsynth.errors import MedsynthError

WEIGHTS = "model.safetensors"
CONFIG = "config.yaml"


@contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[-1, 1] B x C x *spatial -> uint8 in MedMNIST layout (N x H x W, N x H x W x 3, N x D x H x W)."""
    arr = ((images.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy()
    if arr.shape[1] == 1:
        return arr[:, 0]
    return np.moveaxis(arr, 1, -1)


def save_npz(path: str | Path, images: torch.Tensor, labels: torch.Tensor | np.ndarray | None = None) -> None:
    """Images (and labels N x 1 or N x k) under the keys `images` / `labels`, readable as a dataset."""
    payload = {"images": to_uint8(images)}
    if labels is not None:
        lab = np.asarray(labels.cpu() if torch.is_tensor(labels) else labels)
        payload["labels"] = lab[:, None] if lab.ndim == 1 else lab
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:  # a file object: np.savez would append .npz to the temp name
            np.savez_compressed(fh, **payload)


def grid_image(images: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile B x C x *spatial images into one uint8 H x W (x 3) array; 3D volumes show their middle slice."""
    if images.ndim == 5:
        images = images[:, :, images.shape[2] // 2]
    if images.shape[1] not in (1, 3):
        images = images[:, :1]
    tiles = to_uint8(images)
    if tiles.ndim == 3:
        tiles = tiles[..., None]
    n, h, w, c = tiles.shape
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    rows = math.ceil(n / nrow)
    canvas = np.zeros((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, nrow)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        canvas[y:y + h, x:x + w] = tiles[i]
    return canvas[..., 0] if c == 1 else canvas


def save_grid(path: str | Path, images: torch.Tensor, nrow: int | None = None) -> None:
    canvas = grid_image(images, nrow)
    path = Path(path)
    with atomic_path(path) as tmp:
        Image.fromarray(canvas).save(tmp, format="PNG")


def export_weights(run_dir: str | Path, module: torch.nn.Module) -> Path:
    """The module's state dict as safetensors: loadable without unpickling anything."""
    from safetensors.torch import save_file

    path = Path(run_dir) / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "medsynth"})
    return path


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained recipe from a run directory's config.yaml and model.safetensors (no pickle)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medsynth.config import load_config
    from medsynth.models import build_recipe

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsynthError(f"{run_dir}: run directory not found")
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).is_file():
            raise MedsynthError(f"{run_dir}: no {name} (is this a finished medsynth run?)")
    cfg = load_config(run_dir / CONFIG)
    recipe = build_recipe(cfg)
    try:
        state = load_file(str(run_dir / WEIGHTS), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedsynthError(f"{run_dir / WEIGHTS}: cannot read weights ({exc})") from None
    try:
        recipe.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MedsynthError(f"{run_dir / WEIGHTS}: weights do not fit {run_dir / CONFIG} "
                            f"({str(exc).splitlines()[0]})") from None
    return recipe.to(device).eval()
