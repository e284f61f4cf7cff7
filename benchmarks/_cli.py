"""What the benchmark scripts share: the `medsynth` command of this environment, run from the
repository root, its last output line returned, its error shown when it fails; and sample grids
put side by side in one small PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def medsynth(*args: str) -> str:
    """Run `medsynth ARGS` (printed first); the last line it printed (e.g. a run directory)."""
    cmd = [str(Path(sys.executable).with_name("medsynth")), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if out.returncode:
        raise SystemExit(f"medsynth {' '.join(args[:2])} failed:\n{out.stderr[-3000:]}")
    return out.stdout.strip().splitlines()[-1]


def grids_side_by_side(grids: dict[str, Path], out: str | Path, columns: int = 4, inches: float = 2.4,
                       dpi: int = 64) -> None:
    """Titled sample grids (PNG files) in rows of `columns`, saved as one PNG at `dpi` (small
    enough to commit: 2.4 inches at 64 dpi is about 150 px a grid)."""
    import math

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = math.ceil(len(grids) / columns)
    cols = min(columns, len(grids))
    fig, axes = plt.subplots(rows, cols, figsize=(inches * cols, (inches + 0.35) * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (title, path) in zip(axes.ravel(), grids.items()):
        image = plt.imread(Path(path))
        ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi)
    plt.close(fig)
    _grey_if_grey(Path(out))


def _grey_if_grey(path: Path) -> None:
    """Re-save an RGBA figure whose pixels are all grey as 8-bit greyscale: the same picture in
    about half the bytes (the grids of medical images are grey; titles are black on white)."""
    import numpy as np
    from PIL import Image  # matplotlib's own dependency

    rgba = np.asarray(Image.open(path).convert("RGBA"))
    if (rgba[..., 0] == rgba[..., 1]).all() and (rgba[..., 1] == rgba[..., 2]).all() and (rgba[..., 3] == 255).all():
        Image.fromarray(rgba[..., 0]).save(path, optimize=True)
