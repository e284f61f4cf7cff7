"""Image-to-image translation, e.g. BraTS T1c -> FLAIR: pix2pix (paired) and CycleGAN (unpaired).

Batches hold source and target stacked as channels (data.format=paired_slices; the last
data.target_channels are the target; with data.unpaired=true the training pairs come from
different patients). Generators: the U-Net of nets/unet_gan.py in 2D with a tanh output;
discriminators: MONAI's PatchDiscriminator.

- pix2pix (Isola et al. 2017): D sees source + (real or translated) target; generator loss =
  adversarial_weight * adversarial + l1_weight (lambda, 100 in the paper) * L1.
- CycleGAN (Zhu et al. 2017): G: A -> B and F: B -> A, D_B and D_A on single images; generator
  loss = adversarial terms of both directions + cycle_weight (10) * (|F(G(a)) - a| + |G(F(b)) - b|)
  + identity_weight (5) * (|G(b) - b| + |F(a) - a|) (when A and B have the same channels)
  + structure_weight (0: off) * (|MIND(G(a)) - MIND(a)| + |MIND(F(b)) - MIND(b)|), the structure
  consistency of Yang et al. 2018: MIND describes edges and shapes whatever the contrast, so it
  asks each translation to keep its own source's anatomy, which the cycle asks only indirectly;
  each discriminator learns from a history pool of 50 earlier translations (Shrivastava et al.).

model.ema_decay (both): an exponential moving average of the generators' weights kept beside them
and used to translate and validate; adversarial updates make the last weights jitter from batch
to batch, and the average of recent ones gives smoother translations. It only watches training:
the trained generators are the same with or without it.
"""

from __future__ import annotations

import torch

from medsynth.errors import MedsynthError
from medsynth.losses import structure_loss
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe, moving_average
from medsynth.nets.unet_gan import build_discriminator, UNetGenerator


class TranslationRecipe(ManualRecipe):
    """What both translation families share: the channel split, translate(), validation by L1
    against the paired target."""

    can_translate = True
    translates_back = False  # CycleGAN also learns target -> source (translate(x, reverse=True))

    def __init__(self, cfg):
        super().__init__(cfg)
        self.adversary = Adversary(self.cfg.loss)
        m = self.cfg.model
        self.target_channels = int(self.cfg.data.target_channels)
        self.source_channels = int(m.in_channels) - self.target_channels
        if self.source_channels < 1:
            raise MedsynthError(f"translation needs source channels besides the {self.target_channels} target "
                                "channel(s)")
        if any(s % 2 ** m.depth for s in m.image_size):
            raise MedsynthError(f"image size {list(m.image_size)} must be divisible by 2^model.depth = {2 ** m.depth}")

    def keep_averages(self) -> None:
        """With model.ema_decay: an EMA beside each generator (generator_ema, and generator_ba_ema for
        CycleGAN's reverse one), to call once the generators exist."""
        decay = self.cfg.model.ema_decay
        self.generator_ema = moving_average(self.generator, decay)
        self.generator_ba_ema = moving_average(self.generator_ba, decay) if self.translates_back else None

    def update_averages(self) -> None:
        """After each generator step."""
        if self.generator_ema is not None:
            self.generator_ema.update_parameters(self.generator)
        if self.generator_ba_ema is not None:
            self.generator_ba_ema.update_parameters(self.generator_ba)

    def translator(self, reverse: bool = False) -> torch.nn.Module:
        """The generator that translates (its EMA when there is one)."""
        net, ema = (self.generator_ba, self.generator_ba_ema) if reverse else (self.generator, self.generator_ema)
        return ema.module if ema is not None else net

    def unet(self, in_channels: int, out_channels: int) -> UNetGenerator:
        m = self.cfg.model
        return UNetGenerator(2, in_channels, out_channels, m.width, m.depth, m.bottleneck_blocks, m.dropout,
                             m.upsample)

    def split(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return images[:, :self.source_channels], images[:, self.source_channels:]

    def source_copy(self, source: torch.Tensor) -> torch.Tensor:
        """B x 1 x H x W: the last source contrast's own slice (the centre of its 2.5D stack), the
        copy-the-source baseline every translation is scored beside."""
        centre = self.source_channels - 1 - int(self.cfg.data.neighbours)
        return source[:, centre:centre + 1]

    @torch.no_grad()
    def translate(self, source: torch.Tensor, reverse: bool = False) -> torch.Tensor:
        """B x source channels x H x W in [-1, 1] -> B x target channels x H x W in [-1, 1]
        (reverse: target -> source, for models that learn both directions)."""
        channels = self.source_channels
        if reverse:
            if not self.translates_back:
                raise MedsynthError(f"a {self.cfg.model.family} model translates one way only (no --reverse)")
            channels = self.target_channels
        net = self.translator(reverse)
        if source.shape[1] != channels:
            raise MedsynthError(f"the model translates {channels}-channel images, got {source.shape[1]}")
        was = net.training
        net.eval()
        out = torch.tanh(net(source.to(self.device).float())).float()
        net.train(was)
        return out

    def validation_step(self, batch, batch_idx):
        source, target = self.split(batch["image"])
        l1 = (torch.tanh(self.translator()(source)).float() - target.float()).abs().mean()
        self.log("val/l1", l1, on_epoch=True, batch_size=len(source), sync_dist=True)
        self.log("val_loss", l1, on_epoch=True, prog_bar=True, batch_size=len(source), logger=False, sync_dist=True)


class Pix2PixRecipe(TranslationRecipe):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.generator = self.unet(self.source_channels, self.target_channels)
        self.discriminator = build_discriminator(self.cfg.model, int(self.cfg.model.in_channels))
        self.keep_averages()

    def training_step(self, batch, batch_idx):
        source, target = self.split(batch["image"])
        opt_g, opt_d = self.optimizers()
        fake = torch.tanh(self.generator(source))
        real_out = self.discriminator(torch.cat([source, target], 1))[-1]
        fake_out = self.discriminator(torch.cat([source, fake.detach()], 1))[-1]
        d_terms = self.adversary.step_on(self, opt_d, real_out, fake_out)
        adv = self.adversary.generator_loss(self.discriminator(torch.cat([source, fake], 1))[-1])
        l1 = (fake.float() - target.float()).abs().mean()
        g_loss = self.cfg.loss.adversarial_weight * adv + self.cfg.loss.l1_weight * l1
        terms = {"g_adv": adv, "l1": l1, **d_terms}
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        self.update_averages()
        self.log_train_terms({"loss": g_loss, **terms})

    def configure_optimizers(self):
        o = self.cfg.optim
        return [self.adam(self.generator.parameters(), o.lr),
                self.adam(self.discriminator.parameters(), o.d_lr or o.lr)]


class HistoryPool:
    """Shrivastava et al. 2017 / CycleGAN: the discriminator sees, per image, either the newest
    translation or (half of the time, once the pool is full) one of `size` earlier ones, which
    it then replaces: it keeps the generator from chasing a discriminator that forgot."""

    def __init__(self, size: int = 50, seed: int = 0):
        self.size, self.images = size, []
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.size == 0:
            return images
        out = []
        for image in images.detach():
            if len(self.images) < self.size:
                self.images.append(image.clone())
                out.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                k = int(torch.randint(len(self.images), (), generator=self.generator))
                out.append(self.images[k].to(image.device))
                self.images[k] = image.clone()
            else:
                out.append(image)
        return torch.stack(out)


class CycleGANRecipe(TranslationRecipe):
    translates_back = True

    def __init__(self, cfg):
        super().__init__(cfg)
        from monai.networks.nets import PatchDiscriminator

        m, a, b = self.cfg.model, self.source_channels, self.target_channels
        self.generator, self.generator_ba = self.unet(a, b), self.unet(b, a)

        def patch_d(channels):
            return PatchDiscriminator(spatial_dims=2, channels=max(2, round(64 * m.width)), in_channels=channels,
                                      out_channels=1, num_layers_d=m.disc_layers, norm="INSTANCE")

        self.discriminator, self.discriminator_a = patch_d(b), patch_d(a)
        self.keep_averages()
        if self.cfg.loss.structure_weight and a != b:
            raise MedsynthError(f"loss.structure_weight compares each translation with its source channel by channel; "
                                f"here the source has {a} channels and the target {b}")
        self.pools = (HistoryPool(self.cfg.loss.history_pool, self.cfg.seed),
                      HistoryPool(self.cfg.loss.history_pool, self.cfg.seed + 1))

    def training_step(self, batch, batch_idx):
        real_a, real_b = self.split(batch["image"])
        opt_g, opt_d = self.optimizers()
        l, adversary = self.cfg.loss, self.adversary
        fake_b, fake_a = torch.tanh(self.generator(real_a)), torch.tanh(self.generator_ba(real_b))
        # discriminators, on pooled earlier translations
        outs = {}
        d_losses = []
        for name, d, real, fake, pool in (("b", self.discriminator, real_b, fake_b, self.pools[0]),
                                          ("a", self.discriminator_a, real_a, fake_a, self.pools[1])):
            real_out, fake_out = d(real)[-1], d(pool(fake))[-1]
            d_losses.append(adversary.discriminator_loss(real_out, fake_out))
            outs[name] = (real_out, fake_out)
        d_loss = 0.5 * (d_losses[0] + d_losses[1])
        d_terms = adversary.step(self, opt_d, d_loss, 0.5 * sum(adversary.accuracy(*o) for o in outs.values()))
        adv = 0.5 * (adversary.generator_loss(self.discriminator(fake_b)[-1])
                     + adversary.generator_loss(self.discriminator_a(fake_a)[-1]))
        cycle = ((torch.tanh(self.generator_ba(fake_b)) - real_a).abs().mean()
                 + (torch.tanh(self.generator(fake_a)) - real_b).abs().mean())
        g_loss = l.adversarial_weight * adv + l.cycle_weight * cycle
        terms = {"g_adv": adv, "cycle": cycle}
        if l.identity_weight and self.source_channels == self.target_channels:
            identity = ((torch.tanh(self.generator(real_b)) - real_b).abs().mean()
                        + (torch.tanh(self.generator_ba(real_a)) - real_a).abs().mean())
            g_loss = g_loss + l.identity_weight * identity
            terms["identity"] = identity
        if l.structure_weight:
            structure = structure_loss(fake_b, real_a) + structure_loss(fake_a, real_b)
            g_loss = g_loss + l.structure_weight * structure
            terms["structure"] = structure
        terms.update(d_terms)
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        self.update_averages()
        self.log_train_terms({"loss": g_loss, **terms})

    def configure_optimizers(self):
        o = self.cfg.optim
        return [self.adam([*self.generator.parameters(), *self.generator_ba.parameters()], o.lr),
                self.adam([*self.discriminator.parameters(), *self.discriminator_a.parameters()], o.d_lr or o.lr)]
