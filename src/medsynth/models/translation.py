"""pix2pix (Isola et al. 2017): paired image-to-image translation, e.g. BraTS T1c -> FLAIR.

Batches hold source and target stacked as channels (data.format=paired_slices; the last
data.target_channels are the target). Generator: the U-Net of nets/unet_gan.py in 2D with a tanh
output; discriminator: MONAI's PatchDiscriminator on source + (real or translated) target;
generator loss = adversarial_weight * least squares + l1_weight (lambda, 100 in the paper) * L1.
"""

from __future__ import annotations

import torch

from medsynth.errors import MedsynthError
from medsynth.models.adversarial import AdversarialRecipe
from medsynth.nets.unet_gan import build_discriminator, UNetGenerator


class Pix2PixRecipe(AdversarialRecipe):
    def __init__(self, cfg):
        super().__init__(cfg)
        m = self.cfg.model
        self.target_channels = int(self.cfg.data.target_channels)
        self.source_channels = int(m.in_channels) - self.target_channels
        if self.source_channels < 1:
            raise MedsynthError(f"pix2pix needs source channels besides the {self.target_channels} target channel(s)")
        if any(s % 2 ** m.depth for s in m.image_size):
            raise MedsynthError(f"image size {list(m.image_size)} must be divisible by 2^model.depth = {2 ** m.depth}")
        self.generator = UNetGenerator(2, self.source_channels, self.target_channels, m.width, m.depth,
                                       m.bottleneck_blocks, m.dropout)
        self.discriminator = build_discriminator(m, int(m.in_channels))

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images[:, :self.source_channels], images[:, self.source_channels:]

    @torch.no_grad()
    def translate(self, source: torch.Tensor) -> torch.Tensor:
        """B x source channels x H x W in [-1, 1] -> B x target channels x H x W in [-1, 1]."""
        if source.shape[1] != self.source_channels:
            raise MedsynthError(f"the model translates {self.source_channels}-channel images, got {source.shape[1]}")
        was = self.generator.training
        self.generator.eval()
        out = torch.tanh(self.generator(source.to(self.device).float())).float()
        self.generator.train(was)
        return out

    def sample(self, n, condition=None, generator=None):
        raise MedsynthError("a pix2pix model translates images rather than drawing them: "
                            "`medsynth translate RUN --input IN --out OUT`")

    def training_step(self, batch, batch_idx):
        source, target = self.split(batch["image"])
        opt_g, opt_d = self.optimizers()
        fake = torch.tanh(self.generator(source))
        real_out = self.discriminator(torch.cat([source, target], 1))[-1]
        fake_out = self.discriminator(torch.cat([source, fake.detach()], 1))[-1]
        d_loss = self.discriminator_loss(real_out, fake_out)
        accuracy = self.discriminator_accuracy(real_out, fake_out)
        self.check_finite(d_loss, {"d_loss": d_loss})
        self.check_collapse(d_loss)
        updated = self.update_discriminator(accuracy)
        if updated:
            self.optimise(opt_d, d_loss)
        adv = self.generator_adversarial_loss(self.discriminator(torch.cat([source, fake], 1))[-1])
        l1 = (fake.float() - target.float()).abs().mean()
        g_loss = self.cfg.loss.adversarial_weight * adv + self.cfg.loss.l1_weight * l1
        terms = {"g_adv": adv, "l1": l1, "d_loss": d_loss, "d_accuracy": accuracy,
                 "d_updated": torch.tensor(float(updated))}
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        self.log_train_terms({"loss": g_loss, **terms})

    def validation_step(self, batch, batch_idx):
        source, target = self.split(batch["image"])
        l1 = (torch.tanh(self.generator(source)).float() - target.float()).abs().mean()
        self.log("val/l1", l1, on_epoch=True, batch_size=len(source), sync_dist=True)
        self.log("val_loss", l1, on_epoch=True, prog_bar=True, batch_size=len(source), logger=False, sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        return [self.adam(self.generator.parameters(), o.lr),
                self.adam(self.discriminator.parameters(), o.d_lr or o.lr)]

    def after_training(self, splits, run_dir, seed: int) -> dict:
        """translations.png (rows: source, target, translation) and translation.json: MAE, PSNR and
        SSIM against the target inside the brain (voxels not -1 in every channel) on the held-out
        split, beside the trivial baseline of the source itself."""
        from medsynth.io import save_grid, write_text
        from medsynth.metrics.translation import translation_scores
        from medsynth.provenance import synthetic_provenance
        import json

        held = splits.test if splits.test is not None and len(splits.test) else splits.val
        source, target = self.split(held.images)
        fake = torch.cat([self.translate(source[i:i + 64]).cpu() for i in range(0, len(source), 64)])
        mask = (held.images > -1).any(1, keepdim=True)
        scores = {"model": translation_scores(fake, target, mask),
                  "baseline_source": translation_scores(source[:, -1:].expand_as(target), target, mask),
                  "images": len(source)}
        write_text(run_dir / "translation.json", json.dumps(scores, indent=2))
        pick = torch.linspace(0, len(source) - 1, min(8, len(source))).long()
        rows = torch.cat([source[pick, -1:], target[pick, :1], fake[pick, :1]])
        save_grid(run_dir / "translations.png", rows, nrow=len(pick),
                  provenance=synthetic_provenance(self, run_dir, seed, kind="translations (rows: real source, real "
                                                  "target, synthetic translation)"))
        return {f"test_{k}": v for k, v in scores["model"].items()}
