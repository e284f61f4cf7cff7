"""`report(run_dir)`: one self-contained HTML page (no server; images inline) for a run."""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from medsynth.errors import MedsynthError, reason
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
     "Accuracy on real test images of a classifier trained on synthetic images only."),
    ("utility", "synthetic.auc", "TSTR ROC AUC", "higher", "The same as ROC AUC."),
    ("utility", "auc_ratio", "utility ratio (AUC synthetic / real)", "~1",
     "TSTR AUC over the AUC of the same classifier trained on real images."),
]


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


def _img(path: Path, alt: str) -> str:
    if not path.is_file():
        return f"<p class='missing'>{html.escape(alt)}: not found ({html.escape(str(path.name))}).</p>"
    from PIL import Image

    with Image.open(path) as im:
        width = min(3 * im.width, 960)  # 28 px tiles are unreadable at their own size
    data = base64.b64encode(path.read_bytes()).decode()
    return f"<img alt='{html.escape(alt)}' width='{width}' src='data:image/png;base64,{data}'>"


def loss_curves(metrics_csv: Path) -> str | None:
    """A PNG (base64) of the per-epoch train and validation loss terms, or None without data."""
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
    return base64.b64encode(buf.getvalue()).decode()


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


def _interval_key(key: str) -> str:
    return key.replace("ms_ssim_mean", "ms_ssim") + "_interval"


def metric_table(evaluation: dict) -> str:
    """The metrics with their 95% intervals beside the real-vs-real floor, what each measures and
    which way is better."""
    lines = ["<table><tr><th>metric</th><th>synthetic [95% interval]</th><th>real vs real (floor)</th>"
             "<th>better</th><th>what it measures</th></tr>"]
    for section, key, label, better, meaning in ROWS:
        sec = evaluation.get(section, {})
        if not isinstance(sec, dict) or (not sec and section == "class_consistency"):
            continue
        floor = evaluation.get("floor", {}).get(section, {})
        if section == "diversity":
            value, ref = _get(sec, f"fake.{key}"), _get(sec, f"real.{key}")
            span, ref_span = _get(sec, f"fake.{_interval_key(key)}"), _get(sec, f"real.{_interval_key(key)}")
        elif section == "utility" and key.startswith("synthetic."):
            value, ref = _get(sec, key), _get(sec, "real." + key.split(".", 1)[1])
            span = ref_span = None
        elif section == "class_consistency":
            value, ref, span, ref_span = _get(sec, key), _get(sec, "real_agreement"), _get(sec, _interval_key(key)), None
        else:
            value, ref = _get(sec, key), _get(floor, key)
            span, ref_span = _get(sec, _interval_key(key)), _get(floor, _interval_key(key))
        if "not_computed" in sec:
            cell = f"<td class='missing' colspan='2'>not computed: {html.escape(sec['not_computed'])}</td>"
        else:
            cell = f"<td>{_fmt(value)}{_span(span)}</td><td>{_fmt(ref)}{_span(ref_span)}</td>"
        lines.append(f"<tr><td>{html.escape(label)}</td>{cell}<td>{html.escape(better)}</td>"
                     f"<td class='what'>{html.escape(meaning)}</td></tr>")
    lines.append("</table>")
    return "\n".join(lines)


def _span(interval) -> str:
    if not isinstance(interval, list) or len(interval) != 2:
        return ""
    return f" <span class='ci'>[{_fmt(interval[0])}, {_fmt(interval[1])}]</span>"


STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
caption{text-align:left;color:#555}
.missing{color:#a33}pre{background:#f4f4f4;padding:1em;overflow:auto}
.ci{color:#666;font-size:90%}.what{color:#555;font-size:90%;max-width:28em}
@media (max-width:700px){body{margin:0.5em}td,th{padding:2px 4px;font-size:90%}.what{display:none}}"""


def report(run_dir: str | Path, out: str | Path | None = None, evaluation: str | Path | None = None,
           overwrite: bool = False) -> Path:
    """Write <run_dir>/report.html (replaced when it exists) or `out` (refused when it exists,
    unless `overwrite`) and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise MedsynthError(f"{run_dir}: not a run directory (no {CONFIG})")
    out = (runs.check_output(out, overwrite, [evaluation], (".html", ".htm")) if out
           else run_dir / runs.REPORT)
    eval_path = Path(evaluation) if evaluation else run_dir / runs.EVALUATION
    cfg = _read_config(run_dir)
    capable = _capabilities(cfg)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' content='width=device-width, "
             f"initial-scale=1'><title>medsynth: {html.escape(run_dir.name)}</title><style>{STYLE}</style></head>"
             f"<body><h1>{html.escape(run_dir.name)}</h1>", _run_summary(run_dir, cfg)]
    if capable.get("can_sample"):
        parts.append("<h2>Samples</h2>" + _img(run_dir / runs.SAMPLES, "sample grid"))
    if capable.get("can_reconstruct"):
        parts.append("<h2>Reconstructions</h2><p>Rows of held-out images above their reconstructions.</p>"
                     + _img(run_dir / runs.RECONSTRUCTIONS, "reconstructions")
                     + _scores_table(run_dir / runs.AUTOENCODER_SCORES, "Stage 1 (autoencoder) on held-out images"))
    if capable.get("can_translate"):
        parts.append("<h2>Translations</h2><p>Rows: real source, real target, synthetic translation (held-out "
                     "images).</p>" + _img(run_dir / runs.TRANSLATIONS, "translations") + _translation_table(run_dir))
    if capable.get("can_segment"):
        parts.append("<h2>Segmentations</h2><p>Per held-out case: the image, the reference labels and the model's "
                     "labels on the slice with most reference foreground.</p>"
                     + _img(run_dir / runs.SEGMENTATIONS, "segmentations") + _segmentation_table(run_dir))
    if capable.get("can_classify"):
        parts.append("<h2>Feature network</h2>" + _scores_table(run_dir / runs.FEATURES, "Held-out scores"))
    curves = loss_curves(run_dir / runs.METRICS)
    parts.append("<h2>Loss curves</h2><p>Per epoch. Train terms carry the warm-up / capacity schedule in force at "
                 "that step; validation terms are the full objective, so the two can cross early on.</p>"
                 + (f"<img alt='loss curves' src='data:image/png;base64,{curves}'>"
                                             if curves else "<p class='missing'>No metrics.csv with loss terms.</p>"))
    if evaluation is not None and not eval_path.is_file():
        raise MedsynthError(f"--evaluation {eval_path}: file not found")
    if eval_path.is_file():
        parts.append("<h2>Metrics</h2>")
        try:
            parts += _evaluation_parts(_read_json(eval_path, "evaluation"), run_dir, eval_path)
        except (AttributeError, TypeError, KeyError, ValueError) as exc:
            raise MedsynthError(f"{eval_path}: not the structure `medsynth evaluate` writes ({reason(exc)})") from None
    elif capable.get("can_sample"):  # only models that draw images are evaluated as a synthetic set
        parts.append("<h2>Metrics</h2>")
        parts.append(f"<p class='missing'>Not evaluated yet: no {html.escape(eval_path.name)}. Run "
                     f"<code>medsynth evaluate --real DATA --fake {html.escape(str(run_dir))} --features NET</code>."
                     "</p>")
    parts.append("<h2>Config</h2><pre>" + html.escape((run_dir / CONFIG).read_text()) + "</pre></body></html>")
    write_text(out, "\n".join(parts))
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
            ("can_sample", "can_reconstruct", "can_translate", "can_segment", "can_classify")}


def _run_summary(run_dir: Path, cfg: dict) -> str:
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
    body = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows
                   if v is not None)
    return f"<table class='summary'>{body}</table>"


def _scores_table(path: Path, caption: str) -> str:
    if not path.is_file():
        return ""
    scores = _read_json(path, path.stem)
    cells = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td></tr>" for k, v in scores.items()
                    if isinstance(v, (int, float, str)))
    return f"<table><caption>{html.escape(caption)}</caption>{cells}</table>"


def _translation_table(run_dir: Path) -> str:
    """The model beside copying the source contrast (the trivial baseline), on held-out images."""
    path = run_dir / runs.TRANSLATION_SCORES
    if not path.is_file():
        return "<p class='missing'>No translation.json (the run did not finish).</p>"
    scores = _read_json(path, "translation scores")
    model, base = scores.get("model") or {}, scores.get("baseline_source") or {}
    better = {"mae": "lower", "psnr": "higher", "ssim": "higher"}
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td>{_fmt(base.get(k))}</td>"
                   f"<td>{better.get(k, '')}</td></tr>" for k, v in model.items())
    return (f"<table><caption>{scores.get('images')} held-out images, inside the body</caption><tr><th>metric</th>"
            f"<th>model</th><th>baseline: the source as it is</th><th>better</th></tr>{rows}</table>")


def _segmentation_table(run_dir: Path) -> str:
    """Dice (and HD95 where scored) per held-out case and class or region."""
    path = run_dir / runs.SEGMENTATION_SCORES
    if not path.is_file():
        return "<p class='missing'>No segmentation.json (the run did not finish, or had no held-out cases).</p>"
    scores = _read_json(path, "segmentation scores")
    rows = []
    for case, entry in (scores.get("cases") or {}).items():
        for group in ("regions", "classes"):
            for name, s in (entry.get(group) or {}).items():
                rows.append(f"<tr><td>{html.escape(case)}</td><td>{html.escape(str(name))}</td><td>{_fmt(s.get('dice'))}"
                            f"</td><td>{_fmt(s.get('hd95'))}</td></tr>")
    mean = "".join(f"<tr><td>mean</td><td>{html.escape(k)}</td><td>{_fmt(v)}</td><td></td></tr>"
                   for k, v in (scores.get("mean") or {}).items())
    return ("<table><tr><th>case</th><th>class / region</th><th>Dice (higher)</th><th>HD95 mm (lower)</th></tr>"
            + "".join(rows) + mean + "</table>")


def _evaluation_parts(ev: dict, run_dir: Path, eval_path: Path) -> list[str]:
    """The report's metrics section from an evaluation: feature network, sets, table, strip."""
    parts = []
    feats = ev.get("features", {})
    if "not_computed" in feats:
        parts.append(f"<p class='missing'>Feature network: not given — {html.escape(feats['not_computed'])}</p>")
    else:
        parts.append(f"<p>Feature network {html.escape(str(feats.get('source')))} ({feats.get('dim')}-d, "
                     f"sha256 {html.escape(str(feats.get('sha256', ''))[:16])}…).</p>")
    sets = ev.get("sets", {})
    parts.append("<p>" + "; ".join(f"{html.escape(k)}: {html.escape(str(v['source']))} [{v['split']}], "
                                   f"{v['images']} images" for k, v in sets.items()) + "</p>")
    if isinstance(sets.get("real"), dict) and sets["real"].get("synthetic"):
        parts.append("<p class='missing'><b>The real set is marked synthetic</b> (evaluated with "
                     "--allow-synthetic-real): these scores compare synthetic images with synthetic ones and say "
                     "nothing about real data.</p>")
    parts.append("<p>The floor column scores real held-out images the same way (fidelity: the val split against "
                 "the test split, images the feature network never trained on), so it shows what real data "
                 "scores at this sample size. Brackets hold 95% bootstrap intervals: two numbers whose intervals "
                 "overlap are not told apart by this evaluation.</p>")
    parts.append(metric_table(ev))
    strip = Path(str(_get(ev, "privacy.strip") or ""))
    if strip.name and not _beside(strip, run_dir, eval_path):
        parts.append(f"<p class='missing'>Nearest-pairs strip not shown: {html.escape(str(strip))} is outside "
                     "the run directory and the evaluation's folder.</p>")
    elif strip.name:
        parts.append("<h2>Closest synthetic / training pairs</h2><p>Top: synthetic; bottom: its nearest "
                     "training image (pixel space), closest first.</p>" + _img(strip, "nearest neighbours"))
    return parts
