"""Ex-post density estimation for VAE-family samplers (Ghosh et al. 2020, "From variational to
deterministic autoencoders"): after training, fit a Gaussian mixture to the posterior means of the
training images and draw samples from it instead of N(0, I).

Why: the KL term never makes the aggregate posterior equal the prior, so N(0, I) puts mass where
the decoder saw no training codes (blurry, averaged images) and little where it did. A mixture
fitted to where the codes are follows the decoder's training distribution. It is fitted on
posterior means only (not on images), a handful of components with full covariances, so it holds
no single image; the privacy audit measures what it does to memorisation.

The mixture lives in the net's buffers (nets.vae.VAENet: prior_weights K, prior_means K x Z,
prior_scale_tril K x Z x Z), so it is saved with the weights and a loaded run samples from it.
"""

from __future__ import annotations

import numpy as np
import torch

from medsynth.errors import MedsynthError, reason


@torch.no_grad()
def posterior_means(net, images: torch.Tensor, conditions: torch.Tensor | None, batch_size: int = 256) -> np.ndarray:
    """The continuous posterior means of `images` (N x C x *spatial in [-1, 1]) as N x Z float64;
    conditions: N x cond_dim (conditional nets) or None."""
    first = next(net.parameters())  # the net's device and dtype (bf16 after trainer.precision=bf16-true)
    out = []
    for i in range(0, len(images), batch_size):
        c = None if conditions is None else conditions[i:i + batch_size].to(first.device, first.dtype)
        out.append(net.encode(images[i:i + batch_size].to(first.device, first.dtype), c)[0].double().cpu())
    return torch.cat(out).numpy()


def fit_gaussian_mixture(codes: np.ndarray, components: int, seed: int) -> dict:
    """A full-covariance Gaussian mixture (scikit-learn's EM, best of 4 k-means starts) on N x Z codes:
    {"weights": K, "means": K x Z, "scale_tril": K x Z x Z (Cholesky factors of the covariances),
    "mean_log_likelihood": per code}."""
    from sklearn.mixture import GaussianMixture

    if len(codes) < components:
        raise MedsynthError(f"model.latent_prior_components={components}: more than the {len(codes)} training "
                            "images to fit them on")
    # several k-means starts, the best likelihood kept: one start can merge two clusters and split a third
    gmm = GaussianMixture(components, covariance_type="full", reg_covar=1e-6, random_state=seed, max_iter=200, n_init=4)
    gmm.fit(codes)
    return {"weights": gmm.weights_, "means": gmm.means_, "scale_tril": np.linalg.cholesky(gmm.covariances_),
            "mean_log_likelihood": float(gmm.score(codes))}


def fit_latent_prior(net, images: torch.Tensor, conditions: torch.Tensor | None, seed: int) -> dict:
    """Fit the net's mixture prior to the posterior means of `images` in place; summary figures."""
    if not getattr(net, "prior_components", 0):
        raise MedsynthError("this net has no mixture prior (model.latent_prior=gmm)")
    fitted = fit_gaussian_mixture(posterior_means(net, images, conditions), net.prior_components, seed)
    for name in ("weights", "means", "scale_tril"):
        # float32 whatever the net trained in: under trainer.precision=bf16-true the buffers are bf16,
        # whose 8-bit mantissa (3 digits) would round the means and Cholesky factors the fit found
        device = getattr(net, f"prior_{name}").device
        setattr(net, f"prior_{name}", torch.as_tensor(fitted[name], dtype=torch.float32, device=device))
    return {"latent_prior_components": net.prior_components, "latent_prior_images": len(images),
            "latent_prior_mean_log_likelihood": fitted["mean_log_likelihood"]}


def check_fit_size(model_cfg, n_images: int, option: str = "model.latent_prior_components") -> None:
    """Refuse, before anything is trained or written, a mixture the training split cannot support:
    K full covariances of Z dims need at least K x (Z + 1) codes, else a component can sit on one or
    two training codes and decode to near-copies of those images. `option`: what the user sets K
    with, named in the message."""
    if model_cfg.get("latent_prior", "normal") != "gmm":
        return
    k, z = int(model_cfg.latent_prior_components), int(model_cfg.latent_dim)
    if n_images < k * (z + 1):
        raise MedsynthError(f"model.latent_prior=gmm: {k} full-covariance components over {z} latent dims need "
                            f"at least {k * (z + 1)} training images (components x (latent_dim + 1)); the training "
                            f"split has {n_images}. Lower {option}" + (" or use model.latent_prior=normal"
                                                            if option.startswith("model.") else ""))


def fit_recipe_prior(recipe, splits, seed: int) -> dict:
    """For a VAE-family recipe at the end of training: with model.latent_prior=gmm fit its mixture on
    every training image (centre-cropped where training cropped, so the mixture covers the codes of
    centred crops only), else nothing. A fit that fails leaves the N(0, I) mixture it started as and
    says why in the returned figures (summary.json), so the trained weights are still written."""
    if recipe.cfg.model.get("latent_prior", "normal") != "gmm":
        return {}
    x = splits.train.images
    if splits.crop_size is not None and list(x.shape[2:]) != list(recipe.cfg.model.image_size):
        from medsynth.data.slices import center_crop_array

        x = center_crop_array(x, splits.crop_size)
    c = recipe.condition_vector(splits.train.labels, len(x)) if recipe.conditional else None
    try:
        return fit_latent_prior(recipe.net, x, c, seed)
    except (ValueError, np.linalg.LinAlgError, MedsynthError) as failure:
        return {"latent_prior_error": f"the mixture was not fitted, samples come from N(0, I): {reason(failure)}"}


PRIORS = ("mixture", "normal")


def prior_setting(net, prior: str | None) -> dict:
    """The prior a VAE-family net draws from, checked before anything is drawn: {"prior": "mixture"}
    (the default) or {"prior": "normal"} for a net with a mixture, {} for one without (N(0, I) is
    all it has, so there is nothing to record)."""
    check_prior(prior)
    if not getattr(net, "prior_components", 0):
        if prior == "mixture":
            raise MedsynthError("--prior mixture: this run has no mixture prior (it was trained with "
                                "model.latent_prior=normal); it draws from N(0, I)")
        return {}
    if not mixture_was_fitted(net):  # its fit failed (summary.json: latent_prior_error): all N(0, I)
        return {"prior": "normal"}
    return {"prior": prior or "mixture"}


def check_prior(prior: str | None) -> None:
    if prior is not None and prior not in PRIORS:
        raise MedsynthError(f"--prior {prior}: not one of {', '.join(PRIORS)}")


def mixture_was_fitted(net) -> bool:
    """False while every component is still the N(0, I) the net was built with."""
    k, z = net.prior_means.shape
    return not (torch.equal(net.prior_means, torch.zeros_like(net.prior_means))
                and torch.equal(net.prior_scale_tril, torch.eye(z, dtype=net.prior_scale_tril.dtype,
                                                                 device=net.prior_scale_tril.device).expand(k, z, z)))


class MixturePrior:
    """Mixed into the VAE-family recipes (self.net a nets.vae.VAENet, before Recipe in the bases):
    the mixture is fitted once training ends, and sampling may choose N(0, I) instead, so one run
    compares both priors with the same weights (`medsynth sample RUN --prior normal`)."""

    def after_fit(self, splits, seed: int) -> dict:
        return fit_recipe_prior(self, splits, seed)

    def sampler_settings(self, sampler: str | None = None, steps: int | None = None,
                         guidance: float | None = None, spacing: str | None = None, prior: str | None = None) -> dict:
        super().sampler_settings(sampler, steps, guidance, spacing)  # refuses the diffusion options
        return prior_setting(self.net, prior)

    def prior_codes(self, n: int, generator: torch.Generator | None = None, prior: str | None = None) -> torch.Tensor:
        """n codes (n x latent units) from the chosen prior (default: the mixture where fitted)."""
        check_prior(prior)
        return self.net.prior(n, generator=generator, device=self.device, mixture=prior != "normal")
