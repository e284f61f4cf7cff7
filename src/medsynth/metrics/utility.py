"""Train on synthetic, test on real (TSTR): is the synthetic data useful for a downstream task?

Two classifiers of the same architecture and schedule: one trained on the
labelled synthetic images, one on the same number of real training images;
both tested on the real test split. The ratio of their scores is the utility.

Why repeats: a few hundred steps of a small classifier land on AUCs that differ by ~0.02 with the
seed, and with the thread count or CPU (float sums in another order start another trajectory:
train-on-real AUC 0.947 with 2 threads, 0.964 with 1, same seed). One run's ratio therefore
moves by about as much as a 0.95 goal leaves; the mean of a few runs, with their range beside
it, is what a verdict can rest on.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import rankdata

from medsynth.errors import MedsynthError
from medsynth.nets.classifier import VGGClassifier
from medsynth.precision import autocast


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney U statistic (ties count half); NaN when one class is absent."""
    positive = positive.astype(bool)
    n_pos, n_neg = positive.sum(), (~positive).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def accuracy_auc(scores: torch.Tensor, labels: torch.Tensor, multilabel: bool = False) -> dict[str, float]:
    """Accuracy and ROC AUC (binary; macro one-vs-rest for several classes; macro per label for multi-label)."""
    s, y = scores.numpy(), labels.numpy()
    if multilabel:
        acc = float(((s > 0.5) == (y > 0.5)).mean())
        aucs = [binary_auc(s[:, c], y[:, c] > 0.5) for c in range(s.shape[1])]
    else:
        acc = float((s.argmax(1) == y).mean())
        if s.shape[1] == 2:
            aucs = [binary_auc(s[:, 1], y == 1)]
        else:
            aucs = [binary_auc(s[:, c], y == c) for c in range(s.shape[1])]
    aucs = [a for a in aucs if not np.isnan(a)]
    return {"accuracy": acc, "auc": float(np.mean(aucs)) if aucs else float("nan")}


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, multilabel: bool,
                     steps: int = 300, batch_size: int = 64, seed: int = 0, channels=(16, 32, 64),
                     precision: str = "auto") -> VGGClassifier:
    """A small classifier trained for a fixed number of steps (the same budget for synthetic and real).
    precision: of its forward passes ("auto": bf16 only where the hardware runs it natively)."""
    torch.manual_seed(seed)
    net = VGGClassifier(images.ndim - 2, images.shape[1], num_classes, list(channels), embed_dim=64)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(steps):
        idx = torch.randint(0, len(images), (min(batch_size, len(images)),), generator=g)
        with autocast(images.device, precision):
            logits = net(images[idx])
        logits = logits.float()
        loss = (F.binary_cross_entropy_with_logits(logits, labels[idx].float()) if multilabel
                else F.cross_entropy(logits, labels[idx]))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


@torch.no_grad()
def scores_of(net: VGGClassifier, images: torch.Tensor, multilabel: bool) -> torch.Tensor:
    logits = torch.cat([net(images[i:i + 512]).float() for i in range(0, len(images), 512)])
    return torch.sigmoid(logits) if multilabel else logits.softmax(1)


def _picks(n_synthetic: int, n_real: int, n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pair r's training subsets (seed = seed + r): n of the synthetic and n of the real images. The
    real pick is drawn after the synthetic one from the same generator, as it always was, so the
    real arm depends on the synthetic set's size (not its images)."""
    rng = torch.Generator().manual_seed(seed)
    pick_s = torch.randperm(n_synthetic, generator=rng)[:n]
    return pick_s, torch.randperm(n_real, generator=rng)[:n]


def _arm(images, labels, pick, real_test, num_classes: int, multilabel: bool, steps: int, seed: int,
         precision: str) -> dict[str, float]:
    net = train_classifier(images[pick], labels[pick], num_classes, multilabel, steps=steps, seed=seed,
                           precision=precision)
    return accuracy_auc(scores_of(net, real_test.images, multilabel), real_test.labels, multilabel)


def trtr_runs(n_synthetic: int, real_train, real_test, num_classes: int, multilabel: bool = False,
              steps: int = 300, seed: int = 0, precision: str = "32", repeats: int = 3) -> list[dict[str, float]]:
    """The real arm of `tstr` alone (train on real, test on real): one {"accuracy", "auc"} per pair.
    It depends on the real sets, the synthetic set's size and num_classes only (not the synthetic
    images), so an audit of several synthetic sets of one size can compute it once
    (reference_cache.py)."""
    n = min(n_synthetic, len(real_train))
    return [_arm(real_train.images, real_train.labels, _picks(n_synthetic, len(real_train), n, seed + r)[1],
                 real_test, num_classes, multilabel, steps, seed + r, precision) for r in range(repeats)]


def tstr(synthetic, real_train, real_test, num_classes: int, multilabel: bool = False, steps: int = 300,
         seed: int = 0, precision: str = "32", repeats: int = 3, real_runs: list[dict] | None = None) -> dict:
    """Scores of a classifier trained on synthetic vs one trained on as many real images; both tested on real.

    synthetic / real_train / real_test are ImageSets with labels. precision: of the classifiers'
    training, fp32 by default so the figure is the same on every CPU (bf16 rounding moved the
    ratio by 0.09 between two machines). repeats: pairs of classifiers, pair r with seed + r for
    its training subsets, initialisation and batches; "synthetic" / "real" hold the means over the
    pairs with each pair's figure under "<key>_runs" and their range under "<key>_range", and the
    ratios are of the means (per-pair ratios under "<key>_ratio_runs"). real_runs: the real arm as
    `trtr_runs` returned it for these sets and settings (computed here when None).
    """
    for name, s in (("synthetic", synthetic), ("real train", real_train), ("real test", real_test)):
        if s.labels is None:
            raise MedsynthError(f"utility needs labels on the {name} set")
    if repeats < 1:
        raise MedsynthError(f"utility repeats must be >= 1, got {repeats}")
    n = min(len(synthetic), len(real_train))
    runs = {"synthetic": [_arm(synthetic.images, synthetic.labels, _picks(len(synthetic), len(real_train), n, seed + r)[0],
                               real_test, num_classes, multilabel, steps, seed + r, precision) for r in range(repeats)],
            "real": real_runs if real_runs is not None else trtr_runs(len(synthetic), real_train, real_test, num_classes,
                                                                      multilabel, steps, seed, precision, repeats)}
    out = {"train_images": n, "steps": steps, "test_images": len(real_test), "precision": precision,
           "repeats": repeats}
    for name, scores in runs.items():
        out[name] = {}
        for key in ("accuracy", "auc"):
            values = [s[key] for s in scores]
            out[name].update({key: float(np.mean(values)), f"{key}_runs": values,
                              f"{key}_range": [float(np.min(values)), float(np.max(values))]})
    for key in ("accuracy", "auc"):
        real = out["real"][key]
        out[f"{key}_ratio"] = float(out["synthetic"][key] / real) if real and not np.isnan(real) else float("nan")
        out[f"{key}_ratio_runs"] = [float(s[key] / r[key]) if r[key] else float("nan")
                                    for s, r in zip(runs["synthetic"], runs["real"])]
    return out
