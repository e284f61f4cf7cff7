"""What an evaluation computes from the real images alone, kept on disk between evaluations.

An audit of a synthetic set spends much of its time on the real sets: their embeddings in the
feature network's space, the real-vs-real floors (FID, diversity, texture, privacy), the nearest
training image of every held-out image, and the train-on-real classifiers of the utility ratio.
None of it depends on the synthetic set, yet comparing several models on one dataset (the VAE zoo
audits 12 a dataset) recomputed it for every model. `ReferenceCache(dir, ...)` keeps each such
result in `dir` under a key made of everything it depends on: the bytes of the real sets, the
settings, the feature network's weights and precision, the torch version and thread count (float
sums in another order train another classifier: metrics/utility.py) and the medsynth source
itself, so a change to any of them computes afresh rather than reading a stale value. A value
read back is the value this process would have computed (tests/test_evaluation.py compares whole
evaluations with and without the cache).

Values are JSON (sections of the result) or named tensors (safetensors). A file that cannot be
read back is computed again and replaced, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save

from medsynth.errors import MedsynthError
from medsynth.writers import atomic_path, write_text

PACKAGE = Path(__file__).resolve().parent


def tensor_digest(x: torch.Tensor | None) -> str | None:
    """sha256 of a tensor's dtype, shape and bytes (None for None)."""
    if x is None:
        return None
    h = hashlib.sha256(f"{x.dtype}{list(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@lru_cache(maxsize=1)
def code_digest() -> str:
    """sha256 of every medsynth source file: any code change starts a new cache."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(str(path.relative_to(PACKAGE)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


class ReferenceCache:
    """get_json / get_tensors(name, compute, **key): compute() once per distinct key, read back after.

    root None: no cache, compute() every time. `depends`: what every value here depends on (digests of
    the real sets, the settings); each call adds its own `key`. `read` / `computed` list the names
    taken from disk and computed in this evaluation, for its record; a value that could not be
    written (a full disk) is used all the same and listed under `not_written`."""

    def __init__(self, root: str | Path | None, **depends):
        self.root = None if root is None else Path(root)
        if self.root is not None:
            try:
                self.root.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise MedsynthError(f"--reference-cache {self.root}: cannot be used as a folder "
                                    f"({exc.strerror or exc})") from None
        self.depends = {**depends, "code": code_digest(), "torch": torch.__version__,
                        "threads": torch.get_num_threads()}
        self.read: list[str] = []
        self.computed: list[str] = []
        self.not_written: list[str] = []

    def _path(self, name: str, key: dict, suffix: str) -> Path:
        text = json.dumps({"name": name, **self.depends, **key}, sort_keys=True, default=str)
        return self.root / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:24]}{suffix}"

    def get_json(self, name: str, compute: Callable[[], dict | list], **key):
        """A JSON value (dicts, lists, numbers, strings; NaN allowed)."""
        if self.root is None:
            return compute()
        path = self._path(name, key, ".json")
        if path.is_file():
            try:
                value = json.loads(path.read_text())["value"]
                self.read.append(name)
                return value
            except (OSError, ValueError, KeyError):
                pass  # unreadable: computed again below and replaced
        value = compute()
        self.computed.append(name)
        try:
            write_text(path, json.dumps({"name": name, "key": {**self.depends, **key}, "value": value}, default=str))
        except MedsynthError:
            self.not_written.append(name)
        return value

    def get_tensors(self, name: str, compute: Callable[[], dict[str, torch.Tensor]], **key) -> dict[str, torch.Tensor]:
        """Named tensors (safetensors on disk)."""
        if self.root is None:
            return compute()
        path = self._path(name, key, ".safetensors")
        if path.is_file():
            try:
                value = load_file(str(path))
                self.read.append(name)
                return value
            except Exception:  # noqa: BLE001 - a truncated or foreign file: computed again and replaced
                pass
        value = compute()
        self.computed.append(name)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(save({k: v.contiguous() for k, v in value.items()}))  # keeps the umask's mode
        except MedsynthError:
            self.not_written.append(name)
        return value

    def record(self) -> dict:
        """What the evaluation's settings record about the cache."""
        if self.root is None:
            return {"dir": None}
        return {"dir": str(self.root), "read": self.read, "computed": self.computed,
                **({"not_written": self.not_written} if self.not_written else {})}
