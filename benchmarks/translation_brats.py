"""BraTS T1c -> FLAIR at native size: pix2pix and CycleGAN against copying the T1c, scored on
whole held-out volumes inside the brain, and the segmentation Dice lost when a segmentation model
gets the translated FLAIR instead of the real one.

    python benchmarks/translation_brats.py                      # the full benchmark (about 80 CPU minutes)
    python benchmarks/translation_brats.py --quick              # 1 epoch each on few slices: a smoke run
    python benchmarks/translation_brats.py --l1 100 20 --epochs 20 --cyclegan-epochs 10 --seg-epochs 60

Stages (every score: MAE, PSNR and SSIM per whole volume inside the brain mask, as
`medsynth evaluate --fake RUN` computes them, with the copy-the-T1c baseline beside):
1. pix2pix (configs/pix2pix_brats.yaml) once per L1 weight (--l1), trained on the two training
   cases for --epochs, scored on the two validation cases; its per-epoch validation L1 kept.
2. The L1 weight with the lowest validation MAE is the recipe's choice; that run is scored on the
   test pair (pat0001, pat0002), which chose nothing.
3. CycleGAN (configs/cyclegan_brats.yaml with the same native-size slices and resize-conv
   decoder; no 2.5D, its reverse generator needs one-channel images) for --cyclegan-epochs, once
   per identity-loss weight (--cyclegan-identity, default the config's 5) and MIND structure-
   consistency weight (--cyclegan-structure, default 0: off; Yang et al. 2018), every pair of the
   two, scored on the validation cases; the pair with the best validation SSIM (the measure its
   goal names) is scored on the test pair. --cyclegan-runs RUN ...: runs already trained at this
   budget join the candidates instead of being trained again.
4. Segmentation: MONAI's UNet (configs/unet_brats.yaml, FLAIR + T1c in) trained on train +
   validation (four cases) for --seg-epochs, then the test pair segmented three times: with the
   real FLAIR, with the chosen pix2pix's FLAIR (`medsynth translate` of the T1c), and with the T1c
   copied into the FLAIR's place. Dice per region (whole tumour, core, enhancing) per case.

With --cases 4, pix2pix and CycleGAN train on the four train + validation cases instead (the
issue allows it "where it helps"): nothing is left to choose on, so --l1 and --cyclegan-identity
must name one weight each, the one the validation cases chose with two training cases; the test
pair still chooses nothing.
The budget stays in epochs, so four cases get twice the batches (and wall time) of two.

--ema DECAY: both translators translate with an exponential moving average of their generators'
weights (model.ema_decay; training itself is unchanged). --skip pix2pix: CycleGAN alone (and no
segmentation stage, which needs the pix2pix run).

Budgets are epochs (fixed numbers of batches), so the scores do not depend on the machine's
speed; wall time is printed beside them. Everything trains in fp32 (the same numbers on any CPU).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _cli import ROOT, medsynth
from omegaconf import OmegaConf

BRATS = ROOT.parent / "shared" / "data" / "brats2013"
METRICS = ("mae", "psnr", "ssim")


def _train(config: str, overrides: list[str], runs_dir: Path) -> Path:
    start = time.perf_counter()
    run = Path(medsynth("train", config, f"runs_dir={runs_dir}", *overrides))
    print(f"  -> {run} ({(time.perf_counter() - start) / 60:.1f} min)", flush=True)
    return run


def _score(run: Path, real: Path | None, out: Path) -> dict:
    """Per case and mean translation scores (model and copy-the-source baseline)."""
    from medsynth.evaluate import evaluate

    result = evaluate(real, run, out=out, resamples=1000, log=lambda *_: None)
    return result["translation"] if "translation" in result else result["segmentation"]


def _val_curve(run: Path) -> list[float]:
    import csv

    with open(run / "metrics.csv") as f:
        return [float(r["val/l1"]) for r in csv.DictReader(f) if r.get("val/l1")]


def _link_cases(folder: Path, cases: list[Path], replace: dict[str, Path] | None = None) -> None:
    """Case folders of symlinks; `replace`: case name -> the file standing in for its FLAIR."""
    for case in cases:
        target = folder / case.name
        target.mkdir(parents=True)
        for f in case.iterdir():
            if replace and f.name.startswith("Flair_"):
                (target / f.name).symlink_to(replace[case.name].resolve())
            else:
                (target / f.name).symlink_to(f.resolve())


def _row(name: str, scores: dict, key: str = "model") -> str:
    cells = []
    for m in METRICS:
        mean = scores["mean"][m if key == "model" else f"baseline_{m}"]
        lo, hi = scores["mean"].get((m if key == "model" else f"baseline_{m}") + "_interval", (np.nan, np.nan))
        cells.append(f"{mean:.4f} [{lo:.4f}, {hi:.4f}]" if m != "psnr" else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]")
    per_case = ", ".join(f"{c[11:18]} {s[key]['mae']:.4f}" for c, s in sorted(scores["cases"].items()))
    return f"| {name} | " + " | ".join(cells) + f" | {per_case} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--l1", type=float, nargs="+", default=[100.0, 20.0], help="pix2pix L1 weights to try")
    parser.add_argument("--epochs", type=int, default=20, help="pix2pix epochs")
    parser.add_argument("--cyclegan-epochs", type=int, default=10)
    parser.add_argument("--cyclegan-identity", type=float, nargs="+", default=[5.0],
                        help="CycleGAN identity-loss weights to try (default: the config's 5); the one with the best "
                             "validation SSIM is scored on the test pair")
    parser.add_argument("--cyclegan-structure", type=float, nargs="+", default=[0.0],
                        help="CycleGAN MIND structure-consistency weights to try (loss.structure_weight; default 0, "
                             "off), each with each --cyclegan-identity weight; chosen on validation SSIM as well")
    parser.add_argument("--cyclegan-runs", nargs="+", metavar="RUN",
                        help="CycleGAN runs already trained with this call's budget (their identity and structure "
                             "weights read from their configs): scored instead of trained again")
    parser.add_argument("--seg-epochs", type=int, default=60)
    parser.add_argument("--skip", nargs="*", default=[], choices=["pix2pix", "cyclegan", "segmentation"])
    parser.add_argument("--ema", type=float, metavar="DECAY",
                        help="translate with an EMA of the generators' weights (model.ema_decay)")
    parser.add_argument("--pix2pix-runs", nargs="+", metavar="RUN",
                        help="finished pix2pix runs to score instead of training them (their L1 weight from their "
                             "config)")
    parser.add_argument("--quick", action="store_true", help="1 epoch each on the largest slices only")
    parser.add_argument("--cases", type=int, choices=[2, 4], default=2,
                        help="train the translators on the 2 training cases (and choose the L1 weight on the 2 "
                             "validation cases) or on all 4 (one --l1 weight, chosen before)")
    parser.add_argument("--runs-dir", default="runs/bench_translation")
    parser.add_argument("--out", help="write every score as JSON here")
    args = parser.parse_args()
    if {"pix2pix", "cyclegan"} <= set(args.skip):
        parser.error("--skip pix2pix cyclegan leaves no translator to score")
    if args.cases == 4 and len(args.pix2pix_runs or args.l1) != 1:
        parser.error("--cases 4 leaves no validation case to choose on: give one --l1 weight (or one --pix2pix-runs)")
    if args.cases == 4 and (len(args.cyclegan_identity) != 1 or len(args.cyclegan_structure) != 1
                            or len(args.cyclegan_runs or []) > 1):
        parser.error("--cases 4 leaves no validation case to choose on: give one --cyclegan-identity and one "
                     "--cyclegan-structure weight (or one --cyclegan-runs)")
    for run in args.pix2pix_runs or []:  # a given run must have trained on the cases --cases says
        trained = len(list((ROOT / _given_config(run, "--pix2pix-runs").data.path / "train").iterdir()))
        if trained != args.cases:
            parser.error(f"--pix2pix-runs {run}: trained on {trained} cases, not --cases {args.cases}")
    runs_dir = (ROOT / args.runs_dir).resolve()
    epochs = [1, 1, 1] if args.quick else [args.epochs, args.cyclegan_epochs, args.seg_epochs]
    # given CycleGAN runs checked before anything trains (a refusal after pix2pix would waste it)
    cyclegan_settings = {} if "cyclegan" in args.skip else _cyclegan_settings(args, epochs[1])
    work = runs_dir / f"work-{time.strftime('%Y%m%d-%H%M%S')}"
    work.mkdir(parents=True)
    shared = ["data.min_mask_fraction=0.95"] if args.quick else []  # both translators' overrides
    if args.ema:
        shared.append(f"model.ema_decay={args.ema}")
    if "pix2pix" in args.skip:
        args.skip.append("segmentation")  # it segments with the pix2pix run's FLAIR
    results: dict = {"budget": {"cyclegan_epochs": epochs[1], "seg_epochs": epochs[2]}, "training_cases": args.cases,
                     "ema_decay": args.ema}
    four = _four_cases(work) if args.cases == 4 else None
    # 4 cases: no validation folder, and none held out of the training slices either
    data = [f"data.path={four}", "data.val_fraction=0"] if four else []
    suffix = "_4cases" if four else ""  # run names tell the two apart in --runs-dir

    # 1-2. pix2pix per L1 weight: chosen on validation, scored on test
    p2p_run = None
    if "pix2pix" not in args.skip:
        chosen, best = None, np.inf
        results["pix2pix"] = {}
        given = {float(OmegaConf.load(Path(r) / "config.yaml").loss.l1_weight): Path(r)
                 for r in args.pix2pix_runs or []}
        for l1 in given or args.l1:
            run = given.get(l1) or _train("configs/pix2pix_brats.yaml",
                                          [f"loss.l1_weight={l1}", f"trainer.max_epochs={epochs[0]}",
                                           f"name=pix2pix_l1_{l1:g}{suffix}", *data, *shared], runs_dir)
            if four:  # the weight was chosen before, on the validation cases, which it now trains on
                chosen = f"{l1:g}"
                results["pix2pix"][chosen] = _run_facts(run)
                continue
            val = _score(run, BRATS / "validation", work / f"val_l1_{l1:g}.json")
            results["pix2pix"][f"{l1:g}"] = {**_run_facts(run), "validation": val,
                                             "val_l1_per_epoch": _val_curve(run)}
            print(f"  L1 weight {l1:g}: validation MAE {val['mean']['mae']:.4f} (copying the T1c "
                  f"{val['mean']['baseline_mae']:.4f}); val L1 per epoch "
                  + " ".join(f"{v:.3f}" for v in _val_curve(run)), flush=True)
            if val["mean"]["mae"] < best:
                chosen, best = f"{l1:g}", val["mean"]["mae"]
        p2p_run = Path(results["pix2pix"][chosen]["run"])
        results["chosen_l1"] = chosen
        results["pix2pix_test"] = _score(p2p_run, None, work / "test_pix2pix.json")

    # 3. CycleGAN at the same native size, per (identity, structure) weight: chosen on validation SSIM (its goal's
    # measure), scored on test
    if "cyclegan" not in args.skip:
        candidates = {}
        for (identity, structure), given in cyclegan_settings.items():
            label = f"identity {identity:g}, structure {structure:g}"
            tag = f"identity_{identity:g}" + (f"_structure_{structure:g}" if structure else "")
            run = given or _train("configs/cyclegan_brats.yaml",
                                  ["data.image_size=null", "data.crop_to_mask=192", "data.min_mask_fraction=0.1",
                                   "data.batch_size=4", "model.depth=5", "model.upsample=bilinear",
                                   "trainer.precision=32", f"loss.identity_weight={identity}",
                                   f"loss.structure_weight={structure}", f"trainer.max_epochs={epochs[1]}",
                                   f"name=cyclegan_brats{suffix}_{tag}", *data, *shared], runs_dir)
            candidates[label] = {**_run_facts(run), "identity_weight": identity, "structure_weight": structure}
            if not four:
                val = candidates[label]["validation"] = _score(run, BRATS / "validation",
                                                               work / f"val_cyclegan_{tag}.json")
                print(f"  {label}: validation SSIM {val['mean']['ssim']:.4f} (copying the T1c "
                      f"{val['mean']['baseline_ssim']:.4f})", flush=True)
        def validation_ssim(label: str) -> float:  # four cases: one setting, nothing to score; a NaN never wins
            ssim = candidates[label].get("validation", {}).get("mean", {}).get("ssim", np.nan)
            return -np.inf if np.isnan(ssim) else ssim

        chosen_setting = max(candidates, key=validation_ssim)
        results["chosen_cyclegan"] = chosen_setting
        results["cyclegan_candidates"] = candidates
        run = Path(candidates[chosen_setting]["run"])
        results["cyclegan"] = {**candidates[chosen_setting], "test": _score(run, None, work / "test_cyclegan.json")}
        if args.ema:  # the same run's last weights beside their average: what the EMA alone changed
            last = _last_weights(run, work / "cyclegan_last_weights")
            results["cyclegan_last_weights"] = {
                **_run_facts(run), "test": _score(last, None, work / "test_cyclegan_last.json"),
                **({} if four else {"validation": _score(last, BRATS / "validation", work / "val_cyclegan_last.json")})}

    # 4. Segmentation with the real, translated and copied FLAIR
    if "segmentation" not in args.skip:
        results["segmentation"] = _segmentation(p2p_run, work, runs_dir, epochs[2], args.quick)

    _print(results)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1, default=str))


def _given_config(run, flag: str):
    """The config of a run named on the command line, or one message saying it is not a run."""
    path = Path(run) / "config.yaml"
    if not path.is_file():
        raise SystemExit(f"{flag} {run}: not a run directory (no config.yaml)")
    return OmegaConf.load(path)


def _cyclegan_settings(args, epochs: int) -> dict[tuple[float, float], Path | None]:
    """(identity weight, structure weight) -> a given run (--cyclegan-runs) or None (to train): the
    given runs' settings first, then every pair of --cyclegan-identity x --cyclegan-structure
    that no given run has. A given run must have the budget and training cases of this call."""
    settings: dict[tuple[float, float], Path | None] = {}
    for run in map(Path, args.cyclegan_runs or []):
        cfg = _given_config(run, "--cyclegan-runs")
        trained = len(list((ROOT / cfg.data.path / "train").iterdir()))
        if int(cfg.trainer.max_epochs) != epochs or trained != args.cases:
            raise SystemExit(f"--cyclegan-runs {run}: {cfg.trainer.max_epochs} epochs on {trained} cases, not "
                             f"{epochs} epochs on --cases {args.cases}")
        settings[(float(cfg.loss.identity_weight), float(cfg.loss.get("structure_weight", 0.0)))] = run
    for identity in args.cyclegan_identity:
        for structure in args.cyclegan_structure:
            settings.setdefault((identity, structure), None)
    return settings


def _run_facts(run: Path) -> dict:
    summary = json.loads((run / "summary.json").read_text())
    cfg = OmegaConf.load(run / "config.yaml")
    return {"run": str(run), "train_minutes": summary["train_seconds"] / 60, "epochs": int(cfg.trainer.max_epochs),
            "ema_decay": cfg.model.get("ema_decay")}


def _last_weights(run: Path, out: Path) -> Path:
    """A copy of an EMA run that translates with the generators' last weights (model.ema_decay
    null, the *_ema weights left out): EMA only watches training, so these are the weights the
    same run without it would have ended with."""
    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True)
    cfg = OmegaConf.load(run / "config.yaml")
    cfg.model.ema_decay = None
    OmegaConf.save(cfg, out / "config.yaml")
    weights = load_file(run / "model.safetensors")
    save_file({k: v for k, v in weights.items() if "_ema." not in k}, str(out / "model.safetensors"))
    for name in ("summary.json", "environment.json", "lineage.json"):  # not translation.json: the EMA's scores
        if (run / name).is_file():
            (out / name).write_bytes((run / name).read_bytes())
    return out


def _four_cases(work: Path) -> Path:
    """A data folder (symlinks) with train + validation (four cases) as training cases and the
    test pair as test, made once per benchmark run."""
    data = work / "four_cases"
    if not data.exists():
        _link_cases(data / "train", sorted((BRATS / "train").iterdir()) + sorted((BRATS / "validation").iterdir()))
        _link_cases(data / "test", sorted((BRATS / "test").iterdir()))
    return data


def _segmentation(p2p_run: Path, work: Path, runs_dir: Path, epochs: int, quick: bool) -> dict:
    from medsynth.translate import translate

    test_cases = sorted((BRATS / "test").iterdir())
    data = _four_cases(work)
    overrides = [f"data.path={data}", f"trainer.max_epochs={epochs}", "trainer.precision=32", "name=unet_brats_4cases"]
    if quick:
        overrides += ["data.patches_per_epoch=4"]
    seg_run = _train("configs/unet_brats.yaml", overrides, runs_dir)
    translated = {}
    for case in test_cases:
        out = work / "translated" / f"{case.name}_flair.nii.gz"
        translate(p2p_run, next(case.glob("T1c_*.nii.gz")), out, mask=case / "brainmask.nii.gz",
                  log=lambda *_: None)
        translated[case.name] = out
    _link_cases(work / "flair_translated", test_cases, translated)
    _link_cases(work / "flair_is_t1c", test_cases, {c.name: next(c.glob("T1c_*.nii.gz")) for c in test_cases})
    summary = json.loads((seg_run / "summary.json").read_text())
    out = {"run": str(seg_run), "train_minutes": summary["train_seconds"] / 60}
    for name, folder in (("real FLAIR", data / "test"), ("pix2pix FLAIR", work / "flair_translated"),
                         ("T1c as FLAIR", work / "flair_is_t1c")):
        out[name] = _score(seg_run, folder, work / f"seg_{name.replace(' ', '_')}.json")
    return out


def _print(results: dict) -> None:
    b, cases = results["budget"], results["training_cases"]
    def ema(r: dict) -> str:  # each run's own setting (a given --pix2pix-runs run may have none)
        return f", EMA {r['ema_decay']}" if r.get("ema_decay") else ""

    p2p, c = results.get("pix2pix") or {}, results.get("cyclegan")
    if cases == 2:
        print("\n## The validation cases (2 training cases)\n")
        print("| model | MAE [95% CI] | PSNR dB | SSIM | MAE per case |")
        print("|---|---|---|---|---|")
        first = next(iter(p2p.values()))["validation"] if p2p else c["validation"]
        print(_row("copy the T1c (baseline)", first, "baseline_source"))
        for l1, r in p2p.items():
            print(_row(f"pix2pix, L1 weight {l1}, {r['epochs']} epochs{ema(r)} ({r['train_minutes']:.1f} min)",
                       r["validation"]))
        for label, r in (results.get("cyclegan_candidates") or {}).items():
            many = len(results["cyclegan_candidates"]) > 1
            chosen = " (chosen)" if many and label == results["chosen_cyclegan"] else ""
            print(_row(f"CycleGAN, {label}{chosen} ({b['cyclegan_epochs']} epochs{ema(r)}, "
                       f"{r['train_minutes']:.1f} min)", r["validation"]))
        if c:
            if "cyclegan_last_weights" in results:
                print(_row(f"  {results['chosen_cyclegan']}: last weights (no EMA)",
                           results["cyclegan_last_weights"]["validation"]))
    print(f"\n## The test pair (L1 weight {results.get('chosen_l1')}; translators trained on {cases} cases)\n")
    print("| model | MAE [95% CI] | PSNR dB | SSIM | MAE per case |")
    print("|---|---|---|---|---|")
    print(_row("copy the T1c (baseline)", results["pix2pix_test"] if p2p else c["test"], "baseline_source"))
    if p2p:
        chosen = p2p[results["chosen_l1"]]
        print(_row(f"pix2pix, L1 weight {results['chosen_l1']}, {chosen['epochs']} epochs{ema(chosen)} "
                   f"({chosen['train_minutes']:.1f} min)", results["pix2pix_test"]))
    if c:
        print(_row(f"CycleGAN, {results['chosen_cyclegan']} ({b['cyclegan_epochs']} epochs{ema(c)}, "
                   f"{c['train_minutes']:.1f} min)", c["test"]))
        if "cyclegan_last_weights" in results:
            print(_row("  the same run's last weights (no EMA)", results["cyclegan_last_weights"]["test"]))
    if "segmentation" in results:
        s = results["segmentation"]
        print(f"\n## Segmentation of the test pair (UNet, 4 training cases, {b['seg_epochs']} epochs, "
              f"{s['train_minutes']:.1f} min)\n")
        print("| FLAIR given | Dice WT | Dice TC | Dice ET | per case WT |")
        print("|---|---|---|---|---|")
        for name in ("real FLAIR", "pix2pix FLAIR", "T1c as FLAIR"):
            m = s[name]["mean"]
            per_case = ", ".join(f"{c[11:18]} {v['regions']['whole_tumour']['dice']:.3f}"
                                 for c, v in sorted(s[name]["cases"].items()))
            print(f"| {name} | " + " | ".join(f"{m.get(f'dice_{r}', np.nan):.3f}" for r in
                                             ("whole_tumour", "tumour_core", "enhancing_tumour")) + f" | {per_case} |")


if __name__ == "__main__":
    main()
