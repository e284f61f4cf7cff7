"""`train(config)`: data -> recipe -> run directory, on Lightning.

All checks that can fail on bad input (config, data, model shape) run before
the run directory is created, so a refused run leaves nothing behind.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import CSVLogger
from lightning.fabric.utilities.exceptions import MisconfigurationException
from omegaconf import DictConfig

import medsynth.console as console
import medsynth.runs as runs
from medsynth.artefacts import write_artefacts
from medsynth.config import load_config, to_yaml
from medsynth.data import MedsynthDataModule, load_splits
from medsynth.data.augment import patch_augmentation
from medsynth.data.patches import PatchDataModule, load_segmentation_splits
from medsynth.errors import MedsynthError, TrainingDiverged, reason
from medsynth.feature_runs import perceptual_loss
from medsynth.latent_prior import check_fit_size
from medsynth.models import build_recipe, load_run
from medsynth.precision import resolve_precision
from medsynth.provenance import record_environment, synthetic_lineage
from medsynth.tracking import log_to_tracked_run, record_tracked_run
from medsynth.runs import CONFIG, SafeCheckpointIO, claim_run_dir, last_checkpoint, launched_rank, new_run_dir
from medsynth.writers import write_text


def fill_data_shape(cfg: DictConfig, splits) -> None:
    """Write what the data tells (channels, size, classes) into cfg.model, refusing contradictions."""
    m = cfg.model
    found = {"in_channels": splits.in_channels, "image_size": splits.image_size, "num_classes": splits.num_classes,
             "multilabel": splits.multilabel if splits.num_classes else None}
    if len(splits.image_size) != m.spatial_dims:
        raise MedsynthError(f"{splits.source}: images are {len(splits.image_size)}D "
                            f"{splits.image_size} but model.spatial_dims={m.spatial_dims}")
    for key, value in found.items():
        given = m[key]
        given = list(given) if key == "image_size" and given is not None else given
        if given is not None and value is not None and given != value:
            raise MedsynthError(f"model.{key}={given} contradicts the data {splits.source} ({value})")
        m[key] = value
    if getattr(splits, "space", None) is not None:  # derived from the data, like the shape
        m.output_space = splits.space


def build_data(cfg: DictConfig):
    """The splits and the LightningDataModule for cfg.data (images in memory, or segmentation
    cases cut into patches); fills cfg.model with the data's shape."""
    if cfg.data.format == "segmentation":
        splits = load_segmentation_splits(cfg.data, cfg.seed)
        fill_data_shape(cfg, splits)
        d = cfg.data
        augment = patch_augmentation(d.rotate_degrees, d.scale_range, cfg.seed,
                                     flat_axis=splits.flat_axis, remap_prob=d.intensity_remap) if d.augment else None
        return splits, PatchDataModule(splits, d.batch_size, d.patches_per_epoch, d.val_patches, cfg.seed,
                                       None if d.class_ratios is None else list(d.class_ratios), d.num_workers,
                                       augment)
    splits = load_splits(cfg.data, cfg.model.spatial_dims, cfg.seed)
    fill_data_shape(cfg, splits)
    return splits, MedsynthDataModule(splits, cfg.data.batch_size, cfg.data.num_workers, cfg.seed)


class _EpochLine(L.Callback):
    """One line per epoch (off a terminal, in place of progress bars): the last step's loss and the
    validation loss, with the epoch's seconds."""

    def __init__(self):
        self._start = time.perf_counter()

    def on_train_start(self, trainer, pl_module):
        self._start = time.perf_counter()  # a run resumed mid-epoch ends an epoch it did not start

    def on_train_epoch_start(self, trainer, pl_module):
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer, pl_module):
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4g}" for k in ("loss", "val_loss") if k in m and torch.isfinite(m[k])]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        console.say(f"epoch {trainer.current_epoch + 1}/{total}: {', '.join(parts) or 'no loss logged'} "
                    f"({time.perf_counter() - self._start:.1f} s)")


class _ChannelsLast(L.Callback):
    """NHWC memory layout for 2D convs: oneDNN's fast path on CPU."""

    def on_fit_start(self, trainer, pl_module):
        pl_module.to(memory_format=torch.channels_last)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)


def build_trainer(cfg: DictConfig, run_dir: Path, has_val: bool, extra_callbacks=(), manual: bool = False) -> L.Trainer:
    """manual: the recipe optimises by hand (adversarial models), so it clips its own gradients."""
    t = cfg.trainer
    callbacks = [ModelCheckpoint(dirpath=run_dir / runs.CHECKPOINTS, filename=runs.BEST, monitor="val_loss" if has_val else None,
                                 mode="min", save_top_k=1, save_last=True, enable_version_counter=False),
                 *extra_callbacks]
    if console.progress_bars():
        callbacks.append(TQDMProgressBar(refresh_rate=10))  # refreshing every step cost ~5% of a small CPU step
    elif console.epoch_lines():
        callbacks.append(_EpochLine())
    if t.checkpoint_every_n_steps:
        # last.ckpt also within epochs, so a killed run loses at most this many steps
        callbacks.append(ModelCheckpoint(dirpath=run_dir / runs.CHECKPOINTS, save_top_k=0, save_last=True,
                                         every_n_train_steps=t.checkpoint_every_n_steps,
                                         enable_version_counter=False))
    if t.channels_last and cfg.model.spatial_dims == 2:
        callbacks.append(_ChannelsLast())
    # One CSV per session (logs/version_N): Lightning deletes an existing metrics file,
    # which would lose a resumed run's history; merge_metrics joins them.
    loggers = [CSVLogger(save_dir=run_dir, name=runs.LOGS)]
    if cfg.tracking.mlflow:
        loggers.append(_mlflow_logger(cfg, run_dir))
    return L.Trainer(
        default_root_dir=run_dir, max_epochs=t.max_epochs, max_steps=t.max_steps, max_time=t.max_time,
        precision=resolve_precision(t.precision, t.accelerator), accelerator=t.accelerator, devices=t.devices,
        strategy=t.strategy, num_nodes=t.num_nodes,
        gradient_clip_val=None if manual else t.gradient_clip_val, log_every_n_steps=t.log_every_n_steps,
        limit_val_batches=t.limit_val_batches if has_val else 0, callbacks=callbacks, logger=loggers,
        deterministic="warn", enable_model_summary=False, num_sanity_val_steps=0,
        enable_progress_bar=console.progress_bars(),
        plugins=[SafeCheckpointIO()],
    )


def _mlflow_logger(cfg: DictConfig, run_dir: Path):
    try:
        from lightning.pytorch.loggers import MLFlowLogger
        import mlflow  # noqa: F401
    except ImportError:
        raise MedsynthError("tracking.mlflow=true needs mlflow: pip install 'medsynth[tracking]'") from None
    return MLFlowLogger(experiment_name=cfg.name, run_name=run_dir.name, tracking_uri=_mlflow_uri(cfg, run_dir),
                        artifact_location=str(run_dir.parent.resolve() / "mlartifacts"))


def _mlflow_uri(cfg: DictConfig, run_dir: Path) -> str:
    return cfg.tracking.mlflow_uri or f"sqlite:///{run_dir.parent.resolve() / 'mlflow.db'}"


def train(config: str | Path | DictConfig | None = None, overrides: list[str] | None = None,
          resume: str | Path | None = None, log=print) -> Path:
    """Train a recipe; return its run directory.

    config: a YAML path (or a loaded config); overrides: `key=value` strings;
    resume: a run directory to continue from its last checkpoint (its saved
    config, plus overrides such as trainer.max_epochs=20).
    """
    cfg, ckpt = _training_config(config, overrides, resume)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    splits, data = build_data(cfg)
    if cfg.model.latent_prior == "gmm":
        check_fit_size(cfg.model, len(splits.train.images))
    recipe = build_recipe(cfg)
    recipe.prepare_training(perceptual_loss(cfg), load_run)
    rank, _ = launched_rank()
    if resume is not None:
        run_dir, made = Path(resume), []
        if rank == 0:
            runs.lock_run_dir(run_dir)
    else:
        run_dir, made = _open_run_dir(cfg, rank)  # locked by rank 0
    try:
        if ckpt is not None:  # nothing is written before the checkpoint has loaded and fits
            _check_resume(recipe, cfg, ckpt, run_dir, overrides)
        trainer = _build_trainer_or_refuse(cfg, run_dir, splits, recipe, made)
        return _train_into(run_dir, cfg, trainer, recipe, splits, data, ckpt, rank, log)
    finally:
        if rank == 0:
            runs.unlock_run_dir(run_dir)


def _train_into(run_dir: Path, cfg: DictConfig, trainer: L.Trainer, recipe, splits, data, ckpt, rank: int,
                log) -> Path:
    """Write the config, fit, then (rank 0) the weights, artefacts and summary."""
    if rank == 0:
        write_text(run_dir / CONFIG, to_yaml(cfg))
        record_environment(run_dir)
        log(f"run directory: {run_dir}")
        _record_lineage(run_dir, cfg, log)
        log(f"precision: {trainer.precision}" + (" (trainer.precision=auto: bf16 only where the hardware runs it "
                                                  "natively)" if cfg.trainer.precision == "auto" else ""))
    seconds = _fit(trainer, recipe, data, ckpt, run_dir, cfg)
    if not trainer.is_global_zero:  # with a launcher every rank runs this; rank 0 writes the results
        return run_dir
    merge_metrics(run_dir)
    recipe.eval()
    fitted = recipe.after_fit(splits, cfg.seed)  # before the export: what it fits is part of the weights
    for key, value in fitted.items():
        if key.endswith("_error"):
            log(f"warning: {value}")
    runs.export_weights(run_dir, recipe)
    extra = {**fitted, **write_artefacts(recipe.to(torch.float32), splits, run_dir, cfg.seed)}
    # images trained on (after data.keep_labels / data.limit): what one-class runs are drawn in
    # proportion to (class_runs.py); patch-trained families have cases, not images
    images = splits.train.images if hasattr(splits.train, "images") else None
    _write_summary(run_dir, cfg, trainer, seconds, status="finished", extra=extra,
                   train_images=None if images is None else len(images))
    _track_artefacts(trainer, run_dir, cfg, log)
    log(f"trained {trainer.global_step} steps in {seconds:.1f} s; weights: {run_dir / runs.WEIGHTS}")
    for name in runs.HEADLINE:
        if (run_dir / name).is_file():
            log(f"{name}: {run_dir / name}")
    return run_dir


def _track_artefacts(trainer: L.Trainer, run_dir: Path, cfg: DictConfig, log) -> None:
    """With an MLflow logger: remember its run (so evaluate and report log to it) and log the grids."""
    from lightning.pytorch.loggers import MLFlowLogger

    for logger in trainer.loggers:
        if isinstance(logger, MLFlowLogger):
            record_tracked_run(run_dir, _mlflow_uri(cfg, run_dir), logger.run_id)
            log_to_tracked_run(run_dir, files=[run_dir / name for name in runs.HEADLINE] + [run_dir / runs.SUMMARY],
                               folder="training", log=log)


def _record_lineage(run_dir: Path, cfg: DictConfig, log) -> None:
    """When the training data carries medsynth's synthetic mark, keep its provenance in the run
    (runs.LINEAGE), so everything this model makes says it was trained on synthetic data."""
    lineage = synthetic_lineage(cfg.data.path)
    if lineage is None and cfg.data.synthetic:  # synthetic pairs beside (or instead of) the real cases
        lineage = synthetic_lineage(Path(cfg.data.synthetic).parent)
    if lineage is None:
        return
    write_text(run_dir / runs.LINEAGE, json.dumps(lineage, indent=2))
    log(f"training data is synthetic ({lineage['file']}: made by {lineage.get('generator')} from run "
        f"{lineage.get('run')}); recorded in {runs.LINEAGE} and in the provenance of this model's outputs")


def _build_trainer_or_refuse(cfg: DictConfig, run_dir: Path, splits, recipe, made: list[Path]) -> L.Trainer:
    """The Lightning trainer; refused settings leave nothing behind (the folders this call made go)."""
    try:
        validates = type(recipe).validation_step is not L.LightningModule.validation_step  # GANs have no val loss
        return build_trainer(cfg, run_dir, has_val=len(splits.val) > 0 and validates,
                             manual=not recipe.automatic_optimization)
    except (MisconfigurationException, ValueError, ImportError, RuntimeError, MedsynthError) as exc:
        # ImportError: Lightning's answer to an accelerator whose backend is missing (tpu -> torch_xla);
        # MedsynthError: e.g. tracking.mlflow=true without mlflow
        if made:
            runs.unlock_run_dir(run_dir)
        for folder in made:  # the empty run directory this call made, and its runs folder if it made it
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        if isinstance(exc, MedsynthError):
            raise
        raise MedsynthError(f"trainer settings refused: {reason(exc)}") from None


def _check_resume(recipe, cfg: DictConfig, ckpt: Path, run_dir: Path, overrides) -> None:
    """Refuse, before anything is written: a checkpoint that does not load safely, overrides that no
    longer fit the run's weights, and a finished run with nothing left to train."""
    state = SafeCheckpointIO().load_checkpoint(ckpt)  # refuses pickled code
    try:
        recipe.load_state_dict(state["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        given = " ".join(overrides or []) or "none"
        raise MedsynthError(f"{run_dir}: the run's weights do not fit its config with the overrides ({given}): "
                            f"{reason(exc)}; on resume change only settings such as trainer.max_epochs") from None
    summary_path = run_dir / runs.SUMMARY
    try:
        summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    except ValueError:
        summary = {}
    if summary.get("status") != "finished":
        return
    t, epochs, steps = cfg.trainer, summary.get("epochs", 0), summary.get("global_step", 0)
    more_epochs = t.max_epochs is None or t.max_epochs < 0 or t.max_epochs > epochs
    more_steps = t.max_steps is None or t.max_steps < 0 or t.max_steps > steps
    if not (more_epochs and more_steps):
        raise MedsynthError(f"{run_dir}: this run finished ({epochs} epochs, {steps} steps) and these settings leave "
                            f"nothing to train: give trainer.max_epochs={epochs + 10} (or a larger trainer.max_steps)")


def _training_config(config, overrides, resume) -> tuple[DictConfig, Path | None]:
    """(config, checkpoint to resume from or None): a resumed run's saved config plus overrides."""
    if resume is None:
        return (config if isinstance(config, DictConfig) else load_config(config, overrides)), None
    run_dir = Path(resume)
    ckpt = last_checkpoint(run_dir)
    if not (run_dir / CONFIG).is_file() or not ckpt.is_file():
        raise MedsynthError(f"{run_dir}: cannot resume, no {CONFIG} or {ckpt.relative_to(run_dir)} found")
    return load_config(run_dir / CONFIG, overrides), ckpt


def _open_run_dir(cfg: DictConfig, rank: int) -> tuple[Path, list[Path]]:
    """(the new run's directory, the folders this call created, innermost first): run_dir= is
    claimed (every launched process joins it), else a fresh one under runs_dir."""
    if cfg.run_dir:
        return claim_run_dir(cfg.run_dir, rank), []
    if launched_rank()[1] > 1:
        raise MedsynthError("this process is one of several started by a launcher (torchrun / SLURM): "
                            "give every process the same run_dir=PATH")
    root_existed = Path(cfg.runs_dir).exists()
    run_dir = new_run_dir(cfg.runs_dir, cfg.name)
    runs.lock_run_dir(run_dir)
    return run_dir, [run_dir] + ([] if root_existed else [run_dir.parent])


def _fit(trainer: L.Trainer, recipe, data, ckpt: Path | None, run_dir: Path, cfg: DictConfig) -> float:
    """trainer.fit; on failure the run directory says what happened (summary.json, metrics.csv)
    before the error goes on up. Returns the seconds it trained."""
    start = time.perf_counter()
    try:
        trainer.fit(recipe, datamodule=data, ckpt_path=ckpt, weights_only=True if ckpt else None)
    except TrainingDiverged as exc:
        kept = last_checkpoint(run_dir)
        where = f"last good checkpoint: {kept}" if kept.is_file() else "no checkpoint had been written yet"
        _write_summary(run_dir, cfg, trainer, time.perf_counter() - start, status="diverged", error=str(exc))
        merge_metrics(run_dir)
        raise MedsynthError(f"{run_dir}: {exc}; {where}") from None
    except BaseException as exc:
        try:  # on a full disk these may fail too; the first error is the one to report
            _write_summary(run_dir, cfg, trainer, time.perf_counter() - start, status="failed",
                           error=f"{type(exc).__name__}: {exc}")
            merge_metrics(run_dir)
        except MedsynthError:
            pass
        raise
    return time.perf_counter() - start


def merge_metrics(run_dir: Path) -> Path:
    """Concatenate every session's CSV log into <run_dir>/metrics.csv (columns: the union)."""
    parts = sorted((run_dir / runs.LOGS).glob(f"version_*/{runs.METRICS}"), key=lambda p: int(p.parent.name.split("_")[1]))
    rows, columns = [], []
    for part in parts:
        with open(part, newline="") as fh:
            reader = csv.DictReader(fh)
            columns += [c for c in reader.fieldnames or [] if c not in columns]
            rows += list(reader)
    out = run_dir / runs.METRICS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns)
    writer.writeheader()
    writer.writerows(rows)
    write_text(out, buffer.getvalue())
    return out


def _write_summary(run_dir: Path, cfg, trainer, seconds: float, status: str, error: str | None = None,
                   extra: dict | None = None, train_images: int | None = None) -> None:
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if torch.is_tensor(v) and v.numel() == 1
               and torch.isfinite(v)}  # e.g. latent diffusion's val_loss is inf while stage 1 trains: not JSON
    metrics.update(extra or {})
    step, epoch = trainer.global_step, trainer.current_epoch
    ckpt = last_checkpoint(run_dir)
    if step == 0 and status == "finished" and ckpt.is_file():
        # ddp_spawn: the loop ran in child processes; the checkpoint they wrote knows the counts
        state = SafeCheckpointIO().load_checkpoint(ckpt)
        step, epoch = state["global_step"], state["epoch"]
    summary = {"status": status, "global_step": step, "epochs": epoch,
               "train_seconds": round(seconds, 2), "precision": str(trainer.precision), "metrics": metrics}
    if train_images is not None:
        summary["train_images"] = train_images
    if error:
        summary["error"] = error
    write_text(run_dir / runs.SUMMARY, json.dumps(summary, indent=2))
