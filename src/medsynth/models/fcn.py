"""A domain feature network trained to segment: the abdominal-CT tutorial's perceptual network.

Hansen, Blendowski and Heinrich tapped a VGG-like fully convolutional network trained to segment
the pancreas in CT, not an ImageNet classifier, for their VAE's perceptual loss. This recipe
trains that network (nets/classifier.py VGGFCN: the classifier's VGG trunk with FCN-8s scoring)
on 2.5D CT slices whose 4th channel is the organ class of the centre slice (data.format=
ct_slices with data.segment), with Dice + cross-entropy (MONAI DiceCELoss). Its `features`
sequence is addressed by layer index for the perceptual taps exactly as the classifier's, and its
pooled trunk is an embedding for the metrics. After training it records the held-out Dice per
class and the SHA-256 of its weights (features.json).
"""

from __future__ import annotations

import numpy as np
import torch
from omegaconf import DictConfig

from medsynth.errors import MedsynthError
from medsynth.models.classifier import ClassifierRecipe
from medsynth.nets.blocks import check_min_size
from medsynth.nets.classifier import VGGFCN

# `medsynth features train --task segmentation` without --config: configs/features_ct_seg.yaml's
# settings (the data's path, label map and, for a DICOM folder, slice axis come from the command)
SEGMENTATION_FEATURE_DEFAULTS = (
    "name=features_seg", "model.family=fcn", "model.channels=[32,64,128]", "data.format=ct_slices",
    "data.organ=7", "data.organ_margin=20", "data.segment=[1,5,6,7,20,52]", "data.crop_to_mask=320",
    "data.crop_size=256", "data.val_fraction=0.2", "data.batch_size=8", "optim.lr=0.001",
    "optim.weight_decay=0.0001", "trainer.max_epochs=60")


class FCNRecipe(ClassifierRecipe):
    """Batches are {"image": B x (C + 1) x H x W}: C image channels in [-1, 1], then the class
    index (0 .. K-1, as float) of every pixel. Logits B x K x H x W."""

    can_classify = False  # no image-level classes: not used for class consistency or TSTR

    def __init__(self, cfg: DictConfig | dict):
        super(ClassifierRecipe, self).__init__(cfg)  # the classifier's own net is not built
        m, d = self.cfg.model, self.cfg.data
        if d.segment is None:
            raise MedsynthError("model.family=fcn learns from a label channel: set data.segment (data.format=ct_slices)")
        if m.in_channels < 2:
            raise MedsynthError(f"model.family=fcn needs image channels and a label channel; the data has {m.in_channels}")
        check_min_size(m.image_size, len(m.channels) - 1, f"model.channels ({len(m.channels)} levels, a pooling between each)")
        self.num_classes = len(d.segment) + 1
        self.self_supervised, self.multilabel = False, False
        self.net = VGGFCN(m.spatial_dims, self.input_channels, self.num_classes, list(m.channels))
        from monai.losses import DiceCELoss

        self.criterion = DiceCELoss(to_onehot_y=True, softmax=True)

    @property
    def input_channels(self) -> int:
        """The image channels the network takes (the data's last channel is the label)."""
        return int(self.cfg.model.in_channels) - 1

    def targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"]
        return x[:, :-1], x[:, -1:].round().long()

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        x, y = self.targets(batch)
        logits = self.net(x).float()
        loss = self.criterion(logits, y)
        return {"loss": loss, "accuracy": (logits.argmax(1, keepdim=True) == y).float().mean()}

    @property
    def task(self) -> str:
        return "segmentation"

    @torch.no_grad()
    def predict_labels(self, x: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
        """B x C x H x W images -> B x H x W class indices."""
        self.net.eval()
        return torch.cat([self.net(x[i:i + batch_size].to(self.device)).float().argmax(1).cpu()
                          for i in range(0, len(x), batch_size)])

    def test_scores(self, x: torch.Tensor, y: torch.Tensor | None, seed: int = 0) -> dict[str, float]:
        """Dice per class over the held-out slices taken together (classes absent from both the
        prediction and the truth are left out), and their mean (None when no class is in either).
        `x` holds the label channel last."""
        from medsynth.metrics.segmentation import segmentation_scores

        pred = self.predict_labels(x[:, :-1]).numpy()
        truth = x[:, -1].round().long().numpy()
        present = [k for k in range(1, self.num_classes) if (pred == k).any() or (truth == k).any()]
        scores = segmentation_scores(pred, truth, present)["classes"]
        labels = list(self.cfg.data.segment)
        out = {f"dice_label_{labels[int(k) - 1]}": s["dice"] for k, s in scores.items()}
        out["dice_mean"] = float(np.mean(list(out.values()))) if out else None
        return out
