"""Segmentation data: cases of volumes with label maps, cut into patches.

Training draws class-balanced random patches (MONAI RandCropByLabelClasses: a
class is picked by `ratios`, then a patch centred on one of its voxels), with
the per-class voxel indices computed once per case rather than per draw (0.3 s
for a 240 x 240 x 155 BraTS case). Background centres are taken only inside the
mask (e.g. the brain), so background patches show tissue, not air. Validation
uses a fixed, seeded set of patches; whole cases are kept for sliding-window
evaluation after training.

Label values are mapped to class indices 0..K-1 through `classes` (e.g. BraTS
0-4 stay 0-4; [0, 1, 2, 4] would map 4 -> 3), and back when a prediction is
written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

import lightning as L

from medsynth.data.cases import (SPLIT_FOLDERS, Case, cases_from_folder, cases_from_manifest, is_hdf5,
                                 resample_to_spacing)
from medsynth.data.intensity import mr_normalise, tissue_bands
from medsynth.errors import MedsynthError

@dataclass
class SegmentationSplits:
    """Whole cases per split, their image already normalised to [-1, 1] and label maps as class indices."""

    train: list[Case]
    val: list[Case]
    test: list[Case]
    classes: list[int]
    patch_size: list[int]  # D, H, W (1 along flat_axis for 2D patches)
    source: str
    multilabel: bool = False
    flat_axis: int | None = None  # 2D patches: the volume axis they are one voxel thick along
    tissue_bands: int = 0  # data.tissue_bands: the background split into intensity bands (label-to-image)
    train_weights: list[float] | None = None  # chance of each training case per patch; None: alike

    @property
    def in_channels(self) -> int:
        return int(self.train[0].image.shape[0])

    @property
    def image_size(self) -> list[int]:
        """What the model sees: the patch, without its flat axis for 2D patches."""
        return [s for i, s in enumerate(self.patch_size) if i != self.flat_axis]

    @property
    def num_classes(self) -> int:
        """Classes of the maps as loaded: the labelled ones and any tissue bands after them."""
        return len(self.classes) + max(0, self.tissue_bands - 1)


def to_indices(label: np.ndarray, classes: list[int]) -> np.ndarray:
    """Label values -> class indices (uint8); values were checked against `classes` when read."""
    lut = np.zeros(max(classes) + 1, dtype=np.uint8)
    lut[np.asarray(classes)] = np.arange(len(classes), dtype=np.uint8)
    return lut[label]


def patch_shape(patch_size, slice_axis: int = 2) -> list[int]:
    """data.patch_size (an int for a cube, [D, H, W], or [H, W] for 2D patches: slices one voxel thick
    along `slice_axis`) -> [D, H, W]."""
    sizes = [int(v) for v in patch_size] if hasattr(patch_size, "__len__") else [int(patch_size)]
    if len(sizes) == 2:
        sizes.insert(slice_axis, 1)
    return sizes * 3 if len(sizes) == 1 else sizes


def flat_axis(data_cfg) -> int | None:
    """The axis 2D patches are one voxel thick along (data.slice_axis), or None for 3D patches."""
    patch = data_cfg.patch_size
    return int(data_cfg.slice_axis) if hasattr(patch, "__len__") and len(patch) == 2 else None


def with_source_spacing(case: Case, spacing, source) -> Case:
    """The case with data.source_spacing when its image comes from HDF5 (`source`: the file or the
    file pattern), whose files store no spacing; volumes that store their geometry keep it."""
    if spacing is None or not is_hdf5(source):
        return case
    spacing = tuple(float(v) for v in spacing)
    if len(spacing) != 3 or min(spacing) <= 0:
        raise MedsynthError(f"data.source_spacing={list(spacing)}: expected three positive spacings (mm)")
    return Case(case.name, case.image, case.label, np.diag([*spacing, 1.0]), spacing, case.mask)


def read_split_file(path: str | Path) -> dict[str, list[str]]:
    """A split file -> {"train": names, "val": names, "test": names}: JSON {"train": [...],
    "validation" (or "val"): [...], "test": [...]}, or a CSV with columns case,split. A case in two
    splits is refused: the held-out scores would include cases the model trained on."""
    import csv
    import json

    path = Path(path)
    if not path.is_file():
        raise MedsynthError(f"{path}: split file not found")
    try:
        if path.suffix == ".json":
            raw = json.loads(path.read_text())
            if not isinstance(raw, dict):
                raise ValueError("expected an object of split -> list of case names")
        else:
            with open(path, newline="") as fh:
                rows = list(csv.DictReader(fh))
            if not rows or not {"case", "split"} <= set(rows[0]):
                raise ValueError("expected columns case,split")
            raw = {}
            for line, r in enumerate(rows, start=2):
                if not r["case"] or not r["split"]:  # a short row: DictReader fills None
                    raise ValueError(f"line {line} lacks a case or a split")
                raw.setdefault(r["split"], []).append(r["case"])
    except (ValueError, UnicodeDecodeError) as exc:
        raise MedsynthError(f"{path}: cannot read the split file ({exc})") from None
    aliases = {"train": "train", "training": "train", "val": "val", "validation": "val", "test": "test"}
    unknown = sorted(set(raw) - set(aliases))
    if unknown:
        raise MedsynthError(f"{path}: unknown split(s) {unknown}; expected train, validation, test")
    out = {"train": [], "val": [], "test": []}
    for key, names in raw.items():
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise MedsynthError(f"{path}: split '{key}' must be a list of case names")
        out[aliases[key]] += names
    seen: dict[str, str] = {}
    for split, names in out.items():
        for n in names:
            if n in seen:
                raise MedsynthError(f"{path}: case {n} is in both {seen[n]} and {split}")
            seen[n] = split
    return out


def to_values(indices: np.ndarray, classes: list[int]) -> np.ndarray:
    return np.asarray(classes, dtype=np.int16)[indices]


def prepare_case(case: Case, mode: str = "zscore", spacing=None) -> Case:
    """Resample (optional) and normalise each contrast within the case's mask to [-1, 1]."""
    image, mask, label = case.image, case.mask, case.label
    if spacing is not None:
        image = resample_to_spacing(image, case.spacing, list(spacing), order=1)
        mask = None if mask is None else resample_to_spacing(mask.astype(np.float32), case.spacing,
                                                             list(spacing), order=0) > 0.5
        label = None if label is None else resample_to_spacing(label, case.spacing, list(spacing), order=0)
    image = np.stack([mr_normalise(ch, mask, mode) for ch in image])
    return Case(case.name, image, label, case.affine, tuple(spacing) if spacing is not None else case.spacing, mask)


def load_segmentation_splits(data_cfg, seed: int = 0, which: tuple[str, ...] = ("train", "val", "test")
                             ) -> SegmentationSplits:
    """Cases from train / validation / test sub-folders, a folder of case folders with a split file
    (data.splits), or a CSV / JSON manifest (all training cases unless data.splits names them), with
    the label map given by `data.label` and the classes by `data.classes`. `which`: the splits to
    read (the others stay empty), e.g. ("test",) to segment the held-out cases only."""
    path = Path(data_cfg.path)
    if not data_cfg.contrasts or not data_cfg.label:
        raise MedsynthError("data.format=segmentation needs data.contrasts and data.label (file patterns "
                            "or manifest columns)")
    if not data_cfg.classes:
        raise MedsynthError("data.format=segmentation needs data.classes, the label values (e.g. [0,1,2,3,4])")
    classes = sorted(int(c) for c in data_cfg.classes)
    if classes[0] != 0 or len(set(classes)) != len(classes) or classes[-1] > 255:
        raise MedsynthError(f"data.classes={list(data_cfg.classes)}: expected distinct values 0..255 "
                            "starting with 0 (the background)")
    contrasts = list(data_cfg.contrasts)
    patch = patch_shape(data_cfg.patch_size, data_cfg.slice_axis)
    named = read_split_file(data_cfg.splits) if data_cfg.splits else None
    if named is not None and data_cfg.limit is not None:  # a quick run reads only the cases it uses
        named = {split: names[:data_cfg.limit] for split, names in named.items()}
    if path.suffix in (".csv", ".json"):
        cases = cases_from_manifest(path, contrasts, label=data_cfg.label, classes=classes)
        if named is None:
            groups = {"train": cases, "val": [], "test": []}
        else:
            by_name = {c.name: c for c in cases}
            missing = [n for names in named.values() for n in names if n not in by_name]
            if missing:
                raise MedsynthError(f"{data_cfg.splits}: cases {missing[:5]} are not in {path}")
            groups = {s: [by_name[n] for n in names] for s, names in named.items()}
    elif path.is_dir() and named is not None:
        groups = {s: cases_from_folder(path, contrasts, label=data_cfg.label, classes=classes, mask=data_cfg.mask,
                                       names=names) if names and s in which else [] for s, names in named.items()}
    elif path.is_dir():
        present = {s: path / d for s, d in SPLIT_FOLDERS.items() if (path / d).is_dir()}
        if "train" not in present:
            raise MedsynthError(f"{path}: expected a train/ sub-folder of cases (and validation/, test/)")
        groups = {s: cases_from_folder(present[s], contrasts, label=data_cfg.label, classes=classes,
                                       mask=data_cfg.mask) if s in present and s in which else []
                  for s in SPLIT_FOLDERS}
    else:
        raise MedsynthError(f"{path}: segmentation data must be a folder of split sub-folders or a manifest")
    real = len(groups["train"])  # "add": the pairs come after the real cases
    if data_cfg.synthetic and "train" in which:
        made = synthetic_cases(data_cfg.synthetic, len(contrasts), classes)
        groups["train"] = made if data_cfg.synthetic_mode == "replace" else [*groups["train"], *made]
    limit = data_cfg.limit
    bands = int(data_cfg.tissue_bands or 0)
    if bands < 0 or len(classes) + max(0, bands - 1) > 256:
        raise MedsynthError(f"data.tissue_bands={data_cfg.tissue_bands}: expected 0 (off) or 2 .. {257 - len(classes)}")
    out = {}
    groups = {s: (cases if s in which else []) for s, cases in groups.items()}
    for split, cases in groups.items():
        cases = cases[:limit] if limit is not None else cases
        prepared = [prepare_case(with_source_spacing(c, data_cfg.source_spacing, contrasts[0]),
                                 data_cfg.mr_normalise, data_cfg.spacing) for c in cases]
        for c in prepared:
            c.label = tissue_bands(c.image[0], to_indices(c.label, classes), len(classes), bands)
            if any(v < p for v, p in zip(c.image.shape[1:], patch)):
                raise MedsynthError(f"case {c.name}: volume {list(c.image.shape[1:])} is smaller than "
                                    f"data.patch_size={patch} along an axis")
        out[split] = prepared
    if "train" in which and not out["train"]:
        raise MedsynthError(f"{path}: no training cases")
    weights = None
    if data_cfg.synthetic and data_cfg.synthetic_mode == "add" and "train" in which:
        real = min(real, len(out["train"]))
        weights = share_weights(real, len(out["train"]) - real, data_cfg.synthetic_share)
    return SegmentationSplits(out["train"], out["val"], out["test"], classes, patch, str(path),
                              flat_axis=flat_axis(data_cfg), tissue_bands=bands, train_weights=weights)


def share_weights(real: int, synthetic: int, share: float | None) -> list[float] | None:
    """Per-case patch chances giving the synthetic cases (listed after the `real` ones) `share` of
    the patches together; None (every case alike) without a share or without cases on both sides."""
    if share is None or not real or not synthetic:
        return None
    return [(1 - share) / real] * real + [share / synthetic] * synthetic


def pair_columns(channels: int) -> list[str]:
    """The image columns of a synthetic pairs manifest: "image", or image_0.. for several contrasts."""
    return ["image"] if channels == 1 else [f"image_{k}" for k in range(channels)]


def synthetic_cases(manifest: str | Path, channels: int, classes: list[int]) -> list[Case]:
    """The (image, label map) pairs a `medsynth sample` of a spade run lists in its manifest.csv
    (columns case, image or image_0.., label, mask_source, seed), as cases; their label values are
    checked against `classes` like a real case's."""
    return cases_from_manifest(manifest, pair_columns(channels), label="label", classes=classes)


class PatchSampler(Dataset):
    """`length` class-balanced random patches per epoch: {"image": C x P^3, "label": 1 x P^3 (long)}
    (2D patches, `flat`: the patch's flat axis squeezed out, C x H x W).

    Randomness comes from a seeded generator, so runs repeat; with a fixed `seed` and
    `fixed=True` the same patches come back every epoch (the validation set).
    """

    def __init__(self, cases: list[Case], patch: list[int], num_classes: int, length: int, seed: int = 0,
                 ratios: list[float] | None = None, fixed: bool = False, augment=None, flat: int | None = None,
                 weights: list[float] | None = None):
        from monai.transforms import RandCropByLabelClasses
        from monai.transforms.utils import map_classes_to_indices

        self.cases, self.length, self.seed, self.fixed, self.augment = cases, length, seed, fixed, augment
        self.flat, self.weights = flat, weights
        # image and label cropped together, as one volume with the label as a last channel
        self.volumes = [torch.cat([torch.from_numpy(c.image), torch.from_numpy(c.label[None].astype(np.float32))])
                        for c in cases]
        inside = [torch.from_numpy(c.mask[None]) if c.mask is not None else None for c in cases]
        self.indices = [map_classes_to_indices(torch.from_numpy(c.label[None]), num_classes,
                                               image=m, image_threshold=0.5) for c, m in zip(cases, inside)]
        self.cropper = RandCropByLabelClasses(spatial_size=patch, ratios=None if ratios is None else list(ratios),
                                              num_classes=num_classes, num_samples=1, warn=False)
        self.rng = np.random.default_rng(seed)
        self.cropper.set_random_state(seed)
        self._fixed_items = [self._draw(i) for i in range(length)] if fixed else None

    def __len__(self) -> int:
        return self.length

    def pick(self, i: int) -> int:
        """The case the i-th patch is cut from: in turn (fixed), at random alike, or by `weights`."""
        if self.fixed:
            return i % len(self.cases)
        if self.weights is None:
            return int(self.rng.integers(len(self.cases)))
        return int(self.rng.choice(len(self.cases), p=self.weights))

    def _draw(self, i: int) -> dict:
        k = self.pick(i)
        vol = self.volumes[k]
        patch = self.cropper(vol, label=vol[-1:].long(), indices=self.indices[k])[0]
        patch = patch.as_tensor() if hasattr(patch, "as_tensor") else patch
        item = {"image": patch[:-1].contiguous(), "label": patch[-1:].contiguous()}
        if self.augment is not None:
            item = self.augment(item)
        if self.flat is not None:
            item = {k: v.squeeze(1 + self.flat) for k, v in item.items()}
        return {"image": item["image"], "label": item["label"].round().long()}

    def __getitem__(self, i: int) -> dict:
        return self._fixed_items[i] if self.fixed else self._draw(i)

    def reseed(self, seed: int) -> None:
        """New random streams for case picks, crops and augmentation (each DataLoader worker gets a
        copy of this sampler: without this, every worker would draw the same patches)."""
        self.rng = np.random.default_rng(seed)
        self.cropper.set_random_state(seed)
        if self.augment is not None and hasattr(self.augment, "reseed"):
            self.augment.reseed(seed)


def _reseed_worker(worker_id: int) -> None:
    """DataLoader worker_init_fn: the worker's own seed (torch's base seed + worker id, set by the
    seeded run) for its copy of the PatchSampler."""
    info = torch.utils.data.get_worker_info()
    info.dataset.reseed(int(info.seed % 2 ** 32))


class PatchDataModule(L.LightningDataModule):
    """Training: `patches_per_epoch` fresh class-balanced patches each epoch; validation: a fixed set
    (`val_patches` per validation case, or drawn from training cases when there are none)."""

    def __init__(self, splits: SegmentationSplits, batch_size: int, patches_per_epoch: int,
                 val_patches: int = 4, seed: int = 0, ratios: list[float] | None = None, num_workers: int = 0,
                 augment=None):
        super().__init__()
        self.splits, self.batch_size, self.num_workers = splits, batch_size, num_workers
        k, p = splits.num_classes, splits.patch_size
        flat = splits.flat_axis
        self.train_set = PatchSampler(splits.train, p, k, patches_per_epoch, seed, ratios, augment=augment, flat=flat,
                                      weights=splits.train_weights)
        held = splits.val or splits.train
        self.val_set = PatchSampler(held, p, k, val_patches * len(held), seed + 1, ratios, fixed=True, flat=flat)

    def train_dataloader(self):
        return DataLoader(self.train_set, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers,
                          persistent_workers=self.num_workers > 0,
                          worker_init_fn=_reseed_worker if self.num_workers > 0 else None)

    def val_dataloader(self):
        return DataLoader(self.val_set, batch_size=self.batch_size, shuffle=False)
