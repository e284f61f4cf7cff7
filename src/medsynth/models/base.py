"""What every recipe shares: the capabilities it states, conditions, cheap logging of loss
terms, the NaN/inf guard; and, for recipes that optimise several networks by hand, the
manual step (`ManualRecipe`).

Lightning's `self.log` costs ~0.2 ms a call on CPU; five terms every step were
6% of a 28 px VAE step (benchmarks/train_throughput.py). Terms are instead
summed into one detached tensor and logged every `log_every_n_steps` steps
and as exact means at the end of each epoch.
"""

from __future__ import annotations

import math

import lightning as L
import torch
import torch.nn as nn
import torch.nn.functional as F

from omegaconf import DictConfig, OmegaConf

from medsynth.errors import MedsynthError, NonFiniteLossError


def ema_with_warmup(decay: float):
    """EMA update for AveragedModel's multi_avg_fn, its decay warming up as min(decay, (1 + n) / (10 + n))
    after n updates. A fixed 0.999 from the first step left, after 1500 steps, a quarter of the
    average on barely trained weights: the latent diffusion EMA sampled noise where its raw UNet
    drew chest X-rays, and the DCGAN's EMA generator drew textures. Integer buffers (batch-norm
    counters) are copied."""
    def average(averaged: list[torch.Tensor], current: list[torch.Tensor], n) -> None:
        if not torch.is_floating_point(averaged[0]):
            torch._foreach_copy_(averaged, current)
            return
        d = min(decay, (1.0 + float(n)) / (10.0 + float(n)))
        torch._foreach_lerp_(averaged, current, 1.0 - d)
    return average


def moving_average(net: torch.nn.Module, decay: float | None):
    """An AveragedModel keeping the EMA of `net`'s weights and buffers (ema_with_warmup), or None
    when decay is None / 0: what model.ema_decay builds beside a generator or denoiser. Sample or
    translate with `(ema.module if ema is not None else net)`."""
    from torch.optim.swa_utils import AveragedModel

    return AveragedModel(net, multi_avg_fn=ema_with_warmup(decay), use_buffers=True) if decay else None


# which runs take each sampling option (medsynth sample --OPTION)
OPTION_OWNERS = {"sampler": "diffusion models", "steps": "diffusion models", "guidance": "diffusion models",
                 "spacing": "diffusion models", "prior": "the VAE family (model.family=vae or vaegan)"}


def refuse_options(family: str, **options) -> None:
    """One error naming every sampling option given (not None) that a model.family run does not take."""
    given = [k for k, v in options.items() if v is not None]
    if given:
        owners = sorted({OPTION_OWNERS[k] for k in given})
        raise MedsynthError(f"--{'/--'.join(given)}: for {' and '.join(owners)} only (this run is "
                            f"model.family={family})")


class Recipe(L.LightningModule):
    """Base of the model families. A recipe states what it can do; the sampling, translation,
    segmentation, evaluation and end-of-training code ask these flags, never hasattr:

    - can_sample:      sample(n, condition=None, generator=None) -> B x C x *spatial in [-1, 1]
    - can_reconstruct: reconstruct(x, condition=None) and encode(x, condition=None)
    - can_translate:   translate(x, reverse=False) and split(images) -> (source, target)
    - can_segment:     segment(image C x *spatial, mask=None) -> class indices
    - can_classify:    predict_scores(x) -> B x K (the domain feature network trained on classes)
    - is_feature_network: a domain feature network (classifier or segmenter): `net.features` for
                       perceptual taps, `net.embed`, input_channels, task and test_scores(x, y, seed)
    - conditional:     (per instance, from model.conditional) takes class labels
    - from_label_maps: sample() draws images from label maps (condition: B x 1 x *spatial class
                       indices); `medsynth sample` writes (image, label map) pairs
    """

    can_sample = False
    can_reconstruct = False
    can_translate = False
    can_segment = False
    can_classify = False
    is_feature_network = False
    from_label_maps = False
    # written at the end of training with reconstruction scores of the held-out split (None: not written)
    reconstruction_scores_file: str | None = None

    def __init__(self, cfg: DictConfig | dict):
        super().__init__()
        cfg = OmegaConf.create(cfg) if isinstance(cfg, dict) else cfg
        # A plain dict, so Lightning checkpoints hold no OmegaConf objects (weights_only loading).
        self.save_hyperparameters({"cfg": OmegaConf.to_container(cfg, resolve=True)})
        self.cfg = cfg
        if cfg.model.in_channels is None or cfg.model.image_size is None:
            raise MedsynthError("model.in_channels and model.image_size must be set (they come from the data)")
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0
        self._perceptual = None
        self.conditional = False  # class-conditional families set this from model.conditional

    def ready_to_sample(self) -> bool:
        """Whether sample() can run now (latent diffusion: only once its stage 2 has trained)."""
        return self.can_sample

    def after_fit(self, splits, seed: int) -> dict:
        """What is fitted once training ends, before the weights are written (a VAE's mixture
        prior, medsynth.latent_prior); returns figures for summary.json."""
        return {}

    def sampler_settings(self, sampler: str | None = None, steps: int | None = None,
                         guidance: float | None = None, spacing: str | None = None, prior: str | None = None) -> dict:
        """Sampler settings for sample(), checked before anything is drawn or written (the run's
        defaults filled in, so provenance records them). Diffusion models take sampler, steps,
        guidance and spacing; the VAE family takes prior (medsynth.latent_prior.MixturePrior)."""
        refuse_options(self.cfg.model.family, sampler=sampler, steps=steps, guidance=guidance, spacing=spacing,
                       prior=prior)
        return {}

    @torch.no_grad()
    def reconstruct_all(self, x: torch.Tensor, condition=None, batch_size: int = 128) -> torch.Tensor:
        """reconstruct() over a whole set in batches, on the CPU: N x C x *spatial."""
        return torch.cat([self.reconstruct(x[i:i + batch_size],
                                           None if condition is None else condition[i:i + batch_size]).cpu()
                          for i in range(0, len(x), batch_size)])

    def model_figures(self) -> dict:
        """Figures about the trained model itself, written beside its reconstruction scores."""
        return {}

    def condition_vector(self, labels, n: int | None = None) -> torch.Tensor | None:
        """Labels (ints B, an int, or multi-hot B x k) -> B x cond_dim float, or None when unconditional."""
        if not self.conditional:
            return None
        k = self.cfg.model.num_classes
        if labels is None:
            raise MedsynthError("this model is conditional: give a label (e.g. --label 0)")
        labels = torch.as_tensor(labels, device=self.device)
        if labels.ndim == 0:
            labels = labels.expand(n if n is not None else 1)
        if labels.ndim == 2:  # multi-label
            return labels.float()
        if labels.min() < 0 or labels.max() >= k:
            raise MedsynthError(f"label {labels.max().item()} is outside the model's classes 0..{k - 1}")
        return F.one_hot(labels.long(), k).float()

    def prepare_training(self, perceptual: nn.Module | None = None, load_run=None) -> None:
        """Take what only training needs, built above models/ before the run directory exists:
        the frozen perceptual loss (a list, not a submodule: neither trained nor saved with the
        weights) and `load_run`, for recipes that start from another finished run."""
        self._perceptual = None if perceptual is None else [perceptual]

    def perceptual(self, device: torch.device) -> nn.Module | None:
        """The perceptual loss handed over by prepare_training, on `device`; None without one."""
        return None if self._perceptual is None else self._perceptual[0].to(device)

    def check_finite(self, loss: torch.Tensor, terms: dict[str, torch.Tensor]) -> None:
        if not torch.isfinite(loss):
            detail = ", ".join(f"{k} {v.item():.4g}" for k, v in terms.items() if v.numel() == 1)
            raise NonFiniteLossError(f"training loss became {loss.item()} at step {self.global_step} ({detail}); "
                                     "try a lower optim.lr or trainer.precision=32")

    def log_train_terms(self, terms: dict[str, torch.Tensor]) -> None:
        keys = list(terms)
        values = torch.stack([terms[k].detach().float().reshape(()) for k in keys])
        key = ",".join(keys)
        self._sums[key] = self._sums[key] + values if key in self._sums else values
        self._count += 1
        every = self.trainer.log_every_n_steps if self._trainer is not None else 1
        if (self.global_step + 1) % max(1, every) == 0:
            self.log_dict({f"train/{k}_step": v for k, v in zip(keys, values)}, on_step=True, on_epoch=False)
            self.log("loss", values[keys.index("loss")], prog_bar=True, on_step=True, on_epoch=False, logger=False)

    def on_train_epoch_end(self) -> None:
        for key, total in self._sums.items():
            self.log_dict({f"train/{k}": v for k, v in zip(key.split(","), total / self._count)},
                          on_step=False, on_epoch=True, sync_dist=True)
        self._sums, self._count = {}, 0


class ManualRecipe(Recipe):
    """A recipe that optimises its networks by hand, each on its own objective (GANs, translation,
    segmentation, latent diffusion's two stages)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.automatic_optimization = False

    def optimise(self, optimizer, loss: torch.Tensor) -> None:
        """One manual step of one network: only its parameters get gradients (toggle_optimizer),
        clipped like automatic optimisation would with trainer.gradient_clip_val."""
        self.toggle_optimizer(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        self.clip_and_step(optimizer)
        self.untoggle_optimizer(optimizer)

    def clip_and_step(self, optimizer) -> None:
        clip = self.cfg.trainer.gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()

    def adam(self, params, lr: float):
        o = self.cfg.optim
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)

    def with_schedule(self, optimizers: list) -> list | dict:
        """configure_optimizers' return value: the optimizers, each with optim.schedule's learning-rate
        factor when it is not constant, stepped once per training batch by `step_schedulers` (Lightning
        leaves schedulers to a manual recipe). The run's length in batches: max_epochs x batches per
        epoch, or trainer.max_steps / the number of optimizers when that is shorter (Lightning counts
        every optimizer's step; a discriminator held back by loss.d_accuracy_threshold makes such a run
        longer than this, and the factor then stays at its end value). A run resumed with a larger
        max_epochs gets a longer schedule from the step it reached."""
        o = self.cfg.optim
        if o.schedule == "constant" and not o.warmup_steps:
            return optimizers if len(optimizers) > 1 else optimizers[0]
        t = self.trainer
        t.estimated_stepping_batches  # sets up the training data, so num_training_batches is known
        lengths = []
        if t.max_epochs is not None and t.max_epochs > 0:
            lengths.append(t.max_epochs * t.num_training_batches)
        if t.max_steps is not None and t.max_steps > 0:
            lengths.append(t.max_steps // len(optimizers))
        if not lengths or not all(math.isfinite(v) for v in lengths):  # config._check refuses this first
            raise MedsynthError(f"optim.schedule={o.schedule} needs a known length: set trainer.max_epochs or "
                                "trainer.max_steps")
        factor = lr_factor(o.schedule, int(min(lengths)), o.warmup_steps)
        return [{"optimizer": opt, "lr_scheduler": {"scheduler": torch.optim.lr_scheduler.LambdaLR(opt, factor),
                                                    "interval": "step"}} for opt in optimizers]

    def step_schedulers(self) -> None:
        """Advance every learning-rate schedule by one batch; called at the end of training_step, so a
        checkpoint written after the batch holds the schedule's state after it."""
        schedulers = self.lr_schedulers()
        for scheduler in (schedulers if isinstance(schedulers, list) else [schedulers] if schedulers else []):
            scheduler.step()


def lr_factor(schedule: str, total: int, warmup: int = 0):
    """Batch index -> learning-rate factor: linear warm-up over `warmup` batches, then constant, cosine
    (to 0 at `total`) or poly ((1 - progress)^0.9, as nnU-Net)."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        if schedule == "poly":
            return (1 - progress) ** 0.9
        return 1.0

    return factor
