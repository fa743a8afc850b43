"""The viewer's click-to-colour: ``/api/contribution`` against a real server on a store extracted
from real PyTorch models, checked against an independent double loop over the stored gates and
against the stored state it must sum to; unsupported layers and out-of-range cells get a 400 that
says why; in the browser, clicking a cell colours the tokens and names the largest write."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from test_viewer_api import request
from test_viewer_browser import browser, expect  # noqa: F401  (the browser fixture)
from viewer_helpers import start

import rnnlens
from rnnlens.viewer import ViewerServer

T, N = 9, 3


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = torch.nn.LSTM(2, 4, batch_first=True, bidirectional=True)
        self.gru = torch.nn.GRU(8, 3, batch_first=True)
        self.rnn = torch.nn.RNN(3, 2, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(self.gru(self.lstm(x)[0])[0])[0]


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("contribution") / "s.zarr"
    rnnlens.extract_to(path, Net(), [torch.randn(N, T, 2)], fields=None)
    return path


@pytest.fixture(scope="module")
def server(store) -> Iterator[ViewerServer]:  # type: ignore[no-untyped-def]
    srv = start(store)
    yield srv
    srv.shutdown()
    srv.server_close()


def _contribution_by_loops(decay: np.ndarray, write: np.ndarray, t: int, backward: bool) -> np.ndarray:
    """Step s's term in the state at t: its write times every later decay up to t (an explicit
    double loop, in the direction's processing order)."""
    out = np.zeros(len(write))
    order = range(t, len(write)) if backward else range(t + 1)
    for s in order:
        carry = write[s]
        between = range(t, s) if backward else range(s + 1, t + 1)
        for r in between:
            carry *= decay[r]
        out[s] = carry
    return out


@pytest.mark.parametrize(
    ("layer", "direction", "sample", "t", "unit"),
    [
        ("lstm", "forward", 1, 6, 2),
        ("lstm", "backward", 2, 3, 0),
        ("gru", "forward", 0, 8, 1),
        ("lstm", "forward", 0, 0, 3),
    ],
)
def test_contribution_equals_a_loop_over_the_stored_gates(
    server, store, layer, direction, sample, t, unit
) -> None:  # type: ignore[no-untyped-def]
    q = f"layer={layer}&field=h&direction={direction}&sample={sample}&t={t}&unit={unit}"
    status, _, body = request(server, f"/api/contribution?{q}")
    assert status == 200, body
    d = rnnlens.open_states(store)[layer].directions[direction]
    g = {name: np.asarray(d.gates[name][sample, :, unit], np.float64) for name in d.gates}
    if layer == "lstm":
        field, decay, write = "c", g["f"], g["i"] * g["g"]
    else:
        field, decay, write = "h", g["z"], (1 - g["z"]) * g["n"]
    expected = _contribution_by_loops(decay, write, t, direction == "backward")
    stored = float(np.asarray(getattr(d, field)[sample, t, unit]))
    assert body["field"] == field and len(body["values"]) == T
    # float32 gates multiplied in float64 here and there: equal to float rounding
    np.testing.assert_allclose(body["values"], expected, rtol=1e-6, atol=1e-7)
    assert body["total"] == pytest.approx(stored, rel=1e-5, abs=1e-6)
    assert body["total"] == pytest.approx(sum(body["values"]) + body["initial"], rel=1e-12, abs=1e-12)
    assert body["steps"] == ([t, T - 1] if direction == "backward" else [0, t])


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("layer=rnn&direction=forward&sample=0&t=1&unit=0", "not linear in its previous state"),
        ("layer=lstm&direction=forward&sample=0&t=1&unit=4", "unit 4 is out of range"),
        ("layer=lstm&direction=forward&sample=0&t=9&unit=0", "step 9 is out of range"),
        ("layer=lstm&direction=forward&sample=3&t=1&unit=0", "sample 3 is out of range"),
        ("layer=lstm&direction=forward&sample=0&t=1", "unit"),
        ("layer=lstn&direction=forward&sample=0&t=1&unit=0", "lstm"),
    ],
)
def test_contribution_refusals_say_why(server, query, says) -> None:  # type: ignore[no-untyped-def]
    status, _, body = request(server, f"/api/contribution?{query}")
    assert status == 400 and says in body["error"], body


def test_clicking_a_cell_colours_the_tokens_in_the_browser(browser, store, tmp_path) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    tokens = tmp_path / "tokens.txt"
    tokens.write_text(
        "\n".join(" ".join(f"w{s}{t}" for t in range(T)) for s in range(N)) + "\n", encoding="utf-8"
    )
    server = start(store, tokens=tokens)
    ctx = browser.new_context(viewport={"width": 1280, "height": 900})
    page = ctx.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    try:
        page.goto(server.url)
        page.wait_for_selector("body[data-ready='1']")
        canvas = page.locator("#heatmap")
        box = canvas.bounding_box()
        left, top, cw, ch = (
            float(canvas.get_attribute(f"data-{k}")) for k in ("left", "top", "cell-width", "cell-height")
        )
        t, unit = 5, 2
        page.mouse.click(box["x"] + left + (t + 0.5) * cw, box["y"] + top + (unit + 0.5) * ch)
        expect(page.locator("#status")).to_have_text(
            re.compile(rf"lstm\.c\[{unit}\] at step {t} = .*largest write: step \d")
        )
        assert canvas.get_attribute("data-contribution") == f"c[{unit}]@{t}"
        # a layer that is not a sum of writes: the page says why instead of colouring
        # (select_option fires the change event itself: a second one loaded the layer twice, and
        # the later load's status could land after the click's message)
        page.select_option("#layer", "rnn")
        expect(page.locator("#status")).to_have_text(re.compile(r"^sample 0: 9 steps × 2 units"))
        page.wait_for_load_state("networkidle")
        page.mouse.click(box["x"] + left + 2.5 * cw, box["y"] + top + 0.5 * ch)
        expect(page.locator("#status")).to_have_text(re.compile("not linear in its previous state"))
        assert problems == []
    finally:
        ctx.close()
        server.shutdown()
        server.server_close()
