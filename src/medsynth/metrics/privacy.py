"""Is a synthetic image a copy of a training patient? Nearest-neighbour distances.

For every synthetic image: its distance to the nearest training image, in
pixel space (root-mean-square difference per pixel, in [-1, 1] units, so 0.01
is about 1.3 grey levels of 255) and in the feature network's space (L2).
The memorisation rate is the share of synthetic images closer to the training
set than the 5th percentile of *held-out real* images' nearest-training
distances: a model that does not copy scores about 0.05, as real unseen
images do by construction. Near-exact copies are those within `copy_rms`.

Authenticity (Alaa et al., ICML 2022): a synthetic image is authentic when it lies farther from
its nearest training image than that training image lies from its own nearest other training
image; the score is the authentic share (held-out real images score it too, as a reference).
Distances are float64 (in float32, ~0.5% of nearest-neighbour ranks flipped).
"""

from __future__ import annotations

import numpy as np
import torch

COPY_RMS = 0.02  # ~2.5 grey levels of 255: visually the same image
PERCENTILE = 5.0


def nearest(query: torch.Tensor, reference: torch.Tensor, chunk: int = 1024, reference_chunk: int = 8192,
            exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """(distance, index) of each query row's nearest reference row (L2 over the flattened rows,
    float64). exclude_self: query is reference, and row i may not match itself. Both sets are
    turned to float64 a block at a time, so memory stays at the inputs plus one block of distances
    (a float64 copy of 50 000 images of 64 x 64 would be 1.6 GB)."""
    q, r = query.flatten(1), reference.flatten(1)
    dists, idx = [], []
    for i in range(0, len(q), chunk):
        block = q[i:i + chunk].double()
        best = torch.full((len(block),), float("inf"), dtype=torch.float64)
        where = torch.zeros(len(block), dtype=torch.long)
        for j in range(0, len(r), reference_chunk):
            d = torch.cdist(block, r[j:j + reference_chunk].double())
            if exclude_self:  # query row i + a is reference row j + b where i + a == j + b
                a = torch.arange(len(block))
                b = a + i - j
                inside = (b >= 0) & (b < d.shape[1])
                d[a[inside], b[inside]] = float("inf")
            m = d.min(dim=1)
            closer = m.values < best
            best = torch.where(closer, m.values, best)
            where = torch.where(closer, m.indices + j, where)
        dists.append(best)
        idx.append(where)
    return torch.cat(dists), torch.cat(idx)


def authenticity(query_d: torch.Tensor, query_i: torch.Tensor, train_nn: torch.Tensor) -> float:
    """Share of queries farther from their nearest training image than that image is from its own
    nearest other training image (query_d, query_i: `nearest(query, train)`; train_nn: each
    training image's nearest-other distance, `nearest(train, train, exclude_self=True)[0]`)."""
    return float((query_d > train_nn[query_i]).double().mean())


def pixel_rms_nearest(query: torch.Tensor, reference: torch.Tensor,
                      exclude_self: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    d, i = nearest(query, reference, exclude_self=exclude_self)
    return d / np.sqrt(query[0].numel()), i


def memorisation(fake_d: torch.Tensor, heldout_d: torch.Tensor, percentile: float = PERCENTILE) -> dict:
    threshold = float(np.percentile(heldout_d.numpy(), percentile))
    return {"threshold": threshold, "percentile": percentile,
            "rate": float((fake_d < threshold).float().mean()),
            "distance_median": float(fake_d.median()), "distance_min": float(fake_d.min()),
            "heldout_distance_median": float(heldout_d.median())}


def reference_neighbours(train: torch.Tensor, heldout: torch.Tensor, train_feats: torch.Tensor | None = None,
                         heldout_feats: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What `privacy_report` reads from the real sets alone: the nearest training image of every
    held-out image (distance "heldout_d", index "heldout_i") and every training image's distance to
    its nearest other training image ("train_nn"), in pixels (RMS), and with features given the same
    in feature space ("feature_heldout_d", ...). The costly part of a report (train x train), the
    same for every synthetic set audited against these sets."""
    hd, hi = pixel_rms_nearest(heldout, train)
    train_nn, _ = pixel_rms_nearest(train, train, exclude_self=True)
    out = {"heldout_d": hd, "heldout_i": hi, "train_nn": train_nn}
    if train_feats is not None and heldout_feats is not None:
        hfd, hfi = nearest(heldout_feats, train_feats)
        train_fnn, _ = nearest(train_feats, train_feats, exclude_self=True)
        out.update({"feature_heldout_d": hfd, "feature_heldout_i": hfi, "feature_train_nn": train_fnn})
    return out


def privacy_report(fake: torch.Tensor, train: torch.Tensor, heldout: torch.Tensor,
                   fake_feats: torch.Tensor | None = None, train_feats: torch.Tensor | None = None,
                   heldout_feats: torch.Tensor | None = None, copy_rms: float = COPY_RMS,
                   reference: dict[str, torch.Tensor] | None = None) -> tuple[dict, torch.Tensor]:
    """Metrics, and the indices (fake, train) of the closest pairs in pixel space, closest first.
    Images may be 2D or 3D (flattened: voxel-space distances for volumes). reference: what
    `reference_neighbours(train, heldout, train_feats, heldout_feats)` returned (computed when None)."""
    if reference is None or (fake_feats is not None and "feature_train_nn" not in reference):
        reference = reference_neighbours(train, heldout, *((train_feats, heldout_feats) if fake_feats is not None
                                                           else ()))
    fd, fi = pixel_rms_nearest(fake, train)
    hd, hi, train_nn = reference["heldout_d"], reference["heldout_i"], reference["train_nn"]
    out = {"pixel": {**memorisation(fd, hd), "authenticity": authenticity(fd, fi, train_nn),
                     "heldout_authenticity": authenticity(hd, hi, train_nn)},
           "copy_rms": copy_rms,
           "near_copies": float((fd < copy_rms).float().mean()),
           "heldout_near_copies": float((hd < copy_rms).float().mean())}
    if fake_feats is not None:
        ffd, ffi = nearest(fake_feats, train_feats)
        hfd, hfi = reference["feature_heldout_d"], reference["feature_heldout_i"]
        train_fnn = reference["feature_train_nn"]
        out["feature"] = {**memorisation(ffd, hfd), "authenticity": authenticity(ffd, ffi, train_fnn),
                          "heldout_authenticity": authenticity(hfd, hfi, train_fnn)}
    order = torch.argsort(fd)
    pairs = torch.stack([order, fi[order]], dim=1)
    return out, pairs
