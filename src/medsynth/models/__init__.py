"""One recipe (a LightningModule) per model family, all with the same small interface:
sample(n, condition=None, generator=None), reconstruct(x, condition=None), encode(x, condition=None)."""

from __future__ import annotations

from omegaconf import DictConfig

from medsynth.errors import MedsynthError


def build_recipe(cfg: DictConfig):
    """The LightningModule for cfg.model.family (model fields must already hold the data's shape)."""
    family = cfg.model.family
    if family == "vae":
        from medsynth.models.vae import VAERecipe

        return VAERecipe(cfg)
    if family == "gan":
        from medsynth.models.gan import GANRecipe

        return GANRecipe(cfg)
    if family == "vaegan":
        from medsynth.models.vaegan import VAEGANRecipe

        return VAEGANRecipe(cfg)
    if family == "pix2pix":
        from medsynth.models.translation import Pix2PixRecipe

        return Pix2PixRecipe(cfg)
    if family == "cyclegan":
        from medsynth.models.translation import CycleGANRecipe

        return CycleGANRecipe(cfg)
    if family == "ldm":
        from medsynth.models.ldm import LatentDiffusionRecipe

        return LatentDiffusionRecipe(cfg)
    if family == "classifier":
        from medsynth.models.classifier import ClassifierRecipe

        return ClassifierRecipe(cfg)
    if family == "segmentation":
        from medsynth.models.segmentation import SegmentationRecipe

        return SegmentationRecipe(cfg)
    raise MedsynthError(f"model.family={family!r} is not a known model family")
