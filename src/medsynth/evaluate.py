"""`evaluate(real, fake, ...)`: is the synthetic set realistic, diverse, private and useful?

Each set is a data path (npz, image folder) or a run directory to sample from.
From a data file, `real` is its held-out split (test, else val) and, unless
`train` is given, the training images are its train split. Every section of
the result holds numbers or {"not_computed": why}; `floor` holds the same
metrics for real images against real images, the scale every number is read
against.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from medsynth.case_evaluation import evaluate_cases
from medsynth.config import load_config
from medsynth.data import load_splits
from medsynth.data.cases import is_volume_set, read_volume_set
from medsynth.data.datasets import ImageSet
from medsynth.errors import MedsynthError
from medsynth.feature_runs import load_feature_net
from medsynth.metrics.fidelity import fid_with_interval, frechet_distance, kernel_inception_distance, prdc
from medsynth.metrics.intervals import LEVEL, RESAMPLES, mean_interval
from medsynth.metrics.privacy import privacy_report, reference_neighbours
from medsynth.metrics.similarity import diversity, reconstruction_scores
from medsynth.metrics.utility import trtr_runs, tstr
from medsynth.models import load_run
from medsynth.provenance import medsynth_version, synthetic_lineage
from medsynth.reference_cache import ReferenceCache, tensor_digest
from medsynth.tracking import flat_metrics, log_to_tracked_run
from medsynth.runs import CONFIG, EVALUATION, check_output, is_run
from medsynth.sampling import check_samples, draw
from medsynth.segmentation_utility import segmentation_utility
from medsynth.writers import save_grid, write_text

MIN_IMAGES = 10


@dataclass
class EvalSet:
    source: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor | None = None
    num_classes: int | None = None
    multilabel: bool = False
    recipe: object = None  # the model, when the set was sampled from a run


def _read_splits(path: Path, seed: int, image_size: int | None = None):
    cfg = load_config()
    cfg.data.path = str(path)
    cfg.data.val_fraction = 0.0
    cfg.data.image_size = image_size
    return load_splits(cfg.data, None, seed)


def load_set(spec: str | Path, role: str, n: int | None = None, seed: int = 0,
             image_size: int | None = None) -> tuple[EvalSet, object]:
    """(the set for `role`, the SplitData it came from, or None for a run). role: real | fake | train.
    image_size: resize a file's or folder's images (e.g. 28 px MedMNIST for a 64 px model)."""
    path = Path(spec)
    if is_run(path):
        recipe = load_run(path)
        check_samples(recipe)
        images, labels = draw(recipe, n or 1000, seed=seed)
        if not torch.isfinite(images).all():
            raise MedsynthError(f"{path}: samples hold NaN or inf (did the run diverge?)")
        m = recipe.cfg.model
        return EvalSet(str(path), "sampled", images, labels, m.get("num_classes"), bool(m.get("multilabel")),
                       recipe), None
    if not path.exists():
        raise MedsynthError(f"{path}: {role} set not found")
    if is_volume_set(path):  # 3D: NIfTI / NRRD files or DICOM series, each z-scored (data.cases.read_volume_set)
        images = torch.from_numpy(read_volume_set(path, image_size))
        if n is not None and len(images) > n:
            images = images[_pick(len(images), n, seed)]
        return EvalSet(str(path), "volumes", images), None
    splits = _read_splits(path, seed, image_size)
    if role == "real":
        name, part = splits.held_out()
    else:
        name, part = "train", splits.train
    images, labels = part.images, part.labels
    if n is not None and len(images) > n:
        pick = _pick(len(images), n, seed)
        images, labels = images[pick], None if labels is None else labels[pick]
    return EvalSet(str(path), name, images, labels, splits.num_classes, splits.multilabel), splits


def _check_sets(sets: dict[str, EvalSet], least: int) -> None:
    ref_name, ref = next(iter(sets.items()))
    for name, s in sets.items():
        if s.images.shape[1:] != ref.images.shape[1:]:
            raise MedsynthError(f"{name} set {s.source} has images of shape {list(s.images.shape[1:])}, "
                                f"the {ref_name} set {ref.source} {list(ref.images.shape[1:])} (channels x size "
                                "must match: resize image files with --image-size, or train at their size)")
        if len(s.images) < least:
            raise MedsynthError(f"{name} set {s.source}: {len(s.images)} images; evaluation needs at least {least}")
        if not torch.isfinite(s.images).all():
            raise MedsynthError(f"{name} set {s.source}: images hold NaN or inf")


def _pick(total: int, n: int, seed: int) -> torch.Tensor:
    """n seeded random indices out of `total` (the same subset for the same seed)."""
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def _subset(x: torch.Tensor, n: int, seed: int, where: torch.Tensor | None = None) -> torch.Tensor:
    """A seeded subset of at most n rows of x (of x[where] for a boolean `where`, picked without
    copying all of x[where] first: half of 50 000 images is 400 MB)."""
    rows = torch.arange(len(x)) if where is None else torch.nonzero(where)[:, 0]
    if len(rows) > n:
        rows = rows[_pick(len(rows), n, seed)]
    return x if where is None and len(x) <= n else x[rows]


INTERVAL_METHOD = ("percentile bootstrap: FID resamples both sets; precision, density (per synthetic image) and "
                   "recall, coverage (per real image) resample the per-image terms with the k-NN radii fixed; "
                   "diversity resamples the images; KID: 2.5-97.5th percentiles of its subset estimates "
                   "(medsynth.metrics.intervals)")


def _fidelity(real_f: torch.Tensor, fake_f: torch.Tensor, k: int, seed: int, resamples: int = 0) -> dict:
    a, b = real_f.numpy(), fake_f.numpy()
    if resamples:
        fid, fid_interval = fid_with_interval(a, b, resamples, seed)
        fid_part = {"fid": fid, "fid_interval": fid_interval}
    else:
        fid_part = {"fid": frechet_distance(a, b)}
    return {**fid_part, **kernel_inception_distance(a, b, seed=seed), **prdc(a, b, k, resamples, seed),
            "real_images": len(a), "fake_images": len(b)}


def _clean(obj):
    """NaN -> None, so the file is valid JSON."""
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def evaluate(real: str | Path | None, fake: str | Path, train: str | Path | None = None, features: str | Path | None = None,
             out: str | Path | None = None, n: int | None = None, k: int = 5, diversity_images: int = 1000,
             utility: bool = True, utility_steps: int = 300, utility_repeats: int = 3, seed: int = 0,
             image_size: int | None = None,
             overwrite: bool = False, allow_synthetic_real: bool = False, resamples: int = RESAMPLES,
             seg_config: str | Path | None = None, seg_overrides: list[str] | tuple = (),
             synthetic_share: float | None = None, seg_real_run: str | Path | None = None,
             reference_cache: str | Path | None = None, log=print) -> dict:
    """Compute every metric and write them as JSON to `out` (default: <fake run>/evaluation.json or
    ./metrics.json) with the closest synthetic / training pairs as a PNG strip beside it.
    image_size: resize the image files' sets to this size (a run's samples keep the model's).
    resamples: bootstrap resamples for the 95% intervals of FID, PRDC and diversity (0: none).
    An existing output (the default one too: an earlier evaluation, made perhaps against another
    real set) is refused before anything is computed unless `overwrite`; no output may be an input.
    A `real` set marked synthetic by medsynth is refused unless `allow_synthetic_real` (then the
    result says so under sets.real.synthetic). A translation or segmentation run as `fake` is scored
    per held-out case instead (case_evaluation.py; `real`: case folders, default the run's held-out
    cases; train, features, n, k and utility do not apply). With `seg_config`, `fake` is a folder of
    synthetic (image, label map) pairs and the result is their segmentation utility
    (segmentation_utility.py: the recipe trained on real, synthetic and both, scored on the real
    test cases; `seg_overrides` adjust the recipe for all three alike; `synthetic_share`: the share of
    the real+synthetic arm's patches cut from the pairs, None: every case alike; `seg_real_run`: a
    real arm trained earlier with the same settings, reused instead of trained again).
    reference_cache: a folder where what depends on the real sets alone (their embeddings, the
    floors, the held-out images' nearest training images, the train-on-real classifiers) is kept
    and read back by later evaluations against the same real sets and settings
    (reference_cache.py); None: all computed here."""
    for name, value, least in (("k", k, 1), ("-n", n, 1), ("--utility-steps", utility_steps, 1),
                               ("--utility-repeats", utility_repeats, 1),
                               ("--diversity-images", diversity_images, 2), ("--resamples", resamples, 0)):
        if value is not None and value < least:  # a negative -n would silently drop images
            raise MedsynthError(f"{name} must be >= {least}, got {value}")
    inputs = [real, fake, train, features]
    flag = "--out" if out is not None else "evaluation output"
    if synthetic_share is not None and (seg_config is None or not 0 < synthetic_share < 1):
        raise MedsynthError(f"--synthetic-share={synthetic_share}: expected a share in (0, 1), with --seg-config")
    if seg_real_run is not None and seg_config is None:
        raise MedsynthError(f"--seg-real-run {seg_real_run}: is for --seg-config (a real arm to reuse)")
    if reference_cache is not None and seg_config is not None:
        raise MedsynthError(f"--reference-cache {reference_cache}: is for synthetic image sets, not --seg-config "
                            "(reuse the real arm with --seg-real-run)")
    if seg_config is not None:  # synthetic pairs' segmentation utility
        if out is None:
            out = Path(fake) / EVALUATION if Path(fake).is_dir() else Path("metrics.json")
        out = check_output(out, overwrite, [real, seg_config], (".json",), flag)
        result = _clean(segmentation_utility(fake, seg_config, list(seg_overrides), Path(out).parent / "utility_runs",
                                             resamples, seed, synthetic_share, seg_real_run, log))
        write_text(out, json.dumps(result, indent=2))
        log(f"metrics: {out}")
        return result
    if out is None:
        out = Path(fake) / EVALUATION if is_run(fake) else Path("metrics.json")
    out = check_output(out, overwrite, inputs, (".json",), flag)
    mapping = _mapping_run(fake)
    if mapping is not None:  # translation / segmentation: scored per held-out case, not as a synthetic set
        if reference_cache is not None:
            raise MedsynthError(f"--reference-cache {reference_cache}: is for synthetic image sets; {fake} is a "
                                f"{mapping.cfg.model.family} run, scored per held-out case")
        result = _clean(evaluate_cases(mapping, real, resamples, seed, log))
        write_text(out, json.dumps(result, indent=2))
        log(f"metrics: {out}")
        if log_to_tracked_run(Path(fake), flat_metrics({"eval": result}), [out], "evaluation", log):
            log("logged to the run's MLflow run")
        return result
    if real is None:
        raise MedsynthError("--real is needed: the real images to compare the synthetic set with")
    check_output(_strip_path(out), overwrite, inputs, (".png",), "nearest-pairs strip")
    lineage = None if is_run(real) else synthetic_lineage(real)
    if lineage is not None and not allow_synthetic_real:
        raise MedsynthError(f"--real {real}: marked synthetic ({lineage['file']}: made by {lineage.get('generator')} "
                            f"from run {lineage.get('run')}); scores against it say nothing about real images. Give "
                            "--allow-synthetic-real to evaluate against it anyway")
    clock = _Clock()
    sets, floor_set = load_sets(real, fake, train, n, seed, image_size)
    _check_sets(sets, max(MIN_IMAGES, k + 1))
    clock.lap("load")
    result: dict = {"sets": {name: {"source": s.source, "split": s.split, "images": len(s.images),
                                    "shape": list(s.images.shape[1:]), "labelled": s.labels is not None}
                             for name, s in sets.items()},
                    "floor": {}}
    if lineage is not None:
        result["sets"]["real"]["synthetic"] = lineage
    net = _feature_net(result, features)
    ref = ReferenceCache(reference_cache, **(_reference_depends(sets, floor_set, net, k, seed, resamples, diversity_images,
                                                                utility_steps, utility_repeats) if reference_cache else {}))
    feats = _embeddings(sets, floor_set, net, ref)
    clock.lap("features")
    _fidelity_section(result, feats, k, seed, resamples, ref)
    clock.lap("fidelity")
    result["diversity"] = {
        "fake": diversity(_subset(sets["fake"].images, diversity_images, seed), seed=seed, resamples=resamples),
        "real": ref.get_json("diversity_real", lambda: diversity(_subset(sets["real"].images, diversity_images, seed),
                                                                 seed=seed, resamples=resamples))}
    result["floor"]["diversity"] = _diversity_floor(result["diversity"], floor_set, diversity_images, seed, resamples,
                                                    ref)
    _texture_section(result, sets, floor_set, diversity_images, seed, resamples, ref)
    clock.lap("diversity")
    _per_class_section(result, sets, feats, net, k, seed, resamples, diversity_images)
    clock.lap("per_class")
    result["reconstruction"] = _reconstruction(sets["fake"].recipe, sets["real"])
    clock.lap("reconstruction")
    _privacy_section(result, sets, floor_set, feats, _strip_path(out), ref)
    clock.lap("privacy")
    _utility_section(result, sets, utility, utility_steps, seed, utility_repeats, ref)
    clock.lap("utility")
    result["seconds"] = clock.seconds
    result["settings"] = {"k": k, "diversity_images": diversity_images, "seed": seed, "utility_steps": utility_steps,
                          "utility_repeats": utility_repeats,
                          "intervals": {"level": LEVEL, "resamples": resamples, "method": INTERVAL_METHOD},
                          "reference_cache": ref.record()}
    if ref.read:
        log(f"read from the reference cache {reference_cache}: {', '.join(ref.read)}")
    result = _clean(result)
    write_text(out, json.dumps(result, indent=2))
    log(f"metrics: {out}")
    if is_run(fake) and log_to_tracked_run(Path(fake), flat_metrics({"eval": result}), [out, _strip_path(out)],
                                           "evaluation", log):
        log("logged to the run's MLflow run")
    return result


class _Clock:
    """Seconds spent in each section, for result["seconds"]."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.seconds[name] = round(now - self._last, 3)
        self._last = now


def _mapping_run(fake):
    """The loaded recipe when `fake` is a run of a family that maps real cases to targets
    (translation, segmentation), else None."""
    if not is_run(fake):
        return None
    from medsynth.models import recipe_class

    cfg = load_config(Path(fake) / CONFIG)
    cls = recipe_class(str(cfg.model.family))
    if not (cls.can_segment or cls.can_translate):
        return None
    return load_run(fake)


def load_sets(real, fake, train, n: int | None, seed: int, image_size: int | None):
    """({"real", "fake"[, "train"]}: EvalSet, the floor set or None). Without `train`, a real data
    file's train split is the training set; its val split (when real is its test split) is the
    second held-out set that gives the privacy floor."""
    real_set, real_splits = load_set(real, "real", n, seed, image_size)
    fake_set, _ = load_set(fake, "fake", n or len(real_set.images), seed + 1, image_size)
    train_set = None
    if train is not None:
        train_set, _ = load_set(train, "train", None, seed, image_size)
    elif real_splits is not None and real_set.split != "train":
        train_set = EvalSet(real_set.source, "train", real_splits.train.images, real_splits.train.labels,
                            real_splits.num_classes, real_splits.multilabel)
    floor_set = None
    if real_splits is not None and real_set.split == "test" and len(real_splits.val):
        floor_set = real_splits.val
    sets = {"real": real_set, "fake": fake_set, **({"train": train_set} if train_set is not None else {})}
    return sets, floor_set


def _feature_net(result: dict, features):
    """The feature network (None without one), recorded in result["features"]."""
    if features is None:
        result["features"] = {"not_computed": "no feature network given (--features; train one with "
                                              "`medsynth features train`)"}
        return None
    net = load_feature_net(features)
    result["features"] = {**net.info, "dim": net.dim}
    return net


def _reference_depends(sets: dict, floor_set, net, k: int, seed: int, resamples: int, diversity_images: int,
                       utility_steps: int, utility_repeats: int) -> dict:
    """What every value computed from the real sets alone depends on (reference_cache.py's key)."""
    real_sets = {name: s for name, s in sets.items() if name != "fake"}
    if floor_set is not None:
        real_sets["floor"] = floor_set
    return {"sets": {name: {"images": tensor_digest(s.images), "labels": tensor_digest(s.labels)}
                     for name, s in real_sets.items()},
            "features": None if net is None else {"weights": net.info.get("sha256") or net.info.get("source"),
                                                  "precision": net.precision},
            "k": k, "seed": seed, "resamples": resamples, "diversity_images": diversity_images,
            "utility_steps": utility_steps, "utility_repeats": utility_repeats}


def _embeddings(sets: dict, floor_set, net, ref: ReferenceCache) -> dict:
    """Every set's (and the floor set's) embeddings in the feature network's space; {} without one.
    The real ones come from the reference cache when it holds them."""
    if net is None:
        return {}
    feats = ref.get_tensors("embeddings", lambda: {
        **{name: net.embed(s.images) for name, s in sets.items() if name != "fake"},
        **({"floor": net.embed(floor_set.images)} if floor_set is not None else {})})
    return {"fake": net.embed(sets["fake"].images), **feats}


def _fidelity_section(result: dict, feats: dict, k: int, seed: int, resamples: int, ref: ReferenceCache) -> None:
    if not feats:
        result["fidelity"] = {"not_computed": "FID, KID and PRDC need a feature network (--features)"}
        return
    result["fidelity"] = _fidelity(feats["real"], feats["fake"], k, seed, resamples)
    # The floor compares two real sets that the feature network never trained on: the training split
    # sits apart from held-out images in the space of a network fitted to it, so a train-vs-test floor
    # was inflated (the demo's blurry VAE scored below it).
    if "floor" in feats:
        floor = ref.get_json("fidelity_floor", lambda: _fidelity(feats["real"], feats["floor"], k, seed, resamples))
        result["floor"]["fidelity"] = {**floor, "what": "real val vs real test: two held-out splits, neither trained "
                                                        "the feature network"}
    else:
        result["floor"]["fidelity"] = {"not_computed": "needs a second held-out real split (a data file with val "
                                                       "and test splits as --real): a floor from the training "
                                                       "split would sit in the feature network's own training data"}


def _diversity_floor(section: dict, floor_set, n: int, seed: int, resamples: int, ref: ReferenceCache) -> dict:
    """Adds "gap" (the synthetic set's mean MS-SSIM over the real set's, minus 1) to the diversity
    section, and returns the floor: a second held-out real split (val) scored the same way, with
    its own gap to the real set. Two real samples of one dataset differ in MS-SSIM too (on
    PneumoniaMNIST the val split's 0.474 against the test split's 0.505, -6%): a synthetic set's gap
    is read against that, as FID is against its floor."""
    real = section["real"]["ms_ssim_mean"]
    section["gap"] = section["fake"]["ms_ssim_mean"] / real - 1
    if floor_set is None:
        return {"not_computed": "needs a second held-out real split (a data file with val and test splits as "
                                "--real)"}
    floor = ref.get_json("diversity_floor", lambda: diversity(_subset(floor_set.images, n, seed), seed=seed,
                                                              resamples=resamples))
    return {**floor, "gap": floor["ms_ssim_mean"] / real - 1,
            "what": "the real val split's MS-SSIM, and its gap to the real test split's"}


def _texture_section(result: dict, sets: dict, floor_set, n: int, seed: int, resamples: int,
                     ref: ReferenceCache) -> None:
    """Checkerboard and sharpness of the synthetic set relative to the real one (2D sets), on the
    diversity subsets; the floor: a second held-out real split against the real set."""
    from medsynth.metrics.texture import texture_scores

    if sets["fake"].images.ndim != 4:
        result["texture"] = {"not_computed": "checkerboard and sharpness are measured on 2D images"}
        return
    real = _subset(sets["real"].images, n, seed)
    result["texture"] = texture_scores(_subset(sets["fake"].images, n, seed), real, resamples, seed)
    if floor_set is not None:
        result["floor"]["texture"] = ref.get_json("texture_floor", lambda: texture_scores(
            _subset(floor_set.images, n, seed), real, resamples, seed))


def _per_class_section(result: dict, sets: dict, feats: dict, net, k: int, seed: int, resamples: int,
                       diversity_images: int) -> None:
    """Conditional sets: fidelity and diversity per class (a model that draws healthy lungs for
    "pneumonia" must not pass as one pool), and class consistency: the domain feature network's
    predicted class of each synthetic image against the class it was asked for, beside the same
    agreement on real held-out images (the network's own accuracy)."""
    real_set, fake_set = sets["real"], sets["fake"]
    if fake_set.labels is None or real_set.labels is None or fake_set.multilabel or real_set.multilabel:
        result["per_class"] = {"not_computed": "needs single-label classes on both sets (a conditional model)"}
        return
    per_class = {}
    classes = sorted(set(fake_set.labels.tolist()) & set(real_set.labels.tolist()))
    per_class_images = max(2, diversity_images // max(1, len(classes)))  # all classes together cost one pooled pass
    for c in classes:
        rf, ff = real_set.labels == c, fake_set.labels == c
        entry = {"real_images": int(rf.sum()), "fake_images": int(ff.sum())}
        if int(ff.sum()) >= 2:
            entry["diversity"] = diversity(_subset(fake_set.images, per_class_images, seed, ff), seed=seed,
                                           resamples=resamples)
        if feats and min(int(rf.sum()), int(ff.sum())) > max(k, 4):
            entry["fidelity"] = _fidelity(feats["real"][rf], feats["fake"][ff], k, seed, resamples)
        per_class[str(c)] = entry
    result["per_class"] = per_class
    predicted = net.classify(fake_set.images) if net is not None else None
    if predicted is None:
        result["class_consistency"] = {"not_computed": "needs a feature network trained on the classes "
                                                       "(`medsynth features train` on labelled data)"}
        return
    agree = (predicted == fake_set.labels).double()
    real_agree = (net.classify(real_set.images) == real_set.labels).double()
    rng = np.random.default_rng(seed)
    result["class_consistency"] = {
        "agreement": float(agree.mean()),
        **({"agreement_interval": mean_interval(agree.numpy(), resamples, rng)} if resamples else {}),
        "real_agreement": float(real_agree.mean()),
        "per_class": {str(c): float(agree[fake_set.labels == c].mean()) for c in per_class},
        "what": "share of synthetic images the feature network classifies as the class they were drawn for; "
                "real_agreement: the same on real held-out images"}


def _reconstruction(recipe, real_set: EvalSet) -> dict:
    if recipe is None or not recipe.can_reconstruct:
        return {"not_computed": "the synthetic set is not from a model that reconstructs (give a run directory "
                                "as --fake)"}
    x = real_set.images
    cond = real_set.labels if recipe.conditional else None
    if recipe.conditional and cond is None:
        return {"not_computed": "conditional model and the real set has no labels"}
    recon = recipe.reconstruct_all(x, cond, batch_size=256)
    return {**reconstruction_scores(x, recon), "split": real_set.split}


def _strip_path(out: Path) -> Path:
    return out.with_name(out.stem + "_nearest.png")


def _privacy_section(result: dict, sets: dict, floor_set, feats: dict, strip: Path, ref: ReferenceCache) -> None:
    real_set, fake_set, train_set = sets["real"], sets["fake"], sets.get("train")
    if train_set is None:
        result["privacy"] = {"not_computed": "no training set (--train, or a real file with a train split)"}
        result["floor"]["privacy"] = result["privacy"]
        return
    neighbours = ref.get_tensors("privacy_neighbours", lambda: reference_neighbours(
        train_set.images, real_set.images, feats.get("train"), feats.get("real")))
    priv, pairs = privacy_report(fake_set.images, train_set.images, real_set.images,
                                 feats.get("fake"), feats.get("train"), feats.get("real"), reference=neighbours)
    result["privacy"] = {**priv, "heldout": f"{real_set.source} [{real_set.split}]", "strip": str(strip)}
    top = pairs[:8]
    provenance = {"synthetic": True, "contains_real_images": True, "generator": f"medsynth {medsynth_version()}",
                  "what": "nearest-pairs strip: synthetic images (top) and their nearest training images (bottom)",
                  "fake": fake_set.source, "train": f"{train_set.source} [{train_set.split}]"}
    save_grid(strip, torch.cat([fake_set.images[top[:, 0]], train_set.images[top[:, 1]]]), nrow=len(top),
              provenance=provenance, description="Top row: SYNTHETIC images generated by a model. Bottom row: their "
              "nearest REAL training images (patient data; share only as the training data may be shared).")
    if floor_set is None:
        result["floor"]["privacy"] = {"not_computed": "no second held-out real split (val) for a floor"}
        return
    floor = ref.get_json("privacy_floor", lambda: privacy_report(
        floor_set.images, train_set.images, real_set.images, feats.get("floor"), feats.get("train"), feats.get("real"),
        reference=neighbours)[0])
    result["floor"]["privacy"] = {**floor, "what": "real val images in place of the synthetic set"}


def _utility_section(result: dict, sets: dict, utility: bool, steps: int, seed: int, repeats: int,
                     ref: ReferenceCache) -> None:
    real_set, fake_set, train_set = sets["real"], sets["fake"], sets.get("train")
    why = None
    if not utility:
        why = "switched off"
    elif fake_set.labels is None:
        why = "the synthetic set has no labels (sample a conditional model)"
    elif train_set is None or train_set.labels is None or real_set.labels is None:
        why = "the real train and test sets need labels"
    elif not fake_set.multilabel and len(torch.unique(fake_set.labels)) < 2:
        why = (f"the synthetic set holds one class ({int(fake_set.labels[0])}): a classifier needs two or more "
               "(draw every class, e.g. `medsynth sample RUN_0 RUN_1 ...` for runs trained on one class each)")
    if why:
        result["utility"] = {"not_computed": why}
        result["floor"]["utility"] = result["utility"]
        return
    classes = real_set.num_classes or int(max(real_set.labels.max(), fake_set.labels.max())) + 1
    train, test = ImageSet(train_set.images, train_set.labels), ImageSet(real_set.images, real_set.labels)
    n_fake = len(fake_set.images)
    real_runs = ref.get_json("utility_real", lambda: trtr_runs(n_fake, train, test, classes, real_set.multilabel, steps,
                                                                seed, repeats=repeats),
                             synthetic_images=n_fake, classes=classes)
    res = tstr(ImageSet(fake_set.images, fake_set.labels), train, test, classes, real_set.multilabel, steps, seed,
               repeats=repeats, real_runs=real_runs)
    result["utility"] = res
    result["floor"]["utility"] = {"what": "train on real, test on real (the ratio's denominator)", **res["real"]}
