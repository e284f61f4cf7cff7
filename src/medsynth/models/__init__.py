"""One recipe (a LightningModule) per model family, found through the registry in
`medsynth.families`, and `load_run`, which rebuilds a trained recipe from its run directory.

Every recipe states its capabilities (see `models.base.Recipe`): can_sample, can_reconstruct,
can_translate, can_segment, can_classify, conditional.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import torch
from omegaconf import DictConfig

from medsynth.config import load_config
from medsynth.errors import MedsynthError, reason
from medsynth.families import FAMILIES
from medsynth.runs import CONFIG, WEIGHTS, check_run_dir, read_weights


def recipe_class(family: str) -> type:
    """The recipe class registered for `family`."""
    if family not in FAMILIES:
        raise MedsynthError(f"model.family={family!r} is not a known model family ({', '.join(FAMILIES)})")
    module, name = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), name)


def build_recipe(cfg: DictConfig):
    """The LightningModule for cfg.model.family (model fields must already hold the data's shape)."""
    return recipe_class(cfg.model.family)(cfg)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise MedsynthError(f"device {device!r}: not a torch device ({exc})") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise MedsynthError(f"device {device!r}: CUDA is not available on this machine (use --device cpu)")
    return dev


def load_run(run_dir: str | Path, device: str | torch.device = "cpu"):
    """Rebuild a trained recipe from a run directory's config.yaml and model.safetensors (no pickle),
    in eval mode on `device`."""
    _device(device)  # a device this machine lacks is named before anything is read
    run_dir = check_run_dir(run_dir)
    return load_weights(build_recipe(load_config(run_dir / CONFIG)), run_dir, device)


def load_weights(recipe, run_dir: Path, device: str | torch.device = "cpu", leave_out: tuple[str, ...] = ()):
    """`recipe` (built from the run's config, perhaps edited) with the run's weights, strictly: every
    tensor fits, none is missing, except those whose last dotted name is in `leave_out`, which keep
    the recipe's own (e.g. a mixture prior refitted with another size); in eval mode on `device`."""
    _device(device)
    state = {k: v for k, v in read_weights(run_dir, device).items() if k.rsplit(".", 1)[-1] not in leave_out}
    try:
        missing, unexpected = recipe.load_state_dict(state, strict=not leave_out)
    except RuntimeError as exc:
        raise MedsynthError(f"{run_dir / WEIGHTS}: weights do not fit {run_dir / CONFIG} "
                            f"({reason(exc)})") from None
    missing = [k for k in missing if k.rsplit(".", 1)[-1] not in leave_out]
    if missing or unexpected:
        raise MedsynthError(f"{run_dir / WEIGHTS}: weights do not fit {run_dir / CONFIG} (missing {missing[:3]}, "
                            f"unexpected {unexpected[:3]})")
    return recipe.to(device).eval()
