"""`medsynth evaluate` for models that map a real case to a target (translation, segmentation): per
held-out case scores and their means with bootstrap intervals over cases, in the same
evaluation.json layout as a synthetic set's audit (sets, one section per task, settings).

- segmentation: Dice and HD95 (mm) per class (and BraTS region) per case, the case segmented whole
  by sliding windows exactly as `medsynth segment` does;
- translation: MAE, PSNR and SSIM per whole case volume inside its mask (all slices along the run's
  slice axis), beside the trivial baseline of the source contrast copied as it is.

The cases: `real` (a case folder or a folder of case folders, with the run's file patterns), or by
default the run's own held-out cases (its test split, else validation).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from medsynth.data.cases import SPLIT_FOLDERS, Case
from medsynth.errors import MedsynthError
from medsynth.metrics.intervals import LEVEL, mean_interval


def held_out_case_folders(cfg) -> tuple[list[Path], str]:
    """The run's held-out case folders (test, else validation) and that split's name, from its data
    config: split sub-folders, or a folder of cases with a split file."""
    from medsynth.data.patches import read_split_file

    path = Path(cfg.data.path)
    if cfg.data.get("splits"):
        named = read_split_file(cfg.data.splits)
        split = "test" if named["test"] else "val"
        if not named[split] or not path.is_dir():
            raise MedsynthError(f"{cfg.data.splits}: no test or validation cases in a folder of case folders "
                                f"({path}); give --real CASES")
        folders = [path / n for n in named[split]]
        missing = [f.name for f in folders if not f.is_dir()]
        if missing:
            raise MedsynthError(f"{path}: no case folder(s) {missing[:5]} (named by {cfg.data.splits})")
        return folders, split
    for split in ("test", "val"):
        folder = path / SPLIT_FOLDERS[split]
        if folder.is_dir():
            return sorted(d for d in folder.iterdir() if d.is_dir()), split
    raise MedsynthError(f"{path}: the run's data has no test/ or validation/ cases; give --real CASES")


def _case_folders(real: Path | None, cfg, is_case) -> tuple[list[Path], str, str]:
    if real is None:
        folders, split = held_out_case_folders(cfg)
        return folders, f"{cfg.data.path} ({split} split of the run's data)", split
    if not real.exists():
        raise MedsynthError(f"--real {real}: not found")
    if is_case(real):
        return [real], str(real), "given"
    folders = sorted(d for d in real.iterdir() if d.is_dir() and is_case(d)) if real.is_dir() else []
    if not folders:
        raise MedsynthError(f"--real {real}: neither a case (files matching {list(cfg.data.contrasts)}) nor a "
                            "folder of case folders")
    return folders, str(real), "given"


def _means(per_case: dict[str, dict[str, float]], resamples: int, seed: int) -> dict:
    """Mean of every score over cases with its bootstrap interval (cases resampled). A score a case
    does not define (HD95 when one of the two maps is empty) is left out of its mean, and
    "<key>_undefined_cases" says in how many cases."""
    keys = sorted({k for scores in per_case.values() for k in scores})
    out = {}
    for key in keys:
        values = np.array([scores.get(key) if scores.get(key) is not None else np.nan
                           for scores in per_case.values()], dtype=np.float64)
        undefined = int((~np.isfinite(values)).sum())
        values = values[np.isfinite(values)]
        if undefined:
            out[f"{key}_undefined_cases"] = undefined
        if not len(values):
            continue
        out[key] = float(values.mean())
        if resamples and len(values) > 1:
            out[f"{key}_interval"] = mean_interval(values, resamples, np.random.default_rng(seed))
    return out


def evaluate_segmentation(recipe, real: Path | None, resamples: int, seed: int, log=print) -> dict:
    from medsynth.metrics.segmentation import score_label_maps
    from medsynth.segment import is_case_folder, segment_case

    cfg = recipe.cfg
    folders, source, split = _case_folders(real, cfg, lambda p: is_case_folder(p, cfg.data))
    cases, flat = {}, {}
    for folder in folders:
        case, labels, _ = segment_case(recipe, folder)
        if case.label is None:
            raise MedsynthError(f"{folder}: no reference label map matching '{cfg.data.label}' to score against")
        scores = score_label_maps(labels, case.label, cfg.data, case.spacing)
        cases[case.name] = scores
        flat[case.name] = {f"{m}_{'class_' if group == 'classes' else ''}{name}": s[m]
                           for group in ("classes", "regions") for name, s in (scores.get(group) or {}).items()
                           for m in ("dice", "hd95")}
        log(f"{case.name}: " + ", ".join(f"{k} {v:.3f}" for k, v in flat[case.name].items() if k.startswith("dice")))
    return {"task": "segmentation", "sets": {"real": {"source": source, "split": split, "cases": len(cases)}},
            "segmentation": {"cases": cases, "mean": _means(flat, resamples, seed)}}


def evaluate_translation(recipe, real: Path | None, resamples: int, seed: int, batch_size: int = 64,
                         log=print) -> dict:
    from medsynth.data.cases import load_case, match_file
    from medsynth.data.patches import prepare_case
    from medsynth.data.slices import mask_slices
    from medsynth.metrics.translation import translation_scores
    from medsynth.translate import translate_volume

    cfg = recipe.cfg
    contrasts, axis = list(cfg.data.contrasts), int(cfg.data.slice_axis)
    folders, source, split = _case_folders(real, cfg, lambda p: p.is_dir() and match_file(p, contrasts[0]) is not None)
    cases, flat = {}, {}
    for folder in folders:
        files = [match_file(folder, c) for c in contrasts]
        if any(f is None for f in files):
            raise MedsynthError(f"{folder}: no file matches {[c for c, f in zip(contrasts, files) if f is None]}")
        mask = match_file(folder, cfg.data.mask)
        if cfg.data.mask and mask is None:  # normalised otherwise than in training: refused, as segment does
            raise MedsynthError(f"{folder}: no mask matching '{cfg.data.mask}' (the model was trained with "
                                "intensities normalised inside it)")
        case: Case = prepare_case(load_case(folder.name, files, None, mask_path=mask), cfg.data.mr_normalise,
                                  cfg.data.spacing)
        inside = case.mask if case.mask is not None else (case.image > -1).any(0)
        sources = len(contrasts) - recipe.target_channels
        # the whole volume translated as `medsynth translate` does, scored on the slices holding the mask
        fake, _ = translate_volume(recipe, case.image[:sources], inside, batch_size)  # outside its box: -1
        keep = mask_slices(inside, axis)

        def slices(volume):  # C x X x Y x Z -> N x C x H x W at the kept slices
            return torch.from_numpy(np.ascontiguousarray(np.moveaxis(volume, 1 + axis, 0)[keep]))

        fake, target, copy = slices(fake), slices(case.image[sources:]), slices(case.image[sources - 1:sources])
        mask = slices(inside[None])
        model = translation_scores(fake, target, mask)
        baseline = translation_scores(copy.expand_as(target), target, mask)
        cases[case.name] = {"model": model, "baseline_source": baseline, "slices": len(keep)}
        flat[case.name] = {**model, **{f"baseline_{k}": v for k, v in baseline.items()}}
        log(f"{case.name}: MAE {model['mae']:.4f} (copying the source {baseline['mae']:.4f}), SSIM {model['ssim']:.4f} "
            f"({baseline['ssim']:.4f})")
    return {"task": "translation", "sets": {"real": {"source": source, "split": split, "cases": len(cases)}},
            "translation": {"cases": cases, "mean": _means(flat, resamples, seed)}}


def evaluate_cases(recipe, real: str | Path | None, resamples: int, seed: int, log=print) -> dict:
    """The evaluation of a translation or segmentation run (see the module docstring)."""
    real = Path(real) if real is not None else None
    if recipe.can_segment:
        result = evaluate_segmentation(recipe, real, resamples, seed, log)
    elif recipe.can_translate:
        result = evaluate_translation(recipe, real, resamples, seed, log=log)
    else:
        raise MedsynthError(f"a {recipe.cfg.model.family} run is evaluated as a synthetic set")
    result["settings"] = {"seed": seed, "intervals": {"level": LEVEL, "resamples": resamples,
                                                      "method": "percentile bootstrap over cases"}}
    return result
