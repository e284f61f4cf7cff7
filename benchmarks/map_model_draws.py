"""What a model of label maps draws, before any image is drawn from its maps: the structure's size
in each drawn map (empty maps are useless to `medsynth sample --label-maps`) and how near each
drawn map lies to a training map, from the fitted mixture and from N(0, I) on the same weights.

    python benchmarks/map_model_draws.py RUN [RUN ...]          # runs trained with data.format=label_maps
    python benchmarks/map_model_draws.py --train configs/vae_la_maps.yaml [--override KEY=VALUE ...]

Per run and prior: voxels of the structure (class 1) in each of N drawn maps, resized back to the
training box as `medsynth sample --label-maps` does (min / median / max, empty count), beside the
training maps themselves after the same resize; reconstruction Dice of the training maps; and
the nearest-training-map Dice of each drawn map beside each training map's nearest *other*
training map (the real-vs-real floor: a drawn map nearer than that is a near copy).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from _cli import medsynth


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * (a & b).sum() / max(1, a.sum() + b.sum()))


def measure(run: str, n: int, seed: int) -> dict:
    from medsynth.data.label_maps import label_map_set, maps_from_images
    from medsynth.models import load_run

    model = load_run(run, "cpu")
    box = list(model.cfg.model.output_space["box"])
    train = torch.from_numpy(label_map_set(model.cfg.data)["train"][0])
    real = maps_from_images(train, box) == 1
    with torch.no_grad():
        codes = model.net.encode(train, None)[0]
        recon = maps_from_images(torch.tanh(model.net.decode(codes, None)).float(), box) == 1
    out = {"run": run, "training_maps": len(real), "code_norm_mean": float(codes.norm(dim=1).mean()),
           "latent_dim": int(codes.shape[1]), "real_voxels": _sizes(real),
           "reconstruction_dice_mean": float(np.mean([dice(a, b) for a, b in zip(recon, real)])),
           "real_nearest_other_dice": _spread([max(dice(x, y) for j, y in enumerate(real) if j != i)
                                               for i, x in enumerate(real)])}
    for prior in (["mixture", "normal"] if getattr(model.net, "prior_components", 0) else ["normal"]):
        with torch.no_grad():
            drawn = maps_from_images(model.sample(n, generator=torch.Generator().manual_seed(seed), prior=prior), box) == 1
        out[prior] = {"voxels": _sizes(drawn), "nearest_training_dice": _spread(
            [max(dice(x, y) for y in real) for x in drawn if x.any()])}
    return out


def _sizes(maps: np.ndarray) -> dict:
    v = maps.reshape(len(maps), -1).sum(1)
    return {"min": int(v.min()), "median": int(np.median(v)), "max": int(v.max()), "empty": int((v == 0).sum())}


def _spread(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "max": float(np.max(values))} if values else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*")
    parser.add_argument("--train", metavar="CONFIG", help="train this model of maps first")
    parser.add_argument("--override", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("-n", type=int, default=26, help="maps to draw per prior")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs-dir", default="runs/bench_maps")
    args = parser.parse_args()
    runs = list(args.runs) + ([medsynth("train", args.train, f"runs_dir={args.runs_dir}", *args.override)]
                              if args.train else [])
    if not runs:
        parser.error("give runs, or --train CONFIG")
    for run in runs:
        print(json.dumps(measure(run, args.n, args.seed), indent=1))


if __name__ == "__main__":
    main()
