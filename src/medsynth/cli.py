"""The command line: parse, call the Python API, print. Errors the user can fix
are printed as one line (exit 2); anything else is a bug and keeps its traceback."""

from __future__ import annotations

import argparse
import sys

from medsynth.errors import MedsynthError


def _train(args) -> None:
    from medsynth.training import train

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
    run_dir = train(config, overrides, resume=args.resume)
    print(run_dir)


def _sample(args) -> None:
    from medsynth.sampling import sample

    out = sample(args.run_dir, args.n, args.out, grid=args.grid, label=args.label, seed=args.seed,
                 batch_size=args.batch_size, device=args.device)
    print(f"wrote {args.n} samples to {out}" + (f" and a grid to {args.grid}" if args.grid else ""))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medsynth", description="Train, sample and audit generative models of medical images.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("train", help="train a recipe and write a run directory",
                       description="Train a model from a YAML recipe. Prints the run directory, which holds "
                                   "the resolved config, checkpoints, metrics.csv, portable weights "
                                   "(model.safetensors) and sample / reconstruction grids.")
    p.add_argument("config", nargs="?", help="recipe YAML, e.g. configs/vae_pneumonia.yaml")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="config overrides, e.g. trainer.max_epochs=5 data.image_size=64 loss.kl_weight=4")
    p.add_argument("--resume", metavar="RUN_DIR",
                   help="continue a run from its last checkpoint (positionals are then all overrides)")
    p.set_defaults(func=_train)

    p = sub.add_parser("sample", help="draw synthetic images from a trained run",
                       description="Write N synthetic images to an .npz (keys images, labels; MedMNIST layout, "
                                   "uint8) and optionally a PNG grid of the first 64.")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory made by `medsynth train`")
    p.add_argument("-n", type=int, required=True, help="number of images to draw")
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--grid", help="also write a PNG grid of the first 64 samples here")
    p.add_argument("--label", type=int, help="class to draw (conditional models; default: cycle over classes)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same samples; default 0)")
    p.add_argument("--batch-size", type=int, default=256, help="images per forward pass (default 256)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.set_defaults(func=_sample)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
