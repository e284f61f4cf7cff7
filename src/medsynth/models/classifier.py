"""The domain feature network's recipe: a classifier on the real training split.

With labels it learns the classes (cross-entropy; multi-label: BCE); without,
it learns a self-supervised task — which of four rotations (0, 90, 180, 270
degrees) was applied — which needs no annotation and still has to see anatomy.
After training it records its test accuracy / ROC AUC and the SHA-256 of its
weights, so every metric computed with it can name the exact network.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from medsynth.errors import MedsynthError
from medsynth.metrics.utility import accuracy_auc
from medsynth.models.base import Recipe
from medsynth.nets.blocks import check_min_size
from medsynth.nets.classifier import VGGClassifier

ROTATIONS = 4
# `medsynth features train` without --config: the settings of configs/features_pneumonia.yaml
FEATURE_DEFAULTS = ("name=features", "model.family=classifier", "model.channels=[32,64,128]",
                    "model.latent_dim=128", "data.batch_size=128", "optim.weight_decay=0.0001",
                    "trainer.max_epochs=8")


def rotate_batch(x: torch.Tensor, generator=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each image turned by a random multiple of 90 degrees in its last two axes; returns (images, k)."""
    k = torch.randint(0, ROTATIONS, (len(x),), generator=generator)
    out = torch.stack([torch.rot90(img, int(r), dims=(-2, -1)) for img, r in zip(x, k)])
    return out, k.to(x.device)


class ClassifierRecipe(Recipe):
    can_classify = True
    is_feature_network = True

    def __init__(self, cfg: DictConfig | dict):
        super().__init__(cfg)
        cfg, m = self.cfg, self.cfg.model
        self.self_supervised = not m.num_classes
        self.multilabel = bool(m.multilabel)
        check_min_size(m.image_size, len(m.channels) - 1, f"model.channels ({len(m.channels)} levels, a pooling between each)")
        if self.self_supervised and len(set(m.image_size[-2:])) != 1:
            raise MedsynthError(f"rotation pretext needs square images, got {list(m.image_size)}")
        outputs = ROTATIONS if self.self_supervised else m.num_classes
        self.net = VGGClassifier(m.spatial_dims, m.in_channels, outputs, list(m.channels), m.latent_dim)

    def targets(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        x = batch["image"]
        if self.self_supervised:
            return rotate_batch(x)
        return x, batch["label"]

    def loss_terms(self, batch) -> dict[str, torch.Tensor]:
        x, y = self.targets(batch)
        logits = self.net(x).float()
        if self.multilabel:
            loss = F.binary_cross_entropy_with_logits(logits, y.float())
            acc = ((logits > 0) == (y > 0.5)).float().mean()
        else:
            loss = F.cross_entropy(logits, y)
            acc = (logits.argmax(1) == y).float().mean()
        return {"loss": loss, "accuracy": acc}

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        self.check_finite(terms["loss"], terms)
        self.log_train_terms(terms)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        terms = self.loss_terms(batch)
        n = len(batch["image"])
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val_loss", terms["loss"], on_epoch=True, prog_bar=True, batch_size=n, logger=False,
                 sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        return torch.optim.Adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))

    # --- the shared interface -------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """The embedding (penultimate layer): B x embed_dim."""
        return self.net.embed(x.to(self.device)).float()

    @torch.no_grad()
    def predict_scores(self, x: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
        """Class probabilities B x K (sigmoid per label for multi-label)."""
        out = []
        for i in range(0, len(x), batch_size):
            logits = self.net(x[i:i + batch_size].to(self.device)).float()
            out.append(torch.sigmoid(logits) if self.multilabel else logits.softmax(1))
        return torch.cat(out).cpu()

    @property
    def input_channels(self) -> int:
        """The image channels the network takes."""
        return int(self.cfg.model.in_channels)

    @property
    def task(self) -> str:
        return "rotation" if self.self_supervised else ("multilabel" if self.multilabel else "classes")

    def test_scores(self, x: torch.Tensor, y: torch.Tensor | None, seed: int = 0) -> dict[str, float]:
        """Accuracy and ROC AUC on held-out images (on seeded rotations when self-supervised)."""
        if self.self_supervised:
            x, y = rotate_batch(x, torch.Generator().manual_seed(seed))
        return accuracy_auc(self.predict_scores(x), y, self.multilabel)
