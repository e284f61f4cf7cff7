import math

import numpy as np
import pytest
import torch
from scipy.signal.windows import gaussian

from medsynth.errors import MedsynthError
from medsynth.losses import kl_categorical_uniform, kl_normal, mind_descriptor, reconstruction_loss, structure_loss
from medsynth.msssim import ms_ssim, msssim_settings


def test_msssim_settings_follow_image_size():
    assert msssim_settings((28, 28)) == (3, 7, pytest.approx(1.5 * 7 / 11))
    assert msssim_settings((64, 64))[:2] == (4, 7)
    assert msssim_settings((256, 256)) == (5, 11, 1.5)  # Wang et al.'s settings where they fit
    with pytest.raises(MedsynthError, match="needs images of at least"):
        msssim_settings((28, 28), scales=5, kernel=11)


def test_gaussian_window_is_a_proper_gaussian():
    """The window the loss uses peaks at the centre and matches scipy's Gaussian
    (PyTorch-VAE's window had a sign error that made it peak at the edges)."""
    from monai.metrics.regression import _gaussian_kernel

    scales, k, sigma = msssim_settings((28, 28))
    window = _gaussian_kernel(2, 1, [k, k], [sigma, sigma])[0, 0]
    g = gaussian(k, std=sigma)
    expected = np.outer(g, g) / np.outer(g, g).sum()
    assert np.allclose(window.numpy(), expected, atol=1e-6)
    assert window.argmax().item() == (k * k) // 2


@pytest.mark.parametrize("size", [28, 64])
def test_msssim_small_images(size):
    torch.manual_seed(0)
    x = torch.rand(4, 1, size, size) * 2 - 1
    assert torch.allclose(ms_ssim(x, x), torch.ones(4), atol=1e-5)
    values = [ms_ssim(x, (x + s * torch.randn_like(x)).clamp(-1, 1)).mean().item() for s in (0.05, 0.2, 0.8)]
    assert values[0] > values[1] > values[2]
    y = (x + 0.3 * torch.randn_like(x)).clamp(-1, 1).requires_grad_()
    (1 - ms_ssim(x, y)).sum().backward()
    assert torch.isfinite(y.grad).all() and y.grad.abs().sum() > 0


def test_msssim_equals_monai_where_monai_defaults_apply():
    from monai.metrics.regression import compute_ms_ssim

    torch.manual_seed(1)
    x = torch.rand(3, 1, 192, 192)
    y = (x + 0.2 * torch.randn_like(x)).clamp(0, 1)
    ours = ms_ssim(x, y, data_range=1.0)
    theirs = compute_ms_ssim(x, y, spatial_dims=2, data_range=1.0).flatten()
    assert torch.allclose(ours, theirs, atol=1e-4)


def test_kl_terms():
    mu, logvar = torch.zeros(3, 5), torch.zeros(3, 5)
    assert torch.allclose(kl_normal(mu, logvar), torch.zeros(3))
    mu, logvar = torch.randn(3, 5), torch.randn(3, 5)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    assert torch.allclose(kl_normal(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1), atol=1e-5)
    assert torch.allclose(kl_categorical_uniform(torch.zeros(2, 4)), torch.zeros(2), atol=1e-6)
    sharp = torch.tensor([[100.0, 0, 0, 0]])
    assert kl_categorical_uniform(sharp).item() == pytest.approx(math.log(4), abs=1e-4)


def test_reconstruction_losses():
    torch.manual_seed(2)
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    logits = torch.randn(2, 1, 28, 28)
    recon = torch.tanh(logits)
    assert torch.allclose(reconstruction_loss("mse", logits, x), ((recon - x) ** 2).sum((1, 2, 3)), atol=1e-4)
    assert torch.allclose(reconstruction_loss("l1", logits, x), (recon - x).abs().sum((1, 2, 3)), atol=1e-4)
    bce = torch.nn.functional.binary_cross_entropy((recon + 1) / 2, (x + 1) / 2, reduction="none").sum((1, 2, 3))
    assert torch.allclose(reconstruction_loss("bce", logits, x), bce, rtol=1e-4)
    perfect = torch.atanh(x.clamp(-0.999, 0.999))
    assert reconstruction_loss("msssim", perfect, x.clamp(-0.999, 0.999)).max() < 1e-2


def _mind_reference(image: np.ndarray, sigma: float = 1.0, distance: int = 1) -> np.ndarray:
    """MIND of one 2D or 3D array written from Heinrich et al.'s definition with scipy's Gaussian
    filter and numpy indexing: K x spatial, K = 2 x the axes."""
    from scipy.ndimage import gaussian_filter

    image = image.astype(np.float64)
    distances = []
    for axis in range(image.ndim):
        n = image.shape[axis]
        for step in (-distance, distance):
            neighbour = np.take(image, np.clip(np.arange(n) + step, 0, n - 1), axis=axis)
            distances.append(gaussian_filter((image - neighbour) ** 2, sigma, mode="nearest", truncate=2.0))
    d = np.stack(distances)
    v = d.mean(0)
    v = np.clip(v, 1e-3 * v.mean(), 1e3 * v.mean())
    mind = np.exp(-d / v)
    return mind / mind.max(0)


@pytest.mark.parametrize("shape", [(2, 1, 24, 20), (1, 2, 10, 12, 9)])
def test_mind_matches_its_definition_written_with_scipy(shape):
    torch.manual_seed(0)
    x = torch.randn(shape)
    x[0, 0, :4] = 0.3  # a flat band: the variance floor in play
    got = mind_descriptor(x).numpy()
    offsets = 2 * (len(shape) - 2)
    assert got.shape == (shape[0], shape[1] * offsets, *shape[2:])
    for b in range(shape[0]):
        for c in range(shape[1]):
            assert np.allclose(got[b, c * offsets:(c + 1) * offsets], _mind_reference(x[b, c].numpy()), atol=2e-5)


def test_mind_ignores_which_way_the_contrast_goes():
    """The reason to use MIND across contrasts: an affine intensity change, inverted or not,
    leaves it as it is; moving the anatomy does not."""
    torch.manual_seed(0)
    x = torch.nn.functional.avg_pool2d(torch.randn(2, 1, 36, 36), 5, 1)  # smooth blobs, 32 px
    assert torch.allclose(mind_descriptor(-2.5 * x + 0.7), mind_descriptor(x), atol=1e-5)
    assert structure_loss(0.5 * x - 1, x).item() < 1e-5
    moved = torch.roll(x, 3, dims=-1)
    assert structure_loss(moved, x).item() > 0.05
    assert structure_loss(x + 0.3 * torch.randn_like(x), x).item() > structure_loss(x + 0.03 * torch.randn_like(x), x)
    flat = torch.full((1, 1, 16, 16), -1.0)
    assert torch.equal(mind_descriptor(flat), torch.ones(1, 4, 16, 16))
    with pytest.raises(MedsynthError, match="MIND needs"):
        mind_descriptor(torch.zeros(2, 16))
