"""Latent diffusion (Rombach et al. 2022; the MONAI Generative Models recipe, Pinaya et al. 2022)
as one recipe, both stages in one run (model.family=ldm, 2D or 3D):

- Stage 1, the first `diffusion.autoencoder_epochs` epochs: MONAI's AutoencoderKL trained with
  L1 + loss.kl_weight * KL (~1e-6) + loss.perceptual_weight * the domain feature network's taps
  (off without loss.perceptual_net) + loss.adversarial_weight * a least-squares patch adversary
  (MONAI PatchDiscriminator) that joins after `diffusion.adversarial_warmup_epochs`.
- Scale factor: 1 / std of one training batch's latents, computed when stage 2 starts (or
  `diffusion.scale_factor`), kept as a buffer so it travels with the weights.
- Stage 2, the remaining epochs of trainer.max_epochs: MONAI's DiffusionModelUNet on the scaled
  latents of the frozen autoencoder, an EMA of its weights for sampling (model.ema_decay), trained
  for diffusion.objective: epsilon or v prediction on a DDPM noise schedule (1000 steps; linear,
  scaled-linear or cosine betas), or rectified flow (velocity on straight data-to-noise paths).
- Conditioning (model.conditional): a class embedding for single-label data, the label vector
  as a cross-attention context for multi-label data; the condition is replaced by a null one
  for `diffusion.condition_dropout` of the training images, so classifier-free guidance works:
  eps = eps(null) + guidance_scale * (eps(c) - eps(null)).
- Sampling: DDPM, DDIM, DPM-Solver++ or UniPC (diffusers' schedulers on the run's betas,
  medsynth.diffusion) with any number of steps; Euler or Heun for rectified flow.

Because one Lightning fit runs both stages, checkpoints, --resume and DDP work as for every
other family: a run killed in stage 2 resumes in stage 2 with its scale factor, and a run
trained for stage 1 only continues into stage 2 with `--resume RUN trainer.max_epochs=N`.
"""

from __future__ import annotations

import math
from functools import reduce
from pathlib import Path

import torch
import torch.nn.functional as F

from medsynth.diffusion import (build_sampler, build_scheduler, check_sampler, classifier_free_guidance, default_sampler,
                                sample_loop)
from medsynth.errors import MedsynthError
from medsynth.losses import kl_normal
from medsynth.models.adversarial import Adversary
from medsynth.models.base import ManualRecipe, moving_average, refuse_options
from medsynth.precision import autocast
from medsynth.runs import AUTOENCODER_SCORES


def norm_groups(channels) -> int:
    """GroupNorm groups that divide every width (MONAI's default, 32, where it does)."""
    return math.gcd(32, reduce(math.gcd, [int(c) for c in channels]))


class LatentDiffusionRecipe(ManualRecipe):
    """Batches are {"image": B x C x *spatial in [-1, 1], "label": B (or B x k)}."""

    can_sample = True  # once stage 2 has trained (ready_to_sample)
    can_reconstruct = True
    reconstruction_scores_file = AUTOENCODER_SCORES  # stage 1's scores; also marks a finished stage 1

    def __init__(self, cfg):
        super().__init__(cfg)
        from monai.networks.nets import AutoencoderKL, DiffusionModelUNet

        from medsynth.nets.unet_gan import build_discriminator

        m, d = self.cfg.model, self.cfg.diffusion
        if m.conditional and not m.num_classes:
            raise MedsynthError("model.conditional=true needs labelled data (no labels found)")
        levels = len(m.channels)
        attention = list(m.attention_levels) or [False] * levels
        if len(attention) != levels:
            raise MedsynthError(f"model.attention_levels has {len(attention)} entries for {levels} levels of "
                                "model.channels")
        if len(d.unet_attention_levels) != len(d.unet_channels):
            raise MedsynthError(f"diffusion.unet_attention_levels has {len(d.unet_attention_levels)} entries for "
                                f"{len(d.unet_channels)} levels of diffusion.unet_channels")
        down = 2 ** (levels - 1) * 2 ** (len(d.unet_channels) - 1)
        if any(s % down for s in m.image_size):
            raise MedsynthError(f"image size {list(m.image_size)} must be divisible by {down}: the autoencoder halves "
                                f"it {levels - 1} times and the diffusion UNet {len(d.unet_channels) - 1} more "
                                "(change data.image_size, model.channels or diffusion.unet_channels)")
        if any(c % d.num_head_channels for c, a in zip(d.unet_channels, d.unet_attention_levels) if a):
            raise MedsynthError(f"diffusion.num_head_channels={d.num_head_channels} must divide the widths of the "
                                "attention levels of diffusion.unet_channels")
        self.latent_shape = [m.latent_channels, *[s // 2 ** (levels - 1) for s in m.image_size]]
        self.conditional = bool(m.conditional)
        self.multilabel = bool(m.multilabel)
        self.autoencoder = AutoencoderKL(
            spatial_dims=m.spatial_dims, in_channels=m.in_channels, out_channels=m.in_channels,
            channels=list(m.channels), latent_channels=m.latent_channels, num_res_blocks=m.num_res_blocks,
            attention_levels=attention, norm_num_groups=norm_groups(m.channels),
            with_encoder_nonlocal_attn=attention[-1], with_decoder_nonlocal_attn=attention[-1])
        self.discriminator, self.adversary = None, None
        if self.cfg.loss.adversarial_weight > 0:
            self.adversary = Adversary(self.cfg.loss)
            self.discriminator = build_discriminator(m, m.in_channels)
            try:  # a discriminator deeper than the image allows fails inside its last norm: say so now
                with torch.no_grad():
                    self.discriminator(torch.zeros(2, m.in_channels, *m.image_size))
            except (ValueError, RuntimeError):
                raise MedsynthError(f"image size {list(m.image_size)} is too small for model.disc_layers="
                                    f"{m.disc_layers} strided discriminator layers (use fewer)") from None
        context = {}
        if self.conditional and self.multilabel:  # labels + a "condition given" flag; all zeros is the null context
            context = {"with_conditioning": True, "cross_attention_dim": m.num_classes + 1}
        elif self.conditional:  # the extra class (index num_classes) is the null condition
            context = {"num_class_embeds": m.num_classes + 1}
        self.unet = DiffusionModelUNet(
            spatial_dims=m.spatial_dims, in_channels=m.latent_channels, out_channels=m.latent_channels,
            channels=list(d.unet_channels), attention_levels=list(d.unet_attention_levels),
            num_res_blocks=d.unet_res_blocks, num_head_channels=d.num_head_channels,
            norm_num_groups=norm_groups(d.unet_channels), **context)
        self.unet_ema = moving_average(self.unet, m.ema_decay)
        self.scheduler = build_scheduler(d)
        # 0 until stage 2 starts; saved with the weights
        self.register_buffer("scale_factor", torch.tensor(float(d.scale_factor or 0.0)))

    # --- stages ---------------------------------------------------------------------------
    def stage(self, epoch: int | None = None) -> str:
        epoch = self.current_epoch if epoch is None else epoch
        return "autoencoder" if epoch < self.cfg.diffusion.autoencoder_epochs else "diffusion"

    def ready_to_sample(self) -> bool:
        return self.scale_factor.item() > 0

    def model_figures(self) -> dict:
        return {"scale_factor": self.scale_factor.item() or None}

    def prepare_training(self, perceptual=None, load_run=None) -> None:
        """The perceptual loss and, with diffusion.autoencoder, a finished stage 1 to start from."""
        super().prepare_training(perceptual, load_run)
        if self.cfg.diffusion.autoencoder:
            self._load_stage1(Path(self.cfg.diffusion.autoencoder), load_run)

    def _load_stage1(self, run_dir: Path, load_run) -> None:
        if not (run_dir / AUTOENCODER_SCORES).is_file():
            raise MedsynthError(f"diffusion.autoencoder={run_dir}: no trained stage 1 there (no {AUTOENCODER_SCORES}: "
                                "not a latent diffusion run whose autoencoder finished training)")
        other = load_run(run_dir)
        try:
            self.autoencoder.load_state_dict(other.autoencoder.state_dict())
        except RuntimeError:
            raise MedsynthError(f"diffusion.autoencoder={run_dir}: its autoencoder does not fit this config's "
                                "model.channels / latent_channels / num_res_blocks / attention_levels") from None
        if self.cfg.diffusion.scale_factor is None and other.scale_factor.item() > 0:
            self.scale_factor.fill_(other.scale_factor.item())

    # --- conditions -----------------------------------------------------------------------
    def condition_kwargs(self, labels, n: int, drop: torch.Tensor | None = None) -> dict:
        """The UNet's conditioning for labels (B, an int, or B x k multi-hot): class_labels or context.
        `drop` (bool B) swaps in the null condition; labels None with a conditional model is all null."""
        if not self.conditional:
            return {}
        k = self.cfg.model.num_classes
        if labels is None:
            drop = torch.ones(n, dtype=torch.bool, device=self.device)
            labels = torch.zeros((n, k) if self.multilabel else n, device=self.device)
        if self.multilabel:
            c = self.condition_vector(labels, n)
            c = torch.cat([c, torch.ones(len(c), 1, device=c.device)], 1)
            if drop is not None:
                c = c * (~drop).float()[:, None]
            return {"context": c[:, None]}
        c = self.condition_vector(labels, n).argmax(1)  # checks the label range
        if drop is not None:
            c = torch.where(drop, torch.full_like(c, k), c)
        return {"class_labels": c}

    # --- the shared interface -------------------------------------------------------------
    @torch.no_grad()
    def encode(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """The scaled latent mean the diffusion model sees: B x latent_channels x *spatial / 2^(levels-1)."""
        mu, _ = self.autoencoder.encode(x.to(self.device))
        return (mu * (self.scale_factor if self.scale_factor > 0 else 1.0)).float()

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, condition=None) -> torch.Tensor:
        """Stage 1's reconstruction from the latent mean (deterministic), in [-1, 1]."""
        mu, _ = self.autoencoder.encode(x.to(self.device))
        return self.autoencoder.decode(mu).float().clamp(-1, 1)

    def sampler_settings(self, sampler: str | None = None, steps: int | None = None,
                         guidance: float | None = None, spacing: str | None = None, prior: str | None = None) -> dict:
        """The sampler, steps, guidance and timestep spacing to use (the run's defaults where None),
        checked: raises MedsynthError before anything is drawn or written."""
        refuse_options(self.cfg.model.family, prior=prior)
        d = self.cfg.diffusion
        sampler = (d.sampler or default_sampler(d.objective)) if sampler is None else sampler
        steps = d.sampling_steps if steps is None else steps
        guidance = d.guidance_scale if guidance is None else guidance
        spacing = d.timestep_spacing if spacing is None else spacing
        if not self.ready_to_sample():
            raise MedsynthError("this run's diffusion stage has not been trained (stage 1 only): continue it with "
                                "`medsynth train --resume RUN_DIR trainer.max_epochs=N` (N > diffusion.autoencoder_epochs)")
        check_sampler(sampler, steps, d.num_train_timesteps, spacing, d.objective)
        if guidance is not None and not self.conditional:
            raise MedsynthError("guidance needs a conditional model (model.conditional=true)")
        return {"sampler": sampler, "steps": steps, "guidance": guidance, "spacing": spacing}

    @torch.no_grad()
    def sample(self, n: int, condition=None, generator: torch.Generator | None = None, sampler: str | None = None,
               steps: int | None = None, guidance: float | None = None, spacing: str | None = None,
               progress: bool = False, precision: str | None = None) -> torch.Tensor:
        """n images B x C x *spatial in [-1, 1]: denoise latent noise in `steps` steps of `sampler`
        (one of diffusion.SAMPLERS; defaults: diffusion.sampler, sampling_steps, guidance_scale,
        timestep_spacing), then decode.

        guidance: classifier-free guidance scale (conditional models; None: the conditional model alone).
        precision: of the UNet's passes (default trainer.precision; "auto" runs bf16 autocast where the
        hardware has it natively: 1.96x faster than fp32 at the same FID on this project's CPU,
        benchmarks/ldm_pneumonia.py); the scheduler's arithmetic and the decoder stay in fp32."""
        sampler, steps, guidance, spacing = self.sampler_settings(sampler, steps, guidance, spacing).values()
        precision = precision or self.cfg.trainer.precision
        net = self.unet_ema.module if self.unet_ema is not None else self.unet

        def denoiser(z: torch.Tensor, t: torch.Tensor, cond: dict) -> torch.Tensor:
            with autocast(self.device, precision):
                return net(z, t, **cond).float()

        if guidance is not None:
            denoiser = classifier_free_guidance(denoiser, self.condition_kwargs(None, n), guidance)
        noise = torch.randn(n, *self.latent_shape, generator=generator, device=self.device)
        z = sample_loop(denoiser, noise, build_sampler(self.cfg.diffusion, sampler, spacing), steps,
                        self.condition_kwargs(condition, n), generator, progress, desc=f"{sampler} sampling",
                        eta=self.cfg.diffusion.ddim_eta, evaluations_per_step=1 if guidance is None else 2)
        return self.autoencoder.decode_stage_2_outputs(z / self.scale_factor).float().clamp(-1, 1)

    # --- training -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        opt_ae, opt_d, opt_unet = self.optimizers()
        if self.stage() == "autoencoder":
            self._autoencoder_step(batch["image"], opt_ae, opt_d)
        else:
            self._diffusion_step(batch, opt_unet)

    def _autoencoder_terms(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        lc = self.cfg.loss
        recon, mu, sigma = self.autoencoder(x)
        l1 = (recon.float() - x.float()).abs().mean()
        kl = kl_normal(mu.float(), 2 * sigma.float().log()).mean()
        loss = l1 + lc.kl_weight * kl
        terms = {"l1": l1, "kl": kl}
        perceptual = self.perceptual(x.device)
        if perceptual is not None:
            # PerceptualLoss is scaled to summed pixel errors; the L1 here is a pixel mean
            p = perceptual(recon, x).mean() / x[0].numel()
            terms["perceptual"] = p
            loss = loss + lc.perceptual_weight * p
        return recon, loss, terms

    def _autoencoder_step(self, x, opt_ae, opt_d) -> None:
        lc = self.cfg.loss
        recon, loss, terms = self._autoencoder_terms(x)
        adversary = self.discriminator is not None and self.current_epoch >= self.cfg.diffusion.adversarial_warmup_epochs
        if adversary:
            terms["g_adv"] = self.adversary.generator_loss(self.discriminator(recon)[-1])
            loss = loss + lc.adversarial_weight * terms["g_adv"]
        self.check_finite(loss, terms)
        self.optimise(opt_ae, loss)
        if adversary:
            real_out, fake_out = self.discriminator(x)[-1], self.discriminator(recon.detach())[-1]
            terms.update(self.adversary.step_on(self, opt_d, real_out, fake_out))
        self.log_train_terms({"loss": loss, **terms})

    def _set_scale_factor(self, x: torch.Tensor) -> None:
        """1 / std of this training batch's latents (rank 0's under DDP, so every rank agrees)."""
        with torch.no_grad():
            z = self.autoencoder.encode_stage_2_inputs(x).float()
        scale = (1.0 / z.std()).detach()
        if self._trainer is not None:
            scale = self.trainer.strategy.broadcast(scale, src=0)
        self.scale_factor.fill_(float(scale))

    def diffusion_loss(self, batch, generator: torch.Generator | None = None) -> torch.Tensor:
        """MSE between the UNet's output on noised scaled latents z_t and its target: eps; v =
        sqrt(abar_t) eps - sqrt(1 - abar_t) z0 for v-prediction; for rectified flow the velocity
        eps - z0 at z_s = (1 - s) z0 + s eps, s uniform in [0, 1) (timestep s * T, continuous)."""
        x = batch["image"]
        n = len(x)
        d = self.cfg.diffusion
        with torch.no_grad():
            z = self.autoencoder.encode_stage_2_inputs(x).float() * self.scale_factor
        noise = torch.randn(z.shape, generator=generator, device=z.device)
        if d.objective == "rectified_flow":  # continuous noise levels, uniform (as MONAI's RFlowScheduler draws them)
            t = torch.rand(n, generator=generator, device=z.device) * d.num_train_timesteps
        else:
            t = torch.randint(0, d.num_train_timesteps, (n,), generator=generator, device=z.device)
        noisy = self.scheduler.add_noise(z, noise, t)
        drop = None
        if self.training and self.conditional:
            drop = torch.rand(n, device=z.device) < self.cfg.diffusion.condition_dropout
        cond = self.condition_kwargs(batch.get("label"), n, drop) if self.conditional else {}
        pred = self.unet(noisy, t, **cond)
        if d.objective == "epsilon":
            target = noise
        elif d.objective == "v_prediction":
            target = self.scheduler.get_velocity(z, noise, t)
        else:
            target = noise - z
        return F.mse_loss(pred.float(), target)

    def _diffusion_step(self, batch, opt_unet) -> None:
        if self.scale_factor.item() <= 0:
            self._set_scale_factor(batch["image"])
        loss = self.diffusion_loss(batch)
        self.check_finite(loss, {"diffusion_mse": loss})
        self.optimise(opt_unet, loss)
        if self.unet_ema is not None:
            self.unet_ema.update_parameters(self.unet)
        self.log_train_terms({"loss": loss, "diffusion_mse": loss, "scale_factor": self.scale_factor})

    def validation_step(self, batch, batch_idx):
        n = len(batch["image"])
        if self.stage() == "autoencoder" or self.scale_factor.item() <= 0:
            _, loss, terms = self._autoencoder_terms(batch["image"])
            self.log_dict({f"val/ae_{k}": v.float() for k, v in {"loss": loss, **terms}.items()}, on_epoch=True,
                          batch_size=n, sync_dist=True)
            # best.ckpt follows the diffusion loss; in stage 1 no checkpoint is "better" than stage 2's
            self.log("val_loss", torch.tensor(float("inf"), device=self.device), on_epoch=True, prog_bar=True,
                     batch_size=n, logger=False, sync_dist=True)
            return
        generator = torch.Generator(device=self.device).manual_seed(batch_idx)  # same noise every epoch
        loss = self.diffusion_loss(batch, generator)
        self.log("val/diffusion_mse", loss, on_epoch=True, batch_size=n, sync_dist=True)
        self.log("val_loss", loss, on_epoch=True, prog_bar=True, batch_size=n, logger=False, sync_dist=True)

    def configure_optimizers(self):
        o = self.cfg.optim
        d_params = self.discriminator.parameters() if self.discriminator is not None else [torch.zeros(1, requires_grad=True)]
        return [self.adam(self.autoencoder.parameters(), o.lr), self.adam(d_params, o.d_lr or o.lr),
                self.adam(self.unet.parameters(), self.cfg.diffusion.lr)]
