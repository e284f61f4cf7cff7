"""The command line: parse, call the Python API, print. Errors the user can fix
are printed as one line (exit 2); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medsynth import __version__, console
from medsynth.diffusion import SAMPLERS, SPACINGS
from medsynth.latent_prior import PRIORS
from medsynth.writers import OUTPUT_DTYPES
from medsynth.errors import MedsynthError
from medsynth.evaluate import evaluate
from medsynth.models.classifier import FEATURE_DEFAULTS
from medsynth.models.fcn import SEGMENTATION_FEATURE_DEFAULTS
from medsynth.compare import compare
from medsynth.report import report
from medsynth.class_runs import CLASS_RATIOS, sample_classes
from medsynth.prior_runs import refit_prior
from medsynth.sampling import sample
from medsynth.segment import segment
from medsynth.training import train
from medsynth.translate import translate


def _train(args) -> None:
    overrides = list(args.overrides)
    config = args.config
    if args.resume is not None:
        if config is not None:  # with --resume, every positional is an override
            overrides.insert(0, config)
            config = None
    elif config is None:
        raise MedsynthError("give a recipe (e.g. configs/vae_pneumonia.yaml) or --resume RUN_DIR")
    elif "=" in config and not config.endswith((".yaml", ".yml")):
        raise MedsynthError(f"'{config}' looks like an override; the recipe file comes first")
    run_dir = train(config, overrides, resume=args.resume, log=_log())
    print(run_dir)


def _sample(args) -> None:
    if len(args.run_dir) > 1:  # one unconditional run per class: one labelled set
        given = [flag for flag, value in (("--label", args.label), ("--label-maps", args.label_maps),
                                          ("--out-dir", args.out_dir)) if value is not None]
        if given or args.out is None:
            raise MedsynthError("several runs (one per class) are drawn into one --out FILE.npz or PNG folder"
                                + (f"; {', '.join(given)} does not apply" if given else ""))
        out = sample_classes(args.run_dir, args.n, args.out, grid=args.grid, seed=args.seed,
                             batch_size=args.batch_size, device=args.device, overwrite=args.overwrite,
                             dtype=args.dtype, sampler=args.sampler, steps=args.steps, guidance=args.guidance,
                             spacing=args.spacing, prior=args.prior, class_ratio=args.class_ratio or "train")
        print(f"wrote {args.n} samples of {len(args.run_dir)} classes to {out}"
              + (f" and a grid to {args.grid}" if args.grid else ""))
        return
    if args.class_ratio is not None:
        raise MedsynthError("--class-ratio is for several runs, one per class")
    out = sample(args.run_dir[0], args.n, args.out, grid=args.grid, label=args.label, seed=args.seed,
                 batch_size=args.batch_size, device=args.device, out_dir=args.out_dir,
                 shard_size=args.shard_size, workers=args.workers, sampler=args.sampler, steps=args.steps,
                 guidance=args.guidance, spacing=args.spacing, overwrite=args.overwrite, dtype=args.dtype,
                 label_maps=args.label_maps, prior=args.prior)
    print(f"wrote {args.n} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))


def _segment(args) -> None:
    records = segment(args.run_dir, args.input, args.out, device=args.device, overlap=args.overlap,
                      sw_batch_size=args.sw_batch_size, overwrite=args.overwrite,
                      largest_component=args.largest_component, flips=args.flips, log=_log())
    scored = {r["case"]: r["scores"].get("regions") or {k: v["dice"] for k, v in r["scores"]["classes"].items()}
              for r in records if "scores" in r}
    if scored:
        print(json.dumps({case: {k: (v["dice"] if isinstance(v, dict) else v) for k, v in s.items()}
                          for case, s in scored.items()}, indent=1))


def _translate(args) -> None:
    translate(args.run_dir, args.input, args.out, mask=args.mask, device=args.device, batch_size=args.batch_size,
              reverse=args.reverse, overwrite=args.overwrite, log=_log())


def _features_train(args) -> None:
    if args.task == "segmentation":
        if not args.labels:
            raise MedsynthError("features train --task segmentation needs --labels (the CT's label map)")
        base = [] if args.config else list(SEGMENTATION_FEATURE_DEFAULTS)
        # a DICOM folder is read as (slice, row, column): its slices lie along axis 0
        base += [f"data.label_path={args.labels}", *(["data.slice_axis=0"] if Path(args.data).is_dir() else [])]
    else:
        if args.labels:
            raise MedsynthError("--labels is for --task segmentation (classes come with the images)")
        base = [] if args.config else list(FEATURE_DEFAULTS)
    print(train(args.config, [*base, f"data.path={args.data}", *args.overrides], log=_log()))


def _evaluate(args) -> None:
    result = evaluate(args.real, args.fake, train=args.train, features=args.features, out=args.out, n=args.n,
                      k=args.k, diversity_images=args.diversity_images, utility=not args.no_utility,
                      utility_steps=args.utility_steps, utility_repeats=args.utility_repeats, seed=args.seed,
                      image_size=args.image_size,
                      resamples=args.resamples,
                      overwrite=args.overwrite, allow_synthetic_real=args.allow_synthetic_real,
                      seg_config=args.seg_config, seg_overrides=args.seg_override,
                      synthetic_share=args.synthetic_share, seg_real_run=args.seg_real_run,
                      reference_cache=args.reference_cache, log=_log())
    if result.get("task") == "segmentation_utility":
        section = result["segmentation_utility"]
        print(json.dumps({"dice": {arm: {k: v for k, v in s["mean"].items() if k.startswith("dice")}
                                   for arm, s in section["arms"].items()}, "ratio": section["ratio"]}, indent=1))
        return
    if result.get("task") in ("segmentation", "translation"):
        print(json.dumps({k: v for k, v in result[result["task"]]["mean"].items() if not k.endswith("_interval")},
                         indent=1))
        return
    short = {s: {k: v for k, v in result[s].items() if isinstance(v, (int, float, str)) and k != "strip"}
             for s in ("fidelity", "reconstruction", "utility") if s in result}
    short["diversity"] = {"fake": result["diversity"]["fake"]["ms_ssim_mean"],
                          "real": result["diversity"]["real"]["ms_ssim_mean"], "gap": result["diversity"]["gap"]}
    if "ms_ssim_mean" in result["floor"]["diversity"]:  # a second real split: how far real samples differ
        short["diversity"]["real_val_gap"] = result["floor"]["diversity"]["gap"]
    print(json.dumps(short, indent=1))


def _compare(args) -> None:
    print(compare(args.runs, out=args.out, overwrite=args.overwrite))
    if args.out:
        print(f"\npage: {args.out}")


def _fit_prior(args) -> None:
    out = refit_prior(args.run_dir, args.components, args.out, device=args.device)
    print(out)


def _report(args) -> None:
    print(report(args.run_dir, out=args.out, evaluation=args.evaluation, overwrite=args.overwrite))


def _log():
    """Where the API's progress messages go: stdout, or nowhere with --quiet."""
    return print if console.verbosity() >= console.NORMAL else (lambda *_: None)


def _verbosity_options() -> argparse.ArgumentParser:
    """-q / -v, accepted by every sub-command."""
    common = argparse.ArgumentParser(add_help=False)
    loud = common.add_mutually_exclusive_group()
    loud.add_argument("-q", "--quiet", action="store_true", help="print only results and errors")
    loud.add_argument("-v", "--verbose", action="store_true",
                      help="also print the libraries' notices and warnings (Lightning, PyTorch)")
    return common


COMMON = _verbosity_options()


def _add_overwrite(p: argparse.ArgumentParser) -> None:
    p.add_argument("--overwrite", action="store_true",
                   help="replace an existing output (a run's own files and this command's inputs never are)")


def _add_device(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")


def _add_train(sub) -> None:
    p = sub.add_parser("train", parents=[COMMON], help="train a recipe and write a run directory",
                       description="Train a model from a YAML recipe. Prints the run directory, which holds "
                                   "the resolved config, checkpoints, metrics.csv, portable weights "
                                   "(model.safetensors) and sample / reconstruction grids.")
    p.add_argument("config", nargs="?", help="recipe YAML, e.g. configs/vae_pneumonia.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. trainer.max_epochs=5 data.image_size=64 loss.kl_weight=4")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its last checkpoint (positionals are then all overrides)")
    p.set_defaults(func=_train)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", parents=[COMMON], help="draw synthetic images from a trained run",
                       description="Write N synthetic images to an .npz (keys images, labels, provenance; "
                                   "MedMNIST layout, uint8 unless --dtype), NIfTI, a folder of PNGs or DICOM "
                                   "series, or as .npz shards with a manifest (--out-dir), and optionally a PNG "
                                   "grid of the first 64. Models that draw images from label maps (spade) write "
                                   "(image, label map) NIfTI pairs with manifest.csv into --out-dir. Every file is "
                                   "marked synthetic.")
    p.add_argument("run_dir", metavar="RUN_DIR", nargs="+",
                   help="a run directory made by `medsynth train`; or several unconditional runs, each trained on "
                        "one class (data.keep_labels=[c]), drawn into one labelled set (see --class-ratio)")
    p.add_argument("-n", type=int, required=True, help="number of images to draw")
    p.add_argument("--out", help="output: an .npz file (keys images, labels, provenance); a .nii.gz "
                                 "(single-channel models: volumes in the training data's scanner space along "
                                 "the 4th axis, or 2D images along the 3rd); or a folder (a name without a "
                                 "suffix): one PNG per 2D image with labels.csv, one DICOM series per volume")
    p.add_argument("--dtype", choices=list(OUTPUT_DTYPES), help="how .npz, PNG and 2D NIfTI outputs store "
                   "intensities: " + ", ".join(f"{k} {v}" for k, v in OUTPUT_DTYPES.items())
                   + " (default uint8; float32 for NIfTI)")
    p.add_argument("--out-dir", help="for large sets: write numbered shards and manifest.csv here; "
                                     "running the same command again resumes a killed job")
    p.add_argument("--shard-size", type=int, default=10_000, help="images per shard with --out-dir (default 10000)")
    p.add_argument("--workers", type=int, default=1, help="sampling processes with --out-dir (default 1)")
    p.add_argument("--grid", help="also write a PNG grid of the first 64 samples here")
    p.add_argument("--label", type=int, help="class to draw (conditional models; default: cycle over classes)")
    p.add_argument("--label-maps", help="models that draw images from label maps (spade): a map file or a folder "
                                        "of them to draw from as given (default: the run's training maps, each "
                                        "randomly deformed); pairs and manifest.csv go to --out-dir")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples; default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    _add_device(p)
    p.add_argument("--sampler", choices=list(SAMPLERS), metavar="NAME",
                   help="latent diffusion: the reverse process (default: the run's diffusion.sampler; dpmpp_sde, "
                        "or euler for rectified flow): "
                        + "; ".join(f"{k}: {v}" for k, v in SAMPLERS.items()))
    p.add_argument("--steps", type=int, help="latent diffusion: denoising steps, i.e. network evaluations "
                                             "(heun: 2 a step; default: the run's diffusion.sampling_steps)")
    p.add_argument("--spacing", choices=list(SPACINGS), help="latent diffusion: which trained timesteps the "
                                                             "steps visit (default: the run's, trailing; "
                                                             "flow samplers space noise levels evenly)")
    p.add_argument("--guidance", type=float, help="latent diffusion, conditional: classifier-free guidance scale "
                                                  "(e.g. 3.0; default: the run's, none)")
    p.add_argument("--prior", choices=list(PRIORS), help="VAE family: draw the latent codes from the Gaussian "
                   "mixture fitted after training (the default for a run trained with model.latent_prior=gmm) "
                   "or from N(0, I) (normal; the only prior of other runs), the same weights either way")
    p.add_argument("--class-ratio", choices=list(CLASS_RATIOS), help="several one-class runs: how many images "
                   "each class gets: train (default: as many as in the data each run was trained on, the data's "
                   "class mix) or balanced (the same for every class)")
    _add_overwrite(p)
    p.set_defaults(func=_sample)


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", parents=[COMMON], help="label maps of whole volumes from a segmentation run (Vox2Vox, UNet)",
                       description="Segment a case folder (files matching the run's contrast patterns), a folder "
                                   "of case folders, or a single volume (one-contrast models) by sliding windows. "
                                   "Label maps are written as NIfTI with the input's affine and header; cases "
                                   "with a reference label map are scored (Dice printed as JSON).")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of model.family=segmentation")
    p.add_argument("--input", required=True, help="case folder, folder of case folders, or a volume file")
    p.add_argument("--out", required=True, help="output .nii.gz (one case) or folder (several cases)")
    p.add_argument("--overlap", type=float, help="overlap of neighbouring windows (default: the run's, 0.25)")
    p.add_argument("--sw-batch-size", type=int, help="windows per forward pass (default: the run's, 2)")
    p.add_argument("--largest-component", action=argparse.BooleanOptionalAction, default=None,
                   help="keep only each class's largest connected component (default: the run's "
                        "model.largest_component)")
    p.add_argument("--flips", action=argparse.BooleanOptionalAction, default=None,
                   help="average over the 8 flips of the volume (8x the time; default: the run's "
                        "model.test_time_flips)")
    _add_device(p)
    _add_overwrite(p)
    p.set_defaults(func=_segment)


def _add_translate(sub) -> None:
    p = sub.add_parser("translate", parents=[COMMON], help="translate images with a pix2pix or CycleGAN run (e.g. T1c -> FLAIR)",
                       description="Translate an .npz, a folder of PNG/JPEG images, or a whole volume (NIfTI, NRRD "
                                   "or a DICOM series folder; slice by slice along the run's slice axis, turned to "
                                   "the training orientation and spacing and back). Outputs keep the input's shape "
                                   "and geometry, volumes in the target contrast's units of the training data, and "
                                   "are marked synthetic.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of model.family=pix2pix or cyclegan")
    p.add_argument("--input", required=True, help=".npz, image folder, .nii/.nii.gz/.nrrd volume or DICOM folder")
    p.add_argument("--out", required=True, help="output: .npz, folder, .nii.gz, .nrrd (from NRRD) or a DICOM folder "
                                                "(a name without a suffix)")
    p.add_argument("--mask", help="volumes: the mask for the MR normalisation (e.g. the brain), as in training; "
                                  "needed when the run was trained with one")
    p.add_argument("--reverse", action="store_true", help="CycleGAN: translate target -> source (e.g. FLAIR -> T1c)")
    p.add_argument("--batch-size", type=int, default=64, help="slices per forward pass (default 64)")
    _add_device(p)
    _add_overwrite(p)
    p.set_defaults(func=_translate)


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="the domain feature network (for metrics and perceptual loss)",
                       description="Train the domain feature network on real images.")
    fsub = p.add_subparsers(dest="features_command", metavar="ACTION")
    fsub.required = True
    f = fsub.add_parser("train", parents=[COMMON], help="train a feature network on the real training split",
                        description="Train a VGG-style classifier on --data (labels: its classes; no labels: "
                                    "rotation prediction). The run directory holds model.safetensors and "
                                    "features.json (test accuracy / ROC AUC, SHA-256 of the weights).")
    f.add_argument("--data", required=True, help="training data (.npz or image folder; with --task segmentation "
                                                 "a CT volume: NIfTI, NRRD or a DICOM folder)")
    f.add_argument("--task", choices=("classes", "segmentation"), default="classes",
                   help="classes (default): a VGG-style classifier on the images' classes (none: rotation "
                        "prediction); segmentation: a VGG-like fully convolutional network learning the organs "
                        "of --labels on 2.5D CT slices (the abdominal-CT tutorial's perceptual network; settings "
                        "of configs/features_ct_seg.yaml)")
    f.add_argument("--labels", help="--task segmentation: the CT's label map (NIfTI; TotalSegmentator labels)")
    f.add_argument("--config", help="feature recipe YAML (default: the settings of configs/features_pneumonia.yaml)")
    f.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. trainer.max_epochs=3")
    f.set_defaults(func=_features_train)


def _add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", parents=[COMMON], help="fidelity, diversity, reconstruction, privacy and utility metrics",
                       description="Compare a synthetic set with real images and write JSON. Each set is a .npz, "
                                   "an image folder, or a run directory to sample from. From a data file REAL "
                                   "is its test split (else val) and the training images its train split. A "
                                   "translation or segmentation run is scored per held-out case instead: MAE / PSNR / "
                                   "SSIM beside copying the source, or Dice / HD95, with intervals over cases.")
    p.add_argument("--real", help="real images (held-out split of a data file); a set marked synthetic by medsynth "
                                  "is refused. For a translation or segmentation run: a case folder or a folder of "
                                  "case folders (default: the run's own held-out cases)")
    p.add_argument("--allow-synthetic-real", action="store_true",
                   help="evaluate against a --real set marked synthetic anyway (recorded in the output)")
    p.add_argument("--fake", required=True, help="synthetic images: .npz / folder, or a run directory")
    p.add_argument("--train", help="training images for the privacy check (default: REAL's train split)")
    p.add_argument("--features", help="feature network: a `medsynth features train` run or a local "
                                      "DenseNet121 weights file; without it FID/KID/PRDC are not computed")
    p.add_argument("--out", help="JSON output (default: RUN_DIR/evaluation.json for a run, else metrics.json; "
                                 "an existing one, default or not, needs --overwrite)")
    p.add_argument("-n", "--n", type=int, help="images per set (default: all real; as many fake as real)")
    p.add_argument("--k", type=int, default=5, help="nearest neighbours for PRDC (default 5)")
    p.add_argument("--diversity-images", type=int, default=1000,
                   help="images per set for all-pairs MS-SSIM (default 1000)")
    p.add_argument("--utility-steps", type=int, default=300, help="training steps of each TSTR classifier")
    p.add_argument("--utility-repeats", type=int, default=3,
                   help="TSTR / TRTR classifier pairs, each with its own seed, subsets and batches; the AUCs are "
                        "their means, with each run and the range kept (default 3: one run's AUC moves ~0.02 "
                        "with the seed or the CPU's thread count)")
    p.add_argument("--no-utility", action="store_true", help="skip train-on-synthetic-test-on-real")
    p.add_argument("--seg-config", help="segmentation utility of synthetic (image, label map) pairs (--fake: their "
                                        "folder): this segmentation recipe trained on the real cases, the pairs, "
                                        "and both at the same budget, each scored on the real test cases")
    p.add_argument("--seg-override", action="append", default=[], metavar="key=value",
                   help="with --seg-config: an override for all three trainings (repeatable), e.g. "
                        "trainer.max_epochs=50")
    p.add_argument("--synthetic-share", type=float, metavar="S",
                   help="with --seg-config: the share of the real+synthetic training's patches cut from the pairs, "
                        "e.g. 0.5 so a few real cases are not swamped by many pairs (default: every case alike)")
    p.add_argument("--seg-real-run", metavar="RUN",
                   help="with --seg-config: reuse this earlier real-data arm (its utility_runs/utility-real-* run) "
                        "instead of training it again, so several synthetic sets share one baseline; refused "
                        "unless it was trained with the same recipe and overrides")
    p.add_argument("--seed", type=int, default=0, help="seed for sampling and subsets (default 0)")
    p.add_argument("--resamples", type=int, default=200, help="bootstrap resamples for the 95%% intervals of FID, "
                                                            "PRDC and diversity (default 200; 0: none)")
    p.add_argument("--image-size", type=int, help="resize the image files' sets to this size, e.g. 64 for a model "
                                                  "trained with data.image_size=64 on 28 px MedMNIST")
    p.add_argument("--reference-cache", metavar="DIR",
                   help="keep what depends on the real sets alone (embeddings, floors, the held-out images' nearest "
                        "training images, the train-on-real classifiers) in DIR and read it back when evaluating "
                        "other synthetic sets against the same real sets and settings: the same numbers, computed "
                        "once (keyed on the sets' bytes, the settings, the feature network, torch's version and "
                        "thread count and medsynth's code)")
    _add_overwrite(p)
    p.set_defaults(func=_evaluate)


def _add_compare(sub) -> None:
    p = sub.add_parser("compare", parents=[COMMON], help="evaluated runs side by side (Markdown, and HTML with --out)",
                       description="The evaluations of two or more runs side by side with their 95% intervals, "
                                   "the best per metric in bold only where its interval overlaps no other run's; "
                                   "a Markdown table on stdout and, with --out, an HTML page with the sample grids.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (their evaluation.json) or evaluation "
                                                          "JSON files")
    p.add_argument("--out", help="also write an HTML page here (.html)")
    _add_overwrite(p)
    p.set_defaults(func=_compare)


def _add_fit_prior(sub) -> None:
    p = sub.add_parser("fit-prior", parents=[COMMON], help="fit a VAE-family run's latent mixture again into a new run",
                       description="Fit the Gaussian mixture that a VAE or VAE-GAN run draws its latent codes from "
                                   "again, on the run's own training images, with another number of components, "
                                   "and write the result as a new run directory (same weights; the source run is "
                                   "untouched). Few components draw smoother, more alike samples, many draw "
                                   "nearer to the training images; choose the number on validation images. A run "
                                   "trained with model.latent_prior=normal gains a mixture this way.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of model.family=vae or vaegan")
    p.add_argument("--components", type=int, required=True, help="mixture components (full covariances; at "
                                                                  "most training images / (latent_dim + 1))")
    p.add_argument("--out", required=True, help="the new run directory (must not exist)")
    _add_device(p)
    p.set_defaults(func=_fit_prior)


def _add_report(sub) -> None:
    p = sub.add_parser("report", parents=[COMMON], help="write a self-contained HTML report of a run",
                       description="Sample grid, reconstructions, loss curves, the metric table beside the "
                                   "real-vs-real floor, nearest-neighbour strip and the config, in one HTML file.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.add_argument("--evaluation", help="evaluation JSON (default RUN_DIR/evaluation.json)")
    p.add_argument("--out", help="output HTML (default RUN_DIR/report.html, rewritten each time: a view of the "
                                 "run's files; an existing --out needs --overwrite)")
    _add_overwrite(p)
    p.set_defaults(func=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsynth", description="Train, sample and audit generative models of medical images.")
    parser.add_argument("--version", action="version", version=f"medsynth {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for add in (_add_train, _add_sample, _add_segment, _add_translate, _add_features, _add_evaluate, _add_report,
                _add_compare, _add_fit_prior):
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    console.set_verbosity(console.QUIET if getattr(args, "quiet", False) else
                          console.VERBOSE if getattr(args, "verbose", False) else console.NORMAL)
    try:
        args.func(args)
    except MedsynthError as exc:
        print(f"medsynth: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medsynth: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
