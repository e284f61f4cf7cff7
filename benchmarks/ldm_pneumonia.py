"""Latent diffusion on PneumoniaMNIST at 64 px: training speed of each stage (fp32 vs bf16), the
shipped recipe's training time and stage-1 reconstruction, and the sampler trade-off table
(every sampler x steps asked for: network evaluations, images/s, FID / KID in the domain feature
space, precision / recall, diversity), with a figure of each row's first samples.

    python benchmarks/ldm_pneumonia.py [--run RUN_DIR] [--flow-run RUN_DIR] [--features FEATURE_RUN]
        [--n 256] [--samplers ddpm:1000,ddim:50,dpmpp:20,euler:20] [--train-overrides K=V ...]
        [--figure PNG] [--quick]

Without --run it trains configs/ldm_pneumonia.yaml (with --train-overrides). Flow samplers
(euler, heun) draw from a rectified-flow model: --flow-run, or one trained here on the same stage
1 as --run (its autoencoder reused) for as many stage-2 epochs, so the two objectives get the
same budget. Without --features it trains the domain feature network at 64 px. Every sampler
draws the same n class-balanced images (same seed) with the UNet in bf16 autocast where the CPU
has it (a row spec ending in :32 runs it in fp32); each set is scored against the real test split
resized to 64 px, beside the real-vs-real floor.
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
    parser.add_argument("--flow-run", help="a trained rectified-flow run for the euler / heun rows (default: train "
                                           "one on --run's stage 1 for as many stage-2 epochs)")
    parser.add_argument("--ddim-eta", type=float, help="DDIM's stochasticity for the ddim rows (default: the run's "
                                                       "diffusion.ddim_eta, 0)")
    parser.add_argument("--figure", help="write the first 12 samples of every row here (PNG)")
    parser.add_argument("--quick", action="store_true", help="a tiny run end to end, to check the script")
    args = parser.parse_args()
    if args.quick:
        args.skip_throughput, args.n = True, 16
        args.train_overrides += ["data.limit=64", "trainer.max_epochs=2", "diffusion.autoencoder_epochs=1",
                                 "model.channels=[8,16,16]", "diffusion.unet_channels=[16,32,32]"]
        args.samplers = "ddim:5,dpmpp:5,euler:5,heun:3"
    torch.manual_seed(0)
    from medsynth.config import load_config
    from medsynth.diffusion import FLOW_SAMPLERS
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

    settings = [(part.split(":")[0], int(part.split(":")[1]), "32" if part.count(":") == 2 else "auto")
                for part in args.samplers.split(",")]
    flow_run = args.flow_run
    if flow_run is None and any(sampler in FLOW_SAMPLERS for sampler, _, _ in settings):
        cfg = load_config(run / "config.yaml")
        stage2_epochs = summary["epochs"] - cfg.diffusion.autoencoder_epochs
        flow_run = str(train(RECIPE, [f"data.path={DATA}", f"runs_dir={args.runs_dir}", *args.train_overrides,
                                      "name=ldm_pneumonia_rflow", "diffusion.objective=rectified_flow",
                                      f"diffusion.autoencoder={run}", "diffusion.autoencoder_epochs=0",
                                      f"trainer.max_epochs={stage2_epochs}"], **quiet))
    if flow_run:
        flow_summary = json.loads((Path(flow_run) / "summary.json").read_text())
        print(f"rectified-flow run {flow_run} (stage 1 of {run}): {flow_summary['global_step']} optimizer steps, "
              f"{flow_summary['epochs']} epochs in {flow_summary['train_seconds']:.0f} s")

    recipes = {"diffusion": load_run(run), "flow": load_run(flow_run) if flow_run else None}
    if args.ddim_eta is not None:
        recipes["diffusion"].cfg.diffusion.ddim_eta = args.ddim_eta
        print(f"DDIM eta {args.ddim_eta}")
    rows, figure_rows = [], []
    for sampler, steps, precision in settings:
        recipe = recipes["flow" if sampler in FLOW_SAMPLERS else "diffusion"]
        t0 = time.perf_counter()
        images, labels = draw(recipe, args.n, seed=0, batch_size=args.n, sampler=sampler, steps=steps,
                              precision=precision)
        seconds = time.perf_counter() - t0
        out = Path(args.runs_dir) / f"ldm_{sampler}{steps}_{precision}.npz"
        save_npz(out, images, labels)
        figure_rows.append((f"{sampler} {steps}", images[:12]))
        ev = evaluate(DATA, out, features=features, out=out.with_suffix(".json"), n=args.n, utility=False,
                      image_size=64, overwrite=True, log=lambda *_: None)
        nfe = 2 * steps - 1 if sampler == "heun" else steps
        rows.append((sampler, steps, nfe, "bf16" if precision == "auto" else "fp32", args.n / seconds, seconds,
                     ev["fidelity"]["fid"], ev["fidelity"]["kid"], ev["fidelity"]["precision"], ev["fidelity"]["recall"],
                     ev["diversity"]["fake"]["ms_ssim_mean"], ev))
        print(f"  {sampler} {steps} ({rows[-1][3]}): {rows[-1][4]:.2f} img/s, FID {rows[-1][6]:.2f}, "
              f"KID {rows[-1][7]:.4f}", flush=True)
    floor = rows[0][-1]["floor"]["fidelity"]
    print(f"\nsampling {args.n} class-balanced images, 64 px, against {rows[0][-1]['fidelity']['real_images']} real "
          "test images (UNet in bf16 autocast where native, unless fp32):")
    print(f"{'sampler':8s} {'steps':>5s} {'NFE':>5s} {'UNet':>4s} {'img/s':>7s} {'s':>7s} {'FID':>7s} {'KID':>7s} "
          f"{'prec':>5s} {'recall':>6s} {'MS-SSIM':>7s}")
    for r in rows:
        print(f"{r[0]:8s} {r[1]:5d} {r[2]:5d} {r[3]:>4s} {r[4]:7.2f} {r[5]:7.1f} {r[6]:7.2f} {r[7]:7.4f} {r[8]:5.2f} "
              f"{r[9]:6.2f} {r[10]:7.4f}")
    print(f"{'real val vs real test (floor)':30s} {floor['fid']:7.2f} {floor['kid']:7.4f} {floor['precision']:5.2f} "
          f"{floor['recall']:6.2f} {rows[0][-1]['diversity']['real']['ms_ssim_mean']:7.4f}")
    if args.figure:
        save_rows(figure_rows, Path(args.figure))
        print(f"figure: {args.figure}")


def save_rows(rows: list, path: Path) -> None:
    """One row of images (N x 1 x H x W in [-1, 1]) per (label, images), labelled on the left."""
    from matplotlib.figure import Figure
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    cols = max(len(images) for _, images in rows)
    fig = Figure(figsize=(cols * 0.9 + 1.2, len(rows) * 0.9))
    FigureCanvasAgg(fig)
    for i, (label, images) in enumerate(rows):
        for j, image in enumerate(images):
            ax = fig.add_subplot(len(rows), cols, i * cols + j + 1)
            ax.imshow(image[0].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if j == 0:
                ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=8)
    fig.subplots_adjust(left=1.1 / (cols * 0.9 + 1.2), right=0.99, top=0.99, bottom=0.01, wspace=0.05, hspace=0.05)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
