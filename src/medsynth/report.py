"""`report(run_dir)`: one self-contained HTML page (no server; images inline) for a run, rendered
from templates/report.html.j2 (medsynth.pages)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medsynth.errors import MedsynthError, reason
from medsynth.pages import cell, paragraph, png_data, png_image, render, table
import medsynth.runs as runs
from medsynth.runs import CONFIG
from medsynth.tracking import log_to_tracked_run
from medsynth.writers import write_text


# (section, key, label, which way is better, what it measures: one sentence for the reader)
ROWS = [
    ("fidelity", "fid", "FID (domain features)", "lower",
     "Distance between the two sets' feature means and covariances; biased upward at few images."),
    ("fidelity", "kid", "KID", "lower",
     "Unbiased kernel distance between the feature distributions (mean over subsets); ~0 for one distribution."),
    ("fidelity", "precision", "precision", "higher",
     "Share of synthetic images that fall inside the real images' feature manifold (realism)."),
    ("fidelity", "recall", "recall", "higher",
     "Share of real images that fall inside the synthetic images' manifold (how much of the data is covered)."),
    ("fidelity", "density", "density", "~1",
     "How many real neighbourhoods hold each synthetic image, per k; above 1 means crowding on dense regions."),
    ("fidelity", "coverage", "coverage", "higher",
     "Share of real images with a synthetic image among their nearest neighbours (robust recall)."),
    ("diversity", "ms_ssim_mean", "mean pairwise MS-SSIM", "near real",
     "Average structural similarity between pairs within a set: higher than real means mode collapse."),
    ("diversity", "gap", "MS-SSIM gap to the real set (relative)", "near floor",
     "The set's mean MS-SSIM over the real set's, minus 1; the floor: a second real split (val) the same way, "
     "how far two real samples of the data differ."),
    ("texture", "sharpness.ratio", "sharpness (synthetic / real)", "~1",
     "Mean gradient magnitude of the synthetic images over the real ones': below 1 means blurrier."),
    ("texture", "checkerboard.ratio", "checkerboard (synthetic / real)", "~1",
     "Share of spectral energy at period 2 (where transposed convolutions leave a grid) over the real "
     "images' share: above 1 means a checkerboard."),
    ("class_consistency", "agreement", "class consistency", "near real",
     "Share of synthetic images the domain network classifies as the class they were drawn for."),
    ("reconstruction", "ms_ssim", "reconstruction MS-SSIM", "higher",
     "How closely the model reproduces held-out images it encodes and decodes."),
    ("reconstruction", "ssim", "reconstruction SSIM", "higher", "The same at one scale."),
    ("reconstruction", "psnr", "reconstruction PSNR (dB)", "higher", "Pixel error of the reconstructions, in dB."),
    ("privacy", "pixel.rate", "memorisation rate (pixels)", "~0.05",
     "Share of synthetic images closer to a training image than 95% of unseen real images are."),
    ("privacy", "feature.rate", "memorisation rate (features)", "~0.05", "The same in the feature space."),
    ("privacy", "pixel.authenticity", "authenticity (pixels)", "near floor",
     "Share of synthetic images farther from their nearest training image than it is from its own nearest "
     "neighbour (Alaa et al. 2022); low means copying."),
    ("privacy", "feature.authenticity", "authenticity (features)", "near floor", "The same in the feature space."),
    ("privacy", "near_copies", "near-exact copies", "0",
     "Share of synthetic images within ~2.5 grey levels (RMS) of a training image."),
    ("privacy", "pixel.distance_median", "median distance to nearest training image (RMS)", "near floor",
     "Typical pixel distance from a synthetic image to its closest training image."),
    ("utility", "synthetic.accuracy", "TSTR accuracy (vs TRTR in the floor column)", "higher",
     "Accuracy on real test images of a classifier trained on synthetic images only: the mean over "
     "the classifier pairs (evaluate --utility-repeats), in brackets the lowest and highest run (not a 95% interval)."),
    ("utility", "synthetic.auc", "TSTR ROC AUC", "higher", "The same as ROC AUC (mean; lowest and highest run)."),
    ("utility", "auc_ratio", "utility ratio (AUC synthetic / real)", "~1",
     "Mean TSTR AUC over the mean AUC of the same classifier trained on real images; in brackets the "
     "lowest and highest ratio of one pair."),
]


# the explanation column's header: hidden with its cells at phone width
WHAT = {"text": "what it measures", "cls": "what"}


def _read_json(path: Path, what: str) -> dict:
    """A JSON object from `path`, or one clear error (truncated, not JSON, not an object)."""
    try:
        data = json.loads(path.read_text())
    except (ValueError, OSError) as exc:
        raise MedsynthError(f"{path}: not a readable {what} file ({reason(exc)})") from None
    if not isinstance(data, dict):
        raise MedsynthError(f"{path}: a {what} file holds a JSON object, this holds a {type(data).__name__}")
    return data


def _beside(path: Path, run_dir: Path, eval_path: Path) -> bool:
    """Whether a file the evaluation names lies in the run directory or beside the evaluation (the
    report embeds files' bytes, so it must not read just any path a JSON file points to)."""
    where = path.resolve().parent
    return where in (run_dir.resolve(), eval_path.resolve().parent)


def _get(section: dict, dotted: str):
    value = section
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


def loss_curves(metrics_csv: Path) -> bytes | None:
    """A PNG of the per-epoch train and validation loss terms, or None without data."""
    if not metrics_csv.is_file():
        return None
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    series: dict[str, list[tuple[float, float]]] = {}
    for line, row in enumerate(rows, start=2):
        for key, value in row.items():
            if value in (None, "") or key in (None, "epoch", "step") or key.endswith("_step"):
                continue
            if key.startswith(("train/", "val/")):
                try:
                    series.setdefault(key, []).append((float(row["step"]), float(value)))
                except (TypeError, ValueError, KeyError):
                    raise MedsynthError(f"{metrics_csv}: line {line}, column {key}: {value!r} is not a number "
                                        "(or the step is missing)") from None
    if not series:
        return None
    terms = sorted({k.split("/", 1)[1] for k in series})
    # a Figure on its own Agg canvas: no pyplot, so importing medsynth never changes a user's backend
    fig = Figure(figsize=(3.2 * len(terms), 2.8))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(terms), squeeze=False)
    for ax, term in zip(axes[0], terms):
        for split in ("train", "val"):
            points = series.get(f"{split}/{term}")
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", ms=3, label=split)
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    return buf.getvalue()


def _interval_key(key: str) -> str:
    return key.replace("ms_ssim_mean", "ms_ssim") + "_interval"


def metric_table(evaluation: dict) -> dict:
    """The metrics with their 95% intervals beside the real-vs-real floor, what each measures and
    which way is better."""
    rows = []
    for section, key, label, better, meaning in ROWS:
        sec = evaluation.get(section, {})
        if not isinstance(sec, dict) or (not sec and section == "class_consistency"):
            continue
        floor = evaluation.get("floor", {}).get(section, {})
        if section == "diversity" and key == "gap":  # the floor: a second real split, or why there is none
            value, span, ref_span = _get(sec, key), None, None
            ref = f"not computed: {floor['not_computed']}" if "not_computed" in floor else _get(floor, key)
        elif section == "diversity":
            value, ref = _get(sec, f"fake.{key}"), _get(sec, f"real.{key}")
            span, ref_span = _get(sec, f"fake.{_interval_key(key)}"), _get(sec, f"real.{_interval_key(key)}")
        elif section == "utility" and key.startswith("synthetic."):
            value, ref = _get(sec, key), _get(sec, "real." + key.split(".", 1)[1])
            span, ref_span = _get(sec, f"{key}_range"), _get(sec, "real." + key.split(".", 1)[1] + "_range")
        elif section == "utility":
            value, ref, ref_span = _get(sec, key), None, None
            # a pair's ratio is None (NaN cleaned) when its real AUC is undefined: left out of the range
            runs = [v for v in (_get(sec, f"{key}_runs") or []) if isinstance(v, (int, float))]
            span = [min(runs), max(runs)] if runs else None
        elif section == "class_consistency":
            value, ref, span, ref_span = _get(sec, key), _get(sec, "real_agreement"), _get(sec, _interval_key(key)), None
        else:
            value, ref = _get(sec, key), _get(floor, key)
            span, ref_span = _get(sec, _interval_key(key)), _get(floor, _interval_key(key))
        if "not_computed" in sec:
            values = [cell(f"not computed: {sec['not_computed']}", cls="missing", colspan=2)]
        else:
            values = [cell(value, span), cell(ref, ref_span)]
        rows.append([cell(label), *values, cell(better), cell(meaning, cls="what")])
    return table(rows, header=["metric", "synthetic [95% interval]", "real vs real (floor)", "better",
                               WHAT])


def report(run_dir: str | Path, out: str | Path | None = None, evaluation: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write <run_dir>/report.html (replaced when it exists) or `out` (refused when it exists,
    unless `overwrite`) and return its path. The page is rendered from templates/report.html.j2."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MedsynthError(f"{run_dir}: not a run directory (no {CONFIG})")
    out = (runs.check_output(out, overwrite, [evaluation], (".html", ".htm")) if out
           else run_dir / runs.REPORT)
    eval_path = Path(evaluation) if evaluation else run_dir / runs.EVALUATION
    cfg = _read_config(run_dir)
    capable = _capabilities(cfg)
    sections = []

    def section(title: str, paragraphs=(), images=(), tables=(), pre=None) -> None:
        sections.append({"title": title, "paragraphs": list(paragraphs), "images": list(images),
                         "tables": [t for t in tables if t], "pre": pre})

    if capable.get("can_sample"):
        section("Samples", images=[png_image(run_dir / runs.SAMPLES, "sample grid")])
    if capable.get("can_reconstruct"):
        section("Reconstructions", [paragraph("Rows of held-out images above their reconstructions.")],
                [png_image(run_dir / runs.RECONSTRUCTIONS, "reconstructions")],
                [_scores_table(run_dir / runs.AUTOENCODER_SCORES, "Stage 1 (autoencoder) on held-out images")])
    if capable.get("can_translate"):
        text, tab = _translation_table(run_dir)
        section("Translations", [paragraph("Rows: real source, real target, synthetic translation (held-out "
                                           "images)."), *text],
                [png_image(run_dir / runs.TRANSLATIONS, "translations")], [tab])
    if capable.get("can_segment"):
        text, tab = _segmentation_table(run_dir)
        section("Segmentations", [paragraph("Per held-out case: the image, the reference labels and the model's "
                                            "labels on the slice with most reference foreground."), *text],
                [png_image(run_dir / runs.SEGMENTATIONS, "segmentations")], [tab])
    if capable.get("is_feature_network"):
        section("Feature network", tables=[_scores_table(run_dir / runs.FEATURES, "Held-out scores")])
    curves = loss_curves(run_dir / runs.METRICS)
    section("Loss curves", [paragraph("Per epoch. Train terms carry the warm-up / capacity schedule in force at "
                                      "that step; validation terms are the full objective, so the two can cross "
                                      "early on."),
                            *([] if curves else [paragraph("No metrics.csv with loss terms.", missing=True)])],
            [png_data(curves, "loss curves")] if curves else [])
    if evaluation is not None and not eval_path.is_file():
        raise MedsynthError(f"--evaluation {eval_path}: file not found")
    if eval_path.is_file():
        try:
            sections += _evaluation_sections(_read_json(eval_path, "evaluation"), run_dir, eval_path)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise MedsynthError(f"{eval_path}: not the structure `medsynth evaluate` writes ({reason(exc)})") from None
    elif capable.get("can_sample"):  # only models that draw images are evaluated as a synthetic set
        section("Metrics", [paragraph(f"Not evaluated yet: no {eval_path.name}. Run", missing=True,
                                      code=f"medsynth evaluate --real DATA --fake {run_dir} --features NET")])
    section("Config", pre=(run_dir / CONFIG).read_text())
    page = render("report.html.j2", title=run_dir.name, summary=_run_summary(run_dir, cfg), sections=sections)
    write_text(out, page)
    log_to_tracked_run(run_dir, files=[out], folder="report", log=lambda *_: None)
    return out


def _read_config(run_dir: Path) -> dict:
    import yaml

    try:
        cfg = yaml.safe_load((run_dir / CONFIG).read_text())
    except (yaml.YAMLError, OSError) as exc:
        raise MedsynthError(f"{run_dir / CONFIG}: not a readable config ({reason(exc)})") from None
    return cfg if isinstance(cfg, dict) else {}


def _capabilities(cfg: dict) -> dict:
    """The family's stated capabilities (Recipe.can_*), from its class, without loading weights."""
    from medsynth.models import recipe_class

    family = (cfg.get("model") or {}).get("family")
    try:
        cls = recipe_class(str(family))
    except MedsynthError:
        return {}
    return {name: bool(getattr(cls, name, False)) for name in
            ("can_sample", "can_reconstruct", "can_translate", "can_segment", "can_classify", "is_feature_network")}


def _run_summary(run_dir: Path, cfg: dict) -> dict:
    """What the run is: recipe, family, data, budget, precision and the code it was made with."""
    model, data, trainer = cfg.get("model") or {}, cfg.get("data") or {}, cfg.get("trainer") or {}
    rows = [("recipe", cfg.get("name")), ("family", model.get("family")), ("data", data.get("path")),
            ("data format", data.get("format"))]
    summary_path = run_dir / runs.SUMMARY
    if summary_path.is_file():
        s = _read_json(summary_path, "summary")
        rows += [("status", s.get("status")),
                 ("budget", f"{s.get('epochs')} epochs of {trainer.get('max_epochs')}, {s.get('global_step')} "
                            f"optimizer steps, {s.get('train_seconds')} s"),
                 ("precision", s.get("precision"))]
    env_path = run_dir / runs.ENVIRONMENT
    if env_path.is_file():
        sessions = _read_json(env_path, "environment").get("sessions") or [{}]
        last = sessions[-1] if isinstance(sessions[-1], dict) else {}
        commit = last.get("git_commit")
        rows += [("code", f"git {commit[:12]}{' (uncommitted changes)' if last.get('git_dirty') else ''}"
                  if commit else f"medsynth {(last.get('packages') or {}).get('medsynth')}"),
                 ("made", last.get("time_utc")), ("machine", last.get("platform"))]
    if (run_dir / runs.LINEAGE).is_file():
        rows.append(("training data", "marked SYNTHETIC (lineage.json)"))
    return table([[k, str(v)] for k, v in rows if v is not None], cls="summary", row_headers=True)


def _scores_table(path: Path, caption: str) -> dict | None:
    if not path.is_file():
        return None
    scores = _read_json(path, path.stem)
    return table([[k, v] for k, v in scores.items() if isinstance(v, (int, float, str))], caption=caption)


def _translation_table(run_dir: Path) -> tuple[list, dict | None]:
    """The model beside copying the source contrast (the trivial baseline), on held-out images."""
    path = run_dir / runs.TRANSLATION_SCORES
    if not path.is_file():
        return [paragraph("No translation.json (the run did not finish).", missing=True)], None
    scores = _read_json(path, "translation scores")
    model, base = scores.get("model") or {}, scores.get("baseline_source") or {}
    return [], table([[k, v, base.get(k), case_better(k)] for k, v in model.items()],
                     header=["metric", "model", "baseline: the source as it is", "better"],
                     caption=f"{scores.get('images')} held-out images, inside the body")


def _segmentation_table(run_dir: Path) -> tuple[list, dict | None]:
    """Dice (and HD95 where scored) per held-out case and class or region."""
    path = run_dir / runs.SEGMENTATION_SCORES
    if not path.is_file():
        return [paragraph("No segmentation.json (the run did not finish, or had no held-out cases).",
                          missing=True)], None
    scores = _read_json(path, "segmentation scores")
    rows = [[case, str(name), s.get("dice"), s.get("hd95")]
            for case, entry in (scores.get("cases") or {}).items()
            for group in ("regions", "classes") for name, s in (entry.get(group) or {}).items()]
    rows += [["mean", k, v, ""] for k, v in (scores.get("mean") or {}).items()]
    return [], table(rows, header=["case", "class / region", "Dice (higher)", "HD95 mm (lower)"])


# which way is better for a per-case score, by its name's first word (case_evaluation's keys)
CASE_BETTER = {"dice": "higher", "hd95": "lower", "mae": "lower", "psnr": "higher", "ssim": "higher"}
CASE_MEANING = {"dice": "Overlap of the model's and the reference label maps (0-1).",
                "hd95": "95th percentile of the distances between the two maps' surfaces, in mm.",
                "mae": "Mean absolute error inside the mask, in the [-1, 1] training scale.",
                "psnr": "Peak signal-to-noise ratio inside the mask, in dB.",
                "ssim": "Structural similarity of the whole slices, background set alike."}


def case_better(key: str) -> str:
    return CASE_BETTER.get(key.removeprefix("baseline_").split("_")[0], "")


def _case_sections(ev: dict) -> list[dict]:
    """A translation / segmentation run's evaluation: the mean over held-out cases of each score
    with its interval (and the copy-the-source baseline beside translation scores), then per case."""
    task = ev["task"]
    sec, real = ev[task], ev["sets"]["real"]
    mean = sec["mean"]
    text = [paragraph(f"{real['cases']} held-out cases from {real['source']}. Brackets hold 95% bootstrap "
                      "intervals over cases.")]
    keys = [k for k in mean if not k.endswith("_interval") and not k.startswith("baseline_")]
    if task == "translation":
        rows = [[k, cell(mean[k], mean.get(f"{k}_interval")),
                 cell(mean.get(f"baseline_{k}"), mean.get(f"baseline_{k}_interval")), case_better(k),
                 cell(CASE_MEANING.get(k, ""), cls="what")] for k in keys]
        means = table(rows, header=["metric", "model [95% interval]", "baseline: the source as it is", "better",
                                    WHAT])
        per_case = table([[name, k, c["model"][k], c["baseline_source"][k]] for name, c in sec["cases"].items()
                          for k in c["model"]], header=["case", "metric", "model", "baseline"])
    else:
        rows = [[k, cell(mean[k], mean.get(f"{k}_interval")), case_better(k),
                 cell(CASE_MEANING.get(k.split("_")[0], ""), cls="what")] for k in keys]
        means = table(rows, header=["metric", "mean [95% interval]", "better", WHAT])
        per_case = table([[name, f"{ {'classes': 'class'}.get(group, 'region')} {label}", s.get("dice"), s.get("hd95")]
                          for name, c in sec["cases"].items() for group in ("classes", "regions")
                          for label, s in (c.get(group) or {}).items()],
                         header=["case", "class / region", "Dice (higher)", "HD95 mm (lower)"])
    return [{"title": "Metrics", "paragraphs": text, "images": [], "tables": [means, per_case], "pre": None}]


def _evaluation_sections(ev: dict, run_dir: Path, eval_path: Path) -> list[dict]:
    """The report's metrics section from an evaluation (feature network, sets, table) and the
    nearest-pairs strip."""
    if ev.get("task") in ("translation", "segmentation"):
        return _case_sections(ev)
    text = []
    feats = ev.get("features", {})
    if "not_computed" in feats:
        text.append(paragraph(f"Feature network: not given — {feats['not_computed']}", missing=True))
    else:
        text.append(paragraph(f"Feature network {feats.get('source')} ({feats.get('dim')}-d, "
                              f"sha256 {str(feats.get('sha256', ''))[:16]}…)."))
    sets = ev.get("sets", {})
    text.append(paragraph("; ".join(f"{k}: {v['source']} [{v['split']}], {v['images']} images"
                                    for k, v in sets.items())))
    if isinstance(sets.get("real"), dict) and sets["real"].get("synthetic"):
        text.append(paragraph("(evaluated with --allow-synthetic-real): these scores compare synthetic images "
                              "with synthetic ones and say nothing about real data.", missing=True,
                              strong="The real set is marked synthetic"))
    text.append(paragraph("The floor column scores real held-out images the same way (fidelity: the val split "
                          "against the test split, images the feature network never trained on), so it shows what "
                          "real data scores at this sample size. Brackets hold 95% bootstrap intervals: two numbers "
                          "whose intervals overlap are not told apart by this evaluation."))
    out = [{"title": "Metrics", "paragraphs": text, "images": [], "tables": [metric_table(ev)], "pre": None}]
    strip = Path(str(_get(ev, "privacy.strip") or ""))
    if strip.name and not _beside(strip, run_dir, eval_path):
        out[0]["paragraphs"].append(paragraph(f"Nearest-pairs strip not shown: {strip} is outside the run "
                                              "directory and the evaluation's folder.", missing=True))
    elif strip.name:
        out.append({"title": "Closest synthetic / training pairs", "pre": None, "tables": [],
                    "paragraphs": [paragraph("Top: synthetic; bottom: its nearest training image (pixel space), "
                                             "closest first.")],
                    "images": [png_image(strip, "nearest neighbours")]})
    return out
