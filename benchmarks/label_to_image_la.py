"""What left-atrium MRI drawn from label maps (SPADE) is worth for segmentation, on the 10 held-out
LA heart cases:

1. train configs/spade_la_heart.yaml on the 26 training cases;
2. draw as many (image, label map) pairs as there are training cases from their deformed maps, in a
   child process (pairs per second, peak RSS of its own);
3. `medsynth evaluate --fake PAIRS --seg-config configs/unet_la_heart.yaml`: the UNet trained on the
   real cases, on the pairs alone and on both, the same number of batches each, scored on the test
   cases, with the nearest-neighbour privacy check of the pairs;
   beside it, the drawn and real volumes' brightness (the atrium's mean, the 99th percentile
   outside it): whether the pairs hold the bright structures a model must learn to leave out;
4. the few-cases experiment: the same with only the first 5 training cases (SPADE trained on those
   5, pairs from their maps): does real + synthetic beat the 5 real cases alone?

    python benchmarks/label_to_image_la.py --quick          # 2 cases a split, tiny budgets: a smoke run
    python benchmarks/label_to_image_la.py --spade-epochs 100 --seg-epochs 150 --out runs/bench_l2i/result.json
    python benchmarks/label_to_image_la.py --skip-all --few-spade-epochs 15 --few-pairs 20 --seg-epochs 30
                                                            # the few-cases experiment alone, 20 pairs
    python benchmarks/label_to_image_la.py --skip-few --spade-epochs 30 --seg-epochs 60 \
        --spade-override data.tissue_bands=3 --spade-override "data.class_ratios=[1,3,1,1]"
                                                            # SPADE told where the other tissue lies
    python benchmarks/label_to_image_la.py --skip-all --few-spade-epochs 60 --few-pairs 20 --seg-epochs 30 \
        --spade-override data.tissue_bands=3 --spade-override "data.class_ratios=[1,3,1,1]" --synthetic-share 0.5
                                                            # 5 real cases, half the mixed arm's patches real
    python benchmarks/label_to_image_la.py --skip-few --spade-epochs 30 --seg-epochs 60 --map-model \
        --spade-override data.tissue_bands=3 --spade-override "data.class_ratios=[1,3,1,1]"
                                                            # bands from a model of maps: no patient's image
    ... --real-run runs/bench_l2i_map/all/pairs/utility_runs/utility-real-*   # the same real arm, not trained again

The split is configs/splits/la_heart.json (nothing tuned on its test cases).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from _cli import ROOT, medsynth
SPLIT = ROOT / "configs/splits/la_heart.json"


def _draw(run: str, n: str, out_dir: str, label_maps: str | None = None) -> None:
    """Child process: draw the pairs (maps from `label_maps`, a model of maps, when given); prints
    seconds and its own peak RSS as JSON."""
    from medsynth.pairs import sample_pairs

    start = time.perf_counter()
    sample_pairs(run, int(n), out_dir, label_maps=label_maps, log=lambda *_: None)
    print(json.dumps({"seconds": time.perf_counter() - start,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def _split(path: Path, train: int | None, limit: int | None) -> Path:
    names = json.loads(SPLIT.read_text())
    cut = {"train": names["train"][:train or limit], "validation": names["validation"][:limit],
           "test": names["test"][:limit]}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(cut, indent=1))
    return path


def map_model(runs: Path, split: Path, spade: list[str], overrides: list[str]) -> tuple[str, float]:
    """Train configs/vae_la_maps.yaml on the same training cases' maps, with SPADE's tissue bands
    (a model of maps must draw the classes SPADE was trained on); returns (run, minutes)."""
    bands = [o for o in spade if o.startswith("data.tissue_bands=")]
    # its Gaussian over the codes needs latent_dim + 1 training maps (16 + 1 as shipped): fewer
    # cases (the few-cases experiment, --quick) get a narrower latent
    cases = len(json.loads(split.read_text())["train"])
    narrow = [f"model.latent_dim={max(1, cases - 1)}"] if cases < 17 else []
    start = time.perf_counter()
    run = medsynth("train", "configs/vae_la_maps.yaml", f"runs_dir={runs}", f"data.splits={split}", *bands, *narrow,
                   *overrides)
    return run, (time.perf_counter() - start) / 60


def experiment(name: str, split: Path, args, spade: list[str], seg: list[str], n_pairs: int | None = None,
               maps: list[str] | None = None, real_run: str | None = None) -> dict:
    """SPADE on the split's training cases, pairs drawn, the three segmentation arms. With `maps` (the
    map model's overrides) every pair's map is drawn from a model of maps trained on the same cases
    instead of deformed from a training map. `real_run`: an earlier real arm with the same settings,
    reused (`medsynth evaluate --seg-real-run` checks it)."""
    runs = Path(args.runs_dir) / name
    map_run, map_minutes = map_model(runs, split, spade, maps) if maps is not None else (None, 0.0)
    start = time.perf_counter()
    run = medsynth("train", "configs/spade_la_heart.yaml", f"runs_dir={runs}", f"data.splits={split}", *spade)
    spade_minutes = (time.perf_counter() - start) / 60
    cases = len(json.loads(split.read_text())["train"])
    count = n_pairs or cases
    pairs = runs / "pairs"
    drawn = subprocess.run([sys.executable, __file__, "_draw", run, str(count), str(pairs), *([map_run] if map_run else [])],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if drawn.returncode:
        raise SystemExit(f"drawing pairs failed:\n{drawn.stderr[-3000:]}")
    speed = json.loads(drawn.stdout.strip().splitlines()[-1])
    share = ["--synthetic-share", str(args.synthetic_share)] if args.synthetic_share else []
    share += ["--seg-real-run", real_run] if real_run else []
    medsynth("evaluate", "--fake", str(pairs), "--seg-config", "configs/unet_la_heart.yaml", *share,
              *[a for o in [f"data.splits={split}", *seg] for a in ("--seg-override", o)])
    result = json.loads((pairs / "evaluation.json").read_text())
    return {"spade_run": run, "spade_minutes": spade_minutes, "map_run": map_run, "map_minutes": map_minutes,
            "maps": "drawn from a model of maps" if map_run else "deformed training maps", "train_cases": cases,
            "pairs": count, "pairs_per_second": count / speed["seconds"],
            "draw_peak_rss_mib": speed["peak_rss_mib"], "evaluation": str(pairs / "evaluation.json"),
            "utility": result["segmentation_utility"], "privacy": result["privacy"],
            "map_agreement": result.get("map_agreement"),
            "real_arm_reused": result["segmentation_utility"].get("reused", {}).get("real"),
            "brightness": brightness(pairs, split)}


def figure(pairs: Path, out: Path, picks: tuple[int, ...] = (0, 7)) -> None:
    """Drawn pairs (image, map; left) beside real training cases (right), each at the axial slice
    with most atrium: whether the drawn volumes hold anatomy around the atrium."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    import numpy as np

    from medsynth.config import load_config
    from medsynth.data.patches import load_segmentation_splits

    rows = list(csv.DictReader(open(pairs / "manifest.csv")))
    picks = [i for i in picks if i < len(rows)] or [0]
    drawn = [(np.asarray(nib.load(pairs / rows[i]["image"]).dataobj), np.asarray(nib.load(pairs / rows[i]["label"]).dataobj))
             for i in picks]
    cfg = load_config(ROOT / "configs/spade_la_heart.yaml", [f"data.limit={len(picks)}"])
    real = [(c.image[0], c.label) for c in load_segmentation_splits(cfg.data, which=("train",)).train]
    fig, axes = plt.subplots(len(picks), 4, figsize=(8, 2 * len(picks)), squeeze=False)
    for row, ((image, label), (rimage, rlabel)) in zip(axes, zip(drawn, real)):
        for ax, (im, lab) in zip((row[:2], row[2:]), ((image, label), (rimage, rlabel))):
            k = int(np.argmax((lab > 0).sum((0, 1))))
            ax[0].imshow(np.rot90(im[..., k]), cmap="gray", vmin=-1, vmax=1)
            ax[1].imshow(np.rot90(lab[..., k] > 0))
    for ax in axes.ravel():
        ax.axis("off")
    axes[0][0].set_title("drawn", fontsize=9)
    axes[0][2].set_title("real (training)", fontsize=9)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=64)
    plt.close(fig)


def brightness(pairs: Path, split: Path, count: int = 26) -> dict:
    """Medians over the first `count` drawn pairs and over the split's real training cases (as the
    segmentation data loader normalises them) of the atrium's mean intensity and of the 99th
    percentile outside it: whether the drawn volumes hold the bright structures beside the atrium
    that a model trained on them must learn to leave out."""
    import csv

    import nibabel as nib
    import numpy as np

    from medsynth.config import load_config
    from medsynth.data.patches import load_segmentation_splits

    def measure(image, label) -> tuple[float, float]:
        inside = image[label == 1]
        return float(inside.mean()) if inside.size else float("nan"), float(np.percentile(image[label != 1], 99))

    with open(pairs / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))[:count]
    drawn = [measure(np.asarray(nib.load(pairs / r["image"]).dataobj), np.asarray(nib.load(pairs / r["label"]).dataobj))
             for r in rows]
    cfg = load_config(ROOT / "configs/unet_la_heart.yaml", [f"data.splits={split}"])
    real = [measure(c.image[0], c.label) for c in load_segmentation_splits(cfg.data, which=("train",)).train[:count]]
    # nanmedian: a drawn map without atrium has no atrium mean, and must not void the others
    return {name: dict(zip(("atrium_mean", "outside_p99"), np.nanmedian(np.array(v), axis=0).tolist()))
            for name, v in (("drawn", drawn), ("real", real))}


def volume_ratio(arm: dict) -> float:
    """Median over the test cases of predicted / true atrium voxels: > 1 where a model spills into
    the structures beside the atrium, < 1 where it misses part of it."""
    import numpy as np

    ratios = [c["classes"]["1"]["voxels_pred"] / c["classes"]["1"]["voxels_target"] for c in arm["cases"].values()
              if c["classes"]["1"].get("voxels_target")]
    return float(np.median(ratios)) if ratios else float("nan")


def table(results: dict) -> str:
    lines = ["| experiment | training set | Dice mean [95% CI] | HD95 mm mean | predicted / true volume, median | "
             "synthetic / real Dice |", "|---|---|---|---|---|---|"]
    for name, r in results.items():
        ratio = r["utility"]["ratio"]["dice_class_1"]
        for arm, s in r["utility"]["arms"].items():
            m = s["mean"]
            interval = m.get("dice_class_1_interval") or [float("nan")] * 2
            extra = (f"{ratio['synthetic_over_real']:.2f}" + (" [{:.2f}, {:.2f}]".format(*ratio["interval"])
                                                             if ratio["interval"] else "")) if arm == "synthetic" else ""
            lines.append(f"| {name} ({r['train_cases']} real cases) | {arm} | {m['dice_class_1']:.3f} "
                         f"[{interval[0]:.3f}, {interval[1]:.3f}] | {m.get('hd95_class_1', float('nan')):.2f} | "
                         f"{volume_ratio(s):.2f} | {extra} |")
    return "\n".join(lines)


def agreement(found: dict | None) -> str:
    """Mean Dice of the real arm's model to the pairs' own maps, as evaluation.json's map_agreement
    gives it."""
    mean = (found or {}).get("mean", {}).get("dice_class_1")
    return f"{mean:.2f} (Dice, {len(found['pairs'])} pairs)" if mean is not None else "not measured"


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_draw":
        return _draw(*sys.argv[2:6])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="2 cases a split, tiny patches and budgets")
    parser.add_argument("--spade-epochs", type=int, help="SPADE trainer.max_epochs (default: the config's)")
    parser.add_argument("--seg-epochs", type=int, help="UNet trainer.max_epochs for every arm (default: the config's)")
    parser.add_argument("--pairs", type=int, help="pairs to draw (default: as many as the real training cases)")
    parser.add_argument("--few", type=int, default=5, help="real training cases of the few-cases experiment")
    parser.add_argument("--few-pairs", type=int, help="pairs to draw in the few-cases experiment (default: --pairs)")
    parser.add_argument("--few-spade-epochs", type=int, help="SPADE epochs in the few-cases experiment "
                        "(default: --spade-epochs)")
    parser.add_argument("--skip-few", action="store_true")
    parser.add_argument("--skip-all", action="store_true", help="only the few-cases experiment")
    parser.add_argument("--spade-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every SPADE run, e.g. data.tissue_bands=3 (repeatable)")
    parser.add_argument("--map-model", action="store_true", help="draw every pair's map from a model of maps "
                        "(configs/vae_la_maps.yaml trained on the same cases, with SPADE's data.tissue_bands) instead "
                        "of deforming a training map: no patient's image in the bands")
    parser.add_argument("--map-override", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for the model of maps (repeatable)")
    parser.add_argument("--synthetic-share", type=float, help="share of the real+synthetic arm's patches cut from "
                        "the pairs (default: every case alike)")
    parser.add_argument("--real-run", help="reuse this real arm (an earlier run's utility_runs/utility-real-*, "
                        "same --seg-epochs) instead of training it again; --few-real-run for the few-cases one")
    parser.add_argument("--few-real-run")
    parser.add_argument("--runs-dir", default="runs/bench_l2i")
    parser.add_argument("--out", help="also write the results as JSON here")
    parser.add_argument("--figure", help="write drawn pairs 0 and 7 of the first experiment beside two real "
                                         "training cases here (PNG)")
    args = parser.parse_args()
    spade, seg, maps = [], [], []
    limit = None
    if args.quick:
        limit = 2
        spade = ["data.patch_size=[32,32,32]", "model.depth=2", "model.num_discriminators=1", "data.patches_per_epoch=4",
                 "trainer.max_epochs=2"]
        seg = ["data.patch_size=[32,32,16]", "model.depth=2", "model.width=0.125", "data.patches_per_epoch=4",
               "trainer.max_epochs=2", "optim.warmup_steps=1", "model.sw_overlap=0"]
        maps = ["trainer.max_epochs=2"]
    spade += args.spade_override
    maps = (maps + args.map_override) if args.map_model else None
    if args.spade_epochs:
        spade.append(f"trainer.max_epochs={args.spade_epochs}")
    if args.seg_epochs:
        seg.append(f"trainer.max_epochs={args.seg_epochs}")
    runs = Path(args.runs_dir)
    results = {}
    if not args.skip_all:
        results["all"] = experiment("all", _split(runs / "split_all.json", None, limit), args, spade, seg, args.pairs,
                                    maps, args.real_run)
    if not args.skip_few:
        # a model of maps needs two maps to fit its Gaussian to
        few = (2 if args.map_model else 1) if args.quick else args.few
        few_spade = spade + ([f"trainer.max_epochs={args.few_spade_epochs}"] if args.few_spade_epochs else [])
        results[f"few{few}"] = experiment(f"few{few}", _split(runs / f"split_few{few}.json", few, limit), args,
                                          few_spade, seg, args.few_pairs or args.pairs, maps, args.few_real_run)
    print(table(results))
    for name, r in results.items():
        p = r["privacy"]["pixel"]
        print(f"{name}: maps {r['maps']} (map model {r['map_minutes']:.1f} min); "
              f"SPADE {r['spade_minutes']:.1f} min; {r['pairs']} pairs at {r['pairs_per_second']:.2f} pairs/s, "
              f"peak RSS {r['draw_peak_rss_mib']:.0f} MiB; memorised share {p['rate']:.2f}, authenticity "
              f"{p['authenticity']:.2f} (real test cases {p['heldout_authenticity']:.2f}); "
              f"map agreement {agreement(r.get('map_agreement'))}; budget "
              f"{r['utility']['budget']}" + (f"; real arm reused from {r['real_arm_reused']}" if r.get("real_arm_reused") else ""))
        b = r["brightness"]
        print(f"{name}: atrium mean intensity drawn {b['drawn']['atrium_mean']:.2f} / real {b['real']['atrium_mean']:.2f}; "
              f"99th percentile outside the atrium drawn {b['drawn']['outside_p99']:.2f} / real "
              f"{b['real']['outside_p99']:.2f} (medians over cases)")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results, indent=2))
    if args.figure and results:
        figure(Path(next(iter(results.values()))["evaluation"]).parent, Path(args.figure))


if __name__ == "__main__":
    main()
