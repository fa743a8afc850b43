"""rnnlens.decompose on state-space mixers (tiny random transformers models, no hub): the writes
sum to the traced state at every step, each contribution equals a brute-force carry of the
mixer's own decays, and Mamba's hidden attention equals the formula of Ali et al. (ACL 2025)
computed independently from the mixer's weights. Tolerances: float32 states, float64 sums,
``|Σ − state| ≤ 1e-5 · Σ|terms| + 1e-7`` (decompose's own check) and 1e-5 relative here."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

pytest.importorskip("transformers")

from ssm_builders import IDS, gemma, mamba, mamba2  # noqa: E402
from ssm_families import minimax, zamba  # noqa: E402

import rnnlens  # noqa: E402


def _zamba(seed: int) -> Any:
    torch.manual_seed(seed)
    return zamba().eval()


def _minimax(seed: int) -> Any:
    torch.manual_seed(seed)
    return minimax().eval()


BUILD = {
    "mamba": mamba, "falcon_mamba": lambda seed: mamba(True, seed), "mamba2": mamba2, "rglru": gemma,
    "mamba_heads": _zamba, "lightning": _minimax,
}  # fmt: skip


def _carried(d: np.ndarray, w: np.ndarray, t: int) -> np.ndarray:
    """Brute force: each step's write carried by the product of the decays after it, (n, t+1, U)."""
    out = np.empty((d.shape[0], t + 1, d.shape[2]))
    for s in range(t + 1):
        carry = np.ones_like(d[:, 0])
        for r in range(s + 1, t + 1):
            carry = carry * d[:, r]
        out[:, s] = carry * w[:, s]
    return out


def _terms(ls: Any) -> tuple[np.ndarray, np.ndarray]:
    """Each family's decay and write, written out here from the stored gates and the model's
    constants (float64; independent of rnnlens' own float32 formulas)."""
    g = {k: ls.gates[k].astype(np.float64) for k in ls.gates}
    c = {k: np.asarray(v, np.float64) for k, v in ls.spec.constants.items()}
    n, t = ls.state.shape[:2]
    if ls.kind == "mamba":
        d = np.exp(np.einsum("ntc,ck->ntck", g["dt"], c["A"]))
        w = np.einsum("ntc,ntk,ntc->ntck", g["dt"], g["B"], g["x"])
    elif ls.kind == "mamba2":
        rep = g["dt"].shape[2] // g["B"].shape[2]
        b = np.repeat(g["B"], rep, axis=2)
        w = np.einsum("nth,nthp,nthk->nthpk", g["dt"], g["x"], b)
        d = np.broadcast_to(np.exp(g["dt"] * c["A"])[..., None, None], w.shape)
    elif ls.kind == "lightning":
        w = np.einsum("nthk,nthv->nthkv", g["k"], g["v"])
        d = np.broadcast_to(c["decay"][None, None, :, None, None], w.shape)
    elif ls.kind == "mamba_heads":
        d = np.exp(np.einsum("nthp,hpk->nthpk", g["dt"], c["A"]))
        w = np.einsum("nthp,nthk,nthp->nthpk", g["dt"], g["B"], g["x"])
    else:
        a = np.exp(-8.0 * g["r"] * c["softplus_lambda"])
        mult = np.sqrt(1.0 - a**2)
        a[:, 0], mult[:, 0] = 0.0, 1.0
        d, w = a, g["x"] * g["i"] * mult
    return d.reshape(n, t, -1), w.reshape(n, t, -1)


@settings(max_examples=6, deadline=None)
@example("mamba_heads", 0, True)
@example("lightning", 1, True)
@given(st.sampled_from(sorted(BUILD)), st.integers(0, 3), st.booleans())
def test_writes_sum_to_the_state_and_equal_a_brute_force_carry(family: str, seed: int, padded: bool) -> None:
    model = BUILD[family](seed)
    kwargs: dict[str, Any] = {}
    if padded and family != "rglru":  # left padding: padded steps decay and write nothing
        kwargs["attention_mask"] = torch.tensor([[1] * 7, [0, 0, 1, 1, 1, 1, 1]])
    states = rnnlens.trace(model, IDS, **kwargs)
    for name in states:
        ls = states[name]
        dec = rnnlens.decompose(states, name)
        d, w = _terms(ls)
        state = ls.state.reshape(*ls.state.shape[:2], -1).astype(np.float64)
        for t in (0, 3, 6):
            got = dec.at(t)
            assert got.shape == (2, t + 1, *ls.state.shape[2:])
            total = got.sum(axis=1) + dec.initial_at(t)
            scale = np.abs(state[:, t]).max()
            np.testing.assert_allclose(total.reshape(2, -1), state[:, t], rtol=0, atol=1e-5 * scale)
            np.testing.assert_allclose(
                got.reshape(2, t + 1, -1), _carried(d, w, t), rtol=1e-5, atol=1e-7 * scale
            )
        att = dec.attention()
        brute = np.linalg.norm(_carried(d, w, 6), axis=-1)
        np.testing.assert_allclose(att[:, 6, :], brute, rtol=1e-5, atol=1e-9)
        assert np.all(att[:, np.triu_indices(7, 1)[0], np.triu_indices(7, 1)[1]] == 0)
        life = dec.lifetime(0.5)
        assert life.steps.shape == ls.state.shape


def _ali_attention(mixer: Any, hidden: torch.Tensor) -> np.ndarray:
    """α[n, c, t, s] = C_t · Π_{r=s+1..t} exp(Δ_r A) · Δ_s B_s (Ali et al., eq. 9-11), from the
    mixer's weights and the hidden states it received, in float64 (the modeling file unused)."""
    m = {k: v.detach().double() for k, v in mixer.state_dict().items()}
    h = hidden.double()
    xz = h @ m["in_proj.weight"].T
    x, _ = xz.chunk(2, dim=-1)
    t = x.shape[1]
    conv = torch.nn.functional.conv1d(
        x.transpose(1, 2), m["conv1d.weight"], m["conv1d.bias"], padding=mixer.conv_kernel_size - 1,
        groups=x.shape[-1],
    )[..., :t]  # fmt: skip
    x = torch.nn.functional.silu(conv).transpose(1, 2)  # (n, T, c)
    low, B, C = torch.split(x @ m["x_proj.weight"].T, [mixer.time_step_rank, mixer.ssm_state_size,
                                                       mixer.ssm_state_size], dim=-1)  # fmt: skip
    delta = torch.nn.functional.softplus(low @ m["dt_proj.weight"].T + m["dt_proj.bias"])  # (n, T, c)
    A = -torch.exp(m["A_log"])  # (c, N)
    n, c = x.shape[0], x.shape[2]
    alpha = torch.zeros(n, c, t, t, dtype=torch.float64)
    for ti in range(t):
        for s in range(ti + 1):
            abar = torch.exp(delta[:, s + 1 : ti + 1, :, None] * A).prod(dim=1)  # (n, c, N)
            bbar = delta[:, s, :, None] * B[:, s, None, :]
            alpha[:, :, ti, s] = (C[:, ti, None, :] * abar * bbar).sum(-1)
    return alpha.numpy()


def test_mamba_hidden_attention_is_ali_et_al() -> None:
    model = mamba(seed=5)
    received: dict[str, torch.Tensor] = {}
    mixer = model.backbone.layers[1].mixer
    hook = mixer.register_forward_pre_hook(lambda mod, args: received.__setitem__("h", args[0]))
    try:
        with torch.no_grad():
            model(IDS)
    finally:
        hook.remove()
    states = rnnlens.trace(model, IDS)
    dec = rnnlens.decompose(states, "backbone.layers.1.mixer")
    alpha = dec.hidden_attention()
    expected = _ali_attention(mixer, received["h"])
    np.testing.assert_allclose(alpha, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    # and α mixes the scan inputs into the scan's readout of the traced states: Σ_s α x_s = C_t·S_t
    ls = states["backbone.layers.1.mixer"]
    mixed = np.einsum("ncts,nsc->ntc", alpha, ls.gates["x"].astype(np.float64))
    readout = np.einsum("ntck,ntk->ntc", ls.state.astype(np.float64), ls.gates["C"].astype(np.float64))
    np.testing.assert_allclose(mixed, readout, rtol=1e-5, atol=1e-6 * np.abs(readout).max())


def test_mamba2_hidden_attention_is_its_ssd_matrix() -> None:
    states = rnnlens.trace(mamba2(), IDS)
    name = next(iter(states))
    ls = states[name]
    alpha = rnnlens.decompose(states, name).hidden_attention()  # (n, head, T, T)
    # the scan's readout of the traced states, per head and channel: C_t · S_t = Σ_s α_{t,s} x_s
    rep = ls.state.shape[2] // ls.gates["C"].shape[2]
    c = np.repeat(ls.gates["C"].astype(np.float64), rep, axis=2)
    readout = np.einsum("nthpk,nthk->nthp", ls.state.astype(np.float64), c)
    mixed = np.einsum("nhts,nshp->nthp", alpha, ls.gates["x"].astype(np.float64))
    np.testing.assert_allclose(mixed, readout, rtol=1e-5, atol=1e-6 * np.abs(readout).max())


def test_store_keeps_the_constants(tmp_path: Any) -> None:
    model = mamba()
    rnnlens.extract_to(tmp_path / "s.zarr", model, IDS.numpy(), batch_size=1, fields=("h", "state", "gates"))
    stored = rnnlens.open_states(tmp_path / "s.zarr")
    mem = rnnlens.trace(model, IDS)
    name = "backbone.layers.0.mixer"
    np.testing.assert_array_equal(stored[name].spec.constants["A"], mem[name].spec.constants["A"])
    a, b = rnnlens.decompose(stored, name, chunk=1), rnnlens.decompose(mem, name)
    np.testing.assert_allclose(a.attention(), b.attention(), rtol=1e-6, atol=1e-9)
    np.testing.assert_allclose(a.hidden_attention(), b.hidden_attention(), rtol=1e-6, atol=1e-9)


def test_refusals_name_what_is_missing() -> None:
    states = rnnlens.trace(mamba(), IDS, fields="state")
    with pytest.raises(rnnlens.FieldNotAvailableError, match="gates"):
        rnnlens.decompose(states, "backbone.layers.0.mixer").attention()
    states = rnnlens.trace(mamba(), IDS)
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='state'"):
        rnnlens.decompose(states, "backbone.layers.0.mixer", field="h")
    states["backbone.layers.0.mixer"].forward.gates["dt"][:, 3] *= 1.01  # not the dt that made the state
    with pytest.raises(rnnlens.ParityError, match="step 3"):
        rnnlens.decompose(states, "backbone.layers.0.mixer").attention()
