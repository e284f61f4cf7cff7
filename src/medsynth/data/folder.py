"""A folder of PNG / JPEG images, with an optional labels CSV.

Sub-folders `train/`, `val/`, `test/` are taken as the splits when present;
otherwise every image is training data (the datamodule holds out a part for
validation). The CSV has a header with the columns `filename,label`; the file
name is matched against the path relative to the folder, then the bare name.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from medsynth.data.npz import SPLITS
from medsynth.errors import MedsynthError, reason

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}


def list_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; hidden ones (a name part starting with '.', e.g. the
    temporary file of an interrupted write) are skipped."""
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in EXTENSIONS and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def read_folder(path: str | Path, channels: int | None = None, labels_csv: str | None = None,
                size: int | None = None) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """Split name -> (images N x C x H x W, labels N x 1 or None): uint8, or uint16 for 16-bit
    greyscale PNG/TIFF (read at their full depth; one folder holds one depth).

    `size` resizes each image on reading (so mixed sizes are allowed only then).
    """
    root = Path(path)
    if not root.is_dir():
        raise MedsynthError(f"{root}: image folder not found")
    subdirs = [s for s in SPLITS if (root / s).is_dir()]
    groups = {s: list_images(root / s) for s in subdirs} if subdirs else {"train": list_images(root)}
    if not groups.get("train"):
        where = root / "train" if subdirs else root
        raise MedsynthError(f"{where}: no images ({', '.join(sorted(EXTENSIONS))}) found")
    table = _read_labels(Path(labels_csv), root) if labels_csv else None
    mode = {1: "L", 3: "RGB", None: None}[channels]
    if mode is None:  # as stored: grayscale unless the first image has colour
        mode = "L" if _open(groups["train"][0]).mode in ("L", "I", "I;16", "1", "LA", "P") else "RGB"
    out = {}
    for split, files in groups.items():
        if not files:
            continue
        arrays = [_load(f, mode, size) for f in files]
        shape = arrays[0].shape
        for f, a in zip(files, arrays):
            if a.dtype != arrays[0].dtype:
                bits = {np.dtype(np.uint8): "8-bit", np.dtype(np.uint16): "16-bit"}
                raise MedsynthError(f"{f}: {bits[a.dtype]}, but {files[0].name} is {bits[arrays[0].dtype]}; one folder "
                                    "holds one bit depth (one intensity scale)")
            if a.shape != shape:
                raise MedsynthError(
                    f"{f}: image size {a.shape[1:]} differs from {shape[1:]} of {files[0].name}; "
                    "set data.image_size to resize")
        labels = None
        if table is not None:
            labels = np.array([[_label_of(f, root, table, labels_csv)] for f in files], dtype=np.int64)
        out[split] = (np.stack(arrays), labels)
    return out


def _open(path: Path) -> Image.Image:
    try:
        image = Image.open(path)
        image.load()  # decode now, so a truncated file fails here with its name
        return image
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            MemoryError) as exc:  # DecompressionBombError: a header claiming an absurd pixel count
        raise MedsynthError(f"{path}: not a readable image ({reason(exc)})") from None


def _load(path: Path, mode: str, size: int | None) -> np.ndarray:
    """C x H x W: uint8, or uint16 for a 16-bit greyscale image read as greyscale."""
    image = _open(path)
    if image.mode in ("I", "I;16", "I;16B") and mode == "L":  # 16-bit greyscale: all 16 bits kept
        array = np.clip(np.asarray(image, dtype=np.float32), 0, 65535)
        if size is not None:
            array = np.asarray(Image.fromarray(array).resize((size, size), Image.BILINEAR))
        return np.round(array).astype(np.uint16)[None]
    image = image.convert(mode)
    if size is not None:
        image = image.resize((size, size), Image.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[None] if array.ndim == 2 else np.moveaxis(array, -1, 0)


def _read_labels(csv_path: Path, root: Path) -> dict[str, int]:
    if not csv_path.is_file():
        raise MedsynthError(f"{csv_path}: labels CSV not found")
    try:
        with open(csv_path, newline="") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MedsynthError(f"{csv_path}: cannot read labels CSV ({exc})") from None
    if not rows or not {"filename", "label"} <= set(rows[0]):
        raise MedsynthError(f"{csv_path}: expected a header with columns 'filename,label'")
    table = {}
    for i, row in enumerate(rows, start=2):
        try:
            table[row["filename"].strip()] = int(row["label"])
        except (TypeError, ValueError):
            raise MedsynthError(f"{csv_path}: line {i}: label {row.get('label')!r} is not an integer") from None
        if table[row["filename"].strip()] < 0:
            raise MedsynthError(f"{csv_path}: line {i}: label must be >= 0")
    return table


def _label_of(path: Path, root: Path, table: dict[str, int], csv_path: str) -> int:
    rel = path.relative_to(root).as_posix()
    for key in (rel, path.name):
        if key in table:
            return table[key]
    raise MedsynthError(f"{csv_path}: no label for image {rel}")
