"""DCGAN and the class-conditional DCGAN as one recipe (model.family=gan, model.conditional).

Each batch: the discriminator sees the real images and a fresh batch of generated ones (updated
only under the accuracy threshold, see models/adversarial.py), then the generator is updated to
make the discriminator call its images real. Options: loss.adversarial (bce, the original
non-saturating objective; least_squares; hinge), model.spectral_norm in the discriminator, and
model.ema_decay: an exponential moving average of the generator's weights (and batch-norm
statistics) kept beside it and used for sampling.
"""

from __future__ import annotations

import torch

from medsynth.errors import MedsynthError
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe, moving_average
from medsynth.nets.dcgan import DCGANDiscriminator, DCGANGenerator


class GANRecipe(ManualRecipe):
    """Batches are {"image": B x C x H x W in [-1, 1], "label": B (when labelled)}."""

    can_sample = True

    def __init__(self, cfg):
        super().__init__(cfg)
        m = self.cfg.model
        if m.spatial_dims != 2:
            raise MedsynthError("model.family=gan is 2D (MedMNIST-style images); model.spatial_dims must be 2")
        if len(set(m.image_size)) != 1:
            raise MedsynthError(f"model.family=gan needs square images, got {list(m.image_size)}")
        if m.conditional and not m.num_classes:
            raise MedsynthError("model.conditional=true needs labelled data (no labels found)")
        if m.conditional and m.multilabel:
            raise MedsynthError("the conditional GAN takes one class per image; this data is multi-label")
        self.conditional = bool(m.conditional)
        self.adversary = Adversary(self.cfg.loss)
        cond = m.num_classes if self.conditional else 0
        size = int(m.image_size[0])
        self.generator = DCGANGenerator(m.latent_dim, m.in_channels, size, list(m.channels), cond)
        self.discriminator = DCGANDiscriminator(m.in_channels, size, list(m.channels), cond, m.spectral_norm)
        self.generator_ema = moving_average(self.generator, m.ema_decay)

    @torch.no_grad()
    def sample(self, n: int, condition=None, generator: torch.Generator | None = None) -> torch.Tensor:
        """n images B x C x H x W in [-1, 1] (from the EMA generator when there is one)."""
        c = self.condition_vector(condition, n)
        z = torch.randn(n, self.cfg.model.latent_dim, generator=generator, device=self.device)
        net = self.generator_ema.module if self.generator_ema is not None else self.generator
        was_training = net.training
        net.eval()
        out = net(z, c).float()
        net.train(was_training)
        return out

    def training_step(self, batch, batch_idx):
        x = batch["image"]
        c = self.condition_vector(batch.get("label"), len(x)) if self.conditional else None
        opt_g, opt_d = self.optimizers()
        z = torch.randn(len(x), self.cfg.model.latent_dim, device=x.device)
        fake = self.generator(z, c)
        real_out, fake_out = self.discriminator(x, c), self.discriminator(fake.detach(), c)
        d_terms = self.adversary.step_on(self, opt_d, real_out, fake_out)
        g_loss = self.adversary.generator_loss(self.discriminator(fake, c))
        terms = {"g_loss": g_loss, **d_terms}
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        self.log_train_terms({"loss": g_loss, **terms})

    def configure_optimizers(self):
        o = self.cfg.optim
        return [self.adam(self.generator.parameters(), o.lr),
                self.adam(self.discriminator.parameters(), o.d_lr or o.lr)]
