"""The demo's stages timed on the CPU at hand, with the precision chosen.

    python benchmarks/demo_stages.py                  # as `make demo` runs here (precision auto)
    python benchmarks/demo_stages.py --precision 32   # the choice an AVX2-only CPU gets (no native bf16)
    python benchmarks/demo_stages.py --quick          # a few steps per stage, to check the script

Stages as in the Makefile: train the conditional VAE, train the domain feature network,
evaluate (FID/KID/PRDC, diversity, reconstruction, privacy, TSTR), write the report. With
--precision 32 the resolver is told the CPU has no native bf16, so every autocast stays fp32:
this measures the work an AVX2-only machine does, at this machine's fp32 speed.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import medsynth.precision as precision

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "medmnist" / "pneumoniamnist.npz"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--precision", choices=["auto", "32"], default="auto")
    ap.add_argument("--quick", action="store_true", help="a few steps per stage")
    ap.add_argument("--data", default=str(DATA))
    args = ap.parse_args()
    native = precision.native_bf16()
    if args.precision == "32":
        precision.native_bf16 = lambda: False  # what the resolver sees on an AVX2-only CPU
    from medsynth.evaluate import evaluate
    from medsynth.models.classifier import FEATURE_DEFAULTS
    from medsynth.report import report
    from medsynth.training import train

    quick = ["trainer.max_steps=5", "data.limit=256"] if args.quick else []
    times, quiet = {}, dict(log=lambda *_: None)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = train(ROOT / "configs" / "cvae_pneumonia.yaml", [f"data.path={args.data}", f"runs_dir={tmp}", *quick], **quiet)
        times["train conditional VAE"] = time.perf_counter() - start
        start = time.perf_counter()
        feats = train(None, [*FEATURE_DEFAULTS, f"data.path={args.data}", f"runs_dir={tmp}", *quick], **quiet)
        times["train feature network"] = time.perf_counter() - start
        start = time.perf_counter()
        evaluate(args.data, run, features=feats, n=200 if args.quick else None,
                 utility_steps=20 if args.quick else 300, **quiet)
        times["evaluate"] = time.perf_counter() - start
        start = time.perf_counter()
        report(run)
        times["report"] = time.perf_counter() - start
        chosen = json.loads((run / "summary.json").read_text())["precision"]
    print(f"CPU: {platform.processor() or platform.machine()}, native bf16: {native}; "
          f"--precision {args.precision} -> training precision {chosen}{' (quick)' if args.quick else ''}")
    print("| stage | seconds |\n|---|---|")
    for stage, seconds in times.items():
        print(f"| {stage} | {seconds:.1f} |")
    print(f"| total | {sum(times.values()):.1f} |")


if __name__ == "__main__":
    main()
