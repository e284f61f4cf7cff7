"""From a data config to train / val / test tensors and a LightningDataModule.

Everything is held in memory: MedMNIST-scale data (thousands of images of
28-224 px) fits easily, and in-memory tensors keep the CPU busy with the model,
not with loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from medsynth.data.folder import read_folder
from medsynth.data.intensity import check_finite, to_unit_range
from medsynth.data.npz import read_npz
from medsynth.errors import MedsynthError


@dataclass
class ImageSet:
    """images: float32 N x C x *spatial in [-1, 1]; labels: long N (classes), float N x k (multi-label) or None."""

    images: torch.Tensor
    labels: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class SplitData:
    train: ImageSet
    val: ImageSet
    test: ImageSet | None
    num_classes: int | None  # classes (labels N x 1) or label count (N x k); None without labels
    multilabel: bool
    source: str
    crop_size: int | None = None  # training images are cropped to this per batch
    # where [-1, 1] maps back to in the source (None for 2D image files): {"units", "scale", "offset"}
    # per channel, and for volumes "affine" (4 x 4, RAS mm) and "spacing" of the grid the model makes
    space: dict | None = None

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    def held_out(self) -> tuple[str, ImageSet]:
        """(name, images) of the held-out split: test, else validation, else (nothing held out) train."""
        for name in ("test", "val", "train"):
            part = getattr(self, name)
            if part is not None and len(part):
                return name, part
        raise MedsynthError(f"{self.source}: every split is empty")

    @property
    def image_size(self) -> list[int]:
        if self.crop_size is not None:
            return [self.crop_size] * (self.train.images.ndim - 2)
        return [int(s) for s in self.train.images.shape[2:]]


def read_source(data_cfg, spatial_dims: int | None = None) -> tuple[dict[str, tuple[np.ndarray, np.ndarray | None]],
                                                                    dict | None]:
    """(split name -> (images, labels or None), the source's space (SplitData.space) or None)."""
    path = Path(data_cfg.path)
    fmt = data_cfg.format
    if fmt == "volumes":
        return _read_volumes(data_cfg, path)
    if fmt == "paired_slices":
        from medsynth.data.slices import read_paired_slices

        return read_paired_slices(data_cfg)
    if fmt == "label_maps":
        from medsynth.data.label_maps import label_map_set

        return label_map_set(data_cfg), {"units": "one-hot label map (channel k: class k of data.classes)",
                                         "classes": list(data_cfg.classes),
                                         "box": [int(v) for v in data_cfg.patch_size]
                                         if hasattr(data_cfg.patch_size, "__len__") else [int(data_cfg.patch_size)] * 3}
    if fmt == "ct_slices":
        from medsynth.data.intensity import ct_mapping
        from medsynth.data.slices import read_ct_slices

        window = data_cfg.window if isinstance(data_cfg.window, str) else list(data_cfg.window)
        scale, offset = ct_mapping(window)
        space = {"units": "HU", "scale": [scale] * 3, "offset": [offset] * 3,
                 "note": f"CT window {window}: HU outside it were clipped to its edges"}
        return {"train": (read_ct_slices(data_cfg), None)}, space
    if fmt == "auto":
        if path.is_dir():
            fmt = "folder"
        elif path.suffix == ".npz":
            fmt = "npz"
        elif not path.exists():
            raise MedsynthError(f"{path}: data path not found")
        else:
            raise MedsynthError(f"{path}: unknown data format (expected a .npz file or an image folder)")
    if fmt == "npz":
        return read_npz(path, spatial_dims), None
    return read_folder(path, data_cfg.channels, data_cfg.labels_csv, data_cfg.image_size), None


def _read_volumes(data_cfg, path: Path):
    """Cases (train / validation / test sub-folders, or one folder) -> N x C x S^3 volumes in [-1, 1],
    each contrast normalised per case (MR statistics inside data.mask, else the whole volume),
    and their space: the first training case's grid resized to S^3, and per contrast the median
    over training cases of the normalisation's scale and offset (the input's MR scale)."""
    from medsynth.data.cases import (SPLIT_FOLDERS, cases_from_folder, cases_from_manifest, resample_to_spacing,
                                     resize_volumes)
    from medsynth.data.intensity import mr_mapping, mr_normalise

    if not data_cfg.contrasts:
        raise MedsynthError("data.format=volumes needs data.contrasts (file patterns or manifest columns)")
    if data_cfg.image_size is None:
        raise MedsynthError("data.format=volumes needs data.image_size (volumes are resized to size^3)")
    contrasts = list(data_cfg.contrasts)
    if path.suffix in (".csv", ".json"):
        groups = {"train": cases_from_manifest(path, contrasts, label=None)}
    else:
        present = {s: path / d for s, d in SPLIT_FOLDERS.items() if (path / d).is_dir()}
        groups = ({s: cases_from_folder(p, contrasts, mask=data_cfg.mask) for s, p in present.items()} if present
                  else {"train": cases_from_folder(path, contrasts, mask=data_cfg.mask)})
    out, mappings, grid = {}, [], None
    for split, cases in groups.items():
        vols = []
        for c in cases:
            image, mask, affine = c.image, c.mask, c.affine
            if data_cfg.spacing is not None:
                image = resample_to_spacing(image, c.spacing, list(data_cfg.spacing), order=1)
                mask = None if mask is None else resample_to_spacing(mask.astype(np.float32), c.spacing,
                                                                     list(data_cfg.spacing), order=0) > 0.5
                affine = rescaled_affine(affine, c.image.shape[1:], image.shape[1:])
            vol = np.stack([mr_normalise(ch, mask, data_cfg.mr_normalise) for ch in image])
            if split == "train":
                mappings.append([mr_mapping(ch, mask, data_cfg.mr_normalise) for ch in image])
                grid = grid or (affine, image.shape[1:], c.name)
            vols.append(resize_volumes(vol[None], data_cfg.image_size)[0])  # cases may differ in size
        out[split] = (np.stack(vols).clip(-1, 1).astype(np.float32), None)
    affine = rescaled_affine(grid[0], grid[1], (data_cfg.image_size,) * 3)
    space = {"units": "MR signal (the input's scale)", "scale": np.median([[m[0] for m in c] for c in mappings], 0).tolist(),
             "offset": np.median([[m[1] for m in c] for c in mappings], 0).tolist(), "affine": affine.tolist(),
             "spacing": [float(np.linalg.norm(affine[:3, i])) for i in range(3)],
             "note": f"grid of training case {grid[2]} resized to {data_cfg.image_size}^3; intensities: median "
                     f"{data_cfg.mr_normalise} mapping over {len(mappings)} training cases"}
    return out, space


def rescaled_affine(affine: np.ndarray, shape, new_shape) -> np.ndarray:
    """The voxel -> world affine of a volume of `shape` resampled to `new_shape` over the same extent
    (align_corners=False: new voxel u sits at old index (u + 0.5) * s - 0.5, s = old / new)."""
    s = np.array([o / n for o, n in zip(shape, new_shape)], dtype=np.float64)
    step = np.eye(4)
    step[:3, :3] = np.diag(s)
    step[:3, 3] = (s - 1) / 2
    return np.asarray(affine, dtype=np.float64) @ step


def load_splits(data_cfg, spatial_dims: int | None = None, seed: int = 0) -> SplitData:
    """Read, check and rescale a data source into train / val / test ImageSets."""
    raw, space = read_source(data_cfg, spatial_dims)
    source = str(data_cfg.path)
    for split, (images, _) in raw.items():  # before data.limit, so the index is the file's
        check_finite(images, f"{source} ({split} images)")
    if data_cfg.get("keep_labels") is not None:  # before data.limit: a limit counts the kept images
        raw = {s: _keep_labels(im, lb, list(data_cfg.keep_labels), f"{source} ({s} split)") for s, (im, lb) in raw.items()}
    if data_cfg.limit is not None:
        raw = {s: _limit(im, lb, data_cfg.limit, seed) for s, (im, lb) in raw.items()}
    shapes = {s: im.shape[1:] for s, (im, _) in raw.items()}
    if len(set(shapes.values())) > 1:
        raise MedsynthError(f"{source}: splits have different image shapes {shapes}")
    with_labels = {s for s, (_, lb) in raw.items() if lb is not None}
    if with_labels and with_labels != set(raw):
        raise MedsynthError(f"{source}: labels given for splits {sorted(with_labels)} but not for all of {sorted(raw)}")
    names = list(raw)
    if data_cfg.format in ("ct_slices", "volumes", "paired_slices", "label_maps"):  # already mapped into [-1, 1]
        scaled = [raw[s][0] for s in names]
    else:
        scaled = to_unit_range([raw[s][0] for s in names], source, [f"{s} images" for s in names])
    images = {s: torch.from_numpy(np.ascontiguousarray(a)) for s, a in zip(names, scaled)}
    labels_np = {s: raw[s][1] for s in names}

    multilabel = False
    num_classes = None
    labels: dict[str, torch.Tensor | None] = {s: None for s in names}
    if with_labels:
        width = labels_np["train"].shape[1]
        multilabel = width > 1
        if multilabel:
            num_classes = width
            labels = {s: torch.from_numpy(labels_np[s].astype(np.float32)) for s in names}
        else:
            num_classes = int(max(int(labels_np[s].max(initial=0)) for s in names)) + 1
            labels = {s: torch.from_numpy(labels_np[s][:, 0].astype(np.int64)) for s in names}

    if data_cfg.image_size is not None and data_cfg.format not in ("folder", "volumes", "label_maps"):
        images = {s: resize(im, data_cfg.image_size) for s, im in images.items()}

    sets = {s: ImageSet(images[s], labels[s]) for s in names}
    if "val" not in sets:  # hold out a seeded part of train
        sets["train"], sets["val"] = _hold_out(sets["train"], data_cfg.val_fraction, seed, source)
    if len(sets["train"]) == 0:
        raise MedsynthError(f"{source}: the training split is empty")
    crop = data_cfg.crop_size
    if crop is not None:  # held-out splits: fixed centre crops; training: random crops per batch
        from medsynth.data.slices import center_crop_array

        center_crop_array(sets["train"].images, crop)  # refuses a crop larger than the images
        for name in ("val", "test"):
            if name in sets and len(sets[name]):
                sets[name] = ImageSet(center_crop_array(sets[name].images, crop).contiguous(), sets[name].labels)
    return SplitData(sets["train"], sets["val"], sets.get("test"), num_classes, multilabel, source, crop, space)


def _keep_labels(images: np.ndarray, labels: np.ndarray | None, keep: list[int], source: str):
    """The images (N x C x *spatial) whose class label (N x 1) is one of `keep`, in file order.
    Refuses a source without class labels, multi-label vectors, and a split holding none of them."""
    if labels is None:
        raise MedsynthError(f"data.keep_labels={keep}: {source} has no class labels to select by")
    if labels.shape[1] != 1:
        raise MedsynthError(f"data.keep_labels={keep}: {source} holds multi-label vectors "
                            f"({labels.shape[1]} columns), not one class per image")
    pick = np.isin(labels[:, 0], keep)
    if not pick.any():
        found = sorted(int(v) for v in np.unique(labels[:, 0]))
        raise MedsynthError(f"data.keep_labels={keep}: {source} holds no image of these classes (its labels: {found})")
    return images[pick], labels[pick]


def _limit(images: np.ndarray, labels: np.ndarray | None, n: int, seed: int):
    """A seeded random subset of n images, in file order: files sorted by class (the shared
    PneumoniaMNIST train split is) would otherwise give a one-class head."""
    if len(images) <= n:
        return images, labels
    pick = np.sort(np.random.default_rng(seed).choice(len(images), n, replace=False))
    return images[pick], None if labels is None else labels[pick]


def resize(images: torch.Tensor, size: int, chunk: int = 512) -> torch.Tensor:
    """Resize N x C x *spatial to `size` along every spatial axis (antialiased when shrinking 2D)."""
    spatial = images.shape[2:]
    if all(s == size for s in spatial):
        return images
    mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[len(spatial)]
    antialias = len(spatial) == 2 and min(spatial) > size
    out = [F.interpolate(images[i:i + chunk], size=(size,) * len(spatial), mode=mode,
                         align_corners=False, antialias=antialias) for i in range(0, len(images), chunk)]
    return torch.cat(out).clamp_(-1.0, 1.0)


def _hold_out(train: ImageSet, fraction: float, seed: int, source: str) -> tuple[ImageSet, ImageSet]:
    n = len(train)
    n_val = int(round(n * fraction))
    if fraction > 0 and n_val == 0 and n > 1:
        n_val = 1
    if n_val >= n:
        raise MedsynthError(f"{source}: {n} images are too few to hold out a validation split")
    if n_val == 0:  # nothing held out: the set as it is, not a shuffled copy (800 MB for 50 000 at 64 px)
        return train, ImageSet(train.images[:0], None if train.labels is None else train.labels[:0])
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = order[:n_val], order[n_val:]

    def take(idx):
        return ImageSet(train.images[idx], None if train.labels is None else train.labels[idx])

    return take(train_idx), take(val_idx)


class _Batches(Dataset):
    """Indexed by a list of indices, returning a whole batch: one tensor gather instead of a
    __getitem__ and a collate per image (about 1 ms of a 25 ms CPU step at 28 px).
    With `crop`, each image is cut to a random crop x crop window (2D)."""

    def __init__(self, data: ImageSet, crop: int | None = None, seed: int = 0):
        self.data = data
        self.crop = crop
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, idx):
        idx = torch.as_tensor(idx)
        images = self.data.images[idx]
        if self.crop is not None:
            h, w = images.shape[-2:]
            tops = torch.randint(0, h - self.crop + 1, (len(idx),), generator=self.generator)
            lefts = torch.randint(0, w - self.crop + 1, (len(idx),), generator=self.generator)
            images = torch.stack([im[..., t:t + self.crop, l:l + self.crop] for im, t, l in zip(images, tops, lefts)])
        item = {"image": images}
        if self.data.labels is not None:
            item["label"] = self.data.labels[idx]
        return item


class MedsynthDataModule(L.LightningDataModule):
    """Batches of {"image": B x C x *spatial, "label": B or B x k (when labelled)}."""

    def __init__(self, splits: SplitData, batch_size: int, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.splits = splits
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed

    def _loader(self, data: ImageSet, shuffle: bool) -> DataLoader:
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        order = RandomSampler(data, generator=generator) if shuffle else SequentialSampler(data)
        crop = self.splits.crop_size if shuffle else None  # held-out splits are centre-cropped already
        # batch_size=None: the sampler yields index lists and _Batches gathers each batch at once
        return DataLoader(_Batches(data, crop, self.seed), sampler=BatchSampler(order, self.batch_size, drop_last=False),
                          batch_size=None, num_workers=self.num_workers, persistent_workers=self.num_workers > 0)

    def train_dataloader(self):
        return self._loader(self.splits.train, shuffle=True)

    def val_dataloader(self):
        if len(self.splits.val) == 0:
            return []
        return self._loader(self.splits.val, shuffle=False)

    def test_dataloader(self):
        return self._loader(self.splits.test or self.splits.val, shuffle=False)
