"""The cell-state scan of the small-batch rebuild (:mod:`rnnlens.adapters.torch_.rebuild_scan`):
numba's kernel gives NumPy's ``c`` bit for bit (the same float32/float64 multiplication, then
addition, step by step), and it is loaded only as the module says (after
:data:`NUMBA_AFTER_S` seconds of NumPy scans, or as ``RNNLENS_NUMBA`` says)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from rnnlens.adapters.torch_ import rebuild_scan


@pytest.fixture
def fresh(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The module's state as in a new process (restored afterwards)."""
    state: dict[str, Any] = {"spent": 0.0}
    monkeypatch.setattr(rebuild_scan, "_state", state)
    monkeypatch.delenv("RNNLENS_NUMBA", raising=False)
    return state


def _inputs(dtype: str, layout: str, c0: bool, seed: int) -> tuple[np.ndarray, np.ndarray, Any]:
    rng = np.random.default_rng(seed)
    steps, n, u = 17, 3, 5
    c = rng.normal(size=(steps, n, u)).astype(dtype)
    g = rng.uniform(0, 1, size=(n, steps, 4 * u) if layout == "batch_first" else (steps, n, 4 * u))
    g = g.astype(dtype)
    if layout == "batch_first":
        g = g.transpose(1, 0, 2)  # (time-major views of a sample-major buffer, as the rebuild's)
    f = g[:, :, u : 2 * u]
    return c, f, rng.normal(size=(n, u)).astype(dtype) if c0 else None


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("layout", ["time_major", "batch_first"])
@pytest.mark.parametrize("c0", [False, True])
@pytest.mark.parametrize("reverse", [False, True])
def test_the_compiled_scan_is_numpy_s_bit_for_bit(
    fresh: dict[str, Any], dtype: str, layout: str, c0: bool, reverse: bool
) -> None:
    pytest.importorskip("numba")
    c, f, init = _inputs(dtype, layout, c0, seed=3)
    want = c.copy()
    fresh["kernel"] = None  # NumPy's
    rebuild_scan.scan(want, f, init, reverse=reverse)
    del fresh["kernel"]
    fresh["spent"] = rebuild_scan.NUMBA_AFTER_S  # the NumPy scans have cost what loading costs
    kernel = rebuild_scan.kernel()
    assert kernel is not None
    rebuild_scan.scan(c, f, init, reverse=reverse)
    assert c.tobytes() == want.tobytes()
    # and both against the recurrence written out
    ref = np.empty_like(want)
    order = range(len(c) - 1, -1, -1) if reverse else range(len(c))
    prev = init
    base = _inputs(dtype, layout, c0, seed=3)[0]
    for s in order:
        ref[s] = base[s] if prev is None else (f[s] * prev) + base[s]
        prev = ref[s]
    np.testing.assert_array_equal(want, ref)


def test_numba_is_loaded_only_after_the_numpy_scans_cost_as_much(
    fresh: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    loads: list[int] = []
    monkeypatch.setattr(rebuild_scan, "_compile", lambda: loads.append(1))
    c, f, _ = _inputs("float32", "time_major", False, seed=0)
    rebuild_scan.scan(c, f, None, reverse=False)
    assert loads == [] and 0 < fresh["spent"] < rebuild_scan.NUMBA_AFTER_S
    fresh["spent"] = rebuild_scan.NUMBA_AFTER_S
    rebuild_scan.kernel()
    rebuild_scan.kernel()
    assert loads == [1]  # once, then kept (here: None, as without numba: NumPy's scan goes on)
    rebuild_scan.scan(c, f, None, reverse=False)


@pytest.mark.parametrize(("mode", "loaded"), [("0", False), ("1", True)])
def test_the_environment_variable_decides_where_set(
    fresh: dict[str, Any], monkeypatch: pytest.MonkeyPatch, mode: str, loaded: bool
) -> None:
    loads: list[int] = []
    monkeypatch.setattr(rebuild_scan, "_compile", lambda: loads.append(1))
    monkeypatch.setenv("RNNLENS_NUMBA", mode)
    fresh["spent"] = 10 * rebuild_scan.NUMBA_AFTER_S if mode == "0" else 0.0
    rebuild_scan.kernel()
    assert bool(loads) is loaded
