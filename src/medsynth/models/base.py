"""What every recipe shares: cheap logging of loss terms, and the NaN/inf guard.

Lightning's `self.log` costs ~0.2 ms a call on CPU; five terms every step were
6% of a 28 px VAE step (benchmarks/train_throughput.py). Terms are instead
summed into one detached tensor and logged every `log_every_n_steps` steps
and as exact means at the end of each epoch.
"""

from __future__ import annotations

import lightning as L
import torch
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


class Recipe(L.LightningModule):
    """Base of the model families. Subclasses offer, where it makes sense:
    sample(n, condition=None, generator=None), reconstruct(x, condition=None),
    encode(x, condition=None), translate(x)."""

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
        self.conditional = False  # class-conditional families set this from model.conditional

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

    def save_samples(self, splits, run_dir, seed: int) -> None:
        """samples.png: trainer.samples_after_training draws (conditional models cycle over the classes)."""
        from medsynth.io import save_grid
        from medsynth.provenance import synthetic_provenance

        n = self.cfg.trainer.samples_after_training
        generator = torch.Generator(device=self.device).manual_seed(seed)
        condition = None
        if self.conditional:
            condition = splits.train.labels[:n] if splits.multilabel else torch.arange(n) % self.cfg.model.num_classes
            n = len(condition)
        save_grid(run_dir / "samples.png", self.sample(n, condition=condition, generator=generator),
                  provenance=synthetic_provenance(self, run_dir, seed, kind="samples"))

    def prepare_training(self) -> None:
        """Load what only training needs (e.g. a perceptual network); runs before the run directory exists."""

    def after_training(self, splits, run_dir, seed: int) -> dict:
        """Write the family's artefacts into the run directory; returns figures for summary.json."""
        return {}

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
