"""Write docs/viewer.png: the viewer on the demo's bracket-counting LSTM, after a select and match.

Run from the repository root (about a minute: it trains the demo model)::

    .venv/bin/python tests/viewer/viewer_screenshot.py docs/viewer.png

``scripts/screenshots.py`` writes it together with docs/demo-report.png (one demo run).
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np


def main(out: str) -> None:
    from rnnlens.cli.demo import run_demo

    shoot(run_demo(verbose=False), out)


def shoot(result: Any, out: str) -> None:
    """The viewer on ``result`` (a :class:`~rnnlens.cli.demo.DemoResult`), screenshot to ``out``."""
    from playwright.sync_api import expect, sync_playwright

    from rnnlens.testing.stores import write_store
    from rnnlens.viewer import StoreView, make_server

    h = np.asarray(result.states["lstm"].h)  # type: ignore[attr-defined]
    tmp = Path(tempfile.mkdtemp())
    store = write_store(tmp / "demo.zarr", h, layer="lstm", backend="keras demo")
    tokens = tmp / "text.txt"
    tokens.write_text("\n".join(result.texts) + "\n", encoding="utf-8")
    view = StoreView(store)
    depth = result.depth
    # The picture's selection: a bracketed stretch (depth >= 1, with depth 0 around it) and a
    # threshold whose selected units are selective (on for under half the data set) and whose
    # matches lie inside brackets: the fraction of matched steps at depth >= 1, top 20.
    best, best_score = None, -1.0
    for s in range(40):
        inside = np.concatenate([[False], depth[s] >= 1, [False]])
        edges = np.flatnonzero(np.diff(inside.astype(int)))
        for t0, t1 in zip(edges[::2], edges[1::2]):
            if t1 - t0 < 4:
                continue
            for theta in (0.2, 0.3, 0.4, 0.5, 0.6):
                units = view.select("lstm", "h", "forward", sample=s, t0=int(t0), t1=int(t1), threshold=theta)
                if not 1 <= len(units) <= 4:
                    continue
                stats = [view.unit_stats("lstm", "h", "forward", u, threshold=theta) for u in units]
                if max(st["fraction_on"] for st in stats) > 0.5:
                    continue
                matches = view.match("lstm", "h", "forward", units, theta, query_length=int(t1 - t0))
                steps = [depth[m.sample, m.start : m.end] >= 1 for m in matches]
                score = float(np.concatenate(steps).mean()) if steps else 0.0
                score *= min(1.0, len(matches) / 20)
                if score > best_score:
                    best, best_score = (s, int(t0), int(t1), theta), score
    assert best is not None, "no clean selection found"
    s, t0, t1, theta = best
    server = make_server(store, tokens=tokens, chars=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=shutil.which("chromium"), args=["--no-sandbox", "--headless=new"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        page.fill("#sample", str(s))
        page.locator("#sample").dispatch_event("change")
        expect(page.locator("#status")).to_contain_text(f"sample {s}:")
        page.fill("#threshold", str(theta))
        page.fill("#t0", str(t0))
        page.locator("#t0").dispatch_event("change")
        page.fill("#t1", str(t1))
        page.locator("#t1").dispatch_event("change")
        page.click("#match")
        page.wait_for_selector("#results li")
        page.locator("#selected-units .chip").first.click()
        expect(page.locator("#unit-info")).to_contain_text("mean")
        page.screenshot(path=out, full_page=True)
        browser.close()
    server.shutdown()
    print(f"wrote {out}: sample {s} [{t0}, {t1}) θ={theta}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/viewer.png")
