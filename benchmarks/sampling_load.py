"""Sampling 20 000 images of 64 px: one process vs two, with peak memory.

Trains a small 64 px VAE on PneumoniaMNIST for one epoch (sampling speed does
not depend on how well it is trained), then runs `medsynth sample --out-dir`
with --workers 1 and --workers 2 as real subprocesses. Peak RSS is the largest
sum of VmRSS over the process tree, polled every 50 ms from /proc. Each output's
manifest must list exactly N unique sample indices.

    python benchmarks/sampling_load.py [--n 20000]
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def tree_rss(pid: int) -> int:
    """Resident bytes of a process and all its descendants."""
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                for line in fh:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo += [int(c) for c in fh.read().split()]
        except (FileNotFoundError, ProcessLookupError, ValueError):
            continue
    return total


def run(cmd: list[str]) -> tuple[float, int]:
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss(proc.pid))
        time.sleep(0.05)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr.read()[-3000:])
    return time.perf_counter() - start, peak


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20000)
    parser.add_argument("--shard-size", type=int, default=1000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="medsynth-sampleload-"))
    medsynth = [sys.executable, "-m", "medsynth.cli"]
    subprocess.run([*medsynth, "train", "configs/vae_pneumonia.yaml", f"data.path={DATA}", "data.image_size=64",
                    "model.channels=[32,64,128,256]", "trainer.max_epochs=1", f"run_dir={tmp / 'run'}",
                    "data.limit=1024"], cwd=ROOT, check=True, capture_output=True)
    print(f"{args.n} samples of 1 x 64 x 64 from a 4-level conv VAE, shards of {args.shard_size}, "
          f"{os.cpu_count()} cores")
    rates = {}
    for workers in (1, 2):
        out = tmp / f"out{workers}"
        seconds, peak = run([*medsynth, "sample", str(tmp / "run"), "-n", str(args.n), "--out-dir", str(out),
                             "--shard-size", str(args.shard_size), "--workers", str(workers)])
        with open(out / "manifest.csv", newline="") as fh:
            indices = [int(r["index"]) for r in csv.DictReader(fh)]
        unique = len(set(indices))
        ok = "ok" if len(indices) == unique == args.n else "WRONG"
        rates[workers] = args.n / seconds
        print(f"workers={workers}: {seconds:.1f} s, {rates[workers]:.0f} images/s (whole command, model load "
              f"included), peak RSS {peak / 2**20:.0f} MiB; manifest {len(indices)} rows, {unique} unique: {ok}")
    print(f"two processes / one: {rates[2] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
