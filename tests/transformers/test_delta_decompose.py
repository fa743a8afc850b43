"""rnnlens.decompose on delta-rule mixers (gated delta-nets: Qwen3-Next, OLMo-Hybrid with beta up
to 2; Kimi delta attention: Kimi Linear), tiny random transformers models, no hub.

The oracle is independent of rnnlens: the queries, keys, values and gates the mixer hands its
own scan helper (recorded by wrapping the modeling file's helper for one forward), and in
float64 the explicit (d_k × d_k) matrices ``A_r = (I − β_r k_r k_rᵀ) diag(exp g_r)`` multiplied
out: ``P(s→t) β_s k_s v_sᵀ``. Tolerances: each contribution within 1e-5 × the largest
(float32 keys and values stored, float64 sums; measured ≤ 1.5e-7); the writes sum to the traced
state within decompose's own check (``1e-5 · Σ|terms| + 1e-7``) and 1e-5 × max|state| here."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import ssm_families as fam  # noqa: E402
from ssm_builders import IDS, gdn  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.adapters.hf_.delta import HELPERS  # noqa: E402

#: family -> (builder, the delta-rule mixer's path)
BUILD: dict[str, tuple[Any, str]] = {
    "qwen3_next": (gdn, "model.layers.0.linear_attn"),
    "olmo_hybrid": (fam.olmo_hybrid, "model.layers.0.linear_attn"),
    "kimi_linear": (fam.kimi_linear, "model.layers.0.self_attn"),
}
PADDED = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])


def _recorded(model: Any, mixer: Any, ids: torch.Tensor, kwargs: dict[str, Any]) -> dict[str, Any]:
    """What the mixer hands its scan helper in one plain forward (the modeling file's helper
    wrapped for that forward only)."""
    module = sys.modules[type(mixer).__module__]
    seen: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as ctx:
        for helper in HELPERS["gated_deltanet"] + HELPERS["kimi_delta"]:
            real = getattr(module, helper, None)
            if real is None:
                continue

            def wrapped(*args: Any, _real: Any = real, **kw: Any) -> Any:
                assert not seen, "one helper call per forward in these tiny models"
                seen.update(dict(zip(("query", "key", "value", "g", "beta"), args)), **kw)
                return _real(*args, **kw)

            ctx.setattr(module, helper, wrapped)
        with torch.no_grad():
            model(ids, **kwargs)
    return seen


def _oracle(a: dict[str, Any]) -> np.ndarray:
    """``c[n, t, s]`` = P(s→t) β_s k_s v_sᵀ, (n, T, T, head, d_k, d_v), float64, 0 for s > t."""
    k, v, g, beta = (a[x].detach().double() for x in ("key", "value", "g", "beta"))
    if a.get("use_qk_l2norm_in_kernel"):
        k = k / torch.sqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    heads = v.shape[2]
    k = k.repeat_interleave(heads // k.shape[2], dim=2)
    d = torch.exp(g)
    if d.dim() == 3:
        d = d[..., None].expand(k.shape)
    eye = torch.eye(k.shape[-1], dtype=torch.float64)
    a_mat = (eye - beta[..., None, None] * k[..., :, None] * k[..., None, :]) * d[..., None, :]
    w = beta[..., None, None] * k[..., :, None] * v[..., None, :]
    n, t = k.shape[:2]
    out = torch.zeros((n, t, t, *w.shape[2:]), dtype=torch.float64)
    for s in range(t):
        p = w[:, s]
        out[:, s, s] = p
        for r in range(s + 1, t):
            p = a_mat[:, r] @ p
            out[:, r, s] = p
    return out.numpy()


@settings(max_examples=6, deadline=None)
@given(st.sampled_from(sorted(BUILD)), st.integers(0, 3), st.booleans(), st.integers(1, 7))
def test_contributions_equal_a_float64_oracle_and_sum_to_the_state(
    family: str, seed: int, padded: bool, steps: int
) -> None:
    build, name = BUILD[family]
    torch.manual_seed(seed)
    model = build().eval()
    mixer = model.get_submodule(name)
    kwargs: dict[str, Any] = {"attention_mask": PADDED} if padded else {}
    ids = IDS[:, :steps]
    kwargs = {k: v[:, :steps] for k, v in kwargs.items()}
    seen = _recorded(model, mixer, ids, kwargs)
    states = rnnlens.trace(model, ids, **kwargs)
    ls = states[name]
    dec = rnnlens.decompose(states, name)
    oracle = _oracle(seen)
    state = ls.state.astype(np.float64)
    top = np.abs(oracle).max()
    for t in range(steps):
        got, init = dec.at_with_initial(t)
        assert got.shape == (2, t + 1, *ls.state.shape[2:])
        np.testing.assert_allclose(got, oracle[:, t, : t + 1], rtol=0, atol=1e-5 * top)
        biggest = np.abs(state).max()
        np.testing.assert_allclose(got.sum(axis=1) + init, state[:, t], rtol=0, atol=1e-5 * biggest)
        assert np.abs(init).max() <= 1e-6 * np.abs(state).max()  # the state starts at 0
        if padded:  # a padded step's key is 0 (its input zeroed): it writes nothing, as the mixer
            assert not got[1, :2].any()
    att = dec.attention()
    brute = np.linalg.norm(oracle.reshape(2, steps, steps, -1), axis=-1)
    np.testing.assert_allclose(att, brute, rtol=1e-5, atol=1e-6 * top)
    np.testing.assert_allclose(
        dec.attention(1, units=[0, 5]), np.abs(oracle.reshape(2, steps, steps, -1)[..., [0, 5]]).sum(-1),
        rtol=1e-5, atol=1e-6 * top,
    )  # fmt: skip


def test_a_store_keeps_the_keys_and_values(tmp_path: Any) -> None:
    torch.manual_seed(0)
    model = fam.kimi_linear().eval()
    name = BUILD["kimi_linear"][1]
    rnnlens.extract_to(
        tmp_path / "s.zarr", model, IDS.numpy(), batch_size=1, layers=[name], fields=("h", "state", "gates")
    )
    stored = rnnlens.open_states(tmp_path / "s.zarr")
    assert list(stored[name].gates) == ["beta", "g", "k", "v"]
    a, b = rnnlens.decompose(stored, name, chunk=1), rnnlens.decompose(rnnlens.trace(model, IDS), name)
    np.testing.assert_allclose(a.attention(), b.attention(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.at(6), b.at(6), rtol=1e-6, atol=1e-9)


def test_wrong_gates_are_a_parity_error() -> None:
    torch.manual_seed(0)
    states = rnnlens.trace(gdn(), IDS)
    name = BUILD["qwen3_next"][1]
    states[name].forward.gates["k"][:, 3] *= 1.01  # not the keys the rule used
    with pytest.raises(rnnlens.ParityError, match="step 3"):
        rnnlens.decompose(states, name).attention()
