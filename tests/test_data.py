import numpy as np
import pytest
import torch
from PIL import Image

from medsynth.config import load_config
from medsynth.data import load_splits
from medsynth.errors import MedsynthError


def splits_of(path, *extra, spatial_dims=None):
    cfg = load_config(None, [f"data.path={path}", *extra])
    return load_splits(cfg.data, spatial_dims)


def test_real_pneumoniamnist(pneumonia):
    s = splits_of(pneumonia)
    assert s.train.images.shape == (4708, 1, 28, 28)
    assert s.val.images.shape == (524, 1, 28, 28) and s.test.images.shape == (624, 1, 28, 28)
    assert s.train.images.dtype == torch.float32
    assert s.train.images.min() == -1.0 and s.train.images.max() == 1.0
    assert s.num_classes == 2 and not s.multilabel
    assert s.train.labels.dtype == torch.int64 and set(s.train.labels.tolist()) == {0, 1}
    # uint8 v maps to v / 127.5 - 1 exactly
    with np.load(pneumonia) as raw:
        first = torch.from_numpy(raw["train_images"][0].astype(np.float32)) / 127.5 - 1
    assert torch.allclose(s.train.images[0, 0], first, atol=1e-6)


def test_resize_and_limit(pneumonia):
    s = splits_of(pneumonia, "data.image_size=64", "data.limit=50")
    assert s.train.images.shape == (50, 1, 64, 64)
    assert s.test.images.shape == (50, 1, 64, 64)
    assert -1.0 <= s.train.images.min() and s.train.images.max() <= 1.0
    assert set(s.train.labels.tolist()) == {0, 1}  # a random subset, not the class-sorted head of the file


def test_rgb_3d_and_multilabel_layouts(tmp_path):
    rng = np.random.default_rng(0)
    rgb = tmp_path / "rgb.npz"
    np.savez(rgb, train_images=rng.integers(0, 256, (10, 28, 28, 3), dtype=np.uint8),
             train_labels=rng.integers(0, 2, (10, 4)), val_images=rng.integers(0, 256, (4, 28, 28, 3), dtype=np.uint8),
             val_labels=rng.integers(0, 2, (4, 4)))
    s = splits_of(rgb)
    assert s.train.images.shape == (10, 3, 28, 28)
    assert s.multilabel and s.num_classes == 4 and s.train.labels.shape == (10, 4)
    assert s.test is None

    vol = tmp_path / "vol.npz"
    np.savez(vol, train_images=rng.integers(0, 256, (6, 28, 28, 28), dtype=np.uint8),
             train_labels=rng.integers(0, 3, (6, 1)))
    s = splits_of(vol, "data.val_fraction=0.34", spatial_dims=3)
    assert s.train.images.shape == (4, 1, 28, 28, 28) and s.val.images.shape == (2, 1, 28, 28, 28)
    assert s.image_size == [28, 28, 28]


def test_image_folder_with_labels(tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "imgs"
    folder.mkdir()
    rows = ["filename,label"]
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
        rows.append(f"img{i:02d}.png,{i % 3}")
    (tmp_path / "labels.csv").write_text("\n".join(rows))
    s = splits_of(folder, f"data.labels_csv={tmp_path / 'labels.csv'}", "data.val_fraction=0.25")
    assert s.train.images.shape == (9, 1, 32, 32) and s.val.images.shape == (3, 1, 32, 32)
    assert s.num_classes == 3
    s = splits_of(folder, "data.channels=3", "data.image_size=16")
    assert s.train.images.shape[1:] == (3, 16, 16) and s.num_classes is None


def _write(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def test_bad_inputs_give_one_clear_error(tmp_path):
    img = np.zeros((4, 28, 28), np.uint8)
    cases = []
    cases.append((tmp_path / "missing.npz", "not found"))
    cases.append((_write(tmp_path, "nokeys.npz", x=img), "no 'train_images'"))
    cases.append((_write(tmp_path, "count.npz", train_images=img, train_labels=np.zeros((3, 1))), "3 labels for 4 images"))
    nan = img.astype(np.float32)
    nan[2, 5, 5] = np.nan
    cases.append((_write(tmp_path, "nan.npz", train_images=nan), "image 2 holds NaN"))
    cases.append((_write(tmp_path, "shape.npz", train_images=np.zeros((4, 28), np.uint8)), "not N x H x W"))
    cases.append((_write(tmp_path, "mixed.npz", train_images=img, test_images=img.astype(np.float32)),
                  "integer and float images mixed (train images uint8, test images float32)"))
    broken = tmp_path / "broken.npz"
    broken.write_bytes(b"PK\x03\x04 this is not a zip")
    cases.append((broken, "not a readable .npz"))
    for path, words in cases:
        with pytest.raises(MedsynthError) as err:
            splits_of(path)
        assert str(path) in str(err.value) and words in str(err.value), str(err.value)


def test_the_nan_message_gives_the_index_in_the_file_under_data_limit(tmp_path):
    images = np.zeros((50, 8, 8), np.float32)
    images[37, 1, 1] = np.nan
    path = _write(tmp_path, "nan.npz", train_images=images)
    with pytest.raises(MedsynthError, match=r"\(train images\): image 37 holds NaN"):
        splits_of(path, "data.limit=10")


def test_bad_image_folders(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MedsynthError, match="no images"):
        splits_of(empty)
    folder = tmp_path / "corrupt"
    folder.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(folder / "good.png")
    (folder / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    with pytest.raises(MedsynthError, match="bad.png: not a readable image"):
        splits_of(folder)
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(mixed / "b.png")
    with pytest.raises(MedsynthError, match="b.png: image size"):
        splits_of(mixed)
    (tmp_path / "l.csv").write_text("filename,label\na.png,0\n")
    with pytest.raises(MedsynthError, match="no label for image b.png"):
        splits_of(mixed, f"data.labels_csv={tmp_path / 'l.csv'}", "data.image_size=8")
