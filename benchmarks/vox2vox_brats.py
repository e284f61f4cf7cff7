"""Vox2Vox on BraTS: training cost per step, whole-volume inference cost, and Dice against the
plain MONAI UNet baseline at equal wall time.

    python benchmarks/vox2vox_brats.py steps              # peak RSS, s/step at 64^3 and 96^3 patches
    python benchmarks/vox2vox_brats.py inference [RUN]    # one 240x240x155 case by sliding windows
    python benchmarks/vox2vox_brats.py compare --minutes 15

Each measurement runs in its own child process, so its peak RSS (ru_maxrss) is its own.
`compare` trains configs/vox2vox_brats.yaml and configs/unet_brats.yaml side by side, one thread
each, for the same trainer.max_time, then both segment the two BraTS test cases whole.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE = ROOT / "../shared/data/brats2013/test/brats_2013_pat0001_1"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _child(kind: str, arg: str) -> dict:
    """Runs in a fresh process; prints one JSON line."""
    import lightning as L
    import torch

    from medsynth.config import load_config
    from medsynth.models import build_recipe
    from medsynth.precision import resolve_precision
    from medsynth.training import build_data

    if kind == "steps":
        config, patch = arg.split(":")
        cfg = load_config(ROOT / config, [f"data.patch_size={patch}", "data.patches_per_epoch=24",
                                          "data.val_patches=1", "data.limit=1"])
        splits, data = build_data(cfg)
        rss_data = _rss_mib()
        recipe = build_recipe(cfg)
        times = []

        class Clock(L.Callback):
            def on_train_batch_start(self, *a):
                self.t = time.perf_counter()

            def on_train_batch_end(self, *a):
                times.append(time.perf_counter() - self.t)

        trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, limit_val_batches=0,
                            precision=resolve_precision("auto"), callbacks=[Clock()], enable_progress_bar=False,
                            enable_model_summary=False, gradient_clip_val=None)
        trainer.fit(recipe, datamodule=data)
        steady = sorted(times[2:])
        return {"config": config, "patch": int(patch), "batch": cfg.data.batch_size,
                "s_per_step": steady[len(steady) // 2], "peak_rss_mib": round(_rss_mib()),
                "rss_after_data_mib": round(rss_data), "precision": str(trainer.precision)}
    if kind == "inference":
        from medsynth.data.cases import load_case
        from medsynth.data.patches import prepare_case
        from medsynth.models import load_run

        if arg:
            recipe = load_run(arg)
            cfg = recipe.cfg
        else:  # an untrained Vox2Vox: the same memory and time as a trained one
            cfg = load_config(ROOT / "configs/vox2vox_brats.yaml",
                              ["model.in_channels=2", "model.image_size=[64,64,64]", "model.num_classes=5"])
            recipe = build_recipe(cfg).eval()
        case = load_case(CASE.name, [next(CASE.glob(c)) for c in cfg.data.contrasts], None, None,
                         next(CASE.glob(cfg.data.mask)))
        case = prepare_case(case, cfg.data.mr_normalise, cfg.data.spacing)
        rss_before = _rss_mib()
        start = time.perf_counter()
        pred = recipe.segment(case.image, case.mask)
        return {"shape": list(pred.shape), "s_per_case": round(time.perf_counter() - start, 2),
                "peak_rss_mib": round(_rss_mib()), "rss_before_inference_mib": round(rss_before),
                "threads": torch.get_num_threads()}
    raise SystemExit(f"unknown child {kind}")


def _run_child(kind: str, arg: str = "", threads: int | None = None) -> dict:
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    out = subprocess.run([sys.executable, __file__, "_child", kind, arg], capture_output=True, text=True, env=env,
                         cwd=ROOT)
    if out.returncode:
        raise SystemExit(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def steps() -> None:
    rows = [_run_child("steps", f"{c}:{p}") for c in ("configs/vox2vox_brats.yaml", "configs/unet_brats.yaml")
            for p in (64, 96)]
    print(f"{'recipe':28s} {'patch':>5s} {'batch':>5s} {'s/step':>7s} {'peak RSS MiB':>12s} {'(data alone)':>12s}")
    for r in rows:
        print(f"{r['config']:28s} {r['patch']:5d} {r['batch']:5d} {r['s_per_step']:7.2f} {r['peak_rss_mib']:12d} "
              f"{r['rss_after_data_mib']:12d}")
    v64, v96, u64 = rows[0], rows[1], rows[2]
    print(f"vox2vox 96^3 / 64^3 time per step: {v96['s_per_step'] / v64['s_per_step']:.2f}x "
          f"(voxels: {(96 / 64) ** 3:.2f}x); vox2vox / unet at 64^3: {v64['s_per_step'] / u64['s_per_step']:.2f}x; "
          f"precision {v64['precision']}")


def inference(run: str | None) -> None:
    r = _run_child("inference", run or "")
    print(f"sliding-window inference of one BraTS case {r['shape']}: {r['s_per_case']} s/case on {r['threads']} "
          f"threads, peak RSS {r['peak_rss_mib']} MiB (before inference {r['rss_before_inference_mib']} MiB); "
          f"limit 4096 MiB: {'ok' if r['peak_rss_mib'] < 4096 else 'EXCEEDED'}")


def compare(minutes: float, runs_dir: str) -> None:
    limit = f"00:00:{int(minutes):02d}:{int(minutes % 1 * 60):02d}"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = {}
    for name in ("vox2vox_brats", "unet_brats"):
        cmd = [str(Path(sys.executable).with_name("medsynth")), "train", f"configs/{name}.yaml", f"runs_dir={runs_dir}",
               f"trainer.max_time={limit}", "trainer.max_epochs=-1"]
        procs[name] = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                       text=True)
    print(f"training both for {limit} (one thread each, side by side) ...", flush=True)
    rows = {}
    for name, p in procs.items():
        out, _ = p.communicate()
        if p.returncode:
            raise SystemExit(f"{name} failed")
        run = Path(out.strip().splitlines()[-1])
        seg = json.loads((run / "segmentation.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
        rows[name] = (run, seg, summary)
    print(f"{'recipe':14s} {'steps':>6s} {'epochs':>6s} {'train s':>8s} " + " ".join(
        f"{c[:12] + ' ' + r[:2].upper():>17s}" for c in ("pat0001", "pat0002") for r in ("WT", "TC", "ET")))
    for name, (run, seg, summary) in rows.items():
        cells = []
        for case in sorted(seg["cases"]):
            reg = seg["cases"][case]["regions"]
            cells += [reg[k]["dice"] for k in ("whole_tumour", "tumour_core", "enhancing_tumour")]
        print(f"{name:14s} {summary['global_step']:6d} {summary['epochs']:6d} {summary['train_seconds']:8.0f} "
              + " ".join(f"{c:17.3f}" for c in cells))
        print(f"  mean Dice WT {seg['mean']['dice_whole_tumour']:.3f} TC {seg['mean']['dice_tumour_core']:.3f} "
              f"ET {seg['mean']['dice_enhancing_tumour']:.3f}   run: {run}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_child":
        print(json.dumps(_child(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "")))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["steps", "inference", "compare"])
    parser.add_argument("run", nargs="?", help="inference: a trained segmentation run (default: untrained)")
    parser.add_argument("--minutes", type=float, default=15.0)
    parser.add_argument("--runs-dir", default="runs/bench")
    args = parser.parse_args()
    {"steps": steps, "inference": lambda: inference(args.run),
     "compare": lambda: compare(args.minutes, args.runs_dir)}[args.what]()
