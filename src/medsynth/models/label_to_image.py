"""Images drawn from label maps, so every synthetic image comes with its segmentation: SPADE
(Park et al. 2019), in 2D or 3D.

- Generator: nets/spade.py (SPADE residual blocks from a noise map; the label map sets each level's
  normalisation), tanh output in [-1, 1].
- Discriminator: MONAI's MultiScalePatchDiscriminator (model.num_discriminators PatchGANs of
  model.disc_layers x 1, 2, ... strided layers, instance norm), seeing the image with the one-hot
  map as extra channels.
- Generator loss = adversarial_weight * adversarial (loss.adversarial, hinge in the paper)
  + feature_matching_weight (10 in the paper and pix2pixHD) * L1 between the discriminators'
  intermediate features of the real and the generated image under the same map
  + l1_weight * L1 to the real image (0 in the paper; a CPU budget may want it).

Training batches come from data.format=segmentation (image and label patches, class-balanced,
augmented); the generator is fully convolutional, so it draws whole cases from whole maps.
"""

from __future__ import annotations

import torch

from medsynth.data.label_maps import one_hot, pad_to_multiple
from medsynth.errors import MedsynthError
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe
from medsynth.nets.spade import SPADEGenerator
from medsynth.nets.unet_gan import widths


class SPADERecipe(ManualRecipe):
    """Batches are {"image": B x C x *P in [-1, 1], "label": B x 1 x *P class indices}."""

    can_sample = True
    from_label_maps = True  # sample() needs maps: sample(n, condition=B x 1 x *spatial class indices)

    def __init__(self, cfg):
        super().__init__(cfg)
        from monai.networks.nets import MultiScalePatchDiscriminator

        m = self.cfg.model
        if not m.num_classes or m.num_classes < 2:
            raise MedsynthError("model.family=spade needs a label map with at least two classes (data.classes)")
        if any(s % 2 ** m.depth for s in m.image_size):
            raise MedsynthError(f"patch size {list(m.image_size)} must be divisible by 2^model.depth = {2 ** m.depth}")
        self.generator = SPADEGenerator(m.spatial_dims, m.num_classes, m.in_channels, m.width, m.depth,
                                        m.noise_channels)
        deepest = m.disc_layers * m.num_discriminators
        # each strided layer of MONAI's PatchGAN halves the size and its instance norm needs more than
        # one voxel after the deepest: measured, 48 works with 4 layers (48 -> 3), 40 does not (-> 2)
        if min(m.image_size) < 3 * 2 ** deepest:
            raise MedsynthError(f"patch size {list(m.image_size)} is too small for {m.num_discriminators} "
                                f"discriminator(s) of up to {deepest} strided layers (needs >= {3 * 2 ** deepest} "
                                "along every axis): lower model.num_discriminators or model.disc_layers")
        self.discriminator = MultiScalePatchDiscriminator(
            num_d=m.num_discriminators, num_layers_d=m.disc_layers, spatial_dims=m.spatial_dims,
            channels=widths(m.width, 1, base=32)[0], in_channels=m.in_channels + m.num_classes, out_channels=1,
            norm="INSTANCE", minimum_size_im=min(m.image_size))
        self.adversary = Adversary(self.cfg.loss)

    # --- drawing ----------------------------------------------------------------------------
    def generate(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Class indices B x 1 x *spatial (any size; padded to a multiple of 2^depth and cut back)
        -> images B x C x *spatial in [-1, 1], with fresh noise from `generator`."""
        onehot, keep = pad_to_multiple(one_hot(labels.to(self.device), self.cfg.model.num_classes),
                                       2 ** self.cfg.model.depth)
        shape = self.generator.noise_shape(onehot.shape)
        noise = torch.randn(shape, generator=generator, device=generator.device if generator else self.device)
        return torch.tanh(self.generator(onehot, noise.to(self.device)))[tuple(keep)]

    @torch.no_grad()
    def sample(self, n: int, condition=None, generator: torch.Generator | None = None, **_) -> torch.Tensor:
        """n images from n label maps (condition: B x 1 x *spatial class indices), in eval mode."""
        if condition is None:
            raise MedsynthError("a spade model draws images from label maps: give maps "
                                "(`medsynth sample RUN -n N --out-dir DIR` deforms the training maps)")
        condition = torch.as_tensor(condition)
        if len(condition) != n:
            raise MedsynthError(f"{n} images asked for, {len(condition)} label maps given")
        was = self.generator.training
        self.generator.eval()
        out = self.generate(condition, generator).float()
        self.generator.train(was)
        return out

    # --- training ---------------------------------------------------------------------------
    def _discriminate(self, image: torch.Tensor, onehot: torch.Tensor):
        outs, features = self.discriminator(torch.cat([image, onehot], dim=1))
        return outs, features

    def training_step(self, batch, batch_idx):
        x, labels = batch["image"], batch["label"]
        opt_g, opt_d = self.optimizers()
        l, adversary = self.cfg.loss, self.adversary
        onehot = one_hot(labels, self.cfg.model.num_classes).to(x.dtype)
        noise = torch.randn(self.generator.noise_shape(onehot.shape), device=x.device, dtype=x.dtype)
        fake = torch.tanh(self.generator(onehot, noise))
        real_outs, real_feats = self._discriminate(x, onehot)
        fake_outs, _ = self._discriminate(fake.detach(), onehot)
        d_loss = sum(adversary.discriminator_loss(r, f) for r, f in zip(real_outs, fake_outs)) / len(real_outs)
        accuracy = sum(adversary.accuracy(r, f) for r, f in zip(real_outs, fake_outs)) / len(real_outs)
        d_terms = adversary.step(self, opt_d, d_loss, accuracy)
        outs, feats = self._discriminate(fake, onehot)
        adv = sum(adversary.generator_loss(o) for o in outs) / len(outs)
        # feature matching: the discriminators' intermediate features of real and generated images
        # under the same map (their own gradients stay out: the real features are detached)
        pairs = [(f, r.detach()) for fs, rs in zip(feats, real_feats) for f, r in zip(fs, rs)]
        matching = sum((f.float() - r.float()).abs().mean() for f, r in pairs) / max(1, len(pairs))
        terms = {"g_adv": adv, "feature_matching": matching}
        g_loss = l.adversarial_weight * adv + l.feature_matching_weight * matching
        if l.l1_weight:
            terms["l1"] = (fake.float() - x.float()).abs().mean()
            g_loss = g_loss + l.l1_weight * terms["l1"]
        terms.update(d_terms)
        self.check_finite(g_loss, terms)
        self.optimise(opt_g, g_loss)
        self.log_train_terms({"loss": g_loss, **terms})
        self.step_schedulers()

    def validation_step(self, batch, batch_idx):
        """L1 between the real image and one drawn from its map (seeded noise): how far the drawn
        image departs from the patient's, a check that training moves, not a quality score."""
        x, labels = batch["image"], batch["label"]
        generator = torch.Generator(device=x.device).manual_seed(batch_idx)
        l1 = (self.generate(labels, generator).float() - x.float()).abs().mean()
        self.log("val/l1", l1, on_epoch=True, batch_size=len(x), sync_dist=True)
        self.log("val_loss", l1, on_epoch=True, prog_bar=True, batch_size=len(x), logger=False, sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        return self.with_schedule([self.adam(self.generator.parameters(), o.lr),
                                   self.adam(self.discriminator.parameters(), o.d_lr or o.lr)])
