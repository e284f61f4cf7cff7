"""The adversary a recipe holds when it trains a discriminator: the adversarial criterion, the
discriminator accuracy threshold, the collapse guard, and the discriminator's step.

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

A component rather than a base class, so a recipe without a discriminator (the segmentation
baseline, latent diffusion without its patch adversary) carries none of this.
"""

from __future__ import annotations

import torch
from monai.losses import PatchAdversarialLoss
from omegaconf import DictConfig

from medsynth.errors import DiscriminatorCollapse

COLLAPSE_LOSS = 1e-4


class Adversary:
    """loss: the recipe's cfg.loss (adversarial, d_accuracy_threshold, d_collapse_steps)."""

    def __init__(self, loss: DictConfig):
        self.loss = loss
        self.criterion = PatchAdversarialLoss(criterion=loss.adversarial, no_activation_leastsq=True)
        # real/fake decision boundary on the raw outputs: between the LS targets 1 and 0; logit 0 for
        # BCE (sigmoid 0.5) and hinge (tanh 0)
        self.boundary = 0.5 if loss.adversarial == "least_squares" else 0.0
        self._collapsed_steps = 0

    def generator_loss(self, fake_out: torch.Tensor) -> torch.Tensor:
        """The generator's term: the discriminator should call its output (any shape) real."""
        return self.criterion(fake_out.float(), target_is_real=True, for_discriminator=False)

    def discriminator_loss(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        return 0.5 * (self.criterion(real_out.float(), target_is_real=True, for_discriminator=True)
                      + self.criterion(fake_out.float(), target_is_real=False, for_discriminator=True))

    def accuracy(self, real_out: torch.Tensor, fake_out: torch.Tensor) -> torch.Tensor:
        right = torch.cat([(real_out.detach() > self.boundary).flatten(), (fake_out.detach() <= self.boundary).flatten()])
        return right.float().mean()

    def step(self, recipe, optimizer, d_loss: torch.Tensor, accuracy: torch.Tensor) -> dict[str, torch.Tensor]:
        """The discriminator's turn (recipe: the ManualRecipe that owns `optimizer`): its loss must
        be finite and not collapsed; it is updated only under the accuracy threshold. Returns its
        terms for the log (d_loss, d_accuracy, d_updated)."""
        recipe.check_finite(d_loss, {"d_loss": d_loss})
        self.check_collapse(d_loss, recipe.global_step)
        updated = self.updates(accuracy)
        if updated:
            recipe.optimise(optimizer, d_loss)
        return {"d_loss": d_loss, "d_accuracy": accuracy, "d_updated": torch.tensor(float(updated))}

    def updates(self, accuracy: torch.Tensor) -> bool:
        """Whether the discriminator learns from this batch (its accuracy under the threshold)."""
        threshold = self.loss.d_accuracy_threshold
        return threshold is None or accuracy.item() < threshold

    def step_on(self, recipe, optimizer, real_out: torch.Tensor, fake_out: torch.Tensor) -> dict[str, torch.Tensor]:
        """`step` with the loss and accuracy of one pair of real and fake outputs."""
        return self.step(recipe, optimizer, self.discriminator_loss(real_out, fake_out),
                         self.accuracy(real_out, fake_out))

    def check_collapse(self, d_loss: torch.Tensor, step: int) -> None:
        steps = self.loss.d_collapse_steps
        if not steps:
            return
        self._collapsed_steps = self._collapsed_steps + 1 if d_loss.item() < COLLAPSE_LOSS else 0
        if self._collapsed_steps >= steps:
            raise DiscriminatorCollapse(
                f"the discriminator loss stayed below {COLLAPSE_LOSS:g} for {steps} steps in a row (step "
                f"{step}): it wins outright and the generator learns nothing; try a lower optim.d_lr, "
                "loss.d_accuracy_threshold=0.8, or a smaller model.disc_layers")
