"""rnnlens.decompose: a linear state as the sum of per-step writes.

Oracles: the float64 NumPy reference cell loop (rnnlens.testing.reference_rnn) with random
masks, directions and initial states, and an independent naive double loop over (s, t) for the
contributions, the initial term, the attention map, top-k and lifetimes; real PyTorch LSTM/GRU
(float32: sums within 1e-5 of Σ|terms|) and a store written by extract_to.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import rnnlens
from rnnlens.core.spec import LayerSpec
from rnnlens.core.states import DirectionStates, Gates, LayerStates, States
from rnnlens.testing.reference import reference_rnn


def _states(kind: str, ref: dict[str, np.ndarray], mask: np.ndarray | None, direction: str) -> States:
    names = ("i", "f", "g", "o") if kind == "lstm" else ("z", "r", "n")
    gates = Gates([ref["gates"][:, :, k] for k in range(len(names))], names)
    ds = DirectionStates(direction, ref["h"], ref.get("c"), gates, mask, layer="rec")
    units = ref["h"].shape[-1]
    fields = ("h", "c", "gates") if kind == "lstm" else ("h", "gates")
    spec = LayerSpec("rec", kind, kind.upper(), units, (direction,), fields)  # type: ignore[arg-type]
    return States({"rec": LayerStates(spec, {direction: ds}, mask)})


@st.composite
def configs(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["lstm", "gru"]))
    n, t, f, u = (
        draw(st.integers(1, 3)),
        draw(st.integers(1, 7)),
        draw(st.integers(1, 3)),
        draw(st.integers(1, 4)),
    )
    seed = draw(st.integers(0, 2**16))
    masked = draw(st.sampled_from(["none", "end", "random"]))
    flags = {k: draw(st.booleans()) for k in ("reverse", "initial", "give")}
    return dict(kind=kind, n=n, t=t, f=f, u=u, seed=seed, masked=masked, **flags)


def _reference(cfg):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(cfg["seed"])
    kind, n, t, f, u = cfg["kind"], cfg["n"], cfg["t"], cfg["f"], cfg["u"]
    g = 4 if kind == "lstm" else 3
    x = rng.normal(size=(n, t, f))
    w, rw, b = rng.normal(size=(f, g * u)), rng.normal(size=(u, g * u)) * 0.5, rng.normal(size=g * u)
    mask = None
    if cfg["masked"] == "end":
        mask = np.arange(t)[None] < rng.integers(0, t + 1, size=n)[:, None]
    elif cfg["masked"] == "random":
        mask = rng.random((n, t)) < 0.6
    h0 = rng.normal(size=(n, u)) if cfg["initial"] else None
    c0 = rng.normal(size=(n, u)) if cfg["initial"] else None
    ref = reference_rnn(kind, x, w, rw, b, h0=h0, c0=c0, mask=mask, reverse=cfg["reverse"])
    x0 = (c0 if kind == "lstm" else h0) if cfg["initial"] else np.zeros((n, u))
    return ref, mask, x0


def _naive(kind: str, ref: dict[str, np.ndarray], mask: np.ndarray | None, x0: np.ndarray, reverse: bool):  # type: ignore[no-untyped-def]
    """contrib[n, t, s, u] and initial[n, t, u] by a double loop, input order."""
    gs = ref["gates"]
    n, t, _, u = gs.shape
    valid = np.ones((n, t), bool) if mask is None else mask
    if kind == "lstm":
        d, w = gs[:, :, 1], gs[:, :, 0] * gs[:, :, 2]
    else:
        d, w = gs[:, :, 0], (1 - gs[:, :, 0]) * gs[:, :, 2]
    d = np.where(valid[..., None], d, 1.0)
    w = np.where(valid[..., None], w, 0.0)
    order = list(range(t - 1, -1, -1)) if reverse else list(range(t))
    contrib, initial = np.zeros((n, t, t, u)), np.zeros((n, t, u))
    for pi, ti in enumerate(order):
        for ps, si in enumerate(order[: pi + 1]):
            prod = np.ones((n, u))
            for sr in order[ps + 1 : pi + 1]:
                prod = prod * d[:, sr]
            contrib[:, ti, si] = prod * w[:, si]
        prod = np.ones((n, u))
        for sr in order[: pi + 1]:
            prod = prod * d[:, sr]
        initial[:, ti] = prod * x0
    return contrib, initial, d, valid, order


@given(configs())
def test_decomposition_against_reference(cfg) -> None:  # type: ignore[no-untyped-def]
    ref, mask, x0 = _reference(cfg)
    kind, reverse = cfg["kind"], cfg["reverse"]
    direction = "backward" if reverse else "forward"
    states = _states(kind, ref, mask, direction)
    dec = rnnlens.decompose(states, "rec", initial=x0 if cfg["give"] else None, chunk=2)
    field = ref["c"] if kind == "lstm" else ref["h"]
    contrib, initial, d, valid, order = _naive(kind, ref, mask, x0, reverse)
    t = cfg["t"]
    for ti in range(t):
        at, init = dec.at(ti), dec.initial_at(ti)
        steps = list(range(ti, t)) if reverse else list(range(ti + 1))
        np.testing.assert_allclose(at, contrib[:, ti, steps], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(init, initial[:, ti], rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(at.sum(axis=1) + init, field[:, ti], rtol=1e-12, atol=1e-12)
        both = dec.at_with_initial(ti, samples=slice(0, None))
        np.testing.assert_array_equal(both[0], at)
        np.testing.assert_array_equal(both[1], init)
        if mask is not None:  # a masked step writes nothing
            assert np.all(at[~mask[:, steps]] == 0)
    att = dec.attention()
    np.testing.assert_allclose(att, np.linalg.norm(contrib, axis=-1), rtol=1e-12, atol=1e-13)
    # top-k: the largest |contribution| per (sample, t, unit)
    idx, val = dec.top_k(2)
    for ti in range(t):
        k = min(2, order.index(ti) + 1)
        mags = np.abs(contrib[:, ti])  # (n, s, u)
        best = -np.sort(-mags, axis=1)[:, :k]
        np.testing.assert_allclose(
            np.abs(val[:, ti, :, :k]), np.moveaxis(best, 1, -1), rtol=1e-12, atol=1e-13
        )
        got = np.take_along_axis(mags, np.moveaxis(idx[:, ti, :, :k], -1, 1), axis=1)
        np.testing.assert_allclose(got, best, rtol=1e-12, atol=1e-13)
    # lifetimes: naive first drop of |Π d| below the fraction, counting valid steps
    life = dec.lifetime(0.5)
    for si in range(t):
        ps = order.index(si)
        for b in range(cfg["n"]):
            for unit in range(cfg["u"]):
                got = life.steps[b, si, unit]
                if not valid[b, si]:
                    assert np.isnan(got)
                    continue
                prod, count, cens = 1.0, 0, True
                for sr in order[ps + 1 :]:
                    prod *= abs(d[b, sr, unit])
                    if prod < 0.5:
                        cens = False
                        break
                    count += int(valid[b, sr])
                assert got == count and life.censored[b, si, unit] == cens


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
def test_torch_float32_bidirectional_packed(cls) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    net = cls(3, 8, batch_first=True, bidirectional=True)
    x = torch.randn(4, 30, 3)
    lengths = torch.tensor([30, 17, 5, 1])
    packed = torch.nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    states = rnnlens.trace(net, packed)
    name = next(iter(states))
    assert states.mask is not None
    with pytest.raises(rnnlens.DirectionNotAvailableError, match="direction="):
        rnnlens.decompose(states, name)
    for direction in ("forward", "backward"):
        dec = rnnlens.decompose(states, name, direction=direction)
        ds = states[name].directions[direction]
        field = ds.c if cls is torch.nn.LSTM else ds.h
        att = dec.attention()  # checks every step's sum (1e-5 × Σ|terms|)
        for t in (0, 4, 29):
            total = dec.at(t).sum(axis=1) + dec.initial_at(t)
            scale = np.abs(dec.at(t)).sum(axis=1) + np.abs(dec.initial_at(t))
            assert np.all(np.abs(total - field[:, t]) <= 1e-5 * scale + 1e-7)
        # nothing flows from a padded step, nor (forward) from the future
        assert np.all(att[~states.mask.astype(bool)[:, None, :].repeat(30, 1)] == 0)
        tri = np.triu(np.ones((30, 30)), 1) if direction == "forward" else np.tril(np.ones((30, 30)), -1)
        assert np.all(att[:, tri.astype(bool)] == 0)


def test_store_matches_memory(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(1)
    net = torch.nn.GRU(2, 5, batch_first=True)
    x = np.random.default_rng(0).normal(size=(7, 6, 2)).astype("float32")
    rnnlens.extract_to(tmp_path / "s.zarr", net, x, fields=("h", "gates"), batch_size=3)
    stored = rnnlens.open_states(tmp_path / "s.zarr")
    name = next(iter(stored))
    mem = rnnlens.trace(net, torch.from_numpy(x))
    a = rnnlens.decompose(stored, name, chunk=2)
    b = rnnlens.decompose(mem, name)
    np.testing.assert_allclose(a.attention(), b.attention(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(a.lifetime(0.3).steps, b.lifetime(0.3).steps)


def test_refusals() -> None:
    torch.manual_seed(2)
    lstm = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(1, 4, 2))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='c'"):
        rnnlens.decompose(lstm, "lstm", field="h")
    simple = rnnlens.trace(torch.nn.RNN(2, 3, batch_first=True), torch.randn(1, 4, 2))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="LSTM's c or a GRU's h"):
        rnnlens.decompose(simple, next(iter(simple)))
    with pytest.raises(rnnlens.LayerNotFoundError, match="lstm"):
        rnnlens.decompose(lstm, "lsmt")
    with pytest.raises(rnnlens.InputError, match="outside"):
        rnnlens.decompose(lstm, "lstm").at(4)
    with pytest.raises(rnnlens.InputError, match="fraction"):
        rnnlens.decompose(lstm, "lstm").lifetime(0)


def test_wrong_gates_are_a_parity_error() -> None:
    torch.manual_seed(3)
    states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    states["lstm"].forward.gates["f"][:, 2] *= 0.9  # not the gates that made c
    dec = rnnlens.decompose(states, "lstm")
    with pytest.raises(rnnlens.ParityError, match="step 2"):
        dec.attention()


@pytest.mark.parametrize("use", ["attention", "lifetime", "at"])
def test_a_nan_gate_is_a_parity_error_not_a_nan_map(use: str) -> None:
    torch.manual_seed(3)
    states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    states["lstm"].forward.gates["i"][1, 3, 2] = np.nan
    dec = rnnlens.decompose(states, "lstm")
    with pytest.raises(rnnlens.ParityError, match="step 4" if use == "at" else "step 3"):
        dec.at(4) if use == "at" else getattr(dec, use)()  # at(4) checks step 4, the others every step


def test_stored_gates_are_read_once_per_chunk_and_equal_the_traced(tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(4)
    lstm, x = torch.nn.LSTM(2, 3, batch_first=True), torch.randn(5, 6, 2)
    rnnlens.extract_to(tmp_path / "s.zarr", lstm, [x], fields=None)
    stored = rnnlens.open_states(tmp_path / "s.zarr")["lstm"].forward.gates
    traced = rnnlens.trace(lstm, x)["lstm"].forward.gates
    for gates in (stored, traced):
        got = gates.read(("g", "f"), slice(1, 4))
        np.testing.assert_array_equal(got[0], traced["g"][1:4])
        np.testing.assert_array_equal(got[1], traced["f"][1:4])
    with pytest.raises(rnnlens.LayerNotFoundError, match="gate"):
        stored.read(("q",), slice(0, 1))


def test_keras_conv_lstm_feature_maps() -> None:
    keras = pytest.importorskip("keras")
    layer = keras.layers.ConvLSTM1D(2, 3, padding="same", return_sequences=True, name="conv")
    model = keras.Sequential([keras.Input((5, 6, 3)), layer])
    x = np.random.default_rng(4).normal(size=(2, 5, 6, 3)).astype("float32")
    mask = np.array([[True] * 5, [True, True, True, False, False]])
    states = rnnlens.trace(model, x, mask=mask)
    dec = rnnlens.decompose(states, "conv")
    assert dec.state_shape == (6, 2)
    assert dec.attention().shape == (2, 5, 5)
    assert dec.at(4).shape == (2, 5, 6, 2)
    total = dec.at(4).sum(axis=1) + dec.initial_at(4)
    np.testing.assert_allclose(total, states["conv"].c[:, 4], rtol=1e-5, atol=1e-6)
    assert np.all(dec.at(4)[1, 3:] == 0)  # padded steps write nothing


@given(st.integers(0, 2**16), st.integers(17, 40), st.sampled_from(["plain", "zeros", "tiny"]))
def test_maps_over_several_blocks_and_extreme_decays(seed: int, t: int, extreme: str) -> None:
    """decompose_maps against carrying each write step by step: blocks of 16 steps, exact zeros
    and decays of 1e-200 (the blocks that fall back), masked steps (d = 1, w = 0)."""
    from rnnlens.analysis.decompose_maps import lifetimes, norms

    rng = np.random.default_rng(seed)
    n, u = 2, 3
    d, w = rng.random((n, t, u)), rng.normal(size=(n, t, u))
    if extreme == "zeros":
        d[rng.random((n, t, u)) < 0.05] = 0.0
    elif extreme == "tiny":
        d[rng.random((n, t, u)) < 0.05] = 1e-200
    valid = rng.random((n, t)) < 0.8
    d, w = np.where(valid[..., None], d, 1.0), np.where(valid[..., None], w, 0.0)
    want, life, cens = np.zeros((n, t, t)), np.full((n, t, u), np.nan), np.zeros((n, t, u), bool)
    for s in range(t):
        v, alive, count = w[:, s].copy(), np.ones((n, u), bool), np.zeros((n, u))
        want[:, s, s] = np.linalg.norm(v, axis=-1)
        carry = np.ones((n, u))
        for r in range(s + 1, t):
            v = v * d[:, r]
            want[:, r, s] = np.linalg.norm(v, axis=-1)
            carry = carry * np.abs(d[:, r])
            alive &= carry >= 0.3
            count += alive & valid[:, r, None]
        life[:, s] = np.where(valid[:, s, None], count, np.nan)
        cens[:, s] = alive & valid[:, s, None]
    np.testing.assert_allclose(norms(d, w), want, rtol=1e-11, atol=1e-250)
    got, got_cens = lifetimes(d, valid, 0.3)
    np.testing.assert_array_equal(got, life)
    np.testing.assert_array_equal(got_cens, cens)
