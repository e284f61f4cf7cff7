"""Screenshots of a run's report in headless Chromium at a desktop and a phone width, to check the
page by eye (the tests check its structure with an HTML parser).

    python benchmarks/report_screenshots.py RUN_DIR [--out-dir DIR]

Needs Chromium (Debian: apt-get install chromium); the report is written to DIR/report.html, the
screenshots to DIR/report_1200.png and DIR/report_390.png.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run")
    parser.add_argument("--out-dir", default="runs/screenshots")
    parser.add_argument("--height", type=int, default=2600)
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    if browser is None:
        raise SystemExit("no Chromium found (Debian: apt-get install chromium)")
    from medsynth.report import report

    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    page = report(args.run, out=out / "report.html", overwrite=True)
    with tempfile.TemporaryDirectory() as profile:
        for width in (1200, 390):
            shot = out / f"report_{width}.png"
            subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{args.height}",
                            f"--screenshot={shot.resolve()}", page.resolve().as_uri()], check=True,
                           capture_output=True, timeout=120)
            print(shot)


if __name__ == "__main__":
    main()
