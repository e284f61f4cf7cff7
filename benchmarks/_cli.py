"""What the benchmark scripts share: the `medsynth` command of this environment, run from the
repository root, its last output line returned, its error shown when it fails."""

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
