"""Sampling speed and peak memory of the 3D latent diffusion recipe (configs/ldm_brats3d.yaml,
BraTS FLAIR at 32^3) with every sampler: volumes/s and the peak resident memory of a process that
does nothing but load the run and draw.

    python benchmarks/ldm_3d_sampling.py [--run RUN_DIR] [--n 8] [--samplers ddpm:1000,ddim:50,dpmpp:10]
        [--quick]

Without --run it trains the recipe's networks for a short budget (2 autoencoder epochs, 2
diffusion epochs): speed and memory depend on the networks' sizes, not on how well they are
trained, so the samples of such a run are not the point here. Each row runs in its own process
(one at a time, nothing else running), so its peak RSS is its own; the time counts the draw only.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
RECIPE = ROOT / "configs/ldm_brats3d.yaml"
DATA = ROOT / "../shared/data/brats2013"

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {src!r})
import torch
from medsynth.models import load_run
from medsynth.sampling import draw
recipe = load_run({run!r})
rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
draw(recipe, 1, seed=1, sampler={sampler!r}, steps=2)  # warm-up: first-call kernel set-up is not sampling
start = time.perf_counter()
images, _ = draw(recipe, {n}, seed=0, batch_size={n}, sampler={sampler!r}, steps={steps})
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_after_load_mib": rss_loaded, "shape": list(images.shape),
                  "finite": bool(torch.isfinite(images).all())}}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained ldm_brats3d run (default: train one briefly)")
    parser.add_argument("--n", type=int, default=8, help="volumes per sampler, one batch (default 8)")
    parser.add_argument("--samplers", default="ddpm:1000,ddim:50,ddim:20,dpmpp:10,dpmpp:20,unipc:10")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs/bench3d"))
    parser.add_argument("--quick", action="store_true", help="a tiny run end to end, to check the script")
    args = parser.parse_args()
    overrides = [f"data.path={DATA}", f"runs_dir={args.runs_dir}", "trainer.max_epochs=4",
                 "diffusion.autoencoder_epochs=2", "diffusion.adversarial_warmup_epochs=1"]
    if args.quick:
        args.n, args.samplers = 2, "ddim:3,dpmpp:3"
        overrides += ["data.image_size=16", "trainer.max_epochs=2", "diffusion.autoencoder_epochs=1"]
    run = args.run
    if run is None:
        from medsynth.training import train

        t0 = time.perf_counter()
        run = str(train(RECIPE, overrides, log=lambda *_: None))
        print(f"trained {run} in {time.perf_counter() - t0:.0f} s ({' '.join(overrides[2:])})")
    rows = []
    for spec in args.samplers.split(","):
        sampler, steps = spec.split(":")[0], int(spec.split(":")[1])
        code = CHILD.format(src=str(ROOT / "src"), run=run, sampler=sampler, steps=steps, n=args.n)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-2000:])
        r = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((sampler, steps, args.n / r["seconds"], r["seconds"], r["peak_rss_mib"], r["rss_after_load_mib"],
                     r["shape"], r["finite"]))
        print(f"  {sampler} {steps}: {rows[-1][2]:.3f} volumes/s, peak RSS {r['peak_rss_mib']:.0f} MiB", flush=True)
    print(f"\n{args.n} volumes of {rows[0][6][1:]} per sampler (one batch; UNet in bf16 where native):")
    print(f"{'sampler':8s} {'steps':>5s} {'vol/s':>8s} {'s':>8s} {'peak RSS MiB':>13s} {'after load':>11s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:5d} {r[2]:8.3f} {r[3]:8.1f} {r[4]:13.0f} {r[5]:11.0f}" + ("" if r[7] else "  NON-FINITE"))


if __name__ == "__main__":
    main()
