"""Edit(target="write") on state-space mixers (Mamba, FalconMamba, Mamba2, RG-LRU; tiny random
transformers models, no hub): what a step wrote into the mixer's state, changed and carried.

Oracles:

- a float64 loop of the mixer's recurrence ``s_t = d_t ⊙ s_{t-1} + w_t`` with the decays and
  writes written out here from the traced gates and the model's constants (independent of
  rnnlens' float32 scan), that step's write scaled / set / added, state edits mixed in; the
  edited run's states against it (``atol = 1e-5 · max|state|``, measured ≤ 2e-7 · max|state|);
- the model itself, run with the edited mixer's output replaced (a forward hook) by the readout
  of the oracle's states (Mamba ``out_proj((C·s + D x) ⊙ silu(z))``, Mamba2 ``out_proj(norm(C·s
  + D x, z))``, RG-LRU: its state is its output): the logits against the edited run's
  (``rtol = 1e-4, atol = 1e-5``, as the state edits' tests; measured ≤ 4e-7, where the edit moves
  them by 6e-3 to 1.2);
- :func:`rnnlens.decompose`: ``scale=0`` on step s's write leaves the state minus that write's
  carried contribution, at every later step of the layer (``atol = 1e-6 · max|state|``).

The model is unchanged (its digest; no instance ``forward`` left).
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import torch.nn.functional as F  # noqa: E402
from ssm_builders import IDS, gemma, mamba, mamba2  # noqa: E402
from write_edit_checks import (  # noqa: E402
    check_ablation_matches_decompose,
    check_untouched_before,
    draw_edits,
    edited_loop,
    intervene_unchanged,
)

import rnnlens  # noqa: E402
from rnnlens.core.edits import LINEAR  # noqa: E402

BUILD = {"mamba": mamba, "falcon_mamba": lambda: mamba(True), "mamba2": mamba2, "rglru": gemma}
T = IDS.shape[1]


@cache
def _model(family: str) -> tuple[Any, Any]:
    model = BUILD[family]()
    return model, rnnlens.trace(model, IDS)


def _terms(ls: Any) -> tuple[np.ndarray, np.ndarray]:
    """Decays and writes (sample, time, *state), float64, from the traced gates and constants."""
    g = {k: np.asarray(ls.gates[k], np.float64) for k in ls.gates}
    c = {k: np.asarray(v, np.float64) for k, v in ls.spec.constants.items()}
    if ls.kind == "mamba":
        d = np.exp(g["dt"][..., None] * c["A"][None, None])
        w = g["dt"][..., None] * g["B"][:, :, None, :] * g["x"][..., None]
    elif ls.kind == "mamba2":
        b = np.repeat(g["B"], g["dt"].shape[2] // g["B"].shape[2], axis=2)
        w = (g["dt"][..., None] * g["x"])[..., None] * b[:, :, :, None, :]
        d = np.broadcast_to(np.exp(g["dt"] * c["A"])[..., None, None], w.shape)
    else:
        d = np.exp(-8.0 * g["r"] * c["softplus_lambda"])
        mult = np.sqrt(1.0 - d**2)
        d[:, 0], mult[:, 0] = 0.0, 1.0  # a segment starts at the first step
        w = g["x"] * g["i"] * mult
    return d, w


def _oracle(ls: Any, edits: list[rnnlens.Edit]) -> tuple[np.ndarray, np.ndarray]:
    """The states (stored, carried) and the states each step's output reads, float64."""
    d, w = _terms(ls)
    return edited_loop(lambda t, s: d[:, t] * s, w, edits)


def _oracle_logits(model: Any, name: str, ls: Any, reads: np.ndarray) -> np.ndarray:
    """The model's logits with mixer ``name``'s output computed from ``reads`` (a forward hook)."""
    module = model.get_submodule(name)
    g = {k: torch.from_numpy(np.asarray(ls.gates[k], np.float64)) for k in ls.gates}
    r = torch.from_numpy(reads)

    def mixer_out(mod: Any, args: Any, kwargs: Any, out: Any) -> Any:
        hs = (args[0] if args else kwargs["hidden_states"]).double()
        projected = F.linear(hs, mod.in_proj.weight.double(), None if mod.in_proj.bias is None
                             else mod.in_proj.bias.double())  # fmt: skip
        if ls.kind == "mamba":
            z = projected[..., mod.intermediate_size :]
            y = torch.einsum("ntdk,ntk->ntd", r, g["C"]) + mod.D.double() * g["x"]
            y = (y * F.silu(z)).float()
        else:
            z = projected[..., : mod.intermediate_size]
            c = g["C"].repeat_interleave(g["dt"].shape[2] // g["C"].shape[2], dim=2)
            y = torch.einsum("nthpk,nthk->nthp", r, c) + mod.D.double()[None, None, :, None] * g["x"]
            y = type(mod.norm).forward(mod.norm, y.reshape(*y.shape[:2], -1).float(), z.float())
        return F.linear(y, mod.out_proj.weight, mod.out_proj.bias)

    if ls.kind == "rglru":  # the RG-LRU's output is its state
        handle = module.rg_lru.register_forward_hook(lambda mod, args, out: r.float())
    else:
        handle = module.register_forward_hook(mixer_out, with_kwargs=True)
    try:
        with torch.no_grad():
            return model(IDS).logits.numpy()  # type: ignore[no-any-return]
    finally:
        handle.remove()


@st.composite
def configs(draw: Any) -> Any:
    family = draw(st.sampled_from(sorted(BUILD)))
    model, plain = _model(family)
    name = draw(st.sampled_from(list(plain)))

    def value(mode: str) -> Any:
        return st.floats(-3, 3, width=32) if mode == "scale" else st.floats(-0.5, 0.5, width=32)

    edits = draw_edits(draw, name, plain[name].state.shape[2], T, 3, value)
    return family, model, plain, name, edits


@given(configs())
def test_ssm_write_edits_equal_the_oracle_loop_and_the_hooked_model(cfg: Any) -> None:
    _family, model, plain, name, edits = cfg
    run = intervene_unchanged(model, IDS, edits)
    states, reads = _oracle(plain[name], edits)
    got = run.states[name].state
    scale = np.abs(states).max()
    np.testing.assert_allclose(got, states, rtol=0, atol=1e-5 * scale)
    check_untouched_before(got, plain[name].state, edits, T)
    want = _oracle_logits(model, name, plain[name], reads)
    np.testing.assert_allclose(run.outputs["logits"], want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", sorted(BUILD))
def test_ablating_a_write_removes_its_decompose_contribution(family: str) -> None:
    model, plain = _model(family)
    check_ablation_matches_decompose(model, IDS, plain, next(iter(plain)), ((2, None), (4, [1, 3])))


def test_ssm_write_edit_refusals() -> None:
    model, plain = _model("mamba")
    name = next(iter(plain))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='state'"):
        rnnlens.intervene(model, IDS, rnnlens.Edit(name, 1, field="h", target="write", scale=0))
    # every state-space kind takes write edits (test_ssm_write_edits_more, test_rwkv_write_edits);
    # a kind without a linear state is refused (tests/interventions/test_write_edits.py)
    assert set(rnnlens.core.kinds.KINDS) >= set(LINEAR) and all(
        LINEAR.get(k.name) == "state" for k in rnnlens.core.kinds.KINDS.values() if k.state_dims
    )
