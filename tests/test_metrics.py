import numpy as np
import pytest
import scipy.linalg
import torch

from medsynth.data.datasets import ImageSet
from medsynth.errors import MedsynthError
from medsynth.msssim import ms_ssim, msssim_settings, pairwise_ms_ssim
from medsynth.metrics.fidelity import frechet_distance, kernel_inception_distance, prdc
from medsynth.metrics.privacy import privacy_report
from medsynth.metrics.similarity import diversity, psnr, ssim
from medsynth.metrics.utility import accuracy_auc, binary_auc, tstr


def scipy_fid(a, b):
    """The textbook formula with scipy's matrix square root: an independent check."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_against_itself_and_against_scipy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(600, 16))
    b = rng.normal(0.3, 1.2, size=(500, 16)) @ rng.normal(size=(16, 16)) * 0.5
    assert frechet_distance(a, a) < 1e-6
    assert frechet_distance(a, b) == pytest.approx(scipy_fid(a, b), rel=1e-6)
    assert frechet_distance(a, a + 1.0) == pytest.approx(16.0, rel=1e-6)  # a mean shift of 1 in 16 dims


def test_kid_is_unbiased_near_zero_for_one_distribution():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(800, 8)), rng.normal(size=(800, 8))
    same = kernel_inception_distance(a, b, subsets=20, subset_size=400)
    assert abs(same["kid"]) < 3 * same["kid_std"] + 1e-3 and same["kid_subset_size"] == 400
    lo, hi = same["kid_interval"]
    assert lo < 0 < hi and same["kid_std"] > 1e-4  # subsets of half of each set differ: a real spread
    shifted = kernel_inception_distance(a, b + 1.0, subsets=20, subset_size=400)
    assert shifted["kid_interval"][0] > 0.1
    # 300 images per set: subsets of 150 (at most half), not one subset of everything
    assert kernel_inception_distance(a[:300], b[:300])["kid_subset_size"] == 150


def test_prdc_on_toy_gaussians():
    rng = np.random.default_rng(2)
    real, fake = rng.normal(size=(1500, 8)), rng.normal(size=(1500, 8))
    m = prdc(real, fake, k=5)
    # Naeem et al. 2020: for identical distributions density -> 1 and coverage -> 1 - 1/2^k
    assert m["density"] == pytest.approx(1.0, abs=0.12)
    assert m["coverage"] == pytest.approx(1 - 0.5 ** 5, abs=0.03)
    assert m["precision"] > 0.8 and m["recall"] > 0.8
    far = prdc(real, fake + 20.0, k=5)
    assert far["precision"] == far["recall"] == far["density"] == far["coverage"] == 0.0
    # fake collapsed onto a small part of real: precise, but neither recall nor coverage
    collapsed = prdc(real, rng.normal(scale=0.1, size=(1500, 8)), k=5)
    assert collapsed["precision"] > 0.95 and collapsed["coverage"] < 0.2 and collapsed["recall"] < 0.2
    with pytest.raises(MedsynthError, match="at least 6"):
        prdc(real[:5], fake, k=5)


def test_prdc_matches_the_prdc_package_and_float64_keeps_its_ties():
    """The reference implementation (Naeem et al.'s `prdc` package, numpy/sklearn distances) on the
    same features, within 1e-6; features on a scale where float32 distances would round."""
    from prdc import compute_prdc

    rng = np.random.default_rng(5)
    real = rng.normal(size=(700, 32)) * 50 + 1000
    fake = rng.normal(0.2, 1.1, size=(600, 32)) * 50 + 1000
    ours, ref = prdc(real, fake, k=5), compute_prdc(real, fake, nearest_k=5)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(ref[name], rel=1e-6, abs=1e-9), name


def test_prdc_in_small_distance_blocks_matches_the_prdc_package(monkeypatch):
    """Large sets are compared a block of rows at a time (at most DISTANCE_BLOCK distances held):
    with blocks of 13-23 rows, ragged at the end, the result is still the reference's."""
    from prdc import compute_prdc

    import medsynth.metrics.fidelity as fidelity

    monkeypatch.setattr(fidelity, "DISTANCE_BLOCK", 7000)
    assert fidelity._rows_per_block(500, None) == 14
    rng = np.random.default_rng(6)
    real, fake = rng.normal(size=(500, 16)), rng.normal(0.3, 1.2, size=(307, 16))
    ours, ref = prdc(real, fake, k=4), compute_prdc(real, fake, nearest_k=4)
    for name in ("precision", "recall", "density", "coverage"):
        assert ours[name] == pytest.approx(ref[name], rel=1e-9, abs=1e-12), name


def test_intervals_cover_the_truth_at_about_their_level():
    """Bootstrap intervals on Gaussian features whose FID and precision are near known values:
    over independent draws, the 95% FID interval holds the population FID (a mean shift of 0.5 in
    4 dims: 1.0) about as often as it says, and every interval holds its own point value."""
    from medsynth.metrics.fidelity import fid_with_interval

    hits = 0
    for trial in range(20):
        rng = np.random.default_rng(100 + trial)
        a, b = rng.normal(size=(800, 4)), rng.normal(0.5, 1.0, size=(800, 4))
        value, (lo, hi) = fid_with_interval(a, b, resamples=100, seed=trial)
        assert lo <= value + 0.05 and value <= hi + 0.05
        hits += lo <= 1.0 <= hi
    assert hits >= 16  # 95% nominal; percentile intervals of a biased statistic cover a little less
    m = prdc(a, b, k=5, resamples=100)
    for name in ("precision", "recall", "density", "coverage"):
        lo, hi = m[f"{name}_interval"]
        assert lo <= m[name] <= hi and hi - lo > 0


@pytest.mark.parametrize("size", [28, 64])
def test_batched_pairwise_msssim_equals_per_pair_and_monai(size, pneumonia):
    from monai.metrics.regression import compute_ms_ssim

    with np.load(pneumonia) as f:
        x = torch.from_numpy(f["test_images"][:12]).float()[:, None] / 127.5 - 1
    if size != 28:
        x = torch.nn.functional.interpolate(x, size=size, mode="bilinear")
    first, second = torch.triu_indices(12, 12, offset=1)
    batched = pairwise_ms_ssim(x, first, second)
    scales, k, sigma = msssim_settings((size, size))
    w = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
    monai = torch.cat([compute_ms_ssim(x[i:i + 1], x[j:j + 1], 2, data_range=2.0, kernel_size=k, kernel_sigma=sigma,
                                       weights=(w / w.sum()).tolist()).flatten() for i, j in zip(first, second)])
    assert torch.allclose(batched, monai, atol=1e-4)
    from medsynth.msssim import all_pairs_ms_ssim

    assert torch.allclose(all_pairs_ms_ssim(x, block=5), batched, atol=1e-5)  # blocks that do not divide 12
    assert torch.allclose(ms_ssim(x[first], x[second]), batched, atol=1e-4)  # relu'd terms, like the reference


@pytest.mark.parametrize("size", [128, 192, 256])
def test_msssim_matches_pytorch_msssim_on_real_images(size, pneumonia):
    """pytorch-msssim (an independent implementation) with the same window, sigma and scale
    weights, on real chest X-rays against noisy and blurred copies and against other patients
    (negative contrast terms included: both relu them)."""
    from pytorch_msssim import ms_ssim as reference

    with np.load(pneumonia) as f:
        x = torch.from_numpy(f["test_images"][:8]).float()[:, None] / 127.5 - 1
    x = torch.nn.functional.interpolate(x, size=size, mode="bilinear")
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(x, 5, 1, 2)
    scales, k, sigma = msssim_settings((size, size))
    w = torch.tensor([0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales])
    for y in (noisy, blurred, x.roll(1, 0), -x):
        expected = reference(x, y, data_range=2.0, size_average=False, win_size=k, win_sigma=sigma,
                             weights=(w / w.sum()).tolist())
        assert torch.allclose(ms_ssim(x, y), expected, rtol=1e-5, atol=1e-6)


def test_diversity_and_per_image_scores():
    torch.manual_seed(0)
    same = torch.rand(1, 1, 28, 28).repeat(6, 1, 1, 1) * 2 - 1
    d = diversity(same)
    assert d["ms_ssim_mean"] == pytest.approx(1.0, abs=1e-4) and d["pairs"] == 15 and d["all_pairs"]
    noise = torch.rand(50, 1, 28, 28) * 2 - 1
    sub = diversity(noise, max_pairs=100)
    assert sub["pairs"] == 100 and not sub["all_pairs"] and sub["pairs_possible"] == 1225
    assert sub["ms_ssim_mean"] < 0.2
    x = torch.rand(3, 1, 28, 28) * 2 - 1
    assert torch.allclose(ssim(x, x), torch.ones(3), atol=1e-5)
    assert torch.allclose(psnr(x, x + 0.02), torch.full((3,), 10 * np.log10(4 / 0.0004)), atol=1e-2)


def real_splits(path):
    with np.load(path) as f:
        return {k: torch.from_numpy(f[k]) for k in f.files}


def test_memorisation_flags_planted_copies_and_not_fresh_images(pneumonia):
    d = real_splits(pneumonia)
    scale = lambda a: a.float()[:, None] / 127.5 - 1  # noqa: E731
    train, test, val = scale(d["train_images"][:2000]), scale(d["test_images"][:300]), scale(d["val_images"][:300])
    fresh, _ = privacy_report(val[:200], train, test)
    assert fresh["near_copies"] <= 0.01  # PneumoniaMNIST itself holds a few near-duplicates across splits
    assert fresh["pixel"]["rate"] < 0.12  # unseen real images: ~5% by construction
    planted = torch.cat([train[:40], val[:160]])  # 20% exact copies of training images
    result, pairs = privacy_report(planted, train, test)
    assert result["near_copies"] == pytest.approx(0.2, abs=0.01)
    assert result["pixel"]["rate"] >= 0.2
    assert set(pairs[:40, 0].tolist()) == set(range(40))  # the copies are the closest pairs
    assert torch.equal(pairs[:40, 1].sort().values, torch.arange(40))  # matched to their originals
    # authenticity: fresh images about as authentic as held-out ones; exact copies never are
    assert fresh["pixel"]["authenticity"] == pytest.approx(fresh["pixel"]["heldout_authenticity"], abs=0.1)
    assert result["pixel"]["authenticity"] == pytest.approx(0.8 * fresh["pixel"]["authenticity"], abs=0.06)


def test_authenticity_against_a_by_hand_count():
    """Alaa et al.'s rule on points on a line, counted by hand: training images at 0, 1, 3 (nearest-
    other distances 1, 1, 2); queries at 0.4 (nearest 0, 0.4 < 1: not authentic), 2.5 (nearest 3,
    0.5 < 2: not), 6 (nearest 3, 3 > 2: authentic), -2 (nearest 0, 2 > 1: authentic)."""
    from medsynth.metrics.privacy import authenticity, nearest

    train = torch.tensor([[0.0], [1.0], [3.0]])
    queries = torch.tensor([[0.4], [2.5], [6.0], [-2.0]])
    train_nn, _ = nearest(train, train, exclude_self=True)
    assert train_nn.tolist() == [1.0, 1.0, 2.0]
    assert authenticity(*nearest(queries, train), train_nn) == 0.5


def test_tstr_real_as_synthetic_gives_ratio_near_one(pneumonia):
    d = real_splits(pneumonia)
    scale = lambda a: a.float()[:, None] / 127.5 - 1  # noqa: E731
    labels = d["train_labels"][:, 0].long()
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
    a, b = perm[:800], perm[800:1600]
    real_test = ImageSet(scale(d["test_images"]), d["test_labels"][:, 0].long())
    # 400 steps: at 150 the classifiers had not settled and the ratio over seeds 0-5 ran from 0.975
    # to 1.134 (one seed's real classifier stopped at AUC 0.84); at 400 it ran from 0.958 to 0.987
    # (mean 0.976, sd 0.011), in fp32 on every CPU, so +-0.08 is about five standard deviations.
    out = tstr(ImageSet(scale(d["train_images"][a]), labels[a]), ImageSet(scale(d["train_images"][b]), labels[b]),
               real_test, num_classes=2, steps=400, repeats=1)
    assert out["real"]["auc"] > 0.9  # the classifier learns the task at all
    assert out["auc_ratio"] == pytest.approx(1.0, abs=0.08)
    assert out["precision"] == "32"
    assert out["train_images"] == 800


def test_tstr_repeats_are_seeded_runs_and_their_means(pneumonia):
    """Pair r of a repeated TSTR is the single run with seed + r; the figures are their means, with
    each run and the range kept, and the ratio is of the means."""
    d = real_splits(pneumonia)
    scale = lambda a: a.float()[:, None] / 127.5 - 1  # noqa: E731
    labels = d["train_labels"][:, 0].long()
    fake, real = ImageSet(scale(d["train_images"][:200]), labels[:200]), ImageSet(scale(d["train_images"][200:600]), labels[200:600])
    test = ImageSet(scale(d["test_images"][:200]), d["test_labels"][:200, 0].long())
    both = tstr(fake, real, test, num_classes=2, steps=15, seed=4, repeats=2)
    single = [tstr(fake, real, test, num_classes=2, steps=15, seed=s, repeats=1) for s in (4, 5)]
    assert both["repeats"] == 2 and both["train_images"] == 200
    for name in ("synthetic", "real"):
        runs = [s[name]["auc"] for s in single]
        assert both[name]["auc_runs"] == runs
        assert both[name]["auc"] == pytest.approx(np.mean(runs))
        assert both[name]["auc_range"] == [min(runs), max(runs)]
    assert both["auc_ratio"] == pytest.approx(both["synthetic"]["auc"] / both["real"]["auc"])
    assert both["auc_ratio_runs"] == pytest.approx([s["auc_ratio"] for s in single])
    with pytest.raises(MedsynthError, match="repeats must be >= 1, got 0"):
        tstr(fake, real, test, num_classes=2, steps=15, repeats=0)


def test_auc_and_accuracy():
    assert binary_auc(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1])) == pytest.approx(0.75)
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    res = accuracy_auc(scores, torch.tensor([0, 1, 1, 1]))
    assert res["accuracy"] == pytest.approx(0.75) and res["auc"] == pytest.approx(1.0)


def test_nearest_in_blocks_equals_scipy_over_all_pairs():
    """Blocks of queries and of references (both smaller than the sets, so rows and the excluded
    self-matches cross block edges) give scipy's all-pairs nearest neighbour in float64."""
    from scipy.spatial.distance import cdist

    from medsynth.metrics.privacy import nearest

    g = torch.Generator().manual_seed(0)
    q, r = torch.randn(300, 7, generator=g), torch.randn(500, 7, generator=g)
    for exclude, a, b in ((False, q, r), (True, r, r)):
        full = cdist(a.double().numpy(), b.double().numpy())
        if exclude:
            np.fill_diagonal(full, np.inf)
        d, i = nearest(a, b, chunk=64, reference_chunk=100, exclude_self=exclude)
        assert np.array_equal(i.numpy(), full.argmin(1))
        assert np.allclose(d.numpy(), full.min(1), rtol=1e-12)


def test_checkerboard_and_sharpness_on_patterns_with_known_answers():
    """A pure (-1)^(i+j) pattern has all its energy at Nyquist (1), a low-frequency cosine none (0),
    their sum a^2 / (a^2 + 1/2) by Parseval; a ramp rising c per pixel has gradient magnitude c."""
    from medsynth.metrics.texture import checkerboard_fraction, sharpness, texture_scores

    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    board = torch.from_numpy((-1.0) ** (i + j))[None, None]
    wave = torch.from_numpy(np.cos(2 * np.pi * 3 * i / 32))[None, None]
    assert checkerboard_fraction(board)[0] == pytest.approx(1.0)
    assert checkerboard_fraction(wave)[0] == pytest.approx(0.0, abs=1e-12)
    a = 0.5
    assert checkerboard_fraction(wave + a * board)[0] == pytest.approx(a ** 2 / (a ** 2 + 0.5))
    stripes = torch.from_numpy((-1.0) ** i)[None, None]  # period 2 along one axis: Nyquist row
    assert checkerboard_fraction(stripes)[0] == pytest.approx(1.0)
    ramp = torch.from_numpy(0.03 * i + 0.0 * j)[None, None]
    assert sharpness(ramp)[0] == pytest.approx(0.03)
    diagonal = torch.from_numpy(0.03 * i + 0.04 * j)[None, None]
    assert sharpness(diagonal)[0] == pytest.approx(0.05)  # sqrt(0.03^2 + 0.04^2)

    # a real use: MedMNIST-like blobs, blurred (sharpness ratio < 1) or with a transposed
    # convolution's stride-2 pattern added (checkerboard ratio > 1); the same set: both ratios 1
    rng = np.random.default_rng(0)
    real = torch.from_numpy(rng.normal(size=(64, 1, 32, 32))).float()
    real = torch.nn.functional.avg_pool2d(real, 3, 1, 1)  # some spatial correlation
    blurred = torch.nn.functional.avg_pool2d(real, 3, 1, 1)
    up = torch.nn.ConvTranspose2d(1, 1, 3, stride=2, padding=1, output_padding=1, bias=False)
    torch.nn.init.constant_(up.weight, 1.0)
    with torch.no_grad():
        patterned = up(torch.nn.functional.avg_pool2d(real, 2))  # 16 -> 32 px by a transposed conv
    same = texture_scores(real, real, resamples=50)
    assert same["checkerboard"]["ratio"] == pytest.approx(1.0) and same["sharpness"]["ratio"] == pytest.approx(1.0)
    blur = texture_scores(blurred, real, resamples=50)
    assert blur["sharpness"]["ratio"] < 0.8 and blur["sharpness"]["ratio_interval"][1] < 1.0
    checker = texture_scores(patterned, real, resamples=50)
    assert checker["checkerboard"]["ratio"] > 1.3 and checker["checkerboard"]["ratio_interval"][0] > 1.0
    resized = torch.nn.functional.interpolate(torch.nn.functional.avg_pool2d(real, 2), scale_factor=2,
                                              mode="bilinear", align_corners=False)  # resize, no pattern
    assert texture_scores(resized, real, resamples=50)["checkerboard"]["ratio_interval"][1] < 1.0
