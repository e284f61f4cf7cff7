"""Training images/s of the vanilla VAE: medsynth's Lightning path vs a plain PyTorch loop.

Same model (VAENet), same loss (VAERecipe.loss_terms), same real data
(PneumoniaMNIST; the 3 x 64 x 64 case resizes it to 64 px and repeats the gray
channel), batch 64, same process. Rows:
  plain fp32          the naive loop: the baseline
  plain <precision>   the same loop with medsynth's precision and memory layout
  medsynth            `build_trainer` + VAERecipe + MedsynthDataModule, as `medsynth train` runs it
Speed-up = medsynth / plain fp32 (target >= 1.5); framework overhead =
1 - (plain at the same settings) / medsynth time per step (target < 5%).

    python benchmarks/train_throughput.py [--steps 60] [--warmup 10] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import lightning as L
import torch

from medsynth.config import load_config
from medsynth.data import MedsynthDataModule, load_splits
from medsynth.models import build_recipe
from medsynth.precision import resolve_precision
from medsynth.training import build_trainer, fill_data_shape

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("MEDSYNTH_SHARED_DATA", ROOT.parent / "shared" / "data")) / "medmnist" / "pneumoniamnist.npz"


def setting(size: int, channels: int, precision: str, channels_last: bool):
    cfg = load_config(ROOT / "configs" / "vae_pneumonia.yaml",
                      [f"data.path={DATA}", f"trainer.precision={precision}", f"trainer.channels_last={channels_last}",
                       "data.limit=4096", "trainer.log_every_n_steps=50"] + ([f"data.image_size={size}"] if size != 28 else []))
    if size == 64:
        cfg.model.channels = [32, 64, 128, 256]
    splits = load_splits(cfg.data, 2)
    if channels == 3:
        for s in (splits.train, splits.val):
            s.images = s.images.repeat(1, 3, 1, 1)
    fill_data_shape(cfg, splits)
    return cfg, splits


class _Clock(L.Callback):
    def __init__(self):
        self.stamps = []

    def on_train_batch_end(self, *args):
        self.stamps.append(time.perf_counter())


def run_medsynth(cfg, splits, steps: int, warmup: int) -> float:
    L.seed_everything(0, verbose=False)
    recipe = build_recipe(cfg)
    data = MedsynthDataModule(splits, cfg.data.batch_size, 0, cfg.seed)
    clock = _Clock()
    cfg.trainer.max_steps = steps + warmup
    with tempfile.TemporaryDirectory() as tmp:
        trainer = build_trainer(cfg, Path(tmp), has_val=False, extra_callbacks=[clock])
        trainer.fit_loop.epoch_loop.max_steps = steps + warmup
        trainer.enable_progress_bar = True
        trainer.fit(recipe, datamodule=data)
    t = clock.stamps
    return steps * cfg.data.batch_size / (t[warmup + steps - 1] - t[warmup - 1])


def run_plain(cfg, splits, steps: int, warmup: int, precision: str, channels_last: bool) -> float:
    torch.manual_seed(0)
    recipe = build_recipe(cfg)  # the same module; only its loss function is used, no Lightning loop
    recipe.train()
    if channels_last:
        recipe.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(recipe.parameters(), lr=cfg.optim.lr)
    loader = MedsynthDataModule(splits, cfg.data.batch_size).train_dataloader()  # the same batches
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16-mixed" else nullcontext()
    done, start = 0, None
    while done < steps + warmup:
        for batch in loader:
            if channels_last:
                batch["image"] = batch["image"].contiguous(memory_format=torch.channels_last)
            with autocast:
                loss = recipe.loss_terms(batch, done)["loss"]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(recipe.parameters(), cfg.trainer.gradient_clip_val)
            opt.step()
            done += 1
            if done == warmup:
                start = time.perf_counter()
            if done == steps + warmup:
                break
    return steps * cfg.data.batch_size / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="alternate the runs this many times; report medians")
    args = parser.parse_args()
    precision = resolve_precision("auto")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, medsynth precision (auto): {precision}")
    print(f"{'input':>10} {'path':>22} {'images/s':>9}")
    for size, channels in ((28, 1), (64, 3)):
        steps = args.steps if size == 28 else max(10, args.steps // 3)
        results = {"plain fp32": [], f"plain {precision} + NHWC": [], f"plain {precision}": [], "medsynth": [],
                   "medsynth (NCHW)": []}
        for _ in range(args.repeats):  # interleaved, so machine noise hits every row alike
            cfg, splits = setting(size, channels, "32", False)
            results["plain fp32"].append(run_plain(cfg, splits, steps, args.warmup, "32", False))
            cfg, splits = setting(size, channels, precision, True)
            results[f"plain {precision} + NHWC"].append(run_plain(cfg, splits, steps, args.warmup, precision, True))
            results["medsynth"].append(run_medsynth(cfg, splits, steps, args.warmup))
            cfg, splits = setting(size, channels, precision, False)
            results[f"plain {precision}"].append(run_plain(cfg, splits, steps, args.warmup, precision, False))
            results["medsynth (NCHW)"].append(run_medsynth(cfg, splits, steps, args.warmup))
        med = {k: sorted(v)[len(v) // 2] for k, v in results.items()}
        label = f"{channels}x{size}x{size}"
        for k, v in med.items():
            print(f"{label:>10} {k:>22} {v:9.0f}", flush=True)
        speedup = med["medsynth"] / med["plain fp32"]
        overhead = 1 - med["medsynth"] / med[f"plain {precision} + NHWC"]
        print(f"{label:>10} speed-up medsynth / plain fp32 = {speedup:.2f}x; "
              f"framework overhead vs the same loop by hand = {100 * overhead:.1f}%; "
              f"channels_last gain = {med['medsynth'] / med['medsynth (NCHW)']:.2f}x", flush=True)


if __name__ == "__main__":
    sys.exit(main())
