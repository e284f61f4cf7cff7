"""What every adversarial recipe shares: the adversarial criterion, the discriminator accuracy
threshold, the collapse guard, and manual optimisation of two networks.

- Criterion: MONAI's PatchAdversarialLoss, least squares (LSGAN, on the raw outputs), BCE or
  hinge; the discriminator's loss is the mean of its real and fake terms.
- Accuracy threshold: the discriminator is updated only while its accuracy on the current batch
  (real outputs above the midpoint of the two targets, fake ones below) is under
  `loss.d_accuracy_threshold`: the advice for keeping a volumetric discriminator from
  overpowering its generator.
- Collapse: a discriminator loss that stays ~0 for `loss.d_collapse_steps` steps in a row means
  the generator gets no signal; the run stops with DiscriminatorCollapse and keeps its last good
  checkpoint, as with a NaN.
- Steps: Lightning counts optimizer steps, so one batch is two steps while D is updated, one
  while the threshold holds it back.
"""

from __future__ import annotations

import torch

from medsynth.errors import DiscriminatorCollapse
from medsynth.models.base import Recipe

COLLAPSE_LOSS = 1e-4


class AdversarialRecipe(Recipe):
    def __init__(self, cfg):
        super().__init__(cfg)
        from monai.losses import PatchAdversarialLoss

        self.automatic_optimization = False
        criterion = self.cfg.loss.adversarial
        self.criterion = PatchAdversarialLoss(criterion=criterion, no_activation_leastsq=True)
        # real/fake decision boundary on the raw outputs: between the LS targets 1 and 0; logit 0 for
        # BCE (sigmoid 0.5) and hinge (tanh 0)
        self.boundary = 0.5 if criterion == "least_squares" else 0.0
        self._collapsed_steps = 0

    def generator_adversarial_loss(self, fake_out: torch.Tensor) -> torch.Tensor:
        return self.criterion(fake_out.float(), target_is_real=True, for_discriminator=False)

    def discriminator_loss(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.criterion(real_out.float(), target_is_real=True, for_discriminator=True)
                      + self.criterion(fake_out.float(), target_is_real=False, for_discriminator=True))

    def discriminator_accuracy(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        right = torch.cat([(real_out.detach() > self.boundary).flatten(), (fake_out.detach() <= self.boundary).flatten()])
        return right.float().mean()

    def update_discriminator(self, accuracy: torch.Tensor) -> bool:
        threshold = self.cfg.loss.d_accuracy_threshold
        return threshold is None or accuracy.item() < threshold

    def discriminator_step(self, optimizer, d_loss: torch.Tensor, accuracy: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's turn: its loss must be finite and not collapsed; it is updated only
        under the accuracy threshold. Returns its terms for the log (d_loss, d_accuracy, d_updated)."""
        self.check_finite(d_loss, {"d_loss": d_loss})
        self.check_collapse(d_loss)
        updated = self.update_discriminator(accuracy)
        if updated:
            self.optimise(optimizer, d_loss)
        return {"d_loss": d_loss, "d_accuracy": accuracy, "d_updated": torch.tensor(float(updated))}

    def check_collapse(self, d_loss: torch.Tensor) -> None:
        steps = self.cfg.loss.d_collapse_steps
        if not steps:
            return
        self._collapsed_steps = self._collapsed_steps + 1 if d_loss.item() < COLLAPSE_LOSS else 0
        if self._collapsed_steps >= steps:
            raise DiscriminatorCollapse(
                f"the discriminator loss stayed below {COLLAPSE_LOSS:g} for {steps} steps in a row (step "
                f"{self.global_step}): it wins outright and the generator learns nothing; try a lower optim.d_lr, "
                "loss.d_accuracy_threshold=0.8, or a smaller model.disc_layers")

    def optimise(self, optimizer, loss: torch.Tensor) -> None:
        """One manual step of one network: only its parameters get gradients (toggle_optimizer),
        clipped like automatic optimisation would with trainer.gradient_clip_val."""
        self.toggle_optimizer(optimizer)
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        clip = self.cfg.trainer.gradient_clip_val
        if clip:
            self.clip_gradients(optimizer, gradient_clip_val=clip, gradient_clip_algorithm="norm")
        optimizer.step()
        self.untoggle_optimizer(optimizer)

    def adam(self, params, lr: float):
        o = self.cfg.optim
        return torch.optim.Adam(params, lr=lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
