"""rnnlens.decompose on states kept with a running-maximum stabiliser: xLSTM's mLSTM matrix
memory C (and its normaliser n) and RWKV-4's WKV num and den (tiny random transformers models,
no hub).

Oracles, float64 and independent of rnnlens' own terms: each step's contribution written out in
its unstabilised closed form, rescaled by the stored stabiliser at step t,

    mLSTM:  C_t ∋ Π_{r=s+1..t} σ(f_r) · exp(i_s − m_t) · k_s ⊗ v_s,
    RWKV-4: num_t ∋ exp((t − s) · decay + k_s − max_t) · v_s   (den: without v_s),

from what the mLSTM backend received (its keys, values and gate pre-activations, hooked) and,
for RWKV-4, keys and values recomputed from the block's weights and the hidden states it
received; the initial state's term from the cache the model continued. Tolerances: float32
states, float64 sums; decompose's own check ``|Σ − state| ≤ 1e-5 · Σ|terms| + 1e-7``; the
contributions within 2e-6 of the largest (measured: ≤ 4e-7 relative).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

pytest.importorskip("transformers")

from ssm_builders import IDS, rwkv, xlstm  # noqa: E402

import rnnlens  # noqa: E402

REL = 2e-6
XLSTM, RWKV = "backbone.blocks.0.mlstm_layer", "rwkv.blocks.1.attention"


def _close(got: np.ndarray, want: np.ndarray, scale: float = 0.0) -> None:
    """Within REL of the largest of ``want`` (or ``scale``: a zero initial term's state)."""
    np.testing.assert_allclose(got, want, rtol=0, atol=REL * max(np.abs(want).max(), scale))


def _rwkv(seed: int) -> Any:
    torch.manual_seed(seed)
    model = rwkv()
    with torch.no_grad():  # decays spread over units (the default init gives one value)
        for block in model.rwkv.blocks:
            block.attention.time_decay.normal_(0.0, 1.0)
            block.attention.time_first.normal_(0.0, 1.0)
    return model


def _mlstm_oracle(call: dict[str, torch.Tensor], m: np.ndarray, t: int, init: Any) -> tuple[np.ndarray, ...]:
    """(contributions (n, t+1, H, Dk, Dv), initial term (n, H, Dk, Dv), normaliser's), float64."""
    k, v, i, f = (call[x].double() for x in ("key", "value", "igate", "fgate"))  # (n, H, T, ·)
    log_f = torch.nn.functional.logsigmoid(f)
    mt = torch.from_numpy(m).double()[:, t, :, 0]  # (n, H)
    scale = torch.stack(
        [torch.exp(log_f[:, :, s + 1 : t + 1].sum(-1) + i[:, :, s] - mt) for s in range(t + 1)], dim=1
    )  # (n, t+1, H)
    ks, vs = k[:, :, : t + 1].transpose(1, 2), v[:, :, : t + 1].transpose(1, 2)
    contrib = scale[..., None, None] * ks[..., :, None] * vs[..., None, :]
    contrib_n = scale[..., None] * ks
    zero = torch.zeros(())
    c0, n0, m0 = (zero, zero, zero) if init is None else (s.double() for s in init)
    carry = torch.exp(log_f[:, :, : t + 1].sum(-1) + (m0 if init is None else m0[..., 0]) - mt)  # (n, H)
    ic, inn = carry[..., None, None] * c0, carry[..., None] * n0
    return (
        contrib.numpy(),
        np.broadcast_to(ic.numpy(), contrib.shape[:1] + contrib.shape[2:]),
        contrib_n.numpy(),
        np.broadcast_to(inn.numpy(), contrib_n.shape[:1] + contrib_n.shape[2:]),
    )


@example(seed=0, length=7, initial=True)
@settings(max_examples=5, deadline=None)
@given(st.integers(0, 3), st.integers(2, 7), st.booleans())  # one token would be a decode step
def test_mlstm_memory_and_normaliser_equal_their_closed_form(seed: int, length: int, initial: bool) -> None:
    torch.manual_seed(seed)
    model = xlstm(blocks=1)
    call: dict[str, torch.Tensor] = {}
    backend = model.backbone.blocks[0].mlstm_layer.mlstm_backend
    keep = lambda mod, args, kw: call.update({k: v.clone() for k, v in kw.items() if torch.is_tensor(v)})  # noqa: E731
    hook = backend.register_forward_pre_hook(keep, with_kwargs=True)
    try:
        kwargs: dict[str, Any] = {}
        init = None
        if initial:  # continue the cache of a 3-token prefix
            with torch.no_grad():
                cache = model(IDS[:, :3], use_cache=True).cache
            init = [s.clone() for s in cache.rnn_state[0]]
            kwargs["cache"] = cache
        ids = IDS[:, 3 : 3 + length] if initial else IDS[:, :length]
        states = rnnlens.trace(model, ids, **kwargs)
    finally:
        hook.remove()
    ls = states[XLSTM]
    dec, dec_n = rnnlens.decompose(states, XLSTM), rnnlens.decompose(states, XLSTM, field="n")
    assert dec.state_shape == ls.state.shape[2:] and dec_n.state_shape == ls.state_parts["n"].shape[2:]
    for t in range(ids.shape[1]):
        contrib, init_c, contrib_n, init_n = _mlstm_oracle(call, ls.state_parts["m"], t, init)
        got, got_init = dec.at_with_initial(t)
        _close(got, contrib)
        _close(got_init, init_c, np.abs(ls.state[:, t]).max())
        _close(got.sum(axis=1) + got_init, ls.state[:, t].astype(np.float64))
        got_n, got_init_n = dec_n.at_with_initial(t)
        _close(got_n, contrib_n)
        _close(got_init_n, init_n, np.abs(ls.state_parts["n"][:, t]).max())
        _close(got_n.sum(axis=1) + got_init_n, ls.state_parts["n"][:, t].astype(np.float64))
    att = dec.attention()
    brute = np.linalg.norm(dec.at(ids.shape[1] - 1).reshape(2, ids.shape[1], -1), axis=-1)
    np.testing.assert_allclose(att[:, -1], brute, rtol=1e-6, atol=1e-12)


def _rwkv_kv(block: Any, hidden: torch.Tensor, shift0: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """The block's keys and values, float64, from its weights and the hidden states it received."""
    x = hidden.double()
    first = torch.zeros_like(x[:, :1]) if shift0 is None else shift0.double()[:, None]
    shifted = torch.cat([first, x[:, :-1]], dim=1)

    def project(mix: torch.Tensor, lin: Any) -> torch.Tensor:
        return (x * mix.double() + shifted * (1 - mix.double())) @ lin.weight.double().T

    return project(block.time_mix_key, block.key), project(block.time_mix_value, block.value)


@example(seed=0, length=7, initial=True)
@settings(max_examples=5, deadline=None)
@given(st.integers(0, 3), st.integers(2, 7), st.booleans())  # one token: the decode path (its batch bug)
def test_rwkv4_num_and_den_equal_their_closed_form(seed: int, length: int, initial: bool) -> None:
    model = _rwkv(seed)
    block = model.rwkv.blocks[1].attention
    got_in: dict[str, torch.Tensor] = {}
    hook = block.register_forward_pre_hook(lambda mod, args: got_in.__setitem__("h", args[0].clone()))
    kwargs: dict[str, Any] = {}
    shift0 = init = None
    with torch.no_grad():
        if initial:  # continue the state of a 3-token prefix (the model updates it in place)
            state = [s.clone() for s in model(IDS[:, :3], use_cache=True).state]
            shift0, init = state[1][:, :, 1].clone(), [s[:, :, 1].double().clone() for s in state[2:]]
            kwargs["state"] = state
        ids = IDS[:, 3 : 3 + length] if initial else IDS[:, :length]
        try:
            states = rnnlens.trace(model, ids, **kwargs)
        finally:
            hook.remove()
        k, v = _rwkv_kv(block, got_in["h"], shift0)
        decay = -torch.exp(block.time_decay.double())
    ls = states[RWKV]
    dec = rnnlens.decompose(states, RWKV)
    assert dec.state_shape == (2, 16)
    mx = torch.from_numpy(ls.state[:, :, 2]).double()
    for t in range(ids.shape[1]):
        e = torch.stack([torch.exp((t - s) * decay + k[:, s] - mx[:, t]) for s in range(t + 1)], dim=1)
        contrib = torch.stack([e * v[:, : t + 1], e], dim=2).numpy()  # (n, t+1, 2, U)
        got, got_init = dec.at_with_initial(t)
        _close(got, contrib)
        if init is None:  # the kernel starts from zeros
            _close(got_init, np.zeros_like(got_init), np.abs(ls.state[:, t, :2]).max())
        else:
            carry = torch.exp((t + 1) * decay + init[2] - mx[:, t])
            _close(got_init, torch.stack([carry * init[0], carry * init[1]], dim=1).numpy())
        _close(got.sum(axis=1) + got_init, ls.state[:, t, :2].astype(np.float64))


def test_lifetimes_read_the_unstabilised_decays() -> None:
    """A write's carried weight in the real memory is Π σ(f_r) (mLSTM) or exp(decay)^steps
    (RWKV-4): the stabiliser rescales every term of a step alike and is not a decay."""
    torch.manual_seed(1)
    states = rnnlens.trace(xlstm(blocks=1), IDS)
    ls = states[XLSTM]
    life = rnnlens.decompose(states, XLSTM).lifetime(0.5)
    forget = 1.0 / (1.0 + np.exp(-ls.gates["f"].astype(np.float64)))  # (n, T, H)
    n, t, heads = forget.shape
    want = np.zeros((n, t, heads))
    for s in range(t):
        carried = np.cumprod(forget[:, s + 1 :], axis=1)  # (n, T-s-1, H)
        alive = np.cumprod(carried >= 0.5, axis=1)
        want[:, s] = alive.sum(axis=1)
    np.testing.assert_array_equal(life.steps, np.broadcast_to(want[..., None, None], life.steps.shape))
    states = rnnlens.trace(_rwkv(2), IDS)
    life = rnnlens.decompose(states, RWKV).lifetime(0.5)
    per_step = np.exp(states[RWKV].spec.constants["decay"].astype(np.float64))  # (U,)
    with np.errstate(divide="ignore"):
        steps = np.floor(np.log(0.5) / np.log(per_step))
    for s in range(7):
        np.testing.assert_array_equal(life.steps[:, s], np.broadcast_to(np.minimum(steps, 6 - s), (2, 2, 16)))


def test_padding_is_decomposed_as_the_mixer_computes_it() -> None:
    """RWKV-4 ignores attention_mask (transformers says so): its padded steps write and decay as
    computed, and the decomposition is that of the unpadded run."""
    model = _rwkv(0)
    plain = rnnlens.trace(model, IDS)
    padded = rnnlens.trace(model, IDS, attention_mask=torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]]))
    assert padded[RWKV].mask is None
    a, b = rnnlens.decompose(plain, RWKV), rnnlens.decompose(padded, RWKV)
    np.testing.assert_array_equal(a.at(6), b.at(6))


def test_store_keeps_what_the_decomposition_reads(tmp_path: Any) -> None:
    for name, model in ((XLSTM, xlstm(blocks=1)), (RWKV, _rwkv(3))):
        path = tmp_path / f"{name}.zarr"
        rnnlens.extract_to(
            path, model, IDS.numpy(), batch_size=2, layers=[name], fields=("h", "state", "gates")
        )
        stored, mem = rnnlens.open_states(path), rnnlens.trace(model, IDS, layers=[name])
        a, b = rnnlens.decompose(stored, name, chunk=1), rnnlens.decompose(mem, name)
        np.testing.assert_allclose(a.at(5), b.at(5), rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(a.attention(), b.attention(), rtol=1e-6, atol=1e-12)


def test_refusals_say_why() -> None:
    states = rnnlens.trace(_rwkv(0), IDS)
    with pytest.raises(rnnlens.InputError, match="stabiliser before the first step"):
        rnnlens.decompose(states, RWKV, initial=np.zeros((2, 2, 16)))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='state'"):
        rnnlens.decompose(states, RWKV, field="n")
    states[RWKV].forward.gates["k"][:, 3] += 0.01  # not the keys that made the state
    with pytest.raises(rnnlens.ParityError, match="step 3"):
        rnnlens.decompose(states, RWKV).attention()
    torch.manual_seed(0)
    states = rnnlens.trace(xlstm(blocks=1), IDS)
    with pytest.raises(rnnlens.FieldNotAvailableError, match=r"field='state' \(or 'n'\)"):
        rnnlens.decompose(states, XLSTM, field="m")
    states[XLSTM].forward.gates["v"][:, 2] += 1.0
    with pytest.raises(rnnlens.ParityError, match="step 2"):
        rnnlens.decompose(states, XLSTM).attention()
