"""Self-contained HTML pages (the report, the comparison) from the Jinja2 templates in
medsynth/templates, with autoescaping: Python builds the content as plain data (tables of cells,
images as data: URIs, paragraphs), the templates hold all markup.

A table is {"caption", "header": [str], "rows": [[cell]], "cls", "row_headers"}; a cell is
{"text", "interval": [low, high] or None, "cls", "colspan", "bold"}; an image is {"alt", "src",
"width"} or {"missing": why}; a paragraph is {"text", "missing", "strong", "code"}.
"""

from __future__ import annotations

import base64
from pathlib import Path

STYLE = """body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}
img{image-rendering:pixelated;max-width:100%;border:1px solid #ccc}
table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}
caption{text-align:left;color:#555}
.missing{color:#a33}pre{background:#f4f4f4;padding:1em;overflow:auto;white-space:pre-wrap}
.ci{color:#666;font-size:90%}.what{color:#555;font-size:90%;max-width:28em}
@media (max-width:700px){body{margin:0.5em}td,th{padding:2px 4px;font-size:90%}.what{display:none}
table{display:block;overflow-x:auto}}"""


def fmt(value) -> str:
    """A metric value as text: 4 significant digits for floats, an em dash for None."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def cell(value, interval=None, cls: str | None = None, colspan: int | None = None, bold: bool = False) -> dict:
    span = [fmt(interval[0]), fmt(interval[1])] if isinstance(interval, list) and len(interval) == 2 else None
    return {"text": value if isinstance(value, str) else fmt(value), "interval": span, "cls": cls,
            "colspan": colspan, "bold": bold}


def table(rows: list[list], header: list[str] | None = None, caption: str | None = None, cls: str | None = None,
          row_headers: bool = False) -> dict:
    """A table of cells (plain values become cells)."""
    return {"rows": [[c if isinstance(c, dict) else cell(c) for c in row] for row in rows], "header": header,
            "caption": caption, "cls": cls, "row_headers": row_headers}


def paragraph(text: str, missing: bool = False, strong: str | None = None, code: str | None = None) -> dict:
    return {"text": text, "missing": missing, "strong": strong, "code": code}


def png_image(path: Path, alt: str) -> dict:
    """A PNG file as an inline image, shown at 3x its width up to 960 px (28 px tiles are unreadable
    at their own size), or the reason it is missing."""
    if not path.is_file():
        return {"missing": f"{alt}: not found ({path.name})."}
    from PIL import Image

    with Image.open(path) as im:
        width = min(3 * im.width, 960)
    return png_data(path.read_bytes(), alt, width)


def png_data(data: bytes, alt: str, width: int | None = None) -> dict:
    return {"alt": alt, "width": width, "src": "data:image/png;base64," + base64.b64encode(data).decode()}


def render(template: str, **context) -> str:
    from jinja2 import Environment, PackageLoader

    # autoescape everything: run names, paths and config text come from users' files
    env = Environment(loader=PackageLoader("medsynth", "templates"), autoescape=True, trim_blocks=True,
                      lstrip_blocks=True)
    return env.get_template(template).render(style=STYLE, **context)
