"""Edit(target="write") on the other state-space mixers with a linear state: Zamba's multi-head
Mamba, MiniMax's lightning attention, gated delta-nets, Kimi delta attention and xLSTM's mLSTM
(tiny random transformers models, no hub).

Oracles (as :mod:`test_ssm_write_edits`):

- a float64 loop of the mixer's recurrence written out here from the traced gates and the
  model's constants: ``s_t = d_t ⊙ s_{t-1} + w_t`` (multi-head Mamba: ``d = exp(A dt)``,
  ``w = dt B x`` per head; lightning: ``d = exp(−λ)`` per head, ``w = k ⊗ v``) or the delta rule
  ``S_t = (I − β_t k_t k_tᵀ) diag(d_t) S_{t-1} + β_t k_t v_tᵀ`` (``d = exp(g)``, per head or per
  key channel; each key head serving consecutive value heads), the edited step's write scaled /
  set / added, state edits mixed in; the edited run's states against it
  (``atol = 1e-5 · max|state|``);
- every kind: the model run with the mixer's output replaced by the
  readout of the oracle's states (lightning, a forward hook: ``out_proj(σ(W_gate x) ⊙ norm(q S))``,
  ``q`` from the mixer's own projection; mLSTM, a hook on its backend: ``h`` from ``C``, the
  traced ``n`` and ``m`` and the query it received; delta rules, the modeling file's scan helper
  patched for the call: ``o_t = S_tᵀ q_t``), the logits against the edited run's
  (``rtol = 1e-4, atol = 1e-5``; measured ≤ 3e-7 where the edits move them by 1e-2 to 0.6);
  Zamba: the same, its helper ``mamba_selective_scan`` answered per head with
  ``(s_t C_t + D x_t) ⊙ silu(z_t)`` (its mixers' weights scaled up so the logits move by ~1e-3);
- mLSTM (xLSTM): the write of C is the stored, stabilised ``exp(i_t − m_t) k_t ⊗ v_t`` and its
  decay ``σ(f_t) exp(m_{t-1} − m_t)``, from the traced ``m`` (which an edit does not change);
- :func:`rnnlens.decompose`: ``scale=0`` on step s's write leaves the state minus that write's
  carried contribution at every later step (``atol = 1e-6 · max|state|``).

The model is unchanged (its digest; no instance ``forward`` left).
"""

from __future__ import annotations

import sys
from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from ssm_builders import IDS, gdn, xlstm  # noqa: E402
from ssm_families import kimi_linear, minimax, zamba  # noqa: E402
from write_edit_checks import (  # noqa: E402
    check_ablation_matches_decompose,
    check_untouched_before,
    draw_edits,
    edited_loop,
    intervene_unchanged,
)

import rnnlens  # noqa: E402


def _zamba() -> Any:
    """Zamba with its mixers' writes and outputs scaled up (random init: states ~1e-7 and
    logits that move by < 1e-5), so that the hooked model's logits check means something."""
    torch.manual_seed(0)
    model = zamba()
    with torch.no_grad():
        for layer in model.model.layers:
            m = layer.mamba if hasattr(layer, "mamba") else layer.mamba_decoder.mamba
            m.x_proj_weight.mul_(30.0)
            m.in_proj.weight.mul_(10.0)
            m.dt_proj_bias.fill_(1.0)
            m.out_proj.weight.mul_(300.0)
    return model


BUILD = {"zamba": _zamba, "minimax": minimax, "gdn": gdn, "kimi": kimi_linear, "xlstm": xlstm}
T = IDS.shape[1]


@cache
def _model(family: str) -> tuple[Any, Any]:
    model = BUILD[family]()
    return model, rnnlens.trace(model, IDS)


def _steps(ls: Any) -> Any:
    """``step(t, s)``: the state carried from ``s`` to step t (before t's write), and the writes
    (sample, time, *state), float64, from the traced gates and constants."""
    g = {k: np.asarray(ls.gates[k], np.float64) for k in ls.gates}
    c = {k: np.asarray(v, np.float64) for k, v in ls.spec.constants.items()}
    if ls.kind == "mamba_heads":
        d = np.exp(g["dt"][..., None] * c["A"][None, None])
        w = g["dt"][..., None] * g["B"][:, :, :, None, :] * g["x"][..., None]
        return (lambda t, s: d[:, t] * s), w
    if ls.kind == "mlstm":  # stabilised by the stored m (an edit of C changes neither m nor n)
        m = np.asarray(ls.state_parts["m"], np.float64)[..., 0]
        before = np.concatenate([np.zeros_like(m[:, :1]), m[:, :-1]], axis=1)
        f = np.exp(-np.logaddexp(0.0, -g["f"]) + before - m)  # σ(f) exp(m_{t-1} − m_t)
        w = np.exp(g["i"] - m)[..., None, None] * g["k"][..., :, None] * g["v"][..., None, :]
        return (lambda t, s: f[:, t, :, None, None] * s), w
    if ls.kind == "lightning":
        w = g["k"][..., :, None] * g["v"][..., None, :]
        return (lambda t, s: c["decay"][None, :, None, None] * s), w
    heads = g["v"].shape[2]
    k = np.repeat(g["k"], heads // g["k"].shape[2], axis=2)  # (n, T, head, d_k)
    beta, d = g["beta"], np.exp(g["g"])
    w = beta[..., None, None] * k[..., :, None] * g["v"][..., None, :]

    def step(t: int, s: np.ndarray) -> np.ndarray:
        s = s * (d[:, t, :, :, None] if d.ndim == 4 else d[:, t, :, None, None])
        kk = k[:, t]  # (I − β k kᵀ) s
        kts = np.einsum("nhk,nhkv->nhv", kk, s)[:, :, None]
        return s - beta[:, t, :, None, None] * kk[..., :, None] * kts

    return step, w


def _oracle(ls: Any, edits: list[rnnlens.Edit]) -> tuple[np.ndarray, np.ndarray]:
    """The states (stored, carried) and the states each step's output reads, float64."""
    return edited_loop(*_steps(ls), edits)


def _lightning_logits(model: Any, name: str, ls: Any, reads: np.ndarray) -> np.ndarray:
    """The model's logits with lightning mixer ``name``'s output computed from ``reads``."""
    module = model.get_submodule(name)
    r = torch.from_numpy(reads)

    def mixer_out(mod: Any, args: Any, kwargs: Any, out: Any) -> Any:
        hs = args[0] if args else kwargs["hidden_states"]
        n, t = hs.shape[:2]
        qkv = mod.act_fn(F.linear(hs, mod.qkv_proj.weight, mod.qkv_proj.bias))
        q = qkv.reshape(n, t, mod.num_attention_heads, 3 * mod.head_dim)[..., : mod.head_dim]
        o = torch.einsum("nthd,nthde->nthe", q.double(), r).float().reshape(n, t, -1)
        o = torch.sigmoid(F.linear(hs, mod.output_gate.weight, mod.output_gate.bias)) * mod.norm(o)
        return (F.linear(o, mod.out_proj.weight, mod.out_proj.bias), *out[1:])

    handle = module.register_forward_hook(mixer_out, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(IDS).logits.numpy()  # type: ignore[no-any-return]
    finally:
        handle.remove()


def _mlstm_logits(model: Any, name: str, ls: Any, reads: np.ndarray) -> np.ndarray:
    """The model's logits with mLSTM layer ``name``'s backend output read from ``reads`` (C) and
    the traced ``n``, ``m``: ``h = q̃·C / (max(|q̃·n|, exp(−m)) + eps)``, ``q̃ = q / sqrt(d_qk)``."""
    layer = model.get_submodule(name)
    c = torch.from_numpy(reads)  # (n, T, H, Dk, Dv)
    nn_ = torch.from_numpy(np.asarray(ls.state_parts["n"], np.float64))
    m = torch.from_numpy(np.asarray(ls.state_parts["m"], np.float64))[..., 0]

    def backend_out(mod: Any, args: Any, kwargs: Any, out: Any) -> Any:
        q = kwargs["query"].double().transpose(1, 2)  # (n, T, H, Dk)
        q = q / q.shape[-1] ** 0.5
        num = torch.einsum("nthk,nthkv->nthv", q, c)
        den = torch.maximum(torch.einsum("nthk,nthk->nth", q, nn_).abs(), torch.exp(-m)) + layer.config.eps
        h = (num / den[..., None]).transpose(1, 2).float()
        return (h, *out[1:]) if isinstance(out, tuple) else h

    handle = layer.mlstm_backend.register_forward_hook(backend_out, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(IDS).logits.numpy()  # type: ignore[no-any-return]
    finally:
        handle.remove()


#: kind -> the modeling file's scan helper (what the mixers call on a whole sequence)
HELPER = {
    "gated_deltanet": "torch_chunk_gated_delta_rule", "kimi_delta": "chunk_kimi_delta_attention",
    "mamba_heads": "mamba_selective_scan",
}  # fmt: skip


def _heads_readout(reads: torch.Tensor, head: int, u: Any, dt: Any, A: Any, B: Any, C: Any,
                   D: Any = None, z: Any = None, **kwargs: Any) -> torch.Tensor:  # fmt: skip
    """One head's scan output from the oracle's states: ``(s_t C_t + D x_t) ⊙ silu(z_t)``."""
    y = torch.einsum("ntpk,nkt->npt", reads[:, :, head], C.double()) + u.double() * D.double()[None, :, None]
    return y * F.silu(z.double())


def _patched_logits(model: Any, name: str, readout: Any) -> np.ndarray:
    """The model's logits with mixer ``name``'s calls of its modeling file's scan helper
    answered by ``readout(call index, *args, **kwargs)`` (the helper still runs; its last state
    is handed on), the helper patched for this one forward."""
    mixer = model.get_submodule(name)
    module = sys.modules[type(mixer).__module__]
    helper = next(h for h in HELPER.values() if hasattr(module, h))
    real = getattr(module, helper)
    active, calls = [False], []

    def fake(*args: Any, **kwargs: Any) -> Any:
        own = real(*args, **kwargs)
        if not active[0]:  # another mixer's call
            return own
        first = own[0] if isinstance(own, tuple) else own
        y = readout(len(calls), *args, **kwargs).to(first.dtype)
        calls.append(args[0].shape)
        return (y, *own[1:]) if isinstance(own, tuple) else y

    hooks = [
        mixer.register_forward_pre_hook(lambda *a: active.__setitem__(0, True)),
        mixer.register_forward_hook(lambda *a: active.__setitem__(0, False)),
    ]
    setattr(module, helper, fake)
    try:
        with torch.no_grad():
            logits = model(IDS).logits.numpy()
    finally:
        setattr(module, helper, real)
        for h in hooks:
            h.remove()
    assert calls, "the helper was not called"
    return logits  # type: ignore[no-any-return]


def _heads_logits(model: Any, name: str, ls: Any, reads: np.ndarray) -> np.ndarray:
    r = torch.from_numpy(reads)
    return _patched_logits(model, name, lambda head, *a, **kw: _heads_readout(r, head, *a, **kw))


def _delta_logits(model: Any, name: str, ls: Any, reads: np.ndarray) -> np.ndarray:
    """The delta-rule scan output read from ``reads``: ``o_t = S_tᵀ q_t`` (``q`` as the helper
    gets it, L2-normalised when asked, scaled by 1/sqrt(d_k), each key head serving consecutive
    value heads)."""
    s = torch.from_numpy(reads)

    def readout(call: int, query: Any, key: Any, value: Any, *args: Any, **kwargs: Any) -> torch.Tensor:
        assert call == 0 and query.shape[1] == T  # one call on the whole sequence
        q = query.double()
        if kwargs.get("use_qk_l2norm_in_kernel"):
            q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6)
        scale = kwargs.get("scale") or q.shape[-1] ** -0.5
        q = q.repeat_interleave(value.shape[2] // q.shape[2], dim=2) * scale
        return torch.einsum("nthk,nthkv->nthv", q, s)

    return _patched_logits(model, name, readout)


READOUT = {
    "lightning": _lightning_logits, "mlstm": _mlstm_logits, "gated_deltanet": _delta_logits,
    "kimi_delta": _delta_logits, "mamba_heads": _heads_logits,
}  # fmt: skip


@st.composite
def configs(draw: Any) -> Any:
    family = draw(st.sampled_from(sorted(BUILD)))
    model, plain = _model(family)
    name = draw(st.sampled_from(list(plain)))
    size = float(np.abs(plain[name].state).max())  # set / add at the state's scale (Zamba's: 1e-7)

    def value(mode: str) -> Any:
        return st.floats(-3, 3, width=32) if mode == "scale" else st.floats(-1, 1).map(lambda v: v * size)

    edits = draw_edits(draw, name, plain[name].state.shape[2], T, 2, value)
    return family, model, plain, name, edits


@given(configs())
def test_write_edits_equal_the_oracle_loop(cfg: Any) -> None:
    _family, model, plain, name, edits = cfg
    run = intervene_unchanged(model, IDS, edits)
    states, reads = _oracle(plain[name], edits)
    got = run.states[name].state
    np.testing.assert_allclose(got, states, rtol=0, atol=1e-5 * np.abs(states).max())
    check_untouched_before(got, plain[name].state, edits, T)
    want = READOUT[plain[name].kind](model, name, plain[name], reads)
    np.testing.assert_allclose(run.outputs["logits"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(BUILD))
def test_ablating_a_write_removes_its_decompose_contribution(family: str) -> None:
    model, plain = _model(family)
    check_ablation_matches_decompose(model, IDS, plain, next(iter(plain)), ((2, None), (4, [1])))


def test_mlstm_normaliser_write_refused() -> None:
    model, plain = _model("xlstm")
    name = next(iter(plain))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="normaliser n keeps its writes"):
        rnnlens.intervene(model, IDS, rnnlens.Edit(name, 1, field="n", target="write", scale=0))
