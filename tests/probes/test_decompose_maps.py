"""Decomposition.maps (the attention map and the lifetimes from one read of each chunk) and the
routes behind it, against an independent oracle: every write carried step by step in float64
(the straightforward scan), its norm taken at each later step and its lifetime counted as the
valid steps before the running |Π d| first drops below the fraction. Masked samples, backward
directions, exact zero decays, decays of 1e-300 and sequences whose weights fade below 1e-60
(where the products route gives way to the log route); in memory, on a store and with chunks
checked ahead in other threads. Tolerance: rtol 1e-11 on norms (float64 maths), lifetimes exact.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from dirty_results import dirty_results  # noqa: F401 (autouse: the results handed out dirty)
from hypothesis import given
from hypothesis import strategies as st

import rnnlens
from rnnlens.analysis.decompose_maps import lifetimes, norms, products
from rnnlens.core.spec import LayerSpec
from rnnlens.core.states import DirectionStates, Gates, LayerStates, States


def _lstm_states(f: np.ndarray, i: np.ndarray, g: np.ndarray, mask: np.ndarray | None,
                 direction: str) -> States:  # fmt: skip
    """A float64 LSTM layer whose c follows c_t = f ⊙ c_{t-1} + i ⊙ g (masked steps carry c)."""
    n, t, u = f.shape
    valid = np.ones((n, t), bool) if mask is None else mask
    order = range(t - 1, -1, -1) if direction == "backward" else range(t)
    c, prev = np.zeros((n, t, u)), np.zeros((n, u))
    for p in order:
        nxt = f[:, p] * prev + i[:, p] * g[:, p]
        prev = np.where(valid[:, p, None], nxt, prev)
        c[:, p] = prev
    o = np.full_like(f, 0.5)
    gates = Gates([i, f, g, o], ("i", "f", "g", "o"))
    ds = DirectionStates(direction, o * np.tanh(c), c, gates, mask, layer="rec")
    spec = LayerSpec("rec", "lstm", "LSTM", u, (direction,), ("h", "c", "gates"))
    return States({"rec": LayerStates(spec, {direction: ds}, mask)})


def _oracle(d: np.ndarray, w: np.ndarray, valid: np.ndarray, backward: bool, fraction: float):  # type: ignore[no-untyped-def]
    """(attention (n, t, s), lifetime steps, censored), input order, by carrying each write."""
    n, t, u = d.shape
    d = np.where(valid[..., None], d, 1.0)
    w = np.where(valid[..., None], w, 0.0)
    order = list(range(t - 1, -1, -1)) if backward else list(range(t))
    att = np.zeros((n, t, t))
    steps, cens = np.full((n, t, u), np.nan), np.zeros((n, t, u), bool)
    for ps, s in enumerate(order):
        v, weight = w[:, s].copy(), np.ones((n, u))
        alive, count = np.ones((n, u), bool), np.zeros((n, u))
        att[:, s, s] = np.linalg.norm(v, axis=-1)
        for r in order[ps + 1 :]:
            v = v * d[:, r]
            att[:, r, s] = np.linalg.norm(v, axis=-1)
            weight = weight * np.abs(d[:, r])
            alive &= weight >= fraction
            count += alive & valid[:, r, None]
        steps[:, s] = np.where(valid[:, s, None], count, np.nan)
        cens[:, s] = alive & valid[:, s, None]
    return att, steps, cens


def _assert_maps(dec: rnnlens.Decomposition, att: np.ndarray, steps: np.ndarray, cens: np.ndarray,
                 fraction: float, rtol: float = 1e-11) -> None:  # fmt: skip
    maps = dec.maps(fraction=fraction)
    assert maps.attention.dtype == dec.map_dtype == (np.float64 if dec.dtype == np.float64 else np.float32)
    if maps.attention.dtype == np.float32:  # the float64 sum rounded once: half an ulp, 2**-24
        rtol, atol = max(rtol, 2.0**-24), 1e-45  # (subnormal float32 norms: half of 2**-149)
    else:  # squares below ~1e-308 (norms below ~1e-154) are subnormal in float64, oracle included
        atol = 1e-140
    np.testing.assert_allclose(maps.attention, att, rtol=rtol, atol=atol)
    np.testing.assert_array_equal(maps.lifetimes.steps.reshape(steps.shape), steps)
    np.testing.assert_array_equal(maps.lifetimes.censored.reshape(cens.shape), cens)
    # each alone reads and checks every chunk again, and gives the same maps
    np.testing.assert_array_equal(dec.attention(), maps.attention)
    np.testing.assert_array_equal(dec.lifetime(fraction).steps, maps.lifetimes.steps)


@given(
    st.integers(0, 2**16),
    st.integers(1, 40),
    st.sampled_from(["plain", "zeros", "tiny", "fading"]),
    st.sampled_from(["forward", "backward"]),
    st.sampled_from([None, "end", "random"]),
    st.integers(1, 4),
)
def test_maps_against_the_carrying_oracle(seed: int, t: int, extreme: str, direction: str,
                                          masked: str | None, chunk: int) -> None:  # fmt: skip
    rng = np.random.default_rng(seed)
    n, u = 5, 3
    f, i, g = rng.random((n, t, u)), rng.random((n, t, u)), rng.uniform(-1, 1, (n, t, u))
    if extreme == "zeros":
        f[rng.random((n, t, u)) < 0.1] = 0.0
    elif extreme == "tiny":
        f[rng.random((n, t, u)) < 0.1] = 1e-300
    elif extreme == "fading":  # the weights fade below 1e-60 within the sequence
        f = rng.uniform(1e-6, 1e-4, (n, t, u))
    mask = None
    if masked == "end":
        mask = np.arange(t)[None] < rng.integers(0, t + 1, size=n)[:, None]
    elif masked == "random":
        mask = rng.random((n, t)) < 0.7
    states = _lstm_states(f, i, g, mask, direction)
    dec = rnnlens.decompose(states, "rec", chunk=chunk)  # several chunks: read and checked ahead
    valid = np.ones((n, t), bool) if mask is None else mask
    att, steps, cens = _oracle(f, i * g, valid, direction == "backward", 0.3)
    # the log route's relative error grows with |log weight|: ~1e-10 at weights of 1e-90
    _assert_maps(dec, att, steps, cens, 0.3, 1e-9 if extreme == "fading" else 1e-11)


@pytest.mark.parametrize("extreme", ["plain", "zeros", "tiny", "fading"])
def test_the_products_route_and_where_it_gives_way(extreme: str) -> None:
    """products() is None exactly where some |Π d| leaves [1e-60, 1e60]; both routes agree."""
    rng = np.random.default_rng(7)
    n, t, u = 3, 33, 4
    d, w = rng.uniform(0.2, 1.0, (n, t, u)), rng.normal(size=(n, t, u))
    if extreme == "zeros":
        d[0, 5, 1] = 0.0
    elif extreme == "tiny":
        d[1, 20, 2] = 1e-300
    elif extreme == "fading":
        d[2] = 1e-3  # 1e-3 ** 32 < 1e-60
    valid = np.ones((n, t), bool)
    q = products(d)
    assert (q is None) == (extreme != "plain")
    att, steps, cens = _oracle(d, w, valid, False, 0.5)
    np.testing.assert_allclose(norms(d, w), att, rtol=1e-11, atol=1e-140)
    got, got_cens = lifetimes(d, valid, 0.5)
    np.testing.assert_array_equal(got, steps)
    np.testing.assert_array_equal(got_cens, cens)
    if q is not None:
        np.testing.assert_allclose(q[:, 1:], np.cumprod(d[:, 1:], axis=1), rtol=1e-13)
        np.testing.assert_allclose(norms(d, w, q), att, rtol=1e-11)
        got, got_cens = lifetimes(d, valid, 0.5, q)
        np.testing.assert_array_equal(got, steps)
        np.testing.assert_array_equal(got_cens, cens)
    if extreme == "plain":
        grows = d.copy()
        grows[0, 3, 0] = 1.5  # |d| > 1: not bounded, the whole |q| is looked at
        assert products(grows) is not None and products(grows * 1e40) is None


def test_maps_options_match_each_alone() -> None:
    torch.manual_seed(5)
    net = torch.nn.GRU(3, 6, batch_first=True)
    states = rnnlens.trace(net, torch.randn(7, 9, 3))
    dec = rnnlens.decompose(states, next(iter(states)), chunk=2)
    maps = dec.maps(1, 0.4, samples=slice(1, 6), units=[0, 4])
    np.testing.assert_allclose(
        maps.attention, dec.attention(1, samples=slice(1, 6), units=[0, 4]), rtol=1e-12
    )
    for t in range(9):  # from each step's contributions, 0 above the diagonal (dirty results)
        want = np.zeros((5, 9))
        want[:, : t + 1] = np.abs(dec.at(t, samples=slice(1, 6))[..., [0, 4]]).sum(-1)
        np.testing.assert_allclose(maps.attention[:, t], want, rtol=1e-6, atol=1e-7)
    life = dec.lifetime(0.4, samples=slice(1, 6))
    np.testing.assert_array_equal(maps.lifetimes.steps, life.steps)
    np.testing.assert_array_equal(maps.lifetimes.steps, dec.lifetime(0.4).steps[1:6])
    assert maps.lifetimes.fraction == 0.4 and maps.attention.shape == (5, 9, 9)
    with pytest.raises(rnnlens.InputError, match="fraction"):
        dec.maps(fraction=1.5)


def test_maps_on_a_bidirectional_store(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Both directions of a stored GRU, read a stored chunk at a time (three chunks, the later
    ones read ahead). Masked samples are covered in memory above: a PyTorch store records a mask
    without packing, so its padded steps are not carried (a ParityError, rightly)."""
    torch.manual_seed(6)
    net = torch.nn.GRU(2, 4, batch_first=True, bidirectional=True)
    x = np.random.default_rng(1).normal(size=(9, 12, 2)).astype("float32")
    rnnlens.extract_to(tmp_path / "s.zarr", net, x, fields=("h", "gates"), batch_size=4)
    stored = rnnlens.open_states(tmp_path / "s.zarr")
    name = next(iter(stored))
    for direction in ("forward", "backward"):
        dec = rnnlens.decompose(stored, name, direction=direction)
        assert dec.chunk == 4
        gates = stored[name].directions[direction].gates
        z, n_ = (np.asarray(gates[k][:], np.float64) for k in ("z", "n"))
        att, steps, cens = _oracle(z, (1 - z) * n_, np.ones((9, 12), bool), direction == "backward", 0.5)
        _assert_maps(dec, att, steps, cens, 0.5)


@pytest.mark.parametrize("bad", [0, 5])
def test_a_chunk_read_ahead_still_fails_in_order(bad: int) -> None:
    """The chunk whose writes do not sum to the stored state raises its ParityError (the first
    chunk or one checked in another thread); decays above 1 refuse the lifetimes."""
    rng = np.random.default_rng(3)
    f, i, g = rng.random((6, 5, 2)), rng.random((6, 5, 2)), rng.uniform(-1, 1, (6, 5, 2))
    states = _lstm_states(f, i, g, None, "forward")
    states["rec"].forward.gates["f"][bad, 3] *= 0.5
    dec = rnnlens.decompose(states, "rec", chunk=1)
    for call in (dec.maps, dec.attention, dec.lifetime):
        with pytest.raises(rnnlens.ParityError, match="step 3"):
            call()
    grow = _lstm_states(f * 1.5, i, g, None, "forward")
    with pytest.raises(rnnlens.InputError, match="above 1"):
        rnnlens.decompose(grow, "rec", chunk=2).maps()
    assert rnnlens.decompose(grow, "rec", chunk=2).attention().shape == (6, 5, 5)


def test_read_ahead_with_one_worker_runs_the_jobs_one_at_a_time_in_order() -> None:
    """The maps' reads of a store go through one worker (two reads at once slow each other):
    results in chunk order, never two jobs at once, a failing job raised in its turn."""
    import threading
    import time

    from rnnlens.analysis.read_ahead import read_ahead

    running, most, lock = [0], [0], threading.Lock()

    def job(k: int) -> int:
        with lock:
            running[0] += 1
            most[0] = max(most[0], running[0])
        time.sleep(0.002)
        with lock:
            running[0] -= 1
        if k == 4:
            raise ValueError("chunk 4")
        return k * k

    seen = []
    with pytest.raises(ValueError, match="chunk 4"):
        for k, r in read_ahead(list(range(6)), job, ahead=3, workers=1):
            seen.append((k, r))
    assert seen == [(k, k * k) for k in range(4)] and most[0] == 1


@pytest.mark.parametrize("steps", [1, 2, 11, 12, 23, 24, 25, 50, 97, 130])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_from_squares_in_bands_is_the_full_product(steps: int, dtype: type) -> None:
    """The map's matrix product in bands of rows (columns past each band's last row left out)
    is the full product's square root on and below the diagonal, 0 above; into a float32 map,
    the float64 sum rounded once."""
    from rnnlens.analysis import decompose_fused
    from rnnlens.analysis.decompose_maps import Scratch, from_squares

    rng = np.random.default_rng(steps)
    e, f = rng.random((3, steps, 5)), rng.random((3, steps, 5))
    full = np.sqrt(np.einsum("ntu,nsu->nts", e, f)) * np.tril(np.ones((steps, steps)))
    finishes = [None] + ([decompose_fused.finish] if decompose_fused.kernel() is not None else [])
    for finish in finishes:
        out = np.full((3, steps, steps), np.nan, dtype)
        from_squares(e, f, out, finish, Scratch())
        rtol = 2.0**-24 if dtype == np.float32 else 1e-14  # (the sums' order is BLAS's)
        np.testing.assert_allclose(out, full, rtol=rtol, atol=0)
        assert out.dtype == dtype
