"""What an evaluation computes from the real images alone, kept on disk between evaluations.

An audit of a synthetic set spends much of its time on the real sets: their embeddings in the
feature network's space, the real-vs-real floors (FID, diversity, texture, privacy), the nearest
training image of every held-out image, and the train-on-real classifiers of the utility ratio.
None of it depends on the synthetic set, yet comparing several models on one dataset (the VAE zoo
audits 12 a dataset) recomputed it for every model. `ReferenceCache(dir, ...)` keeps each such
result in `dir` under a key made of everything it depends on: the bytes of the real sets, the
settings, the feature network's weights and precision, the machine (CPU model and the kernels torch
picks for it, torch's thread count: float sums in another order train another classifier,
metrics/utility.py), the versions of torch, numpy and scipy, and the medsynth source itself, so a
change to any of them computes afresh rather than reading a stale value. A value read back is the
value this process would have computed (tests/test_evaluation.py compares whole evaluations with
and without the cache).

Values are JSON (sections of the result) or named tensors (safetensors). A file that cannot be
read back, or whose stored name and key are not the ones asked for, is computed again and
replaced. The cache holds embeddings and distances of the real images: keep it where the real data
may be kept.
"""

from __future__ import annotations

import hashlib
import json
import platform
from functools import lru_cache
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from safetensors.torch import save

from medsynth.errors import MedsynthError
from medsynth.writers import atomic_path, write_text

PACKAGE = Path(__file__).resolve().parent


def tensor_digest(x: torch.Tensor | None) -> str | None:
    """sha256 of a tensor's dtype, shape and bytes (None for None)."""
    if x is None:
        return None
    h = hashlib.sha256(f"{x.dtype}{list(x.shape)}".encode())
    h.update(x.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # a view: no copy
    return h.hexdigest()


@lru_cache(maxsize=1)
def machine() -> dict:
    """What the numbers may differ by between machines: the CPU model, the kernels torch uses on it,
    the versions of the libraries that compute them."""
    import numpy
    import scipy

    model = platform.processor()
    try:
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), model)
    except OSError:
        pass
    return {"cpu": model, "arch": platform.machine(), "capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "numpy": numpy.__version__, "scipy": scipy.__version__}


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
        self.depends = ({} if self.root is None else
                        {**depends, "code": code_digest(), "machine": machine(), "threads": torch.get_num_threads()})
        self.read: list[str] = []
        self.computed: list[str] = []
        self.not_written: list[str] = []

    def _path(self, name: str, key: dict, suffix: str) -> Path:
        text = json.dumps({"name": name, **self.depends, **key}, sort_keys=True)
        return self.root / f"{name}-{hashlib.sha256(text.encode()).hexdigest()[:24]}{suffix}"

    def get_json(self, name: str, compute: Callable[[], dict | list], **key):
        """A JSON value (dicts, lists, numbers, strings; NaN allowed)."""
        full_key = json.loads(json.dumps({**self.depends, **key}))  # as it reads back

        def read(path: Path):
            stored = json.loads(path.read_text())
            return stored["value"] if stored["name"] == name and stored["key"] == full_key else None

        def write(path: Path, value) -> None:
            write_text(path, json.dumps({"name": name, "key": full_key, "value": value}))

        return self._get(name, key, ".json", compute, read, write)

    def get_tensors(self, name: str, compute: Callable[[], dict[str, torch.Tensor]], **key) -> dict[str, torch.Tensor]:
        """Named tensors (safetensors on disk, the name and key in its metadata)."""
        stamp = {"name": name, "key": json.dumps({**self.depends, **key}, sort_keys=True)}

        def read(path: Path):
            with safe_open(str(path), "pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()} if f.metadata() == stamp else None

        def write(path: Path, value: dict[str, torch.Tensor]) -> None:
            with atomic_path(path) as tmp:  # bytes written into the temporary file keep the umask's mode
                tmp.write_bytes(save({k: v.contiguous() for k, v in value.items()}, metadata=stamp))

        return self._get(name, key, ".safetensors", compute, read, write)

    def _get(self, name: str, key: dict, suffix: str, compute, read, write):
        """read(path) -> the stored value, or None when the file holds another name or key; compute()
        and write(path, value) when there is none to read."""
        if self.root is None:
            return compute()
        path = self._path(name, key, suffix)
        value = None
        if path.is_file():
            try:
                value = read(path)
            except Exception:  # noqa: BLE001 - truncated, foreign, another shape: computed again and replaced
                value = None
        if value is not None:
            self.read.append(name)
            return value
        value = compute()
        self.computed.append(name)
        try:
            write(path, value)
        except MedsynthError:  # a full disk, a lost race: the value is used all the same
            self.not_written.append(name)
        return value

    def record(self) -> dict:
        """What the evaluation's settings record about the cache."""
        if self.root is None:
            return {"dir": None}
        return {"dir": str(self.root), "read": self.read, "computed": self.computed,
                **({"not_written": self.not_written} if self.not_written else {})}
