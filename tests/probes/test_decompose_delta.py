"""rnnlens.decompose on delta-rule states (a decay that is a matrix per head), against an
independent float64 oracle: the recurrence run step by step, and the explicit (d_k × d_k)
matrices ``A_r = (I − β_r k_r k_rᵀ) diag(exp g_r)`` multiplied out for each contribution.
Hypothesis over lengths, heads (grouped keys), per-head or per-channel decays, beta in [0, 2],
masks and initial states. Float64 states: decompose's check is 1e-12 · Σ|terms| + 1e-14; the
contributions agree with the oracle within 1e-12 × the largest. The real mixers (Qwen3-Next,
OLMo-Hybrid, Kimi Linear) are tested in tests/transformers/test_delta_decompose.py."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import rnnlens
from rnnlens.core.spec import LayerSpec
from rnnlens.core.states import DirectionStates, Gates, LayerStates, States


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    heads = draw(st.sampled_from([1, 2, 4]))
    return {
        "kind": draw(st.sampled_from(["gated_deltanet", "kimi_delta"])),
        "n": draw(st.integers(1, 2)),
        "t": draw(st.integers(1, 6)),
        "heads": heads,
        "key_heads": draw(st.sampled_from([h for h in (1, 2, 4) if heads % h == 0])),
        "dk": draw(st.integers(1, 3)),
        "dv": draw(st.integers(1, 3)),
        "initial": draw(st.booleans()),
        "masked": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**16)),
    }


def _data(cfg: dict[str, Any]) -> tuple[States, dict[str, np.ndarray]]:
    """Float32 gates (as a trace keeps them), the float64 states of the rule run on them."""
    rng = np.random.default_rng(cfg["seed"])
    n, t, h, kh, dk, dv = (cfg[x] for x in ("n", "t", "heads", "key_heads", "dk", "dv"))
    k = rng.normal(size=(n, t, kh, dk))
    k = (k / np.linalg.norm(k, axis=-1, keepdims=True)).astype(np.float32)
    v = rng.normal(size=(n, t, h, dv)).astype(np.float32)
    beta = rng.uniform(0, 2, size=(n, t, h)).astype(np.float32)
    per_channel = cfg["kind"] == "kimi_delta"
    g = -rng.uniform(0, 1, size=(n, t, h, dk) if per_channel else (n, t, h)).astype(np.float32)
    s0 = rng.normal(size=(n, h, dk, dv)) if cfg["initial"] else np.zeros((n, h, dk, dv))
    # the oracle's own terms, float64 from the float32 gates
    kk = np.repeat(k.astype(np.float64), h // kh, axis=2)
    d = np.exp(g).astype(np.float64)  # float32 exp, as the mixer's scan
    d = np.broadcast_to(d[..., None], kk.shape) if d.ndim == 3 else d
    a = (np.eye(dk) - beta[..., None, None] * kk[..., :, None] * kk[..., None, :]) * d[..., None, :]
    w = beta.astype(np.float64)[..., None, None] * kk[..., :, None] * v.astype(np.float64)[..., None, :]
    states = np.empty((n, t, h, dk, dv))
    s = s0
    for i in range(t):
        s = d[:, i, ..., None] * s
        read = np.einsum("nhk,nhkv->nhv", kk[:, i], s)  # kᵀ S
        s = s + beta[:, i, :, None, None] * kk[:, i, ..., None] * (v[:, i, :, None, :] - read[:, :, None, :])
        states[:, i] = s
    mask = (rng.uniform(size=(n, t)) > 0.3) if cfg["masked"] else None
    gates = Gates([beta, g, k, v], ("beta", "g", "k", "v"))
    ds = DirectionStates("forward", np.zeros((n, t, 1)), None, gates, mask, layer="m", state=states)
    spec = LayerSpec("m", cfg["kind"], "Mixer", 1, ("forward",), ("h", "gates", "state"))
    return States({"m": LayerStates(spec, {"forward": ds}, mask)}), {"a": a, "w": w, "s0": s0}


def _contributions(o: dict[str, np.ndarray], t: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, t + 1, head, d_k, d_v) and the initial term (n, head, d_k, d_v), by explicit products."""
    a, w = o["a"], o["w"]
    out = np.empty((w.shape[0], t + 1, *w.shape[2:]))
    for s in range(t + 1):
        p = w[:, s]
        for r in range(s + 1, t + 1):
            p = a[:, r] @ p
        out[:, s] = p
    init = o["s0"]
    for r in range(t + 1):
        init = a[:, r] @ init
    return out, init


@given(configs())
def test_contributions_initial_terms_and_maps_against_the_oracle(cfg: dict[str, Any]) -> None:
    states, o = _data(cfg)
    n, t = cfg["n"], cfg["t"]
    dec = rnnlens.decompose(states, "m", initial=o["s0"] if cfg["initial"] else None)
    given_initial = rnnlens.decompose(states, "m", initial=o["s0"])
    brute = np.zeros((n, t, t, *dec.state_shape))
    for step in range(t):
        want, want_init = _contributions(o, step)
        brute[:, step, : step + 1] = want
        top = max(np.abs(want).max(), np.abs(want_init).max(), 1.0)
        got, init = dec.at_with_initial(step)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12 * top)
        np.testing.assert_allclose(init, want_init, rtol=0, atol=1e-12 * top)
        np.testing.assert_allclose(given_initial.initial_at(step), want_init, rtol=0, atol=1e-12 * top)
        np.testing.assert_allclose(got.sum(1) + init, states["m"].state[:, step], rtol=0, atol=1e-12 * top)
    flat = brute.reshape(n, t, t, -1)
    np.testing.assert_allclose(dec.attention(), np.linalg.norm(flat, axis=-1), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(dec.attention(np.inf, units=[0]), np.abs(flat[..., 0]), rtol=1e-12, atol=1e-14)
    steps, values = dec.top_k(2)
    best = np.argmax(np.abs(flat), axis=2)  # (n, t, U)
    np.testing.assert_array_equal(steps[..., 0].reshape(n, t, -1), best)
    largest = np.take_along_axis(flat, best[:, :, None], 2)[:, :, 0]
    np.testing.assert_allclose(values[..., 0].reshape(n, t, -1), largest)
    _check_lifetimes(dec, o, states["m"].mask, flat)
    both = dec.maps(np.inf, 0.5, units=[0])  # one pass: the same map and lifetimes
    np.testing.assert_allclose(both.attention, np.abs(flat[..., 0]), rtol=1e-12, atol=1e-14)
    np.testing.assert_array_equal(both.lifetimes.steps, dec.lifetime(0.5).steps)


def _check_lifetimes(dec: Any, o: dict[str, np.ndarray], mask: np.ndarray | None, flat: np.ndarray) -> None:
    """Per head: the later valid steps during which ‖P(s→r) w_s‖ ≥ ½ ‖w_s‖, NaN where masked."""
    life = dec.lifetime(0.5)
    n, t = flat.shape[:2]
    heads = dec.state_shape[0]
    valid = np.ones((n, t), bool) if mask is None else mask
    per_head = np.linalg.norm(flat.reshape(n, t, t, heads, -1), axis=-1)  # (n, r, s, head)
    for i in range(n):
        for s in range(t):
            for h in range(heads):
                got = life.steps[i, s, h]
                if not valid[i, s]:
                    assert np.isnan(got).all()
                    continue
                alive = [per_head[i, r, s, h] >= 0.5 * per_head[i, s, s, h] for r in range(s + 1, t)]
                prefix = next((j for j, a in enumerate(alive) if not a), len(alive))
                count = sum(valid[i, s + 1 + j] for j in range(prefix))
                assert np.all(got == count), (i, s, h, got.ravel()[0], count)
                assert np.all(life.censored[i, s, h] == (prefix == len(alive)))


def test_parity_error_and_refusals() -> None:
    cfg = {"kind": "kimi_delta", "n": 1, "t": 5, "heads": 2, "key_heads": 1, "dk": 3, "dv": 2,
           "initial": False, "masked": False, "seed": 1}  # fmt: skip
    states, _ = _data(cfg)
    states["m"].forward.gates["beta"][:, 3] *= 1.01  # not the beta that made the state
    dec = rnnlens.decompose(states, "m")
    for call in (lambda: dec.at(3), dec.attention, lambda: dec.top_k(1), dec.lifetime):
        with pytest.raises(rnnlens.ParityError, match="step 3"):
            call()
    with pytest.raises(rnnlens.InputError, match="Mamba"):
        dec.hidden_attention()
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='state'"):
        rnnlens.decompose(states, "m", field="h")
    states, _ = _data({**cfg, "seed": 2})
    old = states["m"].forward
    old._gates = Gates([old.gates["beta"], old.gates["g"]], ("beta", "g"))  # an older rnnlens' trace
    with pytest.raises(rnnlens.FieldNotAvailableError, match="keys and values"):
        rnnlens.decompose(states, "m").at(0)
