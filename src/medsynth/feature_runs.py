"""Feature networks from where they live: a `medsynth features train` run (rebuilt through the
model registry) or a local weights file, and the perceptual loss a recipe trains with.

This sits above `models/` because a feature run is a run; `features.py` below it holds the
network wrappers themselves, so recipes never load runs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from medsynth.errors import MedsynthError
from medsynth.features import FeatureNet, PerceptualLoss, load_densenet121
from medsynth.models import load_run
from medsynth.precision import precision_for
from medsynth.provenance import file_sha256
from medsynth.runs import FEATURES, WEIGHTS


def load_feature_net(source: str | Path, device: str = "cpu", precision: str = "auto") -> FeatureNet:
    """precision: "auto" (bf16 autocast where the hardware runs bf16 natively), "32" or "bf16-mixed";
    recorded in `info`, since features, and so FID, differ slightly between the two."""
    source = Path(source)
    if source.is_dir():
        net = _from_run(source, device)
    elif source.is_file():
        net = load_densenet121(source, device)
    else:
        net = None
    if net is not None:
        net.precision = "bf16-mixed" if precision_for(device, precision) == "bf16-mixed" else "32"
        net.info["precision"] = net.precision
        return net
    raise MedsynthError(f"{source}: feature network not found (a `medsynth features train` run directory "
                        "or a local weights file)")


def _from_run(run_dir: Path, device: str) -> FeatureNet:
    recipe = load_run(run_dir, device)
    if not recipe.is_feature_network:
        raise MedsynthError(f"{run_dir}: is a {recipe.cfg.model.family} run, not a feature network")
    meta_path = run_dir / FEATURES
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    info = {"source": str(run_dir), "kind": "medsynth-vgg", "sha256": meta.get("sha256") or
            file_sha256(run_dir / WEIGHTS), "task": meta.get("task"),
            "test_accuracy": meta.get("accuracy"), "test_auc": meta.get("auc")}
    classes = meta.get("task") == "classes"
    # a segmenting network is fully convolutional: it takes any size its poolings allow
    size = None if meta.get("task") == "segmentation" else list(recipe.cfg.model.image_size)
    return FeatureNet(recipe.net, recipe.net.embed, recipe.net.embed_dim, info, size, recipe.input_channels,
                      classify_fn=recipe.net if classes else None, min_size=2 ** (len(recipe.cfg.model.channels) - 1))


def perceptual_loss(cfg) -> PerceptualLoss | None:
    """The perceptual loss of cfg.loss (taps of loss.perceptual_net), or None when its weight is 0;
    refuses a feature network trained on another image size or channel count."""
    lc, m = cfg.loss, cfg.model
    if lc.perceptual_weight <= 0:
        return None
    net = load_feature_net(lc.perceptual_net)
    net.check(torch.zeros(1, m.in_channels, *m.image_size))
    return PerceptualLoss(net, list(lc.perceptual_layers),
                          None if lc.perceptual_layer_weights is None else list(lc.perceptual_layer_weights),
                          lc.perceptual_distance)
