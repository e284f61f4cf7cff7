"""How fast (image, label map) pairs are drawn, and in how much memory, for the shipped SPADE
recipes: 3D left-atrium cases (about 190 x 140 x 88 voxels at 0.625 mm), 3D BraTS cases at 2 mm
(about 120 x 120 x 78) and 2D BraTS slices (240 x 240).

Drawing costs the same for a trained and an untrained generator (the same layers run), so each
recipe is trained for one short epoch at its shipped size only to make a run directory; the pairs
are then drawn from its deformed training maps in a fresh process per recipe, which reports its
seconds (loading the maps and the model included, and without them) and its own peak RSS.

    python benchmarks/pair_generation_speed.py                 # 8 pairs per recipe
    python benchmarks/pair_generation_speed.py --quick         # 2 pairs, LA only
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"spade_la_heart": "3D, 0.625 mm", "spade_brats3d": "3D, 2 mm", "spade_brats2d": "2D slices"}


def _draw(run: str, n: str, out_dir: str) -> None:
    """Child process: draw n pairs; prints seconds (all, and drawing only) and peak RSS as JSON."""
    import torch

    from medsynth.models import load_run
    from medsynth.pairs import sample_pairs

    start = time.perf_counter()
    drawn = []
    sample_pairs(run, int(n), out_dir, log=lambda m: drawn.append(time.perf_counter()) if m.startswith("pair ") else None)
    total = time.perf_counter() - start
    # the first pair's time includes loading the maps and the model; the rest are drawing and writing
    per_pair = (drawn[-1] - drawn[0]) / (len(drawn) - 1) if len(drawn) > 1 else float("nan")
    shape = list(load_run(run).cfg.model.image_size)
    print(json.dumps({"seconds": total, "seconds_per_pair": per_pair, "threads": torch.get_num_threads(),
                      "patch": shape, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "_draw":
        return _draw(*sys.argv[2:5])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("-n", type=int, default=8, help="pairs per recipe (default 8)")
    parser.add_argument("--runs-dir", default="runs/bench_pairs")
    args = parser.parse_args()
    recipes = ["spade_la_heart"] if args.quick else list(RECIPES)
    n = 2 if args.quick else args.n
    exe = str(Path(sys.executable).with_name("medsynth"))
    rows = []
    for recipe in recipes:
        runs = Path(args.runs_dir) / recipe
        made = subprocess.run([exe, "train", f"configs/{recipe}.yaml", f"runs_dir={runs}", "trainer.max_epochs=1",
                               "data.patches_per_epoch=2", "data.val_patches=1", "data.limit=2"],
                              cwd=ROOT, capture_output=True, text=True)
        if made.returncode:
            raise SystemExit(f"{recipe}: training failed:\n{made.stderr[-2000:]}")
        run = made.stdout.strip().splitlines()[-1]
        out = subprocess.run([sys.executable, __file__, "_draw", run, str(n), str(runs / "pairs")], cwd=ROOT,
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"{recipe}: drawing failed:\n{out.stderr[-2000:]}")
        rows.append((recipe, json.loads(out.stdout.strip().splitlines()[-1])))
    print("| recipe | kind | pairs | s per pair (drawing + writing) | pairs/s | whole command s | peak RSS MiB | threads |")
    print("|---|---|---|---|---|---|---|---|")
    for recipe, r in rows:
        print(f"| {recipe} | {RECIPES[recipe]} | {n} | {r['seconds_per_pair']:.2f} | {1 / r['seconds_per_pair']:.2f} | "
              f"{r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {r['threads']} |")


if __name__ == "__main__":
    main()
