"""Is a synthetic image a copy of a training patient? Nearest-neighbour distances.

For every synthetic image: its distance to the nearest training image, in
pixel space (root-mean-square difference per pixel, in [-1, 1] units, so 0.01
is about 1.3 grey levels of 255) and in the feature network's space (L2).
The memorisation rate is the share of synthetic images closer to the training
set than the 5th percentile of *held-out real* images' nearest-training
distances: a model that does not copy scores about 0.05, as real unseen
images do by construction. Near-exact copies are those within `copy_rms`.
"""

from __future__ import annotations

import numpy as np
import torch

COPY_RMS = 0.02  # ~2.5 grey levels of 255: visually the same image
PERCENTILE = 5.0


def nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query row's nearest reference row (L2 over the flattened rows)."""
    q = query.flatten(1).float()
    r = reference.flatten(1).float()
    dists, idx = [], []
    for i in range(0, len(q), chunk):
        d = torch.cdist(q[i:i + chunk], r)
        m = d.min(dim=1)
        dists.append(m.values)
        idx.append(m.indices)
    return torch.cat(dists), torch.cat(idx)


def pixel_rms_nearest(query: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    d, i = nearest(query, reference)
    return d / np.sqrt(query[0].numel()), i


def memorisation(fake_d: torch.Tensor, heldout_d: torch.Tensor, percentile: float = PERCENTILE) -> dict:
    threshold = float(np.percentile(heldout_d.numpy(), percentile))
    return {"threshold": threshold, "percentile": percentile,
            "rate": float((fake_d < threshold).float().mean()),
            "distance_median": float(fake_d.median()), "distance_min": float(fake_d.min()),
            "heldout_distance_median": float(heldout_d.median())}


def privacy_report(fake: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor,
                   fake_feats: torch.Tensor | None = None, train_feats: torch.Tensor | None = None,
                   heldout_feats: torch.Tensor | None = None, copy_rms: float = COPY_RMS) -> tuple[dict, torch.Tensor]:
    """Metrics, and the indices (fake, train) of the closest pairs in pixel space, closest first."""
    fd, fi = pixel_rms_nearest(fake, train)
    hd, _ = pixel_rms_nearest(heldout, train)
    out = {"pixel": memorisation(fd, hd), "copy_rms": copy_rms,
           "near_copies": float((fd < copy_rms).float().mean()),
           "heldout_near_copies": float((hd < copy_rms).float().mean())}
    if fake_feats is not None:
        ffd, _ = nearest(fake_feats, train_feats)
        hfd, _ = nearest(heldout_feats, train_feats)
        out["feature"] = memorisation(ffd, hfd)
    order = torch.argsort(fd)
    pairs = torch.stack([order, fi[order]], dim=1)
    return out, pairs
