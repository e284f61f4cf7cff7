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

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from medsynth.diffusion import OBJECTIVES, SAMPLERS, SPACINGS, samplers_for
from medsynth.errors import MedsynthError
from medsynth.families import FAMILIES

DEFAULT_DATA = "../shared/data/medmnist/pneumoniamnist.npz"


@dataclass
class DataConfig:
    path: str = DEFAULT_DATA
    format: str = "auto"  # auto | npz | folder | ct_slices (CT + label map -> 2.5D slices) | volumes | paired_slices
    # | segmentation (image + label patches) | label_maps (segmentation cases' maps as one-hot images)
    image_size: Optional[int] = None  # resize (e.g. 28 -> 64); None keeps the file's size
    channels: Optional[int] = None  # image folders: 1 (grayscale) or 3 (RGB); None = as stored
    labels_csv: Optional[str] = None  # image folders: CSV with columns filename,label
    limit: Optional[int] = None  # at most this many images per split, a seeded random subset (quick runs)
    # keep only the images of these class labels, in every split: one unconditional model per class
    # (`medsynth sample RUN_0 RUN_1 ...` draws a labelled set from such runs); None keeps all
    keep_labels: Optional[List[int]] = None
    val_fraction: float = 0.1  # image folders without a val/ sub-folder
    batch_size: int = 64
    num_workers: int = 0
    # ct_slices: the abdominal-CT tutorial's 2.5D dataset
    label_path: Optional[str] = None  # label map of data.path (NIfTI; data.path may be a DICOM folder)
    organ: Optional[int] = None  # keep slices holding this label (pancreas = 7 in TotalSegmentator)
    organ_margin: int = 0  # ... and this many slices beyond the first and last of them
    segment: Optional[List[int]] = None  # labels to segment (class k = k-th entry; others background): the
    # label channel a segmentation feature network (model.family=fcn) learns from
    window: Any = "abdomen"  # CT window preset (abdomen, lung, bone, brain) or [level, width] in HU
    slice_axis: int = 2
    crop_size: Optional[int] = None  # random crops in training, centre crops otherwise
    # volumes: cases of 3D images (a folder of case sub-folders, or a CSV manifest)
    contrasts: List[str] = field(default_factory=list)  # file patterns (folder) or CSV columns
    mr_normalise: str = "zscore"  # per case and contrast: zscore | percentile
    mask: Optional[str] = None  # file pattern of a mask (e.g. brainmask*) for the intensity statistics
    spacing: Optional[List[float]] = None  # resample every case to this spacing (mm) first
    source_spacing: Optional[List[float]] = None  # the files' voxel spacing (mm) when they store none (HDF5)
    splits: Optional[str] = None  # JSON {"train": [...], "validation": [...], "test": [...]} or CSV case,split
    # paired_slices: the same cases as 2D slices, source contrasts then target (translation)
    target_channels: int = 1  # the last contrasts of data.contrasts are the target
    min_mask_fraction: float = 0.3  # keep slices with at least this share of the largest mask slice
    unpaired: bool = False  # training pairs source and target slices of different patients (CycleGAN)
    crop_to_mask: Optional[int] = None  # slices cut to this many px around the case's mask (ct_slices: the organ)
    # (native size, no resize)
    neighbours: int = 0  # 2.5D: the source contrasts' slices this far above and below as extra channels
    # segmentation: the same cases with a label map, cut into class-balanced patches
    label: Optional[str] = None  # file pattern (folder) or manifest column of the label map
    classes: List[int] = field(default_factory=list)  # label values, background 0 first (BraTS: [0,1,2,3,4])
    regions: Optional[str] = None  # also score these label groups: brats (whole tumour, core, enhancing)
    patch_size: Any = 64  # training patches of patch_size^3 voxels, [D, H, W], or [H, W] (2D slices along slice_axis)
    patches_per_epoch: int = 64  # fresh random patches drawn each epoch
    val_patches: int = 4  # fixed patches per validation case (val_loss)
    class_ratios: Optional[List[float]] = None  # patch-centre class ratios; None: every class alike
    # label-to-image models (spade): the background of each map split into this many intensity bands of
    # its image (data/label_maps.py tissue_bands), so the generator is told where the other tissue lies;
    # 0 or 1: off. Drawn pairs' label maps carry the structures only (bands go back to background)
    tissue_bands: int = 0
    # training patches only (data/augment.py): flips, rotation, scaling, intensity jitter
    augment: bool = False
    rotate_degrees: float = 15.0  # uniform in +-this about each axis
    scale_range: float = 0.1  # zoom uniform in [1 - r, 1 + r]
    # segmentation models: share of augmented patches whose intensities go through a random, not
    # monotonic curve (half of them inverting the contrast): for scans whose contrast no training
    # case shows; 0: off
    intensity_remap: float = 0.0
    # synthetic (image, label map) pairs: a `medsynth sample` manifest.csv of a spade run, whose cases
    # join the training split ("add") or replace it ("replace"); validation and test stay the real ones
    synthetic: Optional[str] = None
    synthetic_mode: str = "add"
    # "add": the share of training patches cut from the pairs (the rest from the real cases), e.g. 0.5
    # so a few real cases are not swamped by many pairs; None: every case alike (share = pairs / cases)
    synthetic_share: Optional[float] = None


@dataclass
class ModelConfig:
    family: str = "vae"  # a name in medsynth.families.FAMILIES: vae | gan | vaegan | pix2pix | cyclegan | ...
    arch: str = "conv"  # conv (PyTorch-VAE style) | ct (the abdominal-CT tutorial VAE)
    spatial_dims: int = 2
    channels: List[int] = field(default_factory=lambda: [32, 64, 128])
    latent_dim: int = 64
    upsample: str = "transposed"  # transposed | bilinear | nearest
    conditional: bool = False  # one-hot class label into encoder and decoder
    discrete_dims: List[int] = field(default_factory=list)  # JointVAE categorical latents
    temperature: float = 0.67  # Gumbel-softmax temperature (JointVAE)
    # What VAE-family samples are drawn from: "normal" N(0, I), the prior trained against; "gmm" a
    # Gaussian mixture fitted after training to the training images' posterior means (ex-post
    # density estimation, Ghosh et al. 2020), which follows where the decoder was trained to look.
    latent_prior: str = "normal"
    latent_prior_components: int = 10
    # GANs (nets/dcgan.py): model.channels are the generator's widths, coarse to fine
    spectral_norm: bool = False  # spectral norm on every discriminator layer (instead of batch norm)
    ema_decay: Optional[float] = None  # e.g. 0.999: sample / translate with an EMA of the generator's weights
    # segmentation / translation networks (nets/unet_gan.py)
    generator: str = "unet"  # unet (the pix2pix / Vox2Vox U-Net) | monai_unet (MONAI's UNet, the baseline)
    width: float = 1.0  # width factor: encoder widths are 64 * width * 2^i (the paper: 1)
    depth: int = 4  # strided encoder blocks (patch size must divide by 2^depth)
    bottleneck_blocks: int = 4
    dropout: float = 0.2
    disc_layers: int = 3  # strided layers of the PatchGAN discriminator
    sw_overlap: float = 0.25  # sliding-window inference: overlap of neighbouring windows
    sw_batch_size: int = 2  # windows per forward pass
    largest_component: bool = False  # keep each foreground class's largest connected component
    test_time_flips: bool = False  # segment: average the class probabilities over the 8 flips of the volume
    foreground_threshold: Optional[float] = None  # segment: None takes the argmax; a number makes a voxel
    # foreground when 1 - p(background) exceeds it (then its most probable foreground class)
    # images from label maps (model.family=spade, nets/spade.py; model.width, depth, disc_layers as above)
    noise_channels: int = 16  # channels of the noise map at 1/2^depth of the image size
    num_discriminators: int = 2  # PatchGANs of disc_layers x 1, 2, ... strided layers
    # latent diffusion, stage 1 (MONAI AutoencoderKL; model.channels are its level widths)
    latent_channels: int = 3
    num_res_blocks: int = 1
    attention_levels: List[bool] = field(default_factory=list)  # per level of model.channels; []: none
    # Filled from the data when a run starts; set them only to build a model by hand.
    in_channels: Optional[int] = None
    image_size: Optional[List[int]] = None
    num_classes: Optional[int] = None
    multilabel: Optional[bool] = None
    # where [-1, 1] maps back to in the training data (medsynth.data.datasets.SplitData.space): units,
    # per-channel scale and offset, and for volumes the affine and spacing; None for 2D image files
    output_space: Optional[Any] = None


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
    perceptual_distance: str = "mse"  # between tapped feature maps: mse | l1 (the abdominal-CT tutorial's)
    # Adversarial models
    adversarial: str = "least_squares"  # least_squares | bce | hinge (MONAI PatchAdversarialLoss)
    adversarial_weight: float = 1.0  # 0: no discriminator at all (e.g. the plain UNet baseline)
    dice_weight: float = 5.0  # lambda of Vox2Vox: generalized Dice (MONAI, square class weights)
    ce_weight: float = 0.0  # + this x voxel-wise cross-entropy (segmentation; Dice + CE is the common recipe)
    l1_weight: float = 100.0  # lambda of pix2pix: L1 between translation and target
    feature_matching_weight: float = 10.0  # spade: L1 between discriminator features of real and drawn images
    cycle_weight: float = 10.0  # CycleGAN: lambda of the cycle-consistency L1
    identity_weight: float = 5.0  # CycleGAN: identity L1 (half the cycle weight in the paper); 0 switches it off
    structure_weight: float = 0.0  # CycleGAN: MIND structure consistency between each translation and its source (0: off)
    history_pool: int = 50  # CycleGAN: earlier translations the discriminators also see (0: none)
    vaegan_layer: int = 2  # VAE-GAN: the discriminator block whose features measure reconstruction
    vaegan_gamma: float = 0.01  # VAE-GAN: decoder weight of that feature error against the GAN terms
    d_accuracy_threshold: Optional[float] = 0.8  # update D only while its batch accuracy is below; None: always
    d_collapse_steps: int = 500  # stop when the D loss stays ~0 this many steps in a row (0: never)


@dataclass
class DiffusionConfig:
    """Latent diffusion (model.family=ldm): both stages train in one run, stage 1 first."""

    autoencoder_epochs: int = 10  # stage 1 (AutoencoderKL); the rest of trainer.max_epochs trains stage 2
    autoencoder: Optional[str] = None  # reuse the trained stage 1 of this run directory (autoencoder_epochs=0)
    adversarial_warmup_epochs: int = 2  # stage-1 epochs before the patch discriminator joins
    scale_factor: Optional[float] = None  # None: 1 / std of a training batch's latents, at the start of stage 2
    unet_channels: List[int] = field(default_factory=lambda: [64, 128, 128])
    unet_attention_levels: List[bool] = field(default_factory=lambda: [False, True, True])
    unet_res_blocks: int = 1
    num_head_channels: int = 32
    lr: float = 1e-4  # stage 2 (the diffusion UNet)
    num_train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"  # linear_beta | scaled_linear_beta | cosine
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    # what the UNet learns: epsilon | v_prediction (on the noise schedule above) | rectified_flow
    # (straight paths from data to noise, velocity target; the schedule is unused); was prediction_type
    objective: str = "epsilon"
    condition_dropout: float = 0.1  # share of training batches' conditions replaced by the null condition
    # `medsynth sample`'s default (medsynth.diffusion.SAMPLERS): ddpm | ddim | dpmpp | dpmpp_sde | unipc for
    # epsilon and v, euler | heun for rectified flow; None: medsynth.diffusion.default_sampler (dpmpp_sde, or
    # euler for rectified flow)
    sampler: Optional[str] = None
    sampling_steps: int = 50
    timestep_spacing: str = "trailing"  # leading | trailing | linspace: which trained timesteps a short chain visits
    ddim_eta: float = 0.0  # DDIM's stochasticity: 0 deterministic, 1 as noisy as DDPM
    guidance_scale: Optional[float] = None  # classifier-free guidance; None: plain conditional sampling


@dataclass
class OptimConfig:
    lr: float = 1e-3
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    d_lr: Optional[float] = None  # discriminator learning rate (None: optim.lr)
    schedule: str = "constant"  # constant | cosine | poly (per training batch, over the whole run)
    warmup_steps: int = 0  # linear warm-up from 0 over this many batches


@dataclass
class TrainerConfig:
    max_epochs: int = 10
    max_steps: int = -1
    max_time: Optional[str] = None  # wall-clock limit "DD:HH:MM:SS" (e.g. equal time for two recipes)
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
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


CHOICES = {
    "data.format": ("auto", "npz", "folder", "ct_slices", "volumes", "paired_slices", "segmentation", "label_maps"),
    "data.regions": (None, "brats"),
    "model.family": tuple(FAMILIES),
    "diffusion.schedule": ("linear_beta", "scaled_linear_beta", "cosine"),
    "diffusion.objective": OBJECTIVES,
    "diffusion.sampler": (None, *SAMPLERS),
    "diffusion.timestep_spacing": SPACINGS,
    "model.generator": ("unet", "monai_unet"),
    "loss.adversarial": ("least_squares", "bce", "hinge"),
    "model.arch": ("conv", "ct"),
    "model.spatial_dims": (2, 3),
    "model.upsample": ("transposed", "bilinear", "nearest"),
    "model.latent_prior": ("normal", "gmm"),
    "loss.reconstruction": ("l1", "mse", "bce", "msssim"),
    "loss.perceptual_distance": ("mse", "l1"),
    "trainer.precision": ("auto", "32", "bf16-mixed", "16-mixed", "bf16-true"),
    "data.channels": (None, 1, 3),
    "optim.schedule": ("constant", "cosine", "poly"),
    "data.synthetic_mode": ("add", "replace"),
}
# families trained on image + label-map patches (data.format=segmentation)
PATCH_FAMILIES = ("segmentation", "spade")
POSITIVE = ("data.batch_size", "model.latent_dim", "optim.lr", "loss.capacity_steps",
            "loss.discrete_capacity_steps", "model.temperature", "model.latent_prior_components", "data.patches_per_epoch",
            "data.val_patches", "model.width", "model.depth", "model.disc_layers", "model.sw_batch_size",
            "model.noise_channels", "model.num_discriminators", "data.target_channels",
            "model.latent_channels", "model.num_res_blocks", "diffusion.unet_res_blocks", "diffusion.num_head_channels",
            "diffusion.lr", "diffusion.num_train_timesteps", "diffusion.sampling_steps")


def _explain(exc: OmegaConfBaseException, source: str) -> MedsynthError:
    # OmegaConf messages carry extra lines (full_key, object_type); keep the first and the key.
    first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    key = getattr(exc, "full_key", None)
    where = f" (key '{key}')" if key else ""
    return MedsynthError(f"{source}: {first}{where}")


def _interpolations(node, prefix: str = "") -> list[str]:
    """Keys whose raw value holds an OmegaConf interpolation (${...})."""
    if isinstance(node, dict):
        return [k for key, v in node.items() for k in _interpolations(v, f"{prefix}{key}.")]
    if isinstance(node, list):
        return [k for i, v in enumerate(node) for k in _interpolations(v, f"{prefix}{i}.")]
    return [prefix[:-1]] if isinstance(node, str) and "${" in node else []


def _check_plain(cfg: DictConfig, source: str) -> None:
    """Plain values only: an interpolation such as ${oc.env:HOME} would be resolved into the saved
    config (and, in `name`, made a run directory at the filesystem root). `name` itself is checked
    where it becomes a path (runs.new_run_dir), so old runs with other names still load."""
    found = _interpolations(OmegaConf.to_container(cfg, resolve=False))
    if found:
        raise MedsynthError(f"{source}: {found[0]} holds an interpolation (${{...}}); give a plain value")


def _check(cfg: DictConfig, source: str) -> None:
    _check_plain(cfg, source)
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
    if cfg.model.latent_prior != "normal" and cfg.model.family not in ("vae", "vaegan"):
        raise MedsynthError(f"{source}: model.latent_prior={cfg.model.latent_prior} is for model.family=vae or "
                            f"vaegan (got {cfg.model.family!r})")
    if any(k < 2 for k in cfg.model.discrete_dims):
        raise MedsynthError(f"{source}: model.discrete_dims entries must be >= 2 categories")
    if cfg.loss.perceptual_weight > 0 and not cfg.loss.perceptual_net:
        raise MedsynthError(f"{source}: loss.perceptual_weight > 0 needs loss.perceptual_net (a feature run)")
    if not 0 <= cfg.model.dropout < 1 or not 0 <= cfg.model.sw_overlap < 1:
        raise MedsynthError(f"{source}: model.dropout and model.sw_overlap must be in [0, 1)")
    if cfg.model.ema_decay is not None and not 0 < cfg.model.ema_decay < 1:
        raise MedsynthError(f"{source}: model.ema_decay must be in (0, 1) or null, got {cfg.model.ema_decay}")
    if cfg.loss.adversarial_weight < 0 or cfg.loss.dice_weight < 0 or cfg.loss.ce_weight < 0:
        raise MedsynthError(f"{source}: loss.adversarial_weight, loss.dice_weight and loss.ce_weight must be >= 0")
    scheduled = cfg.optim.schedule != "constant" or cfg.optim.warmup_steps
    if scheduled and cfg.model.family not in PATCH_FAMILIES:
        raise MedsynthError(f"{source}: optim.schedule and optim.warmup_steps are used by model.family="
                            f"{' or '.join(PATCH_FAMILIES)} only (got {cfg.model.family!r})")
    if (cfg.data.tissue_bands or 0) > 1 and cfg.model.family != "spade" and cfg.data.format != "label_maps":
        raise MedsynthError(f"{source}: data.tissue_bands is for models that draw images from label maps "
                            f"(model.family=spade) and models of their maps (data.format=label_maps), "
                            f"not model.family={cfg.model.family!r}: a segmentation model would learn to "
                            "segment the bands")
    if cfg.data.keep_labels is not None and (cfg.data.format not in ("auto", "npz", "folder")
                                             or cfg.model.family in PATCH_FAMILIES):
        raise MedsynthError(f"{source}: data.keep_labels selects images by their class label, which .npz files "
                            f"and labelled image folders have; data.format={cfg.data.format!r} with "
                            f"model.family={cfg.model.family!r} has none")
    for key in ("splits", "source_spacing", "synthetic"):
        if cfg.data[key] is not None and cfg.data.format not in ("segmentation", "label_maps"):
            raise MedsynthError(f"{source}: data.{key} is read by data.format=segmentation only (got "
                                f"{cfg.data.format!r})")
    share = cfg.data.synthetic_share
    if share is not None and (not cfg.data.synthetic or cfg.data.synthetic_mode != "add" or not 0 < share < 1):
        raise MedsynthError(f"{source}: data.synthetic_share={share}: expected a share in (0, 1) of the training "
                            "patches cut from data.synthetic pairs added to the real cases (data.synthetic_mode=add)")
    if cfg.data.augment and cfg.data.format != "segmentation":
        raise MedsynthError(f"{source}: data.augment applies to data.format=segmentation patches only")
    if scheduled and cfg.trainer.max_epochs < 0 and cfg.trainer.max_steps < 0:
        raise MedsynthError(f"{source}: optim.schedule={cfg.optim.schedule} needs a known length: set "
                            "trainer.max_epochs or trainer.max_steps (a run bounded only by trainer.max_time has none)")
    patch = cfg.data.patch_size
    sizes = list(patch) if isinstance(patch, ListConfig) else [patch]
    if len(sizes) not in (1, 2, 3) or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in sizes):
        raise MedsynthError(f"{source}: data.patch_size must be a positive int, [D, H, W], or [H, W] for 2D "
                            f"slices, got {patch!r}")
    if cfg.data.format == "segmentation" and (len(sizes) == 2) != (cfg.model.spatial_dims == 2):
        raise MedsynthError(f"{source}: data.patch_size={patch!r} with model.spatial_dims={cfg.model.spatial_dims}: "
                            "2D models take [H, W] patches (slices along data.slice_axis), 3D models [D, H, W]")
    if len(sizes) == 2 and cfg.model.family != "spade":
        raise MedsynthError(f"{source}: 2D patches ([H, W]) are for model.family=spade; segmentation models are 3D")
    if cfg.model.foreground_threshold is not None and not 0 < cfg.model.foreground_threshold < 1:
        raise MedsynthError(f"{source}: model.foreground_threshold={cfg.model.foreground_threshold} must lie in (0, 1)")
    remap = cfg.data.intensity_remap
    if not 0 <= remap <= 1:
        raise MedsynthError(f"{source}: data.intensity_remap must lie in [0, 1] (a share of patches), got {remap}")
    if remap > 0 and not cfg.data.augment:
        raise MedsynthError(f"{source}: data.intensity_remap={remap} needs data.augment=true")
    if remap > 0 and cfg.model.family != "segmentation":
        raise MedsynthError(f"{source}: data.intensity_remap={remap} is for segmentation models; a "
                            f"model.family={cfg.model.family} model would learn to draw the remapped contrasts")
    if cfg.optim.warmup_steps < 0 or not 0 <= cfg.data.scale_range < 1 or not 0 <= cfg.data.rotate_degrees <= 180:
        raise MedsynthError(f"{source}: optim.warmup_steps must be >= 0, data.scale_range in [0, 1) and "
                            "data.rotate_degrees in [0, 180]")
    if cfg.data.neighbours and cfg.data.format != "paired_slices":
        raise MedsynthError(f"{source}: data.neighbours applies to data.format=paired_slices")
    if cfg.data.crop_to_mask is not None and cfg.data.format not in ("paired_slices", "ct_slices"):
        raise MedsynthError(f"{source}: data.crop_to_mask applies to data.format=paired_slices or ct_slices")
    if (cfg.data.segment is not None or cfg.data.organ_margin) and cfg.data.format != "ct_slices":
        raise MedsynthError(f"{source}: data.segment and data.organ_margin apply to data.format=ct_slices")
    if cfg.data.organ_margin < 0:
        raise MedsynthError(f"{source}: data.organ_margin={cfg.data.organ_margin} must be >= 0")
    if (cfg.model.family == "fcn") != (cfg.data.segment is not None) and cfg.data.format == "ct_slices":
        raise MedsynthError(f"{source}: model.family=fcn (a segmentation feature network) and data.segment (the "
                            "labels it learns) go together")
    if cfg.data.crop_to_mask is not None and (cfg.data.crop_to_mask <= 0 or cfg.data.image_size is not None):
        raise MedsynthError(f"{source}: data.crop_to_mask={cfg.data.crop_to_mask} must be a positive size, and "
                            "replaces data.image_size (the slices keep their native pixels): set one of them")
    if cfg.data.neighbours < 0 or (cfg.data.neighbours and cfg.model.family == "cyclegan"):
        raise MedsynthError(f"{source}: data.neighbours={cfg.data.neighbours} must be >= 0, and 0 for CycleGAN "
                            "(its reverse generator and identity loss need source and target of the same channels)")
    if cfg.model.family in ("pix2pix", "cyclegan") and cfg.data.format != "paired_slices":
        raise MedsynthError(f"{source}: model.family={cfg.model.family} trains on data.format=paired_slices "
                            f"(got {cfg.data.format!r})")
    if cfg.model.family in PATCH_FAMILIES and cfg.data.format != "segmentation":
        raise MedsynthError(f"{source}: model.family={cfg.model.family} trains on data.format=segmentation "
                            f"(got {cfg.data.format!r})")
    if cfg.loss.feature_matching_weight < 0:
        raise MedsynthError(f"{source}: loss.feature_matching_weight must be >= 0")
    d = cfg.diffusion
    if not 0 <= d.condition_dropout < 1:
        raise MedsynthError(f"{source}: diffusion.condition_dropout must be in [0, 1), got {d.condition_dropout}")
    if d.autoencoder_epochs < 0 or d.adversarial_warmup_epochs < 0:
        raise MedsynthError(f"{source}: diffusion.autoencoder_epochs and adversarial_warmup_epochs must be >= 0")
    if d.scale_factor is not None and d.scale_factor <= 0:
        raise MedsynthError(f"{source}: diffusion.scale_factor must be positive or null, got {d.scale_factor}")
    if not 0 <= d.ddim_eta <= 1:
        raise MedsynthError(f"{source}: diffusion.ddim_eta must be in [0, 1], got {d.ddim_eta}")
    if d.sampler is not None and d.sampler not in samplers_for(d.objective):
        raise MedsynthError(f"{source}: diffusion.sampler={d.sampler} does not fit diffusion.objective={d.objective}; "
                            f"use one of {list(samplers_for(d.objective))}")
    if d.sampling_steps > d.num_train_timesteps:
        raise MedsynthError(f"{source}: diffusion.sampling_steps={d.sampling_steps} exceeds "
                            f"diffusion.num_train_timesteps={d.num_train_timesteps}")
    if cfg.model.family == "ldm" and d.autoencoder_epochs == 0 and not d.autoencoder:
        raise MedsynthError(f"{source}: stage 2 (diffusion) needs a trained stage 1: set diffusion.autoencoder_epochs "
                            "> 0, or diffusion.autoencoder=RUN_DIR of a run whose autoencoder finished training")
    if d.autoencoder and d.autoencoder_epochs:
        raise MedsynthError(f"{source}: diffusion.autoencoder reuses a trained stage 1; set "
                            "diffusion.autoencoder_epochs=0 with it")
    if not 0 <= cfg.data.val_fraction < 1:
        raise MedsynthError(f"{source}: data.val_fraction must be in [0, 1), got {cfg.data.val_fraction}")


# old key -> new key: configs saved in older runs (and users' files) keep loading
RENAMED = {"diffusion.prediction_type": "diffusion.objective"}


def _rename_keys(loaded: DictConfig) -> DictConfig:
    for old, new in RENAMED.items():
        parent, _, leaf = old.rpartition(".")
        node = OmegaConf.select(loaded, parent) if parent else loaded
        if isinstance(node, DictConfig) and leaf in node:
            value = node.pop(leaf)
            if OmegaConf.select(loaded, new) is None:
                OmegaConf.update(loaded, new, value, force_add=True)
    return loaded


def _rename_override(item: str) -> str:
    key, _, value = item.partition("=")
    return f"{RENAMED.get(key, key)}={value}"


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
            cfg = OmegaConf.merge(cfg, _rename_keys(loaded))
        except OmegaConfBaseException as exc:
            raise _explain(exc, source) from None
    if overrides:
        for item in overrides:
            if "=" not in item:
                raise MedsynthError(f"override '{item}' is not of the form key=value")
        try:
            cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([_rename_override(o) for o in overrides]))
        except OmegaConfBaseException as exc:
            raise _explain(exc, "override " + " ".join(overrides)) from None
    _check(cfg, source)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)
