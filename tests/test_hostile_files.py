"""Hostile files: truncated, corrupted, lying headers, wrong dtypes. Each reader must give one
clear MedsynthError (or read the file, if the damage left it valid), never hang, never exhaust memory."""

import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from PIL import Image

from medsynth.config import load_config
from medsynth.data import load_splits
from conftest import damaged
from medsynth.errors import MedsynthError

FUZZ = settings(max_examples=40, deadline=3000, suppress_health_check=[HealthCheck.function_scoped_fixture])


def read(path):
    cfg = load_config(None, [f"data.path={path}", "data.val_fraction=0.2"])
    return load_splits(cfg.data)


def valid_npz(pneumonia, compressed) -> bytes:
    with np.load(pneumonia) as f:
        arrays = {"train_images": f["train_images"][:40], "train_labels": f["train_labels"][:40],
                  "test_images": f["test_images"][:10], "test_labels": f["test_labels"][:10]}
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def outcome(path):
    try:
        read(path)
        return "read"
    except MedsynthError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc)
        return "refused"


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_truncated_npz(pneumonia, tmp_path, data, compressed):
    raw = valid_npz(pneumonia, compressed)
    cut = data.draw(st.integers(0, len(raw) - 1))
    path = tmp_path / "cut.npz"
    path.write_bytes(raw[:cut])
    assert outcome(path) == "refused"


@FUZZ
@given(data=st.data(), compressed=st.booleans())
def test_corrupted_npz(pneumonia, tmp_path, data, compressed):
    raw = bytearray(valid_npz(pneumonia, compressed))
    for _ in range(data.draw(st.integers(1, 20))):
        pos = data.draw(st.integers(0, len(raw) - 1))
        raw[pos] = data.draw(st.integers(0, 255))
    path = tmp_path / "bad.npz"
    path.write_bytes(bytes(raw))
    outcome(path)  # refused or (rarely, a flip in padding) read: never another exception


def npy_with_header(shape, dtype="|u1", payload=b"") -> bytes:
    header = f"{{'descr': '{dtype}', 'fortran_order': False, 'shape': {shape!r}, }}".encode()
    header += b" " * (63 - (len(header) + 10) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header + payload


@pytest.mark.parametrize("shape", [(10**9, 28, 28), (10**12,), (2**40, 2**40)])
def test_header_claiming_absurd_shape_is_refused_without_allocating(tmp_path, shape):
    path = tmp_path / "absurd.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("train_images.npy", npy_with_header(shape, payload=b"\0" * 1000))
    with pytest.raises(MedsynthError, match="claims shape"):
        read(path)


def test_lying_and_odd_members(tmp_path):
    path = tmp_path / "short.npz"
    with zipfile.ZipFile(path, "w") as zf:  # a plausible shape, too few bytes behind it
        zf.writestr("train_images.npy", npy_with_header((100, 28, 28), payload=b"\0" * 500))
    with pytest.raises(MedsynthError, match="truncated"):
        read(path)
    obj = tmp_path / "object.npz"
    np.savez(obj, train_images=np.array([{"a": 1}] * 4, dtype=object))
    with pytest.raises(MedsynthError, match="pickle"):
        read(obj)
    for name, array in {"strings.npz": np.array([["ab"] * 28] * 28 * 4).reshape(4, 28, 28),
                        "complex.npz": np.zeros((4, 28, 28), np.complex64)}.items():
        np.savez(tmp_path / name, train_images=array)
        with pytest.raises(MedsynthError, match="not a number type"):
            read(tmp_path / name)


def png_bytes() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


@FUZZ
@given(data=st.data())
def test_truncated_or_corrupted_png(tmp_path_factory, data):
    folder = tmp_path_factory.mktemp("png")
    good = png_bytes()
    for i in range(4):
        (folder / f"ok{i}.png").write_bytes(good)
    raw, _ = damaged(good, data)
    (folder / "zz_bad.png").write_bytes(raw)
    try:
        read(folder)
    except MedsynthError as exc:
        assert "zz_bad.png" in str(exc) and "\n" not in str(exc)


def test_png_claiming_a_huge_size_is_refused(tmp_path):
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)  # 10^10 pixels
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 100)) + chunk(b"IEND", b"")
    folder = tmp_path / "huge"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png)
    with pytest.raises(MedsynthError, match="huge.png: not a readable image"):
        read(folder)
