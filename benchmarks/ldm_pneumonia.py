"""Latent diffusion on PneumoniaMNIST at 64 px: training speed of each stage (fp32 vs bf16), the
shipped recipe's training time and stage-1 reconstruction, and the sampler trade-off table
(every sampler x steps asked for: images/s, FID / KID in the domain feature space, diversity).

    python benchmarks/ldm_pneumonia.py [--run RUN_DIR] [--features FEATURE_RUN] [--n 256]
        [--samplers ddpm:1000,ddim:50,dpmpp:20] [--train-overrides trainer.max_epochs=12 ...] [--quick]

Without --run it trains configs/ldm_pneumonia.yaml; without --features it trains the domain
feature network at 64 px. Every sampler draws the same n class-balanced images (same seed) with
the UNet in bf16 autocast (and, for DDIM 50, also in fp32: the ratio); each sample set is scored
against the real test split resized to 64 px, beside the real-vs-real floor.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
DATA = ROOT / "../shared/data/medmnist/pneumoniamnist.npz"
RECIPE = ROOT / "configs/ldm_pneumonia.yaml"


def stage_throughput(batch_size: int = 32, steps: int = 6, repeats: int = 3) -> None:
    """Images/s of one optimisation step of each stage on real 64 px images, fp32 vs bf16 autocast,
    alternating, median over repeats (the first two steps of each measurement are warm-up)."""
    from medsynth.config import load_config
    from medsynth.data import load_splits
    from medsynth.models import build_recipe

    cfg = load_config(RECIPE, [f"data.path={DATA}", "data.limit=256"])
    splits = load_splits(cfg.data, 2, 0)
    cfg.model.update(in_channels=1, image_size=[64, 64], num_classes=2, multilabel=False)
    recipe = build_recipe(cfg)
    recipe.scale_factor.fill_(1.0)
    x, y = splits.train.images[:batch_size], splits.train.labels[:batch_size]
    opts = {"autoencoder": torch.optim.Adam([*recipe.autoencoder.parameters(), *recipe.discriminator.parameters()]),
            "diffusion": torch.optim.Adam(recipe.unet.parameters())}

    def step(stage: str) -> None:
        if stage == "autoencoder":  # generator terms + adversarial, then the discriminator, as after warm-up
            recon, loss, _ = recipe._autoencoder_terms(x)
            loss = loss + 0.01 * recipe.adversary.generator_loss(recipe.discriminator(recon)[-1])
            loss = loss + recipe.adversary.discriminator_loss(recipe.discriminator(x)[-1], recipe.discriminator(recon.detach())[-1])
        else:
            loss = recipe.diffusion_loss({"image": x, "label": y})
        opts[stage].zero_grad()
        loss.backward()
        opts[stage].step()

    rates: dict = {}
    for _ in range(repeats):
        for stage in ("autoencoder", "diffusion"):
            for bf16 in (False, True):
                times = []
                for _ in range(steps):
                    t0 = time.perf_counter()
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        step(stage)
                    times.append(time.perf_counter() - t0)
                rates.setdefault((stage, bf16), []).append(batch_size / statistics.median(times[2:]))
    print(f"\ntraining images/s (batch {batch_size}, 64 px, median of {repeats}):")
    for stage in ("autoencoder", "diffusion"):
        fp32, bf16 = statistics.median(rates[(stage, False)]), statistics.median(rates[(stage, True)])
        print(f"  {stage:12s} fp32 {fp32:6.1f}   bf16 {bf16:6.1f}   ratio {bf16 / fp32:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a trained ldm_pneumonia run (default: train one)")
    parser.add_argument("--features", help="a 64 px feature run (default: train one)")
    parser.add_argument("--n", type=int, default=256, help="samples per sampler (default 256)")
    parser.add_argument("--runs-dir", default=str(ROOT / "runs/bench"))
    parser.add_argument("--skip-throughput", action="store_true")
    parser.add_argument("--samplers", default="ddim:25,ddim:50,ddim:50:32,ddim:100,ddpm:1000",
                        help="comma-separated sampler:steps[:32 for an fp32 UNet] (default: the 2026-11-22 table)")
    parser.add_argument("--train-overrides", nargs="*", default=[],
                        help="overrides for the training, e.g. a smaller budget (stated in the output)")
    parser.add_argument("--quick", action="store_true", help="a tiny run end to end, to check the script")
    args = parser.parse_args()
    if args.quick:
        args.skip_throughput, args.n = True, 16
        args.train_overrides += ["data.limit=64", "trainer.max_epochs=2", "diffusion.autoencoder_epochs=1",
                                 "model.channels=[8,16,16]", "diffusion.unet_channels=[16,32,32]"]
        args.samplers = "ddim:5,dpmpp:5"
    torch.manual_seed(0)
    from medsynth.evaluate import evaluate
    from medsynth.models import load_run
    from medsynth.writers import save_npz
    from medsynth.models.classifier import FEATURE_DEFAULTS
    from medsynth.sampling import draw
    from medsynth.training import train

    if not args.skip_throughput:
        stage_throughput()
    quiet = dict(log=lambda *_: None)
    run = Path(args.run) if args.run else train(RECIPE, [f"data.path={DATA}", f"runs_dir={args.runs_dir}",
                                                        *args.train_overrides], **quiet)
    if args.train_overrides and not args.run:
        print("training overrides:", " ".join(args.train_overrides))
    summary = json.loads((run / "summary.json").read_text())
    stage1 = json.loads((run / "autoencoder.json").read_text())
    print(f"\nrun {run}: {summary['global_step']} optimizer steps, {summary['epochs']} epochs in "
          f"{summary['train_seconds']:.0f} s ({summary['precision']})")
    print(f"stage 1 reconstruction of the {stage1['split']} split ({stage1['images']} images): MS-SSIM "
          f"{stage1['ms_ssim']:.4f}  SSIM {stage1['ssim']:.4f}  PSNR {stage1['psnr']:.2f} dB; "
          f"scale factor {stage1['scale_factor']:.4f}")
    features = args.features or str(train(None, [*FEATURE_DEFAULTS, "name=features64", "data.image_size=64",
                                                 f"data.path={DATA}", f"runs_dir={args.runs_dir}",
                                                 *(["trainer.max_epochs=1", "data.limit=256"] if args.quick else [])],
                                          **quiet))

    recipe = load_run(run)
    rows = []
    settings = [(part.split(":")[0], int(part.split(":")[1]), "32" if part.count(":") == 2 else "auto")
                for part in args.samplers.split(",")]
    for sampler, steps, precision in settings:
        t0 = time.perf_counter()
        images, labels = draw(recipe, args.n, seed=0, batch_size=args.n, sampler=sampler, steps=steps,
                              precision=precision)
        seconds = time.perf_counter() - t0
        out = Path(args.runs_dir) / f"ldm_{sampler}{steps}_{precision}.npz"
        save_npz(out, images, labels)
        ev = evaluate(DATA, out, features=features, out=out.with_suffix(".json"), n=args.n, utility=False,
                      image_size=64, overwrite=True, log=lambda *_: None)
        rows.append((sampler, steps, "bf16" if precision == "auto" else "fp32", args.n / seconds, seconds,
                     ev["fidelity"]["fid"], ev["fidelity"]["kid"], ev["fidelity"]["precision"], ev["fidelity"]["recall"],
                     ev["diversity"]["fake"]["ms_ssim_mean"], ev))
        print(f"  {sampler} {steps} ({rows[-1][2]}): {rows[-1][3]:.2f} img/s, FID {rows[-1][5]:.2f}, "
              f"KID {rows[-1][6]:.4f}", flush=True)
    floor = rows[0][-1]["floor"]["fidelity"]
    print(f"\nsampling {args.n} class-balanced images, 64 px (UNet in bf16 autocast unless fp32):")
    print(f"{'sampler':8s} {'steps':>5s} {'UNet':>4s} {'img/s':>7s} {'s':>7s} {'FID':>7s} {'KID':>7s} {'prec':>5s} "
          f"{'recall':>6s} {'MS-SSIM':>7s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:5d} {r[2]:>4s} {r[3]:7.2f} {r[4]:7.1f} {r[5]:7.2f} {r[6]:7.4f} {r[7]:5.2f} {r[8]:6.2f} "
              f"{r[9]:7.4f}")
    print(f"{'real train vs real test (floor)':30s} {floor['fid']:7.2f} {floor['kid']:7.4f} {floor['precision']:5.2f} "
          f"{floor['recall']:6.2f} {rows[0][-1]['diversity']['real']['ms_ssim_mean']:7.4f}")


if __name__ == "__main__":
    main()
