"""`segment(run_dir, input, out)`: whole-volume label maps from a trained segmentation run, and
their scores against reference label maps.

An input is prepared exactly as in training (the run's contrast patterns, mask, spacing and MR
normalisation), segmented by sliding windows, mapped back to the label values and, when the
run resampled, to the input's own grid; the label map is written as NIfTI with the input's
affine and (for NIfTI inputs) its header, marked as a model prediction.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from medsynth.data.cases import Case, load_case, match_file
from medsynth.data.patches import prepare_case, to_values, with_source_spacing
from medsynth.errors import MedsynthError
from medsynth.metrics.segmentation import score_label_maps
from medsynth.models import load_run
from medsynth.provenance import synthetic_provenance
from medsynth.runs import check_output
from medsynth.writers import write_nifti


def _read_input_case(path: Path, data_cfg) -> tuple[Case, Path]:
    """One case from a case folder (files matched by the run's patterns) or, for one-contrast
    models without a mask, a single volume. Returns the case and the file whose geometry the
    output copies."""
    contrasts = list(data_cfg.contrasts)
    if path.is_file() or (path.is_dir() and path.name.lower().endswith(".dcm")):
        if len(contrasts) != 1 or data_cfg.mask:
            raise MedsynthError(f"{path}: this model takes {len(contrasts)} contrast(s)"
                                f"{' and a mask' if data_cfg.mask else ''}; give a case folder holding "
                                f"files matching {contrasts}")
        return load_case(path.name.split(".")[0], [path], None), path
    files = [match_file(path, c) for c in contrasts]
    missing = [c for c, f in zip(contrasts, files) if f is None]
    if missing:
        raise MedsynthError(f"{path}: no file matches the contrast pattern(s) {missing} of this model")
    mask = match_file(path, data_cfg.mask)
    if data_cfg.mask and mask is None:
        raise MedsynthError(f"{path}: no mask matching '{data_cfg.mask}' (the model was trained with intensities "
                            "normalised inside it)")
    label = match_file(path, data_cfg.label)
    return load_case(path.name, files, label, list(data_cfg.classes), mask), files[0]


def is_case_folder(path: Path, data_cfg) -> bool:
    return path.is_file() or match_file(path, data_cfg.contrasts[0]) is not None


def segment(run_dir: str | Path, input: str | Path, out: str | Path, device: str = "cpu",
            overlap: float | None = None, sw_batch_size: int | None = None, overwrite: bool = False,
            largest_component: bool | None = None, flips: bool | None = None, log=print) -> list[dict]:
    """Segment a volume, a case folder, or a folder of case folders (then `out` is a folder of
    <case>_seg.nii.gz). Cases with a reference label map are scored. Returns one record per case."""
    if overlap is not None and not 0 <= overlap < 1:
        raise MedsynthError(f"overlap must be in [0, 1), got {overlap}")
    if sw_batch_size is not None and sw_batch_size < 1:
        raise MedsynthError(f"windows per pass must be positive, got {sw_batch_size}")
    recipe = load_run(run_dir, device)
    if not recipe.can_segment:
        raise MedsynthError(f"{run_dir}: a {recipe.cfg.model.family} model does not segment")
    data_cfg = recipe.cfg.data
    input, out = Path(input), Path(out)
    check_output(out, overwrite, [run_dir, input])
    if not input.exists():
        raise MedsynthError(f"{input}: input not found")
    if is_case_folder(input, data_cfg):
        jobs = [(input, out)]
        if not out.name.endswith((".nii", ".nii.gz")):
            raise MedsynthError(f"{out}: the label map is written as NIfTI; name it .nii.gz or .nii")
    else:
        cases = sorted(d for d in input.iterdir() if d.is_dir() and is_case_folder(d, data_cfg))
        if not cases:
            raise MedsynthError(f"{input}: neither a case (files matching {list(data_cfg.contrasts)}) nor a "
                                "folder of case folders")
        if out.suffix:
            raise MedsynthError(f"{out}: several cases are segmented into a folder; give a folder name")
        jobs = [(d, out / f"{d.name}_seg.nii.gz") for d in cases]
    records = []
    for case_path, target in jobs:
        start = time.perf_counter()
        case, labels, geometry = segment_case(recipe, case_path, overlap, sw_batch_size, largest_component, flips)
        write_label_map(target, labels, geometry, case.affine, recipe, run_dir)
        record = {"case": case.name, "out": str(target), "seconds": round(time.perf_counter() - start, 2)}
        if case.label is not None:
            record["scores"] = score_label_maps(labels, case.label, data_cfg, case.spacing)
        records.append(record)
        log(f"{case.name}: {target} ({record['seconds']} s)")
    return records


def segment_case(recipe, path: Path, overlap: float | None = None, sw_batch_size: int | None = None,
                 largest_component: bool | None = None, flips: bool | None = None
                 ) -> tuple[Case, np.ndarray, Path]:
    """One case (folder or volume) read with the run's patterns, prepared as in training and
    segmented whole -> (the case as read, its label map as label values on the case's own grid,
    the file whose geometry an output copies)."""
    data_cfg = recipe.cfg.data
    case, prepared, geometry = prepared_case(recipe, path)
    pred = recipe.segment(prepared.image, prepared.mask, overlap, sw_batch_size, largest_component, flips)
    if pred.shape != case.image.shape[1:]:  # the run resampled to a spacing: back to the input's grid
        pred = torch.nn.functional.interpolate(torch.from_numpy(pred)[None, None].float(),
                                               size=case.image.shape[1:], mode="nearest")[0, 0].byte().numpy()
    return case, to_values(pred, list(data_cfg.classes)), geometry


def prepared_case(recipe, path: Path) -> tuple[Case, Case, Path]:
    """One case (folder or volume) read with the run's patterns -> (the case as read, the case
    normalised and resampled as in training, the file whose geometry an output copies)."""
    data_cfg = recipe.cfg.data
    case, geometry = _read_input_case(path, data_cfg)
    case = with_source_spacing(case, data_cfg.get("source_spacing"), geometry)
    return case, prepare_case(case, data_cfg.mr_normalise, data_cfg.spacing), geometry


def write_label_map(path: Path, labels: np.ndarray, geometry: Path, affine: np.ndarray, recipe, run_dir) -> None:
    """The label map with the input's affine, and its NIfTI header when the input is NIfTI."""
    import nibabel as nib

    header = None
    if geometry.is_file() and geometry.name.lower().endswith((".nii", ".nii.gz")):
        header = nib.load(str(geometry)).header
    provenance = synthetic_provenance(recipe, Path(run_dir), None, kind="segmentation: a model's label map of a "
                                      f"real image ({geometry.name}), not a reference annotation")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_nifti(path, labels.astype(np.uint8), affine, provenance, header=header, dtype=np.uint8, mark="MODEL LABELS")
