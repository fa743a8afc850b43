"""The fused numba kernel of Decomposition.maps (rnnlens.analysis.decompose_fused) against the
NumPy route it stands in for: LSTM and GRU layers, float32 and float64, forward and backward,
masked samples, a given initial state, exact zero decays, decays of 1e-300 and weights fading
below 1e-60 (chunks the kernel hands to the log route), unit subsets, several chunks worked on
in threads. Both routes do the same float64 operations in the same order and the map is the same
batched matrix product of the same factors: lifetimes equal exactly, the map to rtol 1e-14 (the
matrix product's own rounding, were BLAS to order a sum differently between calls). A failed
check and decays above 1 raise the NumPy route's errors. Without numba the NumPy route runs.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
from dirty_results import dirty_results  # noqa: F401 (autouse: the results handed out dirty)
from hypothesis import given
from hypothesis import strategies as st

import rnnlens
from rnnlens.analysis import decompose_fused
from rnnlens.core.spec import LayerSpec
from rnnlens.core.states import DirectionStates, Gates, LayerStates, States

numba = pytest.importorskip("numba")


@pytest.fixture(autouse=True)
def _small_layers_take_the_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decompose_fused, "MIN_VALUES", 0)


def _states(kind: str, a: np.ndarray, b: np.ndarray, mask: np.ndarray | None, direction: str,
            dtype: str, initial: np.ndarray | None) -> States:  # fmt: skip
    """An LSTM (c = f ⊙ c + i ⊙ g; ``a`` = f, ``b`` = g, i = 0.5 + g / 4) or GRU (h = z ⊙ h +
    (1 − z) ⊙ n; ``a`` = z, ``b`` = n) layer, its state computed in float64 and stored as ``dtype``."""
    n, t, u = a.shape
    a, b = a.astype(dtype), b.astype(dtype)
    i = (0.5 + b / 4).astype(dtype)
    w = i.astype(np.float64) * b if kind == "lstm" else (1 - a.astype(np.float64)) * b
    valid = np.ones((n, t), bool) if mask is None else mask
    order = range(t - 1, -1, -1) if direction == "backward" else range(t)
    x, prev = np.zeros((n, t, u)), np.zeros((n, u)) if initial is None else initial.copy()
    for p in order:
        prev = np.where(valid[:, p, None], a[:, p] * prev + w[:, p], prev)
        x[:, p] = prev
    x = x.astype(dtype)
    if kind == "lstm":
        gates = Gates([i, a, b, np.full_like(a, 0.5)], ("i", "f", "g", "o"))
        ds = DirectionStates(direction, np.tanh(x) / 2, x, gates, mask, layer="rec")
        fields: tuple[str, ...] = ("h", "c", "gates")
    else:
        gates = Gates([a, a, b], ("r", "z", "n"))
        ds = DirectionStates(direction, x, None, gates, mask, layer="rec")
        fields = ("h", "gates")
    spec = LayerSpec("rec", kind, kind.upper(), u, (direction,), fields)
    return States({"rec": LayerStates(spec, {direction: ds}, mask)})


def _both(dec: rnnlens.Decomposition, monkeypatch: pytest.MonkeyPatch, fraction: float = 0.5,
          **kw: object) -> rnnlens.DecompositionMaps:  # fmt: skip
    """The maps by the kernel and by the NumPy route (kernel switched off), checked equal;
    ``_both.taken``: whether the kernel took each chunk of the kernel's call."""
    from rnnlens.analysis import decompose_stream

    taken, real = [], decompose_stream._fused

    def spy(*args: Any, **kwargs: Any) -> bool:
        taken.append(real(*args, **kwargs))
        return taken[-1]

    with monkeypatch.context() as m:
        m.setattr(decompose_stream, "_fused", spy)
        fused = dec.maps(fraction=fraction, **kw)  # type: ignore[arg-type]
    _both.taken = taken  # type: ignore[attr-defined]
    with monkeypatch.context() as m:
        m.setattr(decompose_fused, "kernel", lambda: None)
        plain = dec.maps(fraction=fraction, **kw)  # type: ignore[arg-type]
    np.testing.assert_allclose(fused.attention, plain.attention, rtol=1e-14, atol=0)
    np.testing.assert_array_equal(fused.lifetimes.steps, plain.lifetimes.steps)
    np.testing.assert_array_equal(fused.lifetimes.censored, plain.lifetimes.censored)
    np.testing.assert_array_equal(dec.attention(**kw), fused.attention)  # type: ignore[arg-type]
    np.testing.assert_array_equal(dec.lifetime(fraction).steps, dec.maps(fraction=fraction).lifetimes.steps)
    return fused


@given(
    st.integers(0, 2**16),
    st.integers(1, 30),
    st.sampled_from(["lstm", "gru"]),
    st.sampled_from(["float32", "float64"]),
    st.sampled_from(["plain", "zeros", "tiny", "fading"]),
    st.sampled_from(["forward", "backward"]),
    st.sampled_from([None, "end", "random"]),
    st.booleans(),
    st.integers(1, 4),
)
def test_the_kernel_gives_the_numpy_routes_maps(seed: int, t: int, kind: str, dtype: str, extreme: str,
                                                direction: str, masked: str | None, given_initial: bool,
                                                chunk: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    n, u = 5, 3
    a, b = rng.random((n, t, u)), rng.uniform(-1, 1, (n, t, u))
    if extreme == "zeros":
        a[rng.random((n, t, u)) < 0.1] = 0.0
    elif extreme == "tiny" and dtype == "float64":
        a[rng.random((n, t, u)) < 0.1] = 1e-300
    elif extreme == "fading":  # the weights fade below 1e-60 within the sequence
        a = rng.uniform(1e-6, 1e-4, (n, t, u))
    mask = None
    if masked == "end":
        mask = np.arange(t)[None] < rng.integers(0, t + 1, size=n)[:, None]
    elif masked == "random":
        mask = rng.random((n, t)) < 0.7
    initial = rng.normal(size=(n, u)) if given_initial else None
    states = _states(kind, a, b, mask, direction, dtype, initial)
    dec = rnnlens.decompose(states, "rec", chunk=chunk, initial=initial)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(decompose_fused, "MIN_VALUES", 0)  # hypothesis runs the examples outside the fixture
        _both(dec, mp, 0.3)
        # the kernel took every chunk but where the NumPy route must (the log route's ranges)
        assert all(_both.taken) or extreme != "plain"  # type: ignore[attr-defined]
        _both(dec, mp, 0.3, units=[0, 2])


def test_a_stored_float32_lstm_and_bidirectional_gru(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    x = np.random.default_rng(0).normal(size=(9, 12, 3)).astype("float32")
    rnnlens.extract_to(tmp_path / "l.zarr", torch.nn.LSTM(3, 5, batch_first=True), x,
                       fields=("c", "gates"), batch_size=4)  # fmt: skip
    stored = rnnlens.open_states(tmp_path / "l.zarr")
    maps = _both(rnnlens.decompose(stored, next(iter(stored))), monkeypatch)
    assert maps.attention.shape == (9, 12, 12) and _both.taken == [True] * 3  # type: ignore[attr-defined]
    net = torch.nn.GRU(3, 4, batch_first=True, bidirectional=True)
    rnnlens.extract_to(tmp_path / "g.zarr", net, x, fields=("h", "gates"), batch_size=4)
    stored = rnnlens.open_states(tmp_path / "g.zarr")
    for direction in ("forward", "backward"):
        _both(rnnlens.decompose(stored, next(iter(stored)), direction=direction), monkeypatch)
        assert _both.taken == [True] * 3  # type: ignore[attr-defined]


@pytest.mark.parametrize("bad", [0, 5])
def test_the_kernels_errors_are_the_numpy_routes(bad: int) -> None:
    """A chunk whose writes do not sum to the stored state: the ParityError naming its step (the
    chunk re-checked on the NumPy route); decays above 1: the lifetimes refused, the map given."""
    rng = np.random.default_rng(3)
    a, b = rng.random((6, 5, 2)), rng.uniform(-1, 1, (6, 5, 2))
    states = _states("lstm", a, b, None, "forward", "float32", None)
    states["rec"].forward.gates["f"][bad, 3] *= 0.5
    dec = rnnlens.decompose(states, "rec", chunk=2)
    for call in (dec.maps, dec.attention, dec.lifetime):
        with pytest.raises(rnnlens.ParityError, match="step 3"):
            call()
    grow = rnnlens.decompose(_states("lstm", a * 1.5, b, None, "forward", "float64", None), "rec")
    with pytest.raises(rnnlens.InputError, match="above 1"):
        grow.maps()
    assert grow.attention().shape == (6, 5, 5)


def test_small_layers_take_the_numpy_route(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Below MIN_VALUES the kernel is not even asked for (its first call costs a second or more)."""
    monkeypatch.setattr(decompose_fused, "MIN_VALUES", 10**9)
    monkeypatch.setattr(decompose_fused, "kernel", lambda: pytest.fail("the kernel was asked for"))
    states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    assert rnnlens.decompose(states, "lstm").maps().attention.shape == (2, 5, 5)


def test_without_numba_the_numpy_route_runs(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setitem(sys.modules, "numba", None)  # import numba raises ImportError
    monkeypatch.setattr(decompose_fused, "_KERNEL", [])
    assert decompose_fused.kernel() is None
    states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    assert rnnlens.decompose(states, "lstm").maps().attention.shape == (2, 5, 5)
