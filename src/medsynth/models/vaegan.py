"""VAE-GAN (Larsen et al. 2016): a VAE whose reconstruction error is measured in the feature
space of a GAN discriminator, with the decoder doubling as the GAN's generator.

Per batch, with z ~ q(z|x), x~ = Dec(z) and x_p = Dec(z_p), z_p ~ N(0, I):
- L_prior = KL(q(z|x) || N(0, I));
- L_llike = a Gaussian log-likelihood in the discriminator's `loss.vaegan_layer`-th block:
  0.5 * squared distance between Dis_l(x) and Dis_l(x~), summed over features (per image);
- L_GAN: the discriminator's real / fake objective on x against both x~ and x_p.
Updates, as in the paper's Algorithm 1: the encoder descends L_prior + L_llike; the decoder
descends gamma * L_llike plus the generator's adversarial terms on x~ and x_p (gamma =
loss.vaegan_gamma weighs content against style); the discriminator descends its L_GAN, and
L_llike is not propagated into it.
"""

from __future__ import annotations

import torch

from medsynth.errors import MedsynthError
from medsynth.latent_prior import MixturePrior
from medsynth.losses import kl_normal
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe
from medsynth.nets.dcgan import DCGANDiscriminator
from medsynth.nets.vae import build_vae_net


class VAEGANRecipe(MixturePrior, ManualRecipe):
    can_sample = True
    can_reconstruct = True

    def __init__(self, cfg):
        super().__init__(cfg)
        m = self.cfg.model
        if m.spatial_dims != 2 or m.arch != "conv" or m.discrete_dims:
            raise MedsynthError("model.family=vaegan is 2D with model.arch=conv and continuous latents")
        if m.conditional and not m.num_classes:
            raise MedsynthError("model.conditional=true needs labelled data (no labels found)")
        self.conditional = bool(m.conditional)
        self.adversary = Adversary(self.cfg.loss)
        self.net = build_vae_net(m)
        cond = m.num_classes if self.conditional else 0
        # widths fine to coarse, like the encoder's
        self.discriminator = DCGANDiscriminator(m.in_channels, int(m.image_size[0]), list(reversed(m.channels)), cond,
                                                m.spectral_norm)
        if not 1 <= self.cfg.loss.vaegan_layer <= len(m.channels):
            raise MedsynthError(f"loss.vaegan_layer={self.cfg.loss.vaegan_layer}: the discriminator has "
                                f"{len(m.channels)} blocks")

    @torch.no_grad()
    def sample(self, n: int, condition=None, generator: torch.Generator | None = None,
               prior: str | None = None) -> torch.Tensor:
        """n images B x C x H x W in [-1, 1] from the prior ("mixture", the default where fitted, or "normal")."""
        c = self.condition_vector(condition, n)
        return torch.tanh(self.net.decode(self.prior_codes(n, generator, prior), c)).float()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        c = self.condition_vector(condition, len(x))
        mu, logvar, alphas = self.net.encode(x.to(self.device), c)
        return torch.tanh(self.net.decode(mu, c)).float()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        c = self.condition_vector(condition, len(x))
        return self.net.encode(x.to(self.device), c)[0].float()

    def training_step(self, batch, batch_idx):
        x = batch["image"]
        c = self.condition_vector(batch.get("label"), len(x)) if self.conditional else None
        opt_enc, opt_dec, opt_d = self.optimizers()
        layer, gamma = self.cfg.loss.vaegan_layer, self.cfg.loss.vaegan_gamma
        mu, logvar, alphas = self.net.encode(x, c)
        z = self.net.latent(mu, logvar, alphas, self.cfg.model.temperature)
        recon = torch.tanh(self.net.decode(z, c))
        prior = torch.tanh(self.net.decode(self.net.prior(len(x), device=x.device, dtype=z.dtype, mixture=False), c))

        # discriminator: real against reconstructions and prior samples
        real_out = self.discriminator(x, c)
        recon_out, prior_out = self.discriminator(recon.detach(), c), self.discriminator(prior.detach(), c)
        fake_out = torch.cat([recon_out, prior_out])
        adversary = self.adversary
        d_loss = 0.5 * (adversary.discriminator_loss(real_out, recon_out) + adversary.discriminator_loss(real_out, prior_out))
        d_terms = adversary.step(self, opt_d, d_loss, adversary.accuracy(real_out, fake_out))

        # encoder and decoder through the (now frozen) discriminator
        for p in self.discriminator.parameters():
            p.requires_grad_(False)
        _, real_features = self.discriminator(x, c, layer=layer)
        recon_logit, recon_features = self.discriminator(recon, c, layer=layer)
        llike = 0.5 * (recon_features.float() - real_features.detach().float()).pow(2).flatten(1).sum(1).mean()
        kl = kl_normal(mu.float(), logvar.float()).mean()
        g_adv = 0.5 * (adversary.generator_loss(recon_logit) + adversary.generator_loss(self.discriminator(prior, c)))
        for p in self.discriminator.parameters():
            p.requires_grad_(True)
        enc_loss = kl + llike
        dec_loss = gamma * llike + g_adv
        terms = {"kl": kl, "llike": llike, "g_adv": g_adv, **d_terms}
        self.check_finite(enc_loss + dec_loss, terms)
        # one backward pass; each network keeps the gradient of its own objective
        enc_params = list(self.net.encoder_parameters())
        dec_params = list(self.net.decoder_parameters())
        enc_grads = torch.autograd.grad(enc_loss, enc_params, retain_graph=True, allow_unused=True)
        opt_dec.zero_grad(set_to_none=True)
        self.manual_backward(dec_loss, inputs=dec_params)
        self.clip_and_step(opt_dec)
        opt_enc.zero_grad(set_to_none=True)
        for p, g in zip(enc_params, enc_grads):
            p.grad = None if g is None else g.detach()
        self.clip_and_step(opt_enc)
        self.log_train_terms({"loss": enc_loss + dec_loss, **terms})

    def configure_optimizers(self):
        o = self.cfg.optim
        return [self.adam(self.net.encoder_parameters(), o.lr), self.adam(self.net.decoder_parameters(), o.lr),
                self.adam(self.discriminator.parameters(), o.d_lr or o.lr)]
