"""What the benchmark scripts share: the `medsynth` command of this environment, run from the
repository root, its last output line returned, its error shown when it fails; and sample grids
put side by side in one small PNG."""

from __future__ import annotations

import contextlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# True: medsynth() runs the command line's own main() in this process instead of a new `medsynth`
# process. A new process pays the imports again (lightning, monai, torch: ~7 s on an AVX-512
# machine, ~15 s on an AVX2-only one), which a benchmark of many short commands (the zoo's --quick)
# pays some 30 times. Every command seeds what it draws, and what one command changes for the whole
# process is put back (_main_here), so a recipe that repeats run to run gives the same numbers either
# way (checked on the zoo's --quick: RESULTS 2026-12-07); only wall times differ.
IN_PROCESS = False


def medsynth(*args: str) -> str:
    """Run `medsynth ARGS` (printed first); the last line it printed (e.g. a run directory).
    A command that fails raises SystemExit with the end of its error output."""
    lines = medsynth_output(*args).strip().splitlines()
    return lines[-1] if lines else ""


def medsynth_output(*args: str) -> str:
    """Run `medsynth ARGS` (printed first); everything it printed on stdout."""
    cmd = [str(Path(sys.executable).with_name("medsynth")), *args]
    print("$", " ".join(cmd[1:]), flush=True)
    if IN_PROCESS:
        code, stdout, stderr = _main_here(list(args))
    else:
        out = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        code, stdout, stderr = out.returncode, out.stdout, out.stderr
    if code:
        raise SystemExit(f"medsynth {' '.join(args[:2])} failed:\n{stderr[-3000:]}")
    return stdout


def _main_here(argv: list[str]) -> tuple[int, str, str]:
    """`medsynth ARGV` through medsynth.cli.main in this process, from the repository root:
    (exit code, stdout, stderr). An exception the command line does not turn into an exit code
    becomes exit code 1 with its traceback on stderr, as a separate process would report it.
    What a command changes for the whole process is put back afterwards, so the next command
    starts as a new process would: the working directory, sys.argv (runs record it as their
    command), the SIGINT handler (Lightning ignores Ctrl-C while it stops a fit) and torch's
    deterministic-algorithms switch (training turns it on). A Ctrl-C stops the benchmark, as it
    stops a parent of separate processes, instead of failing one row."""
    import gc
    import io
    import os
    import signal
    import traceback

    import torch
    from medsynth.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    saved = (os.getcwd(), sys.argv, signal.getsignal(signal.SIGINT), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled())
    interrupted = False
    os.chdir(ROOT)
    sys.argv = [str(Path(sys.executable).with_name("medsynth")), *argv]
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                code = main(argv)
            except SystemExit as exit_:  # argparse: --help / --version (0) or a bad argument (2); Lightning: 1
                code = 0 if exit_.code is None else exit_.code if isinstance(exit_.code, int) else 1
            except Exception:  # noqa: BLE001 - reported like a crashed process, so one row's failure is one row's
                traceback.print_exc()
                code = 1
        interrupted = code == 130 or signal.getsignal(signal.SIGINT) != saved[2]
    finally:
        os.chdir(saved[0])
        sys.argv = saved[1]
        signal.signal(signal.SIGINT, saved[2])
        torch.use_deterministic_algorithms(saved[3], warn_only=saved[4])
    if interrupted:
        raise KeyboardInterrupt
    gc.collect()  # a finished command's trainer, data and models go now, as its process would have ended
    return code, stdout.getvalue(), stderr.getvalue()


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
