"""Recipes: YAML files over typed defaults, with `key=value` overrides.

OmegaConf structured configs give the type checks and refuse unknown keys;
`load_config` turns their exceptions into one `MedsynthError` that names the
file and the key. Values that only the data can tell (channels, image size,
number of classes) are filled into `model` when the data is loaded, so the
resolved config saved in a run directory rebuilds the model on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, List, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medsynth.errors import MedsynthError

DEFAULT_DATA = "../shared/data/medmnist/pneumoniamnist.npz"


@dataclass
class DataConfig:
    path: str = DEFAULT_DATA
    format: str = "auto"  # auto | npz | folder | ct_slices (CT + label map -> 2.5D slices) | volumes
    image_size: Optional[int] = None  # resize (e.g. 28 -> 64); None keeps the file's size
    channels: Optional[int] = None  # image folders: 1 (grayscale) or 3 (RGB); None = as stored
    labels_csv: Optional[str] = None  # image folders: CSV with columns filename,label
    limit: Optional[int] = None  # at most this many images per split, a seeded random subset (quick runs)
    val_fraction: float = 0.1  # image folders without a val/ sub-folder
    batch_size: int = 64
    num_workers: int = 0
    # ct_slices: the abdominal-CT tutorial's 2.5D dataset
    label_path: Optional[str] = None  # label map of data.path (NIfTI)
    organ: Optional[int] = None  # keep slices holding this label (pancreas = 7 in TotalSegmentator)
    window: Any = "abdomen"  # CT window preset (abdomen, lung, bone, brain) or [level, width] in HU
    slice_axis: int = 2
    crop_size: Optional[int] = None  # random crops in training, centre crops otherwise
    # volumes: cases of 3D images (a folder of case sub-folders, or a CSV manifest)
    contrasts: List[str] = field(default_factory=list)  # file patterns (folder) or CSV columns
    mr_normalise: str = "zscore"  # per case and contrast: zscore | percentile
    mask: Optional[str] = None  # file pattern of a mask (e.g. brainmask*) for the intensity statistics
    spacing: Optional[List[float]] = None  # resample every case to this spacing (mm) first


@dataclass
class ModelConfig:
    family: str = "vae"  # vae | classifier (the domain feature network)
    arch: str = "conv"  # conv (PyTorch-VAE style) | ct (the abdominal-CT tutorial VAE)
    spatial_dims: int = 2
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    latent_dim: int = 64
    upsample: str = "transposed"  # transposed | bilinear | nearest
    conditional: bool = False  # one-hot class label into encoder and decoder
    discrete_dims: List[int] = field(default_factory=list)  # JointVAE categorical latents
    temperature: float = 0.67  # Gumbel-softmax temperature (JointVAE)
    # Filled from the data when a run starts; set them only to build a model by hand.
    in_channels: Optional[int] = None
    image_size: Optional[List[int]] = None
    num_classes: Optional[int] = None
    multilabel: Optional[bool] = None


@dataclass
class LossConfig:
    reconstruction: str = "mse"  # l1 | mse | bce | msssim
    kl_weight: float = 1.0  # beta (Higgins et al.); 1 is the plain VAE
    kl_warmup_steps: int = 0  # KL weight ramps linearly from 0 over these steps
    # Capacity-annealed beta-VAE (Burgess et al. 2018): gamma * |KL - C|, C rising to capacity_max.
    capacity_max: Optional[float] = None  # nats; None switches annealing off
    capacity_steps: int = 10000
    capacity_gamma: float = 1000.0
    # JointVAE discrete channel capacity (Dupont 2018); capped at the sum of log(K).
    discrete_capacity_max: Optional[float] = None
    discrete_capacity_steps: int = 10000
    discrete_capacity_gamma: float = 1000.0
    msssim_scales: Optional[int] = None  # None: as many as the image size allows (max 5)
    msssim_kernel: Optional[int] = None  # None: follows the image size
    # Perceptual loss: taps of a domain feature network (a `medsynth features train` run directory).
    perceptual_net: Optional[str] = None
    perceptual_weight: float = 0.0  # 0 switches it off
    perceptual_layers: List[int] = field(default_factory=lambda: [2, 5, 9])
    perceptual_layer_weights: Optional[List[float]] = None  # None: 1 for each layer


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = -1
    precision: str = "auto"  # auto | 32 | bf16-mixed | 16-mixed
    accelerator: str = "auto"
    devices: Any = 1
    strategy: str = "auto"  # e.g. ddp_spawn (processes on one machine), ddp (under torchrun / SLURM)
    num_nodes: int = 1
    gradient_clip_val: Optional[float] = 1.0
    log_every_n_steps: int = 20
    limit_val_batches: Any = 1.0
    channels_last: bool = True
    checkpoint_every_n_steps: int = 200  # also write last.ckpt every N steps (0: at epoch ends only)
    samples_after_training: int = 64  # size of the sample / reconstruction grids


@dataclass
class TrackingConfig:
    mlflow: bool = False
    # None: sqlite store beside the runs (<runs_dir>/mlflow.db)
    mlflow_uri: Optional[str] = None


@dataclass
class Config:
    name: str = "run"
    seed: int = 0
    runs_dir: str = "runs"
    # An explicit run directory instead of <runs_dir>/<name>-<time>; required when a launcher
    # (torchrun, SLURM) starts every process of a multi-process run with the same command.
    run_dir: Optional[str] = None
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


CHOICES = {
    "data.format": ("auto", "npz", "folder", "ct_slices", "volumes"),
    "model.family": ("vae", "classifier"),
    "model.arch": ("conv", "ct"),
    "model.spatial_dims": (2, 3),
    "model.upsample": ("transposed", "bilinear", "nearest"),
    "loss.reconstruction": ("l1", "mse", "bce", "msssim"),
    "trainer.precision": ("auto", "32", "bf16-mixed", "16-mixed", "bf16-true"),
    "data.channels": (None, 1, 3),
}
POSITIVE = ("data.batch_size", "model.latent_dim", "optim.lr", "loss.capacity_steps",
            "loss.discrete_capacity_steps", "model.temperature")


def _explain(exc: OmegaConfBaseException, source: str) -> MedsynthError:
    # OmegaConf messages carry extra lines (full_key, object_type); keep the first and the key.
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    where = f" (key '{key}')" if key else ""
    return MedsynthError(f"{source}: {first}{where}")


def _check(cfg: DictConfig, source: str) -> None:
    for key, allowed in CHOICES.items():
        value = OmegaConf.select(cfg, key)
        if value not in allowed:
            raise MedsynthError(f"{source}: {key}={value!r} is not one of {list(allowed)}")
    for key in POSITIVE:
        value = OmegaConf.select(cfg, key)
        if value is None or value <= 0:
            raise MedsynthError(f"{source}: {key} must be positive, got {value!r}")
    if not cfg.model.channels or any(c <= 0 for c in cfg.model.channels):
        raise MedsynthError(f"{source}: model.channels must be a non-empty list of positive ints")
    if any(k < 2 for k in cfg.model.discrete_dims):
        raise MedsynthError(f"{source}: model.discrete_dims entries must be >= 2 categories")
    if cfg.loss.perceptual_weight > 0 and not cfg.loss.perceptual_net:
        raise MedsynthError(f"{source}: loss.perceptual_weight > 0 needs loss.perceptual_net (a feature run)")
    if not 0 <= cfg.data.val_fraction < 1:
        raise MedsynthError(f"{source}: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> DictConfig:
    """Defaults <- YAML file <- `key=value` overrides, validated.

    Raises MedsynthError naming the file or override at fault.
    """
    cfg = OmegaConf.structured(Config)
    source = "defaults"
    if path is not None:
        source = str(path)
        p = Path(path)
        if not p.is_file():
            raise MedsynthError(f"{source}: config file not found")
        try:
            loaded = OmegaConf.load(p)
        except Exception as exc:  # yaml.YAMLError and friends
            raise MedsynthError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
        if not isinstance(loaded, DictConfig):
            raise MedsynthError(f"{source}: expected a mapping of keys at the top level")
        try:
            cfg = OmegaConf.merge(cfg, loaded)
        except OmegaConfBaseException as exc:
            raise _explain(exc, source) from None
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise MedsynthError(f"override '{item}' is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides)))
        except OmegaConfBaseException as exc:
            raise _explain(exc, "override " + " ".join(overrides)) from None
    _check(cfg, source)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
