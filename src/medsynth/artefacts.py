"""What the end of training writes into a run directory, by what the recipe can do:

    can_sample        samples.png (conditional models cycle over their classes; models that draw
                      from label maps: held-out cases' maps, real image beside the drawn one)
    can_reconstruct   reconstructions.png; reconstruction scores where the recipe names a file
                      (latent diffusion: autoencoder.json, stage 1's MS-SSIM / SSIM / PSNR)
    can_translate     translations.png and translation.json (beside the copy-the-source baseline)
    can_segment       segmentation.png and segmentation.json (Dice / HD95 per held-out case)
    is_feature_network features.json (the feature network's test scores and weights hash)

One place for every family, through the writers and the file names of `medsynth.runs`; each
returns the figures that go into summary.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medsynth.data.intensity import structures_only
from medsynth.data.patches import to_values
from medsynth.data.slices import grid_channel
from medsynth.errors import MedsynthError
from medsynth.metrics.segmentation import score_label_maps
from medsynth.metrics.similarity import reconstruction_scores
from medsynth.metrics.translation import translation_scores
from medsynth.provenance import file_sha256, synthetic_provenance
import medsynth.runs as runs
from medsynth.writers import save_grid, write_text

PALETTE = np.array([[0, 0, 0], [230, 60, 60], [60, 200, 60], [70, 110, 240], [245, 210, 50], [200, 80, 220],
                    [60, 210, 220], [240, 140, 40]], dtype=np.float32)


def write_artefacts(recipe, splits, run_dir: Path, seed: int) -> dict:
    """Every end-of-training file the recipe's capabilities call for; returns summary figures."""
    figures: dict = {}
    if recipe.can_reconstruct:
        if recipe.reconstruction_scores_file:
            figures.update(write_reconstruction_scores(recipe, splits, run_dir))
        save_reconstructions(recipe, splits, run_dir, seed)
    if recipe.from_label_maps:
        save_drawn_from_maps(recipe, splits, run_dir, seed)
    elif recipe.can_sample and recipe.ready_to_sample():
        save_samples(recipe, splits, run_dir, seed)
    if recipe.can_translate:
        figures.update(write_translations(recipe, splits, run_dir, seed))
    if recipe.can_segment:
        figures.update(write_segmentations(recipe, splits, run_dir, seed))
    if recipe.is_feature_network:
        figures.update(write_classifier_scores(recipe, splits, run_dir, seed))
    return figures


def save_samples(recipe, splits, run_dir: Path, seed: int) -> None:
    """samples.png: trainer.samples_after_training draws (conditional models cycle over the classes)."""
    n = recipe.cfg.trainer.samples_after_training
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    condition = None
    if recipe.conditional:
        condition = splits.train.labels[:n] if splits.multilabel else torch.arange(n) % recipe.cfg.model.num_classes
        n = len(condition)
    save_grid(run_dir / runs.SAMPLES, recipe.sample(n, condition=condition, generator=generator),
              provenance=synthetic_provenance(recipe, run_dir, seed, kind="samples"),
              channel=grid_channel(recipe.cfg.data))


def save_drawn_from_maps(recipe, splits, run_dir: Path, seed: int, cases: int = 4) -> None:
    """samples.png for a model that draws images from label maps: per held-out case (validation,
    else training), a patch-sized box around its foreground: the real image, the real image with
    its map over it, and the image drawn from that map (the axial slice with most foreground)."""
    held = (splits.val or splits.train)[:cases]
    size, flat = list(splits.patch_size), splits.flat_axis  # 3D box; 2D models: one voxel thick along flat
    generator = torch.Generator(device=recipe.device).manual_seed(seed)
    rows = []
    for case in held:
        foreground = structures_only(case.label, len(splits.classes)) > 0  # tissue bands are not foreground
        centre = np.round(np.argwhere(foreground).mean(axis=0)).astype(int) if foreground.any() else \
            np.array(case.label.shape) // 2
        if flat is not None:  # the slice with most foreground
            centre[flat] = int(np.argmax(foreground.sum(axis=tuple(a for a in range(3) if a != flat))))
        start = [int(np.clip(c - s // 2, 0, max(0, n - s))) for c, s, n in zip(centre, size, case.label.shape)]
        box = tuple(slice(a, a + s) for a, s in zip(start, size))
        label, image = case.label[box], case.image[0][box]
        if flat is not None:  # H x W x 1, as overlay_rows takes 3D tiles
            label, image = np.moveaxis(label, flat, -1), np.moveaxis(image, flat, -1)
        condition = torch.from_numpy((label[..., 0] if flat is not None else label)[None, None].astype(np.int64))
        drawn = recipe.sample(1, condition=condition, generator=generator)[0, 0].cpu().numpy()
        drawn = drawn[..., None] if flat is not None else drawn
        shown = structures_only(label, len(splits.classes))  # the slice and colours of the structures
        real_tiles = overlay_rows(image, shown, shown)
        rows.append(torch.cat([real_tiles[:2], overlay_rows(drawn, shown, shown)[:1]]))
    save_grid(run_dir / runs.SAMPLES, torch.cat(rows), nrow=3,
              provenance=synthetic_provenance(recipe, run_dir, seed, kind="drawn from held-out label maps (per "
                                              "case: real image, real image with its map, image drawn from the map)"))


def save_reconstructions(recipe, splits, run_dir: Path, seed: int) -> None:
    """reconstructions.png: rows of held-out originals above their reconstructions."""
    _, held = splits.held_out()
    x = held.images[:32]
    if splits.crop_size is not None and list(x.shape[2:]) != splits.image_size:
        from medsynth.data.slices import center_crop_array

        x = center_crop_array(x, splits.crop_size)
    labels = held.labels[:32] if held.labels is not None else None
    recon = recipe.reconstruct(x, condition=labels if recipe.conditional else None).cpu()
    width = min(8, len(x))  # originals and their reconstructions on alternating rows
    rows = []
    for i in range(0, len(x), width):
        rows += [x[i:i + width], recon[i:i + width]]
    save_grid(run_dir / runs.RECONSTRUCTIONS, torch.cat(rows), nrow=width,
              provenance=synthetic_provenance(recipe, run_dir, seed, kind="reconstructions (rows of real "
                                              "held-out images alternate with their reconstructions)"),
              channel=grid_channel(recipe.cfg.data))


def write_reconstruction_scores(recipe, splits, run_dir: Path) -> dict:
    """MS-SSIM, SSIM and PSNR of up to 1000 held-out reconstructions into the recipe's scores file;
    summary figures under the file's stem (e.g. autoencoder_ms_ssim)."""
    name, held = splits.held_out()
    x = held.images[:1000]
    labels = held.labels[:1000] if recipe.conditional and held.labels is not None else None
    recon = recipe.reconstruct_all(x, labels)
    try:
        scores = {**reconstruction_scores(x, recon), "split": name}
    except MedsynthError as exc:  # MS-SSIM needs images large enough for its scales
        scores = {"not_computed": str(exc), "l1": float((recon - x).abs().mean()), "images": len(x)}
    scores.update(recipe.model_figures())
    path = run_dir / recipe.reconstruction_scores_file
    write_text(path, json.dumps(scores, indent=2))
    return {f"{Path(path).stem}_{k}": v for k, v in scores.items() if isinstance(v, (int, float)) and k != "images"}


def write_translations(recipe, splits, run_dir: Path, seed: int) -> dict:
    """translations.png (rows: source, target, translation) and translation.json: MAE, PSNR and
    SSIM against the target inside the body (pixels above -1 in some channel) on the held-out
    split, beside the trivial baseline of the source itself."""
    _, held = splits.held_out()
    source, target = recipe.split(held.images)
    fake = torch.cat([recipe.translate(source[i:i + 64]).cpu() for i in range(0, len(source), 64)])
    # background is -1 in every channel; resizing leaves it a rounding error above -1
    mask = (held.images > -1 + 1e-3).any(1, keepdim=True)
    scores = {"model": translation_scores(fake, target, mask),
              "baseline_source": translation_scores(recipe.source_copy(source).expand_as(target), target, mask),
              "images": len(source)}
    write_text(run_dir / runs.TRANSLATION_SCORES, json.dumps(scores, indent=2))
    pick = torch.linspace(0, len(source) - 1, min(8, len(source))).long()
    rows = torch.cat([recipe.source_copy(source[pick]), target[pick, :1], fake[pick, :1]])
    save_grid(run_dir / runs.TRANSLATIONS, rows, nrow=len(pick),
              provenance=synthetic_provenance(recipe, run_dir, seed, kind="translations (rows: real source, real "
                                              "target, synthetic translation)"))
    return {f"test_{k}": v for k, v in scores["model"].items()}


def write_segmentations(recipe, splits, run_dir: Path, seed: int) -> dict:
    """Segment every prepared held-out case (test, else validation) whole; write segmentation.json
    (Dice and HD95 per class and region, per case and mean) and segmentation.png; return the mean
    Dice per class / region."""
    import time

    cases = splits.test or splits.val
    if not cases:
        return {}
    classes = list(recipe.cfg.data.classes)
    per_case, figures = {}, []
    for case in cases:
        start = time.perf_counter()
        pred = recipe.segment(case.image, case.mask)
        seconds = time.perf_counter() - start
        scores = score_label_maps(to_values(pred, classes), to_values(case.label, classes), recipe.cfg.data,
                                  case.spacing)
        per_case[case.name] = {**scores, "seconds": round(seconds, 2)}
        figures.append(overlay_rows(case.image[0], case.label, pred))
    means = {}
    for group in ("classes", "regions"):
        for name in next(iter(per_case.values())).get(group, {}):
            key = f"dice_{name}" if group == "regions" else f"dice_class_{name}"
            means[key] = float(np.mean([per_case[c][group][name]["dice"] for c in per_case]))
    write_text(run_dir / runs.SEGMENTATION_SCORES, json.dumps({"cases": per_case, "mean": means}, indent=2))
    h, w = max(f.shape[-2] for f in figures), max(f.shape[-1] for f in figures)
    # cases differ in size (LA heart crops): pad each to the largest, black, centred
    figures = [F.pad(f, ((w - f.shape[-1]) // 2, (w - f.shape[-1] + 1) // 2, (h - f.shape[-2]) // 2,
                         (h - f.shape[-2] + 1) // 2), value=-1.0) for f in figures]
    save_grid(run_dir / runs.SEGMENTATIONS, torch.cat(figures), nrow=3,
              provenance=synthetic_provenance(recipe, run_dir, seed, kind="segmentation (per held-out case: "
                                              "image, reference labels, model labels)"))
    return means


def overlay_rows(image: np.ndarray, truth: np.ndarray, pred: np.ndarray) -> torch.Tensor:
    """3 x 3 x H x W in [-1, 1]: the axial slice with most reference foreground, plain, with the
    reference labels and with the predicted labels coloured over it."""
    k = int(np.argmax((truth > 0).sum(axis=(0, 1)))) if truth.ndim == 3 else 0
    gray = (np.clip(image[..., k], -1, 1) + 1) * 127.5
    tiles = []
    for labels in (None, truth[..., k], pred[..., k]):
        rgb = np.repeat(gray[..., None], 3, axis=-1)
        if labels is not None:
            colour = PALETTE[np.asarray(labels) % len(PALETTE)]
            rgb = np.where((np.asarray(labels) > 0)[..., None], 0.45 * rgb + 0.55 * colour, rgb)
        tiles.append(torch.from_numpy(np.rot90(rgb).copy()).permute(2, 0, 1) / 127.5 - 1.0)
    return torch.stack(tiles).float()


def write_classifier_scores(recipe, splits, run_dir: Path, seed: int) -> dict:
    """features.json: test accuracy / ROC AUC (on the pretext task when self-supervised), what the
    network takes, and the SHA-256 of its weights, so every metric computed with it names it."""
    name, held = splits.held_out()
    result = recipe.test_scores(held.images, held.labels, seed)
    info = {"task": recipe.task, "sha256": file_sha256(run_dir / runs.WEIGHTS), "embed_dim": recipe.net.embed_dim,
            "image_size": list(recipe.cfg.model.image_size), "in_channels": recipe.input_channels,
            "test_split": name, "test_images": len(held), **result}
    write_text(run_dir / runs.FEATURES, json.dumps(info, indent=2))
    return {f"test_{k}": v for k, v in result.items()}
