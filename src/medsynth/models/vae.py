"""The VAE family as one recipe; each variant is a config choice:

- vanilla VAE: loss.kl_weight=1, reconstruction l1 | mse | bce, optional KL warm-up;
- beta-VAE (Higgins et al. 2017): loss.kl_weight=beta;
- capacity-annealed beta-VAE (Burgess et al. 2018): loss.capacity_max=C, gamma * |KL - C(step)|;
- conditional VAE: model.conditional=true (one-hot labels into encoder and decoder);
- MS-SSIM VAE: loss.reconstruction=msssim;
- JointVAE (Dupont 2018): model.discrete_dims=[K, ...] with its own capacity schedule;
- decoder upsampling: model.upsample=transposed | bilinear | nearest; model.arch=conv | ct.
"""

from __future__ import annotations

import math

import torch
from omegaconf import DictConfig

from medsynth.errors import MedsynthError
from medsynth.latent_prior import MixturePrior
from medsynth.losses import kl_categorical_uniform, kl_normal, reconstruction_loss
from medsynth.models.base import Recipe
from medsynth.msssim import msssim_settings
from medsynth.nets.vae import build_vae_net


def ramp(step: int, steps: int) -> float:
    """0 -> 1 linearly over `steps` (1 at once when steps <= 0)."""
    return 1.0 if steps <= 0 else min(1.0, step / steps)


class VAERecipe(MixturePrior, Recipe):
    """Batches are {"image": B x C x *spatial in [-1, 1], "label": B (or B x k)}."""

    can_sample = True
    can_reconstruct = True

    def __init__(self, cfg: DictConfig | dict):
        super().__init__(cfg)
        cfg, m = self.cfg, self.cfg.model
        if m.conditional and not m.num_classes:
            raise MedsynthError("model.conditional=true needs labelled data (no labels found)")
        if cfg.loss.reconstruction == "msssim":
            msssim_settings(list(m.image_size), cfg.loss.msssim_scales, cfg.loss.msssim_kernel)  # fail early
        self.net = build_vae_net(m)
        self.conditional = bool(m.conditional)

    # --- the shared interface -------------------------------------------------------------
    @torch.no_grad()
    def sample(self, n: int, condition=None, generator: torch.Generator | None = None,
               prior: str | None = None) -> torch.Tensor:
        """n images B x C x *spatial in [-1, 1] from the prior (prior: "mixture", the default where
        the run fitted one, or "normal"; see MixturePrior)."""
        c = self.condition_vector(condition, n)
        z = self.prior_codes(n, generator, prior)
        return torch.tanh(self.net.decode(z, c)).float()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """Decode the posterior mode of x (deterministic)."""
        c = self.condition_vector(condition, len(x))
        mu, logvar, alphas = self.net.encode(x.to(self.device), c)
        z = self.net.latent(mu, logvar, alphas, self.cfg.model.temperature, sample=False)
        return torch.tanh(self.net.decode(z, c)).float()

    @torch.no_grad()
    def encode(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """Posterior mean (with the categorical modes as one-hots for JointVAE): B x latent."""
        c = self.condition_vector(condition, len(x))
        mu, logvar, alphas = self.net.encode(x.to(self.device), c)
        return self.net.latent(mu, logvar, alphas, self.cfg.model.temperature, sample=False).float()

    # --- training -------------------------------------------------------------------------
    def loss_terms(self, batch, step: int) -> dict[str, torch.Tensor]:
        lc = self.cfg.loss
        x = batch["image"]
        c = self.condition_vector(batch.get("label"), len(x)) if self.conditional else None
        logits, mu, logvar, alphas = self.net(x, c, self.cfg.model.temperature)
        recon = reconstruction_loss(lc.reconstruction, logits, x, scales=lc.msssim_scales,
                                    kernel=lc.msssim_kernel).mean()
        kl = kl_normal(mu.float(), logvar.float()).mean()
        terms = {"recon": recon, "kl": kl}
        perceptual = self.perceptual(x.device)
        if perceptual is not None:
            terms["perceptual"] = perceptual(torch.tanh(logits), x).mean()
            recon = recon + lc.perceptual_weight * terms["perceptual"]
        if lc.capacity_max is not None:
            capacity = lc.capacity_max * ramp(step, lc.capacity_steps)
            terms["capacity"] = torch.tensor(capacity)
            kl_term = lc.capacity_gamma * (kl - capacity).abs()
        else:
            kl_term = lc.kl_weight * ramp(step, lc.kl_warmup_steps) * kl
        loss = recon + kl_term
        if alphas:
            kl_disc = sum(kl_categorical_uniform(a.float()) for a in alphas).mean()
            terms["kl_discrete"] = kl_disc
            if lc.discrete_capacity_max is not None:
                # A categorical channel cannot carry more than log K nats.
                most = sum(math.log(k) for k in self.cfg.model.discrete_dims)
                capacity = min(lc.discrete_capacity_max, most) * ramp(step, lc.discrete_capacity_steps)
                loss = loss + lc.discrete_capacity_gamma * (kl_disc - capacity).abs()
            else:
                loss = loss + lc.kl_weight * ramp(step, lc.kl_warmup_steps) * kl_disc
        terms["loss"] = loss
        return terms

    def training_step(self, batch, batch_idx):
        terms = self.loss_terms(batch, self.global_step)
        self.check_finite(terms["loss"], terms)
        self.log_train_terms(terms)
        return terms["loss"]

    def validation_step(self, batch, batch_idx):
        # The full objective (warm-up and capacity schedules at their end), so
        # val_loss compares across epochs and "best" is not just "earliest".
        terms = self.loss_terms(batch, step=10**12)
        self.log_dict({f"val/{k}": v.float() for k, v in terms.items()}, on_epoch=True,
                      prog_bar=False, batch_size=len(batch["image"]), sync_dist=True)
        self.log("val_loss", terms["loss"].float(), on_epoch=True, prog_bar=True,
                 batch_size=len(batch["image"]), logger=False, sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        return torch.optim.Adam(self.parameters(), lr=o.lr, weight_decay=o.weight_decay, betas=tuple(o.betas))
