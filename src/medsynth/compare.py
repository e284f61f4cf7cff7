"""`compare(runs)`: runs side by side: their evaluations' metrics with intervals, and their sample
grids in one row, as a Markdown table (stdout) and a self-contained HTML page.

The best run per metric is marked only where that is told apart: its 95% interval overlaps no
other run's interval (a metric without intervals, or with overlapping ones, marks none). Which
way is better comes from the report's table (report.ROWS): lower, higher, or neither (a metric
best "near real" is shown, never ranked).
"""

from __future__ import annotations

from pathlib import Path

import medsynth.runs as runs
from medsynth.errors import MedsynthError
from medsynth.pages import cell, fmt, png_image, render, table
from medsynth.report import ROWS, _get, _interval_key, _read_json, case_better
from medsynth.writers import write_text


def _entry(section: dict, key: str):
    """(value, interval or None) of one metric in an evaluation section."""
    if "." not in key and key not in section and isinstance(section.get("fake"), dict):  # diversity: the fake set's
        section = section["fake"]
    value = _get(section, key)
    interval = _get(section, _interval_key(key))
    return (value if isinstance(value, (int, float)) else None,
            interval if isinstance(interval, list) and len(interval) == 2 else None)


def _best(cells: list, better: str) -> int | None:
    """Index of the run told apart as best: its interval clear of every other run's; else None."""
    if better not in ("lower", "higher") or len(cells) < 2:
        return None
    if any(v is None or iv is None for v, iv in cells):
        return None
    sign = 1 if better == "higher" else -1
    best = max(range(len(cells)), key=lambda i: sign * cells[i][0])
    lo, hi = cells[best][1]
    for i, (_, (olo, ohi)) in enumerate(cells):
        if i != best and not (hi < olo or ohi < lo):
            return None
    return best


def _evaluation(run: Path) -> dict:
    path = run / runs.EVALUATION if run.is_dir() else run
    if not path.is_file():
        raise MedsynthError(f"{run}: no {runs.EVALUATION} (run `medsynth evaluate --fake {run}` first)")
    return _read_json(path, "evaluation")


def comparison_rows(evaluations: list[dict]) -> list[tuple[str, str, list, int | None]]:
    """(label, better, [(value, interval)] per run, index of the told-apart best or None) for every
    metric that at least one evaluation holds."""
    tasks = {ev.get("task") for ev in evaluations}
    if tasks & {"translation", "segmentation"}:
        if len(tasks) > 1:
            raise MedsynthError(f"compare: evaluations of different kinds ({sorted(map(str, tasks))}) do not share "
                                "metrics")
        task = tasks.pop()
        sources = {str(ev["sets"]["real"].get("source")) for ev in evaluations}
        if len(sources) > 1:  # told in the table's first row rather than refused: a user may mean it
            rows_note = [("scored on", "", [(ev["sets"]["real"].get("source"), None) for ev in evaluations], None)]
        else:
            rows_note = []
        keys = list(dict.fromkeys(k for ev in evaluations for k in ev[task]["mean"] if not k.endswith("_interval")))
        rows = []
        for key in keys:
            cells = [(ev[task]["mean"].get(key), ev[task]["mean"].get(f"{key}_interval")) for ev in evaluations]
            better = case_better(key)
            rows.append((key, better, cells, None if key.startswith("baseline_") else _best(cells, better)))
        return rows_note + rows
    rows = []
    for section, key, label, better, _ in ROWS:
        if section == "utility" or section == "class_consistency" and key != "agreement":
            continue
        cells = [_entry(ev.get(section, {}) if isinstance(ev.get(section), dict) else {}, key) for ev in evaluations]
        if all(v is None for v, _ in cells):
            continue
        rows.append((label, better, cells, _best(cells, better)))
    return rows


def _markdown_cell(value, interval, best: bool) -> str:
    text = fmt(value) + (f" [{fmt(interval[0])}, {fmt(interval[1])}]" if interval else "")
    return f"**{text}**" if best else text


def compare(run_dirs: list[str | Path], out: str | Path | None = None, overwrite: bool = False) -> str:
    """The Markdown table of the runs' metrics (returned); with `out`, also the HTML page there."""
    if len(run_dirs) < 2:
        raise MedsynthError("compare needs at least two runs (run directories or evaluation JSON files)")
    paths = [Path(r) for r in run_dirs]
    if out is not None:
        out = runs.check_output(out, overwrite, paths, (".html", ".htm"))
    evaluations = [_evaluation(p) for p in paths]
    names = [p.name for p in paths]
    rows = comparison_rows(evaluations)
    md = ["| metric | better | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for label, better, cells, best in rows:
        md.append(f"| {label} | {better} | " + " | ".join(_markdown_cell(v, iv, i == best)
                                                          for i, (v, iv) in enumerate(cells)) + " |")
    markdown = "\n".join(md)
    if out is not None:
        metrics = table([[label, better, *(cell(v, iv, bold=i == best) for i, (v, iv) in enumerate(cells))]
                         for label, better, cells, best in rows], header=["metric", "better", *names])
        # the figure each kind of run writes: samples, or held-out translations / segmentations
        task = evaluations[0].get("task")
        figure, title = {"translation": (runs.TRANSLATIONS, "Translations"),
                         "segmentation": (runs.SEGMENTATIONS, "Segmentations")}.get(task, (runs.SAMPLES, "Samples"))
        grids = [{"name": n, "image": png_image(p / figure, title.lower()) if p.is_dir()
                  else {"missing": "an evaluation file: no figure"}} for p, n in zip(paths, names)]
        write_text(out, render("compare.html.j2", title="runs compared", metrics=metrics, grids=grids,
                               grids_title=title))
    return markdown
