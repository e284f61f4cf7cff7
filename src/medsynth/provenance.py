"""Where a file came from: the environment a run was made in, file hashes, and the provenance
every synthetic image carries (npz key, PNG text chunk, NIfTI header extension) so it cannot
pass for a patient's; `read_provenance` reads that mark back."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from PIL import Image

from medsynth.dicom import dicom_provenance
from medsynth.runs import ENVIRONMENT, LINEAGE, WEIGHTS
from medsynth.writers import write_text

PACKAGES = ("medsynth", "torch", "lightning", "monai", "numpy", "scipy", "omegaconf", "safetensors", "pillow")


def _git(root: Path, *args: str) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict:
    """Python, platform, package versions and the git commit of medsynth's source (when it is a checkout)."""
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    root = Path(__file__).resolve().parents[2]
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"python": sys.version.split()[0], "platform": platform.platform(), "packages": versions,
            "git_commit": commit, "git_dirty": bool(status) if commit else None,
            "command": sys.argv, "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def record_environment(run_dir: Path) -> None:
    """Append this session's environment to <run_dir>/environment.json (a resumed run adds one entry)."""
    path = run_dir / ENVIRONMENT
    sessions = json.loads(path.read_text())["sessions"] if path.is_file() else []
    sessions.append(environment())
    write_text(path, json.dumps({"sessions": sessions}, indent=2))


def synthetic_provenance(recipe, run_dir: Path | None, seed: int | None, **extra) -> dict:
    """The record written into every synthetic output: an explicit synthetic flag, the model's
    weights hash, its recipe and the seed; for a model trained on synthetic data, that data's own
    provenance under "trained_on_synthetic" (so lineage chains from model to model)."""
    weights = Path(run_dir) / WEIGHTS if run_dir is not None else None
    cfg = recipe.cfg
    record = {"synthetic": True, "generator": f"medsynth {medsynth_version()}",
              "model_sha256": file_sha256(weights) if weights is not None and weights.is_file() else None,
              "recipe": cfg.name, "family": cfg.model.family, "run": Path(run_dir).name if run_dir else None,
              "seed": seed, "created_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), **extra}
    lineage = Path(run_dir) / LINEAGE if run_dir is not None else None
    if lineage is not None and lineage.is_file():
        record["trained_on_synthetic"] = json.loads(lineage.read_text())
    return record


def medsynth_version() -> str:
    try:
        return metadata.version("medsynth")
    except metadata.PackageNotFoundError:
        return "unknown"


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def read_provenance(path: str | Path) -> dict | None:
    """The provenance stored in an npz, PNG, NIfTI or DICOM file written by medsynth, or None."""
    path = Path(path)
    if path.name.endswith((".nii", ".nii.gz")):
        return _nifti_provenance(path)
    if path.suffix.lower() == ".dcm":
        return dicom_provenance(path)
    if path.suffix == ".npz":
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["provenance"])) if "provenance" in f.files else None
    with Image.open(path) as im:
        text = getattr(im, "text", {}).get("medsynth:provenance")
    return json.loads(text) if text else None


DATA_SUFFIXES = (".npz", ".png", ".nii", ".nii.gz", ".dcm")


def synthetic_lineage(source: str | Path) -> dict | None:
    """The provenance of the first file marked synthetic in a data source (a file, or a folder
    searched through, hidden files skipped), with its path under "file"; None when nothing there
    carries the mark. Files that cannot be read are left to the data readers, which name them."""
    source = Path(source)
    if source.is_file():
        files = [source]
    elif source.is_dir():
        files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.lower().endswith(DATA_SUFFIXES)
                       and not any(part.startswith(".") for part in p.relative_to(source).parts))
    else:
        return None
    for path in files:
        try:
            record = read_provenance(path)
        except Exception:  # unreadable: the reader that loads it says why
            continue
        if isinstance(record, dict) and record.get("synthetic"):
            return {**record, "file": str(path)}
    return None


def _nifti_provenance(path: Path) -> dict | None:
    import nibabel as nib

    for ext in nib.load(str(path)).header.extensions:
        try:
            data = json.loads(ext.get_content())
        except (ValueError, TypeError):
            continue
        if isinstance(data, dict) and "synthetic" in data:
            return data
    return None
