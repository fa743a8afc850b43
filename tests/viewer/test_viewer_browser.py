"""The viewer end to end in a real headless browser (Debian's chromium driven by Playwright):
the page loads without console errors, select-and-match driven through the UI lists the planted
spans, clicking a result jumps there, and a screenshot is taken.

Without chromium the test skips, unless ``RNNLENS_REQUIRE_BROWSER=1`` (CI) makes that a
failure. ``RNNLENS_VIEWER_SCREENSHOT=path.png`` also writes the screenshot there.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from viewer_helpers import start

from rnnlens.testing.stores import LONG, PLANTED


def _chromium() -> str:
    path = shutil.which("chromium")
    why = None
    if path is None:
        why = "Debian's chromium is not installed (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            why = "playwright is not installed (pip install 'rnnlens[test]')"
    if why is not None:
        if os.environ.get("RNNLENS_REQUIRE_BROWSER") == "1":
            pytest.fail(f"RNNLENS_REQUIRE_BROWSER=1 but {why}.")
        pytest.skip(why)
    assert path is not None
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = _chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=executable, args=["--no-sandbox", "--headless=new"])
        yield b
        b.close()


@pytest.fixture
def page(browser, planted, tokens_file) -> Iterator[Any]:  # type: ignore[no-untyped-def]
    server = start(planted, tokens=tokens_file)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("console", lambda m: problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None)
    pg.on("pageerror", lambda e: problems.append(f"page error: {e}"))
    pg.set_default_timeout(10_000)
    pg.goto(server.url)
    pg.wait_for_selector("body[data-ready='1']")
    pg.problems = problems  # type: ignore[attr-defined]
    yield pg
    ctx.close()
    server.shutdown()
    server.server_close()


def expect(locator: Any) -> Any:
    """Playwright's retrying assertions (they poll without evaluating strings: the page's CSP
    forbids eval, so wait_for_function cannot be used)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(locator)


def drag(page, t0: int, t1: int) -> None:  # type: ignore[no-untyped-def]
    """Select steps [t0, t1) with the mouse, the way a user does."""
    canvas = page.locator("#heatmap")
    box = canvas.bounding_box()
    left, top, cw = (float(canvas.get_attribute(f"data-{k}")) for k in ("left", "top", "cell-width"))
    y = box["y"] + top + 10
    page.mouse.move(box["x"] + left + (t0 + 0.5) * cw, y)
    page.mouse.down()
    page.mouse.move(box["x"] + left + (t1 - 0.5) * cw, y, steps=4)
    page.mouse.up()


def results(page) -> list[tuple[int, int, int]]:  # type: ignore[no-untyped-def]
    items = page.locator("#results li")
    return [
        tuple(int(items.nth(i).get_attribute(f"data-{k}")) for k in ("sample", "start", "end"))  # type: ignore[misc]
        for i in range(items.count())
    ]


def test_select_and_match_in_the_browser(page, tmp_path) -> None:  # type: ignore[no-untyped-def]
    s, a, b = PLANTED[0]
    page.fill("#sample", str(s))
    page.locator("#sample").dispatch_event("change")
    expect(page.locator("#status")).to_have_text(re.compile(rf"^sample {s}:"))
    drag(page, a, b)
    assert page.input_value("#t0") == str(a) and page.input_value("#t1") == str(b)
    page.fill("#threshold", "0.5")
    page.locator("#threshold").dispatch_event("change")
    expect(page.locator("#selected-units .chip")).to_have_count(2)
    assert page.locator("#selected-units .chip").all_inner_texts() == ["3", "7"]
    page.click("#match")
    page.wait_for_selector("#results li")
    found = results(page)
    assert set(found[: len(PLANTED)]) == set(PLANTED)
    assert found[len(PLANTED)] == LONG and len(found) == len(PLANTED) + 1
    first = page.locator("#results li").first
    assert "score 1.000" in first.inner_text() and first.locator(".on").count() == 4  # tokens of the span

    # clicking a result jumps there: that sample, that range
    target = PLANTED[2]
    page.locator(f"#results li[data-sample='{target[0]}']").click()
    expect(page.locator("#status")).to_have_text(re.compile(rf"^sample {target[0]}:"))
    assert page.input_value("#sample") == str(target[0])
    assert (page.input_value("#t0"), page.input_value("#t1")) == (str(target[1]), str(target[2]))

    # a unit over the whole data set
    page.locator("#selected-units .chip").first.click()
    expect(page.locator("#unit-info")).to_contain_text("mean")
    assert page.locator("#unit-title").inner_text() == "lstm.h[3]"

    shot = tmp_path / "viewer.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if os.environ.get("RNNLENS_VIEWER_SCREENSHOT"):
        shutil.copy(shot, Path(os.environ["RNNLENS_VIEWER_SCREENSHOT"]))
    assert page.problems == []  # type: ignore[attr-defined]


def test_bad_input_in_the_page_shows_an_error_not_a_crash(page) -> None:  # type: ignore[no-untyped-def]
    page.fill("#sample", "100000")
    page.locator("#sample").dispatch_event("change")
    page.wait_for_selector("#status.error")
    assert "out of range" in page.inner_text("#status")
    page.fill("#sample", "3")
    page.locator("#sample").dispatch_event("change")
    expect(page.locator("#status")).to_have_text(re.compile(r"^sample 3:"))
    # failed fetches (the 400 above) are logged by chromium as console errors: nothing else is
    assert all("400" in p for p in page.problems), page.problems  # type: ignore[attr-defined]


def test_correlation_panel_colours_units_by_a_loaded_feature(browser, planted, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from test_viewer_feature import planted_feature

    np.save(tmp_path / "depth.npy", planted_feature())
    server = start(planted, feature=tmp_path / "depth.npy")
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    try:
        pg = ctx.new_page()
        problems: list[str] = []
        pg.on("pageerror", lambda e: problems.append(str(e)))
        pg.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)  # CSP too
        pg.goto(server.url)
        pg.wait_for_selector("body[data-ready='1']")
        expect(pg.locator("#corr-panel")).to_be_visible()
        expect(pg.locator("#corr-info")).to_contain_text("depth.npy")
        first = pg.locator("#corr-units li").first
        assert first.get_attribute("data-unit") == "3" and "r = 0." in first.inner_text()
        assert pg.locator("#heatmap").get_attribute("data-corr-left") is not None  # the strip is drawn
        first.click()
        expect(pg.locator("#unit-title")).to_have_text("lstm.h[3]")
        assert problems == []
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()


def test_default_threshold_from_the_data_and_a_first_selection_finds_units(page, planted) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    from rnnlens.viewer import StoreView

    view = StoreView(planted)
    values = view.sample("lstm", "h", "forward", 0)
    valid = np.sort(values[np.asarray(view.mask[0], bool)].ravel())
    expected = round(float(valid[int(0.9 * valid.size)]), 2)
    assert page.get_attribute("#threshold", "data-from-data") == "1"
    assert float(page.input_value("#threshold")) == pytest.approx(expected, abs=1e-9)
    s, a, b = PLANTED[0]
    page.fill("#sample", str(s))
    page.locator("#sample").dispatch_event("change")
    expect(page.locator("#status")).to_have_text(re.compile(rf"^sample {s}:"))
    assert float(page.input_value("#threshold")) == pytest.approx(expected)  # kept across samples
    drag(page, a, b)  # no threshold typed: the planted units are found
    expect(page.locator("#selected-units .chip")).to_have_count(2)


def test_the_heatmap_has_a_colour_bar(page) -> None:  # type: ignore[no-untyped-def]
    canvas = page.locator("#heatmap")
    lo, hi = (float(v) for v in canvas.get_attribute("data-colour-bar").split())
    assert lo == -hi and hi > 0
    x = float(canvas.get_attribute("data-colour-bar-left")) + 6
    top = float(canvas.get_attribute("data-top"))
    pixel = page.evaluate(
        """([x, y0]) => { const c = document.getElementById('heatmap'); const ctx = c.getContext('2d');
        const h = c.height;
        return [ctx.getImageData(x, y0 + 2, 1, 1).data, ctx.getImageData(x, h - 26, 1, 1).data]
          .map((d) => Array.from(d).slice(0, 3)); }""",
        [x, top],
    )
    (r1, _, b1), (r2, _, b2) = pixel
    assert r1 > 200 and b1 < 120  # +max: red
    assert b2 > 200 and r2 < 120  # -max: blue


def test_viewer_text_meets_wcag_aa_contrast(page) -> None:  # type: ignore[no-untyped-def]
    from contrast import below_aa, text_contrast

    s, a, b = PLANTED[0]
    page.fill("#sample", str(s))
    page.locator("#sample").dispatch_event("change")
    expect(page.locator("#status")).to_have_text(re.compile(rf"^sample {s}:"))
    drag(page, a, b)
    expect(page.locator("#selected-units .chip")).to_have_count(2)
    page.click("#match")
    page.wait_for_selector("#results li")
    assert len(text_contrast(page)) > 20
    assert below_aa(page) == []


def test_gates_on_a_0_1_sequential_scale_in_the_viewer(browser, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np

    torch = pytest.importorskip("torch")
    import rnnlens

    torch.manual_seed(0)
    net = torch.nn.LSTM(3, 6, batch_first=True)
    x = np.random.default_rng(0).standard_normal((4, 9, 3)).astype("float32")
    rnnlens.extract_to(tmp_path / "g.zarr", net, x, fields=None, batch_size=4)
    server = start(tmp_path / "g.zarr")
    pg = browser.new_page(viewport={"width": 1000, "height": 700})
    try:
        pg.goto(server.url)
        pg.wait_for_selector("body[data-ready='1']")
        canvas = pg.locator("#heatmap")
        assert canvas.get_attribute("data-colour-scale") == "diverging"  # h
        pg.select_option("#field", "f")
        expect(canvas).to_have_attribute("data-colour-scale", "unit")
        assert canvas.get_attribute("data-colour-bar") == "0 1"
        pg.select_option("#field", "g")  # tanh: centred on zero again
        expect(canvas).to_have_attribute("data-colour-scale", "diverging")
    finally:
        pg.close()
        server.shutdown()
        server.server_close()
