"""Regenerate the README's screenshots from one demo run, in headless Chromium (Playwright):

- docs/demo-report.png: the demo's HTML report (``rnnlens demo``), top part;
- docs/viewer.png: the viewer on the demo's LSTM after a select and match.

Run from the repository root (a minute or two: it trains the demo model)::

    .venv/bin/python scripts/screenshots.py [OUT_DIR]
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def report_shot(report: Path, out: Path, *, height: int = 1500) -> None:
    """The top of the report (title, findings, coloured units), as a reader first sees it."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox", "--headless=new"]
        )
        page = browser.new_page(viewport={"width": 1200, "height": height})
        page.goto(report.as_uri())
        page.wait_for_load_state("load")
        page.screenshot(path=str(out), full_page=False)
        browser.close()


def main(out_dir: str) -> None:
    sys.path.insert(0, str(ROOT / "tests" / "viewer"))
    from viewer_screenshot import shoot

    from rnnlens.cli.demo import run_demo

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    report = Path(tempfile.mkdtemp()) / "rnnlens-demo.html"
    result = run_demo(verbose=False, report=report)
    report_shot(report, out / "demo-report.png")
    print(f"wrote {out / 'demo-report.png'} (accuracy {result.accuracy:.3f})")
    shoot(result, str(out / "viewer.png"))


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(ROOT / "docs"))
