"""Every recurrent mixer family of the installed transformers beyond the first ones
(:mod:`ssm_families`: tiny random configs, CPU, pure-PyTorch path): recognised by what the mixer
computes (none of these class names is in rnnlens' table), every step's state equal to the
model's own cache after a token-by-token decode (float32: rtol 1e-5, atol 1e-6; measured
≤ 7e-9), the logits unchanged, nothing left on the model or its modeling file; state edits
carried forward equal a decode whose cache state is edited; a recurrent module rnnlens does
not know is refused by name."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import ssm_families as fam  # noqa: E402
from ssm_builders import IDS, mamba  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.adapters.hf_.classes import KIND_OF  # noqa: E402

TOL = {"rtol": 1e-5, "atol": 1e-6}

#: family -> (builder, the mixers' paths, their class name, kind)
_GDN, _L0 = "gated_deltanet", ["model.layers.0.linear_attn"]
_KDA, _A0 = "kimi_delta", ["model.layers.0.self_attn"]
_Z0 = "model.layers.0.mamba"
FAMILIES: dict[str, tuple[Any, list[str], str, str]] = {
    "olmo_hybrid": (fam.olmo_hybrid, _L0, "OlmoHybridGatedDeltaNet", _GDN),
    "qwen3_5": (fam.qwen3_5, _L0, "Qwen3_5GatedDeltaNet", _GDN),
    "qwen3_5_moe": (fam.qwen3_5_moe, _L0, "Qwen3_5MoeGatedDeltaNet", _GDN),
    "lara_mini": (fam.lara_mini, _L0, "LaraMiniGatedDeltaNet", _GDN),
    "qwen4_exp": (fam.qwen4_exp, _L0, "Qwen4ExpTextGatedDeltaNet", _GDN),
    "kimi_linear": (fam.kimi_linear, _A0, "KimiLinearDeltaAttention", _KDA),
    "bailing_hybrid": (fam.bailing_hybrid, _A0, "BailingHybridDeltaAttention", _KDA),
    "glm5_next": (fam.glm5_next, ["layers.0.self_attn", "layers.1.self_attn"], "Glm5NextTextLinearAttention", _KDA),  # noqa: E501
    "minimax": (fam.minimax, _A0, "MiniMaxLightningAttention", "lightning"),
    "zamba": (fam.zamba, [_Z0, "model.layers.1.mamba_decoder.mamba"], "ZambaMambaMixer", "mamba_heads"),
}  # fmt: skip


def _output(out: Any) -> torch.Tensor:
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def _helpers(model: Any) -> dict[str, Any]:
    """The modeling file's globals, to check rnnlens left them as they were."""
    return dict(vars(sys.modules[type(model).__module__]))


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_step_equals_the_decode_cache(family: str) -> None:
    build, names, cls, kind = FAMILIES[family]
    torch.manual_seed(0)
    model = build().eval()
    assert cls not in KIND_OF  # recognised by what it computes, not by a table row
    helpers = _helpers(model.get_submodule(names[0]))
    with torch.no_grad():
        before = _output(model(IDS))
    states = rnnlens.trace(model, IDS)
    assert list(states) == names == rnnlens.describe(model).names
    layers = [model.get_submodule(n).layer_idx for n in names]
    decoded, decode_out = fam.decode(model, IDS, layers)
    np.testing.assert_allclose(decode_out.numpy(), before.numpy(), rtol=1e-4, atol=2e-5)  # the oracle holds
    for i, name in enumerate(names):
        ls = states[name]
        assert ls.kind == kind and type(model.get_submodule(name)).__name__ == cls
        assert ls.h.shape == (2, 7, model.config.hidden_size)
        for t in range(IDS.shape[1]):
            np.testing.assert_allclose(ls.state[:, t], decoded[t][i].float().numpy(), **TOL)
        norm = np.linalg.norm(ls.state, axis=-1).reshape(2, 7, -1)
        np.testing.assert_allclose(ls.state_norm, norm, rtol=1e-5)
    with torch.no_grad():
        assert torch.equal(_output(model(IDS)), before)
    assert not any("forward" in vars(m) for m in model.modules())
    assert _helpers(model.get_submodule(names[0])) == helpers


def test_gates_of_the_new_kinds() -> None:
    torch.manual_seed(0)
    olmo = rnnlens.trace(fam.olmo_hybrid().eval(), IDS)["model.layers.0.linear_attn"]
    beta = olmo.gates["beta"]  # OLMo-Hybrid scales beta to (0, 2): negative eigenvalues allowed
    assert beta.shape == (2, 7, 4) and beta.max() > 1 and beta.max() < 2 and beta.min() > 0
    kimi = rnnlens.trace(fam.kimi_linear().eval(), IDS)["model.layers.0.self_attn"]
    assert kimi.gates["beta"].shape == (2, 7, 2) and kimi.gates["g"].shape == (2, 7, 2, 8)  # per channel
    assert np.all(kimi.gates["g"] <= 0)  # a log decay
    zamba = rnnlens.trace(fam.zamba().eval(), IDS)["model.layers.0.mamba"]
    assert zamba.state.shape == (2, 7, 2, 16, 4) and list(zamba.gates) == ["dt", "B", "C", "x"]
    assert zamba.gates["dt"].shape == (2, 7, 2, 16) and zamba.gates["B"].shape == (2, 7, 2, 4)
    lightning = rnnlens.trace(fam.minimax().eval(), IDS)["model.layers.0.self_attn"]
    assert lightning.fields == ("h", "gates", "state", "state_norm")  # a fixed decay: k and v only
    assert list(lightning.gates) == ["k", "v"] and lightning.gates["k"].shape == (2, 7, 2, 16)


def test_lightning_memory_is_stepped_across_block_boundaries() -> None:
    """Blocks of 3 over 7 tokens, and one block of 256: the same states, the decode's."""
    got = []
    for block in (3, 256):
        torch.manual_seed(0)
        got.append(rnnlens.trace(fam.minimax(block).eval(), IDS)["model.layers.0.self_attn"].state)
    np.testing.assert_allclose(got[0], got[1], rtol=1e-5, atol=1e-6)


#: family -> (mixer, cache layer, value): the oracle sets the cache's state of that layer
EDITED = {
    "olmo_hybrid": ("model.layers.0.linear_attn", 0, 5.0),
    "kimi_linear": ("model.layers.0.self_attn", 0, 5.0),
    "minimax": ("model.layers.0.self_attn", 0, 5.0),
    "zamba": ("model.layers.0.mamba", 0, 500.0),  # its random init hardly reads the state
}


@pytest.mark.parametrize("family", list(EDITED))
def test_a_state_edit_equals_a_decode_whose_cache_state_is_edited(family: str) -> None:
    name, layer, value = EDITED[family]
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    with torch.no_grad():
        own = _output(model(IDS)).numpy()
    noop = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 2, field="state", scale=1.0))
    np.testing.assert_allclose(noop.outputs["logits"], own, rtol=1e-4, atol=1e-5)
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 3, field="state", units=[0], set=value))
    assert np.all(run.states[name].state[:, 3, 0] == value)
    plain = rnnlens.trace(model, IDS)[name]
    np.testing.assert_array_equal(run.states[name].state[:, :3], plain.state[:, :3])
    cache = None
    logits = []
    with torch.no_grad():
        for t in range(IDS.shape[1]):
            if t == 4:  # after step 3 was read, before step 4 reads the state
                fam.recurrent_state(cache, layer)[:, 0] = value
            out = model(IDS[:, t : t + 1], use_cache=True, **({} if cache is None else {"cache": cache}))
            cache = getattr(out, "cache", None) or out.past_key_values
            logits.append(out.logits)
    oracle = torch.cat(logits, dim=1).numpy()
    assert np.abs(oracle - own).max() > 1e-4  # the edit matters
    np.testing.assert_allclose(run.outputs["logits"], oracle, rtol=1e-4, atol=1e-5)
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("family", ["kimi_linear", "minimax", "zamba"])
def test_the_new_kinds_are_stored_and_shown_in_the_viewer(family: str, tmp_path: Any) -> None:
    from rnnlens.viewer.store import StoreView

    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    data = tmp_path / "ids.npy"
    np.save(data, IDS.numpy())
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, str(data), fields=None, batch_size=2)
    stored, direct = rnnlens.open_states(store), rnnlens.trace(model, IDS)
    view = StoreView(store)
    for name, ls in direct.items():
        assert stored[name].kind == ls.kind
        np.testing.assert_array_equal(stored[name].state[:], ls.state)
        for gate in ls.gates if "gates" in ls.fields else ():
            np.testing.assert_array_equal(np.asarray(stored[name].gates[gate][:]), ls.gates[gate])
        assert view.fields(name) == ["h", "state_norm"]
        (column,) = view.columns(name, "state_norm", "forward", [0])
        np.testing.assert_allclose(np.asarray(column), ls.state_norm[:, :, 0], rtol=1e-6)


def test_a_recurrent_module_rnnlens_does_not_know_is_refused_by_name() -> None:
    torch.manual_seed(0)
    model = fam.zaya().eval()
    refused = r"`ZayaCCAProjection` at `model\.layers\.0\.self_attn.qkv_proj` .*\(family zaya\)"
    with pytest.raises(rnnlens.UnsupportedLayerError, match=refused):
        rnnlens.trace(model, IDS)


class _OwnState(torch.nn.Module):
    """A user's mixer that keeps a recurrent state in the cache (its code names the slot)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer_idx = 1

    def forward(self, hidden_states: Any, cache: Any = None, **kwargs: Any) -> Any:
        if cache is not None and hidden_states.shape[1] == 1:
            cache.get_recurrent_state(self.layer_idx, state_idx=0)
        return hidden_states * 0.5


def test_an_unknown_mixer_beside_known_ones_names_the_layers_to_trace() -> None:
    model = mamba()
    model.backbone.layers[1].mixer = _OwnState()
    refused = (
        r"`_OwnState` at `backbone\.layers\.1\.mixer` keeps a recurrent state rnnlens does not know "
        r"yet \(family test_ssm_families\); other layers can be traced with "
        r"`layers=\['backbone\.layers\.0\.mixer'\]`"
    )
    with pytest.raises(rnnlens.UnsupportedLayerError, match=refused):
        rnnlens.trace(model, IDS)
    states = rnnlens.trace(model, IDS, layers=["backbone.layers.0.mixer"])
    assert list(states) == ["backbone.layers.0.mixer"]


def test_every_family_is_recognised_without_the_class_table(monkeypatch: Any) -> None:
    """With the table of class names emptied, every mixer is still found, with its kind, from
    its helpers and parameters alone (so a renamed copy needs no table row)."""
    import ssm_builders as b

    import rnnlens.adapters.hf_.recognise as recognise
    from rnnlens.adapters.hf_.recognise import mixers

    torch.manual_seed(0)
    models = [b.mamba(), b.mamba(True), b.mamba2(), b.gemma(), b.rwkv(), b.xlstm(1), b.gdn()]
    models += [FAMILIES[f][0]() for f in ("olmo_hybrid", "kimi_linear", "minimax", "zamba")]
    by_name = [[(p, k) for p, _, k in mixers(m)] for m in models]
    monkeypatch.setattr(recognise, "KIND_OF", {})
    assert [[(p, k) for p, _, k in mixers(m)] for m in models] == by_name
    assert all(by_name)


@pytest.mark.parametrize("family", ["olmo_hybrid", "kimi_linear", "minimax", "zamba"])
def test_a_decoding_call_is_refused(family: str) -> None:
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    with torch.no_grad():
        out = model(IDS[:, :3], use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    with pytest.raises(rnnlens.UnsupportedLayerError, match="decoding mode"):
        rnnlens.trace(model, IDS[:, 3:4], cache=cache, use_cache=True)
    assert not any("forward" in vars(m) for m in model.modules())


def _jamba() -> Any:
    cfg = transformers.JambaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4,
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
    )  # fmt: skip
    return transformers.JambaForCausalLM(cfg)


def _bamba() -> Any:
    cfg = transformers.BambaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_expand=2, mamba_chunk_size=4, attn_layer_indices=[1],
    )  # fmt: skip
    return transformers.BambaForCausalLM(cfg)


def _hybrids() -> dict[str, Any]:
    from test_ssm_models import _falcon_h1, _granite_hybrid, _nemotron_h, _zamba2

    return {
        "jamba": _jamba, "bamba": _bamba, "nemotron_h": _nemotron_h, "zamba2": _zamba2,
        "granite_moe_hybrid": _granite_hybrid, "falcon_h1": lambda: _falcon_h1(True),
    }  # fmt: skip


HYBRIDS = ["jamba", "bamba", "nemotron_h", "zamba2", "granite_moe_hybrid", "falcon_h1"]


@pytest.mark.parametrize("family", HYBRIDS)
def test_hybrids_mamba_layers_equal_their_decode_cache_at_every_step(family: str) -> None:
    """The Mamba / Mamba2 layers of hybrids, every step (their tests elsewhere check the last),
    past the steps on which the model's own scan checks rnnlens' (mamba2_scan.CHECK_STEPS)."""
    torch.manual_seed(8)
    model = _hybrids()[family]().eval()
    ids = torch.randint(1, 50, (2, 21), generator=torch.Generator().manual_seed(1))
    states = rnnlens.trace(model, ids)
    names = list(states)
    layers = [model.get_submodule(n).layer_idx for n in names]
    decoded, _ = fam.decode(model, ids, layers)
    for i, name in enumerate(names):
        for t in range(ids.shape[1]):
            np.testing.assert_allclose(states[name].state[:, t], decoded[t][i].float().numpy(), **TOL)


@pytest.mark.parametrize("family", ["olmo_hybrid", "kimi_linear", "zamba"])
def test_left_padding_is_the_mask_and_leaves_the_states_of_the_real_tokens(family: str) -> None:
    """The first mixer zeroes padded inputs: the real tokens' states equal an unpadded run's."""
    torch.manual_seed(0)
    model = FAMILIES[family][0]().eval()
    name = FAMILIES[family][1][0]
    ids = torch.tensor([[0, 0, 3, 4, 5, 6, 7]])
    mask = torch.tensor([[0, 0, 1, 1, 1, 1, 1]])
    padded = rnnlens.trace(model, ids, attention_mask=mask)[name]
    np.testing.assert_array_equal(padded.mask, mask.bool().numpy())
    alone = rnnlens.trace(model, ids[:, 2:])[name]
    np.testing.assert_allclose(padded.state[:, 2:], alone.state, rtol=1e-5, atol=1e-6)


def test_a_chunked_call_then_step_calls_in_one_forward_carry_the_state() -> None:
    """A mixer asked to keep intermediate states runs its chunk helper on the first steps and
    the step helper on the rest (each from the last state): rnnlens carries its own state."""
    from transformers.models.qwen3_next import modeling_qwen3_next as mod

    from rnnlens.adapters.hf_.delta import DeltaScan

    torch.manual_seed(0)
    n, t, h, d = 2, 7, 2, 4
    q, k, v = (torch.randn(n, t, h, d) for _ in range(3))
    g, beta = -torch.rand(n, t, h), torch.rand(n, t, h)
    whole = DeltaScan("gated_deltanet", "m", None, True)
    chunk = whole.replacements(vars(mod))["torch_chunk_gated_delta_rule"]
    kw = {"output_final_state": True, "use_qk_l2norm_in_kernel": True}
    out, _ = chunk(q, k, v, g=g, beta=beta, initial_state=None, **kw)
    split = DeltaScan("gated_deltanet", "m", None, True)
    helpers = split.replacements(vars(mod))
    first, state = helpers["torch_chunk_gated_delta_rule"](
        q[:, :4], k[:, :4], v[:, :4], g=g[:, :4], beta=beta[:, :4], initial_state=None,
        output_final_state=True, use_qk_l2norm_in_kernel=True,
    )  # fmt: skip
    outs = [first]
    for i in range(4, t):
        o, state = helpers["torch_recurrent_gated_delta_rule"](
            q[:, i : i + 1], k[:, i : i + 1], v[:, i : i + 1], g=g[:, i : i + 1], beta=beta[:, i : i + 1],
            initial_state=state, output_final_state=True, use_qk_l2norm_in_kernel=True,
        )  # fmt: skip
        outs.append(o)
    np.testing.assert_allclose(torch.cat(outs, dim=1).numpy(), out.numpy(), rtol=1e-5, atol=1e-6)
    got, want = split.arrays(out), whole.arrays(out)
    assert got.state.shape == (n, t, h, d, d)
    np.testing.assert_allclose(got.state, want.state, rtol=1e-5, atol=1e-6)
