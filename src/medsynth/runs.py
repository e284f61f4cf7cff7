"""The run directory: every file name in it, creating or claiming one, checkpoints, weights.

    <runs_dir>/<name>-<YYYYmmdd-HHMMSS>[-k]/
        config.yaml          resolved config (rebuilds the model on its own)
        checkpoints/         last.ckpt, best.ckpt (Lightning, for --resume)
        logs/version_N/      one CSV log per training session; metrics.csv joins them
        model.safetensors    portable weights (no pickle)
        summary.json, environment.json, and what the end of training writes by capability
        (samples.png, reconstructions.png, ...; see medsynth.artefacts)

Every other module asks here for a file's name, so the layout is stated once (docs/run-directory.md).
"""

from __future__ import annotations

import os
import pickle
import re
import time
from pathlib import Path

import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medsynth.errors import MedsynthError, reason
from medsynth.writers import atomic_path

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
BEST = "best"  # Lightning adds .ckpt
LOGS = "logs"
METRICS = "metrics.csv"
SUMMARY = "summary.json"
ENVIRONMENT = "environment.json"
SAMPLES = "samples.png"
RECONSTRUCTIONS = "reconstructions.png"
TRANSLATIONS = "translations.png"
TRANSLATION_SCORES = "translation.json"
SEGMENTATIONS = "segmentation.png"
SEGMENTATION_SCORES = "segmentation.json"
AUTOENCODER_SCORES = "autoencoder.json"  # latent diffusion: stage 1's reconstruction scores
FEATURES = "features.json"  # a feature network's test scores and weights hash
EVALUATION = "evaluation.json"
REPORT = "report.html"
LOCK = ".lock"  # held by the one training that writes into the run directory
LINEAGE = "lineage.json"  # the synthetic provenance of the training data, when it was synthetic
TRACKING = "mlflow.json"  # tracking.mlflow=true: the MLflow store and run id the training logged to
# what `train` lists at its end when present
HEADLINE = (SAMPLES, RECONSTRUCTIONS, TRANSLATIONS, SEGMENTATIONS, FEATURES)


# a run's own files: no output flag may write over them, --overwrite or not (evaluation.json,
# its strip and report.html are outputs of later commands and may be replaced)
OWN = (CONFIG, WEIGHTS, SUMMARY, METRICS, ENVIRONMENT, SAMPLES, RECONSTRUCTIONS, TRANSLATIONS, TRANSLATION_SCORES,
       SEGMENTATIONS, SEGMENTATION_SCORES, AUTOENCODER_SCORES, FEATURES, LOCK, LINEAGE, TRACKING)


def check_output(path: str | Path, overwrite: bool = False, inputs=(), suffixes: tuple[str, ...] = (),
                 flag: str = "--out") -> Path:
    """Refuse an output path before anything is computed: a wrong suffix, an existing file or
    folder (unless overwrite), an input of this command, or a run directory's own files."""
    path = Path(path)
    if suffixes and not path.name.lower().endswith(suffixes):
        raise MedsynthError(f"{flag} {path}: must end with {' or '.join(suffixes)}")
    target = path.resolve()
    for given in inputs:
        if given is not None and Path(given).exists() and _same_or_inside(target, Path(given).resolve()):
            raise MedsynthError(f"{flag} {path}: is an input of this command ({given}); choose another output")
        if given is not None and Path(given).exists() and target in Path(given).resolve().parents:
            raise MedsynthError(f"{flag} {path}: holds an input of this command ({given}); choose another output")
    if target.is_dir() and (any(target.rglob(CONFIG)) or target in Path.cwd().resolve().parents
                            or target == Path.cwd().resolve()):
        raise MedsynthError(f"{flag} {path}: holds run directories or the working folder; choose another output")
    folder = target.parent
    if (folder / CONFIG).is_file() and (target.name in OWN or target == folder / CHECKPOINTS):
        raise MedsynthError(f"{flag} {path}: is a file of the run directory {folder}; choose another output")
    if any(part in (CHECKPOINTS, LOGS) and (parent / CONFIG).is_file()
           for part, parent in zip(target.parts[::-1], target.parents)):
        raise MedsynthError(f"{flag} {path}: is inside a run directory's {CHECKPOINTS}/ or {LOGS}/")
    if path.exists() and not overwrite:
        raise MedsynthError(f"{flag} {path}: already exists; give --overwrite to replace it")
    return path


def _same_or_inside(target: Path, given: Path) -> bool:
    """The target is the input, or an existing file inside an input folder (new files may go into
    an input folder; a run directory's own files are guarded by name)."""
    return target == given or (given.is_dir() and not (given / CONFIG).is_file() and given in target.parents
                               and target.exists())


def is_run(path: str | Path) -> bool:
    """A finished run directory: its config and portable weights are there."""
    path = Path(path)
    return path.is_dir() and (path / CONFIG).is_file() and (path / WEIGHTS).is_file()


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def new_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create a fresh directory <runs_dir>/<name>-<time>; an existing one is never reused (mkdir
    without exist_ok is atomic). `name` must be a plain name: it may not lead out of runs_dir."""
    if not NAME.fullmatch(str(name)) or ".." in str(name):
        raise MedsynthError(f"name={name!r} must be a plain name (letters, digits, '.', '_', '-'; no path "
                            "separators or '..'): it names the run directory inside runs_dir")
    root = Path(runs_dir)
    root.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-{time.strftime('%Y%m%d-%H%M%S')}"
    for k in range(1, 1000):
        path = root / (stem if k == 1 else f"{stem}-{k}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise RuntimeError(f"could not create a new run directory under {root}")


def launched_rank() -> tuple[int, int]:
    """(global rank, world size) set by torchrun or SLURM for this process; (0, 1) otherwise."""
    rank = int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", 0)))
    world = int(os.environ.get("WORLD_SIZE", os.environ.get("SLURM_NTASKS", 1)))
    return rank, world


def claim_run_dir(path: str | Path, rank: int) -> Path:
    """An explicit run directory: rank 0 locks it and refuses one that already holds a run; other
    ranks (started by the same launcher) join it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        lock_run_dir(path)
        if (path / CONFIG).exists():
            unlock_run_dir(path)
            raise MedsynthError(f"{path}: already holds a run (use --resume, or another run_dir)")
    return path


_LOCKS: dict[Path, int] = {}


def lock_run_dir(path: str | Path) -> None:
    """Take the run directory's lock (an flock on <run_dir>/.lock, released by unlock_run_dir or
    when the process ends, even by SIGKILL) before anything is written into it: two trainings
    into one directory would leave the config of one and the weights of the other."""
    import fcntl

    path = Path(path).resolve()
    while True:
        fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise MedsynthError(f"{path}: another training is writing into this run directory (wait for it, or "
                                "use another run_dir)") from None
        try:  # the holder before us may have removed the file it locked; ours must be the one at the path
            if os.fstat(fd).st_ino == os.stat(path / LOCK).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    _LOCKS[path] = fd


def unlock_run_dir(path: str | Path) -> None:
    """Release this process's lock on the run directory and remove the lock file."""
    path = Path(path).resolve()
    fd = _LOCKS.pop(path, None)
    if fd is not None:
        (path / LOCK).unlink(missing_ok=True)
        os.close(fd)


def last_checkpoint(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS / LAST


def export_weights(run_dir: str | Path, module: torch.nn.Module) -> Path:
    """The module's state dict as safetensors: loadable without unpickling anything."""
    from safetensors.torch import save_file

    path = Path(run_dir) / WEIGHTS
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(path) as tmp:
        try:
            save_file(state, str(tmp), metadata={"format": "pt", "producer": "medsynth"})
        except Exception as exc:  # safetensors reports a failed write in its own error type
            raise MedsynthError(f"{path}: could not be written ({reason(exc)}; is the disk full?)") from None
    return path


def read_weights(run_dir: str | Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """The run's portable weights (a state dict), read without unpickling."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(run_dir) / WEIGHTS
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise MedsynthError(f"{path}: cannot read weights ({reason(exc)})") from None


def check_run_dir(run_dir: str | Path) -> Path:
    """The run directory, or one clear error when it is missing or unfinished."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise MedsynthError(f"{run_dir}: run directory not found")
    for name in (CONFIG, WEIGHTS):
        if not (run_dir / name).is_file():
            raise MedsynthError(f"{run_dir}: no {name} (is this a finished medsynth run?)")
    return run_dir


class SafeCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically beside the target (temp file, fsync, rename: a SIGKILL leaves
    the old file or the new one) and loaded without running code (weights_only=True)."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                try:
                    torch.save(checkpoint, fh)
                except RuntimeError as exc:  # torch's zip writer on a full disk: "unexpected pos ..."
                    raise MedsynthError(f"{path}: could not be written ({reason(exc)}; is the disk full?); "
                                        "the previous checkpoint is unchanged") from None
                fh.flush()
                os.fsync(fh.fileno())

    def load_checkpoint(self, path, map_location=None, weights_only=True):
        try:
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)
        except pickle.UnpicklingError as exc:
            raise MedsynthError(f"{path}: refused to load, the checkpoint holds more than weights "
                                f"(objects that would run code when unpickled): {reason(exc)}") from None
        except (RuntimeError, EOFError, OSError) as exc:
            raise MedsynthError(f"{path}: not a readable checkpoint ({reason(exc)})") from None
