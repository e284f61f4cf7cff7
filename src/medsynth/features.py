"""The domain feature network as the metrics and losses see it: embed images with it, tap it
for a perceptual loss.

Two sources (`medsynth.feature_runs.load_feature_net` picks one):
- a feature run made by `medsynth features train` (the VGG-style classifier of
  `nets/classifier.py`);
- external weights in a local file (.pt / .pth / .safetensors), e.g. a chest
  X-ray DenseNet121 state dict, loaded here into MONAI's DenseNet121. State dicts in
  torchvision's naming (CheXNet-style, optionally under "module." or
  "state_dict") are renamed to MONAI's. Nothing is downloaded.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from medsynth.errors import MedsynthError, reason
from medsynth.precision import autocast
from medsynth.provenance import file_sha256


@dataclass
class FeatureNet:
    """embed(x) -> B x dim; `module` is the torch network, `info` what the metrics record about it;
    classify(x) -> B predicted classes, for a network trained on classes (`classify_fn`: logits)."""

    module: nn.Module
    embed_fn: callable
    dim: int
    info: dict = field(default_factory=dict)
    image_size: list[int] | None = None
    in_channels: int | None = None
    precision: str = "32"  # "bf16-mixed": bf16 autocast (2-3x faster on CPUs with native bf16)
    classify_fn: callable = None  # images -> class logits (single-label class networks only)
    min_size: int = 1  # smallest image side the network takes (DenseNet121: 32, its five halvings)

    def embed(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """B x dim; for volumes (B x C x D x H x W) and a 2D network, B x 3 dim: the embeddings of the
        three orthogonal middle slices, each resized to the network's size, side by side."""
        if self._as_slices(images):
            size = self.image_size or [max(*images.shape[2:], self.min_size)] * 2
            return torch.cat([self._run(self.embed_fn, plane, batch_size)
                              for plane in orthogonal_slices(images, size)], 1)
        return self._run(self.embed_fn, images, batch_size)

    def classify(self, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor | None:
        """B predicted classes (argmax of the logits), or None for a network not trained on classes
        (or for volumes given to a 2D network)."""
        if self.classify_fn is None or self._as_slices(images):
            return None
        return self._run(self.classify_fn, images, batch_size).argmax(1)

    def _as_slices(self, images: torch.Tensor) -> bool:
        """Volumes given to a 2D network: embedded through their orthogonal slices."""
        return images.ndim == 5 and (self.image_size is None or len(self.image_size) == 2)

    @torch.no_grad()
    def _run(self, fn, images: torch.Tensor, batch_size: int) -> torch.Tensor:
        self.check(images)
        self.module.eval()
        device = next(self.module.parameters()).device
        # NHWC: oneDNN's fast layout, 1.6x on top of bf16 for the 64 px VGG (measured on 2 cores)
        layout = torch.channels_last if images.ndim == 4 else torch.contiguous_format
        self.module.to(memory_format=layout)
        out = []
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size].to(device).contiguous(memory_format=layout)
            with autocast(device, self.precision):
                out.append(fn(batch).float().cpu())
        return torch.cat(out)

    def check(self, images: torch.Tensor) -> None:
        where = self.info.get("source", "feature network")
        if self.in_channels is not None and images.shape[1] != self.in_channels:
            raise MedsynthError(f"{where} was trained on {self.in_channels}-channel images; "
                                f"these have {images.shape[1]}")
        if min(images.shape[2:]) < self.min_size:
            raise MedsynthError(f"{where} needs images of at least {self.min_size} px; these are "
                                f"{list(images.shape[2:])} (resize the sets with --image-size)")
        if self.image_size is not None and list(images.shape[2:]) != list(self.image_size):
            raise MedsynthError(f"{where} was trained on images of size {list(self.image_size)}; "
                                f"these are {list(images.shape[2:])} (resize the sets or train a feature "
                                "network at this size)")


def orthogonal_slices(volumes: torch.Tensor, size: list[int]) -> list[torch.Tensor]:
    """The middle axial, coronal and sagittal slices of B x C x D x H x W volumes, each B x C x size."""
    import torch.nn.functional as F

    planes = [volumes.select(axis, volumes.shape[axis] // 2) for axis in (2, 3, 4)]
    return [F.interpolate(p.float(), size=list(size), mode="bilinear", align_corners=False) for p in planes]


_TV_LAYER = re.compile(r"^(.*denselayer\d+\.)(norm|relu|conv)\.?(\d)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")


def _monai_names(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """torchvision / CheXNet DenseNet121 keys -> MONAI DenseNet121 keys."""
    out = {}
    for key, value in state.items():
        for prefix in ("module.", "model.", "densenet121."):
            while key.startswith(prefix):
                key = key[len(prefix):]
        match = _TV_LAYER.match(key)
        if match:
            key = f"{match.group(1)}layers.{match.group(2)}{match.group(3)}.{match.group(4)}"
        key = re.sub(r"^classifier\.(0\.)?", "class_layers.out.", key)
        out[key] = value
    return out


def load_densenet121(path: Path, device: str = "cpu") -> FeatureNet:
    """A DenseNet121 state dict from a local file; the embedding is the 1024-d pooled feature."""
    from monai.networks.nets import DenseNet121

    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # unpickling refusals, truncated files, bad headers
        raise MedsynthError(f"{path}: cannot read weights ({reason(exc)})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise MedsynthError(f"{path}: not a state dict of tensors")
    state = _monai_names(state)
    try:
        in_channels = state["features.conv0.weight"].shape[1]
        out_channels = state["class_layers.out.weight"].shape[0]
    except KeyError as exc:
        raise MedsynthError(f"{path}: not a DenseNet121 state dict (no {exc} key)") from None
    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=out_channels)
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise MedsynthError(f"{path}: weights do not fit MONAI's DenseNet121 ({reason(exc)})") from None
    net = net.to(device).eval()
    head = net.class_layers  # relu -> pool -> flatten -> out

    def embed(x):
        h = net.features(x)
        for name, layer in head.named_children():
            if name == "out":
                break
            h = layer(h)
        return h

    info = {"source": str(path), "kind": "monai-densenet121", "sha256": file_sha256(path)}
    return FeatureNet(net, embed, head.out.in_features, info, None, in_channels, min_size=32)


class PerceptualLoss(nn.Module):
    """sum_l w_l * mean(d(phi_l(x_hat), phi_l(x))) per sample, over taps `layers` of a frozen
    feature network's `features` sequence (forward hooks), d the squared ("mse") or absolute
    ("l1", the abdominal-CT tutorial's) difference, scaled by the pixel count so it sits on the
    same per-image scale as the summed reconstruction errors."""

    def __init__(self, net: FeatureNet, layers: list[int], weights: list[float] | None = None,
                 distance: str = "mse"):
        super().__init__()
        features = getattr(net.module, "features", None)
        if not isinstance(features, nn.Sequential):
            raise MedsynthError(f"{net.info.get('source')}: perceptual taps need a network with a "
                                "`features` sequence")
        if weights is not None and len(weights) != len(layers):
            raise MedsynthError(f"loss.perceptual_layer_weights has {len(weights)} entries for "
                                f"{len(layers)} layers")
        for i in layers:
            if not 0 <= i < len(features):
                raise MedsynthError(f"perceptual layer {i} is outside the feature network's "
                                    f"{len(features)} layers")
        self.net = net
        self.features = features.eval().requires_grad_(False)
        self.layers = list(layers)
        self.weights = list(weights) if weights is not None else [1.0] * len(layers)
        if distance not in ("mse", "l1"):
            raise MedsynthError(f"perceptual distance {distance!r}: expected mse or l1")
        self.distance = distance

    def taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Outputs of the tapped layers, caught by forward hooks while `features` runs."""
        caught: dict[int, torch.Tensor] = {}
        handles = [self.features[i].register_forward_hook(lambda m, a, out, i=i: caught.__setitem__(i, out))
                   for i in self.layers]
        try:
            self.features(x)
        finally:
            for h in handles:
                h.remove()
        return [caught[i] for i in self.layers]

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        self.net.check(target)
        pixels = target[0].numel()
        total = 0.0
        with torch.no_grad():
            ref = self.taps(target)
        for w, a, b in zip(self.weights, self.taps(recon), ref):
            diff = a.float() - b.float()
            total = total + w * (diff.abs() if self.distance == "l1" else diff.pow(2)).flatten(1).mean(1)
        return total * pixels
