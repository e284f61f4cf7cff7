"""`compare(runs)`: runs side by side: their evaluations' metrics with intervals, and their sample
grids in one row, as a Markdown table (stdout) and a self-contained HTML page.

The best run per metric is marked only where that is told apart: its 95% interval overlaps no
other run's interval (a metric without intervals, or with overlapping ones, marks none). Which
way is better comes from the report's table (report.ROWS): lower, higher, or neither (a metric
best "near real" is shown, never ranked).
"""

from __future__ import annotations

import html
from pathlib import Path

import medsynth.runs as runs
from medsynth.errors import MedsynthError
from medsynth.report import ROWS, STYLE, _fmt, _get, _img, _interval_key, _read_json
from medsynth.writers import write_text


def _entry(section: dict, key: str):
    """(value, interval or None) of one metric in an evaluation section."""
    if "." not in key and isinstance(section.get("fake"), dict):  # diversity: the synthetic set's
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
    rows = []
    for section, key, label, better, _ in ROWS:
        if section == "utility" or section == "class_consistency" and key != "agreement":
            continue
        cells = [_entry(ev.get(section, {}) if isinstance(ev.get(section), dict) else {}, key) for ev in evaluations]
        if all(v is None for v, _ in cells):
            continue
        rows.append((label, better, cells, _best(cells, better)))
    return rows


def _cell(value, interval, best: bool, markdown: bool) -> str:
    text = _fmt(value) + (f" [{_fmt(interval[0])}, {_fmt(interval[1])}]" if interval else "")
    if best:
        return f"**{text}**" if markdown else f"<b>{text}</b>"
    return text


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
        md.append(f"| {label} | {better} | " + " | ".join(_cell(v, iv, i == best, True)
                                                          for i, (v, iv) in enumerate(cells)) + " |")
    table = "\n".join(md)
    if out is not None:
        head = "".join(f"<th>{html.escape(n)}</th>" for n in names)
        body = "".join(f"<tr><td>{html.escape(label)}</td><td>{html.escape(better)}</td>"
                       + "".join(f"<td>{_cell(v, iv, i == best, False)}</td>" for i, (v, iv) in enumerate(cells))
                       + "</tr>" for label, better, cells, best in rows)
        grids = "".join(f"<figure style='display:inline-block;margin:0 1em 1em 0'>"
                        f"{_img(p / runs.SAMPLES, 'samples') if p.is_dir() else ''}"
                        f"<figcaption>{html.escape(n)}</figcaption></figure>" for p, n in zip(paths, names))
        page = (f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
                f"content='width=device-width, initial-scale=1'><title>medsynth: compare</title>"
                f"<style>{STYLE}</style></head><body><h1>Runs compared</h1><p>Values with 95% intervals; "
                f"the best run of a metric is in bold only where its interval overlaps no other run's.</p>"
                f"<table><tr><th>metric</th><th>better</th>{head}</tr>{body}</table><h2>Samples</h2>{grids}"
                f"</body></html>")
        write_text(out, page)
    return table
