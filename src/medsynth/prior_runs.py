"""Fit a trained VAE-family run's latent mixture again, with another number of components, into a
new run directory: `medsynth fit-prior RUN --components K --out NEW_RUN`.

Why: the mixture prior (latent_prior.py, ex-post density estimation) is fitted after training and
touches no weight the decoder learned, so how many components it has is a sampling choice, not a
training one. Its number sets how tightly drawn codes follow the training codes: few broad
components put codes between the training images' (smoother, more alike samples), many narrow
ones put them near the training images' (more diverse, nearer to memorising). Choosing it should
cost a refit (seconds to minutes) rather than a retraining, and should be made on the validation
split, never on the images the audit reports on. A run trained with model.latent_prior=normal
gains a mixture the same way.

The new run holds the same weights in the same dtype (the encoder and decoder unchanged, the
mixture buffers replaced), its config with model.latent_prior=gmm and the new component count,
samples.png and the reconstructions drawn again, the source's metrics.csv, and a summary.json that
names the run it came from ("prior_refitted_from") with the fit's figures. The source run is never
written to. Checkpoints (training state) are not copied: the new run samples, reports and is
audited like any other, but resuming its training means resuming the source run's.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from medsynth.artefacts import write_artefacts
from medsynth.config import load_config, to_yaml
from medsynth.data import load_splits
from medsynth.errors import MedsynthError
from medsynth.latent_prior import MixturePrior, check_fit_size, fit_recipe_prior
from medsynth.models import build_recipe, load_weights
from medsynth.precision import weights_dtype
from medsynth.runs import CONFIG, ENVIRONMENT, LINEAGE, METRICS, SUMMARY, check_output, check_run_dir, export_weights
from medsynth.writers import write_text

PRIOR_BUFFERS = ("prior_weights", "prior_means", "prior_scale_tril")


def refit_prior(run_dir: str | Path, components: int, out: str | Path, device: str = "cpu") -> Path:
    """Write `out`: the VAE-family run `run_dir` with its latent mixture fitted again on the run's own
    training images (its data settings, data.keep_labels included) with `components` full-covariance
    components. Refused before anything is written: a run of another family, a count below 1 or
    above what the training split supports (components x (latent_dim + 1) images), an `out` that
    exists (a run directory is never replaced). Returns the new run directory."""
    run_dir = check_run_dir(run_dir)
    if isinstance(components, bool) or not isinstance(components, int) or components < 1:
        raise MedsynthError(f"--components {components}: give a whole number of mixture components, 1 or more")
    out = check_output(out, False, [run_dir])
    cfg = load_config(run_dir / CONFIG)
    cfg.model.latent_prior = "gmm"  # the other families ignore it; refused below
    cfg.model.latent_prior_components = components
    recipe = build_recipe(cfg)
    if not isinstance(recipe, MixturePrior):
        raise MedsynthError(f"{run_dir}: a {cfg.model.family} run; a latent mixture prior is fitted for the VAE "
                            "family (vae, vaegan) only")
    # the net in the dtype it trained in (bf16-true runs store bf16 weights): codes encoded as
    # training's own fit encoded them, and the weights written back as they were read
    recipe = load_weights(recipe, run_dir, device, leave_out=PRIOR_BUFFERS)
    recipe = recipe.to(dtype=weights_dtype(cfg.trainer.precision))
    splits = load_splits(cfg.data, cfg.model.spatial_dims, cfg.seed)
    check_fit_size(recipe.cfg.model, len(splits.train.images), option="--components")
    figures = fit_recipe_prior(recipe, splits, cfg.seed)  # the mixture's buffers float32 whatever the net's dtype
    if "latent_prior_error" in figures:
        raise MedsynthError(f"{run_dir}: {figures['latent_prior_error']}")
    _write_run(out, run_dir, recipe, splits, figures)
    return out


def _write_run(out: Path, source: Path, recipe, splits, figures: dict) -> None:
    """The new run directory, its files written only once the fit has succeeded: config, weights,
    the end-of-training artefacts drawn again (samples.png from the new mixture), the source's
    training curves and records, and summary.json with the refit's figures."""
    cfg = recipe.cfg
    out.mkdir(parents=True)
    write_text(out / CONFIG, to_yaml(cfg))
    export_weights(out, recipe)
    for name in (ENVIRONMENT, LINEAGE, METRICS):  # where and on what the weights were trained, how it went
        if (source / name).is_file():
            shutil.copyfile(source / name, out / name)
    drawn = write_artefacts(recipe.to(torch.float32), splits, out, cfg.seed)
    try:
        summary = json.loads((source / SUMMARY).read_text())
    except (OSError, ValueError):
        summary = {}
    metrics = {k: v for k, v in summary.get("metrics", {}).items() if not k.startswith("latent_prior")}
    summary.update(metrics={**metrics, **drawn, **figures}, prior_refitted_from=str(source.resolve()))
    write_text(out / SUMMARY, json.dumps(summary, indent=2))
