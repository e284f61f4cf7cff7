"""Volumetric segmentation: Vox2Vox (Cirillo et al. 2020) and its plain-UNet baseline, one recipe.

- Vox2Vox: model.generator=unet (the 3D pix2pix U-Net of nets/unet_gan.py), a conditional 3D
  PatchGAN seeing the input volume with either the one-hot truth or the generator's softmax;
  generator loss = adversarial_weight * least squares + dice_weight (lambda, 5 in the paper) *
  generalized Dice (MONAI, classes weighted by inverse squared volume).
- Baseline: model.generator=monai_unet, loss.adversarial_weight=0 (no discriminator is built):
  the same patches, the same Dice loss, no adversary.

Training sees class-balanced patches (data/patches.py); whole cases are segmented by MONAI's
sliding-window inference with Gaussian-weighted overlaps.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.errors import MedsynthError
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe
from medsynth.nets.unet_gan import build_discriminator, build_generator


class SegmentationRecipe(ManualRecipe):
    """Batches are {"image": B x C x P^3 in [-1, 1], "label": B x 1 x P^3 class indices}."""

    can_segment = True

    def __init__(self, cfg):
        super().__init__(cfg)
        from monai.losses import GeneralizedDiceLoss

        m = self.cfg.model
        if not m.num_classes or m.num_classes < 2:
            raise MedsynthError("model.family=segmentation needs at least two classes (data.classes)")
        if m.generator == "unet" and any(s % 2 ** m.depth for s in m.image_size):
            raise MedsynthError(f"patch size {list(m.image_size)} must be divisible by 2^model.depth = {2 ** m.depth}")
        self.generator = build_generator(m, m.num_classes)
        self.adversarial = self.cfg.loss.adversarial_weight > 0
        self.discriminator = build_discriminator(m, m.in_channels + m.num_classes) if self.adversarial else None
        self.adversary = Adversary(self.cfg.loss) if self.adversarial else None
        self.dice_loss = GeneralizedDiceLoss(to_onehot_y=True, softmax=True, w_type="square")

    @property
    def classes(self) -> list[int]:
        return list(self.cfg.data.classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.generator(x)

    # --- training -------------------------------------------------------------------------
    def _discriminate(self, x, target):
        return self.discriminator(torch.cat([x, target], dim=1))[-1]

    def training_step(self, batch, batch_idx):
        x, y = batch["image"], batch["label"]
        optimizers = self.optimizers()
        opt_g, opt_d = optimizers if self.adversarial else (optimizers, None)
        logits = self.generator(x)
        dice = self.dice_loss(logits.float(), y)
        terms = {"dice": dice}
        l = self.cfg.loss
        if l.ce_weight:
            terms["ce"] = F.cross_entropy(logits.float(), y[:, 0])
            dice = dice + l.ce_weight * terms["ce"]  # the supervised term, Dice + CE, as one
        if not self.adversarial:
            self.check_finite(dice, terms)
            self.optimise(opt_g, dice)
            self.log_train_terms({"loss": dice, **terms})
            self.step_schedulers()
            return
        probs = logits.float().softmax(dim=1)
        truth = F.one_hot(y[:, 0], self.cfg.model.num_classes).movedim(-1, 1).to(probs.dtype)
        real_out, fake_out = self._discriminate(x, truth), self._discriminate(x, probs.detach())
        d_terms = self.adversary.step_on(self, opt_d, real_out, fake_out)
        adv = self.adversary.generator_loss(self._discriminate(x, probs))
        g_loss = l.adversarial_weight * adv + l.dice_weight * dice
        terms.update(g_adv=adv, **d_terms)
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        self.log_train_terms({"loss": g_loss, **terms})
        self.step_schedulers()

    def validation_step(self, batch, batch_idx):
        x, y = batch["image"], batch["label"]
        logits = self.generator(x).float()
        dice_loss = self.dice_loss(logits, y)
        hard = patch_dice(logits.argmax(1), y[:, 0], self.cfg.model.num_classes)
        n = len(x)
        self.log("val/dice_loss", dice_loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val/dice_foreground", hard, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val_loss", dice_loss, on_epoch=True, prog_bar=True, batch_size=n, logger=False, sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        optimizers = [self.adam(self.generator.parameters(), o.lr)]
        if self.adversarial:
            optimizers.append(self.adam(self.discriminator.parameters(), o.d_lr or o.lr))
        return self.with_schedule(optimizers)

    # --- inference ------------------------------------------------------------------------
    @torch.no_grad()
    def segment(self, image: np.ndarray | torch.Tensor, mask: np.ndarray | None = None, overlap: float | None = None,
                sw_batch_size: int | None = None, largest_component: bool | None = None,
                flips: bool | None = None) -> np.ndarray:
        """A whole normalised case C x D x H x W -> class indices D x H x W (uint8), by sliding
        windows of the training patch size with Gaussian-weighted overlaps. With a mask (the
        brain, when the run used data.mask), everything outside it is background: the model never
        saw patches centred there. largest_component (default model.largest_component): keep only
        each foreground class's largest connected component, for structures that are one piece
        (the left atrium), where stray blobs are false positives far from the organ. flips (default
        model.test_time_flips): the class probabilities averaged over the volume flipped along
        every subset of its three axes (8 passes; training flipped patches the same way).
        model.foreground_threshold (None: the argmax): foreground where 1 - p(background) exceeds
        it, as its most probable foreground class."""
        m = self.cfg.model
        probs = self.class_probabilities(image, overlap, sw_batch_size, flips)
        pred = foreground_classes(probs, m.get("foreground_threshold"))
        if mask is not None:
            pred[~np.asarray(mask, dtype=bool)] = 0
        if m.largest_component if largest_component is None else largest_component:
            pred = keep_largest_components(pred, m.num_classes)
        return pred

    @torch.no_grad()
    def class_probabilities(self, image: np.ndarray | torch.Tensor, overlap: float | None = None,
                            sw_batch_size: int | None = None, flips: bool | None = None) -> torch.Tensor:
        """A whole normalised case C x D x H x W -> softmax probabilities K x D x H x W (CPU float32),
        the sliding-window (and flip) average that segment() takes the argmax of."""
        import itertools

        from monai.inferers import sliding_window_inference

        m = self.cfg.model
        x = torch.as_tensor(image, dtype=torch.float32)[None].to(self.device)
        if x.shape[1] != m.in_channels:
            raise MedsynthError(f"the model takes {m.in_channels} contrasts, the volume has {x.shape[1]}")
        self.eval()
        use_flips = m.test_time_flips if flips is None else flips
        views = [()] + ([a for r in (1, 2, 3) for a in itertools.combinations((2, 3, 4), r)] if use_flips else [])
        probs = 0
        for axes in views:
            p = sliding_window_inference(
                x.flip(axes) if axes else x, roi_size=list(m.image_size), sw_batch_size=sw_batch_size or m.sw_batch_size,
                predictor=lambda t: self.generator(t).float().softmax(dim=1),
                overlap=m.sw_overlap if overlap is None else overlap, mode="gaussian")
            probs = probs + (p.flip(axes) if axes else p) / len(views)
        return probs[0].cpu()


def foreground_classes(probs: torch.Tensor, threshold: float | None = None) -> np.ndarray:
    """Class probabilities K x *spatial -> class indices (uint8): the argmax without a threshold;
    with one, 0 where 1 - p(background) <= threshold, elsewhere the most probable foreground class
    (with two classes: p(foreground) > threshold). A threshold above 0.5 cuts voxels the model is
    unsure of, e.g. a neighbouring chamber joined to the left atrium at p 0.5-0.6."""
    if threshold is None:
        return probs.argmax(0).to(torch.uint8).numpy()
    pred = probs[1:].argmax(0) + 1
    pred[(1 - probs[0]) <= threshold] = 0
    return pred.to(torch.uint8).numpy()


def keep_largest_components(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Class indices D x H x W -> the same with every foreground class cut to its largest
    26-connected component (scipy.ndimage.label; MONAI's KeepLargestConnectedComponent needs
    scikit-image, which nothing else here uses); the rest becomes background."""
    from scipy import ndimage

    out = pred.copy()
    for k in range(1, num_classes):
        components, n = ndimage.label(pred == k, structure=np.ones((3, 3, 3), dtype=bool))
        if n > 1:
            sizes = np.bincount(components.ravel())[1:]
            out[(components > 0) & (components != 1 + int(np.argmax(sizes)))] = 0
    return out


def patch_dice(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Mean hard Dice over the foreground classes present in prediction or truth (a batch of patches)."""
    scores = []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        total = p.sum() + t.sum()
        if total > 0:
            scores.append(2.0 * (p & t).sum() / total)
    return torch.stack(scores).float().mean() if scores else torch.tensor(1.0, device=pred.device)
