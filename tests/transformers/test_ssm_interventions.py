"""Interventions on state-space mixers' states, carried forward: a no-op edit reproduces the
model; an edit at step t leaves every earlier step as it was, changes every later state and the
logits; ablating a channel's state at step t equals the independent oracle of a decode whose
cache state is edited at t (the model's own step path)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ssm_builders import IDS, gdn, gemma, mamba, mamba2, rwkv, xlstm  # noqa: E402

import rnnlens  # noqa: E402

NAME = "backbone.layers.0.mixer"


@pytest.mark.parametrize("build", [mamba, mamba2], ids=["mamba", "mamba2"])
def test_a_no_op_edit_reproduces_the_model_and_an_edit_carries_forward(build: Any) -> None:
    model = build()
    with torch.no_grad():
        own = model(IDS).logits.numpy()
    plain = rnnlens.trace(model, IDS)
    noop = rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 2, field="state", scale=1.0))
    np.testing.assert_allclose(noop.outputs["logits"], own, rtol=1e-4, atol=1e-5)
    # a tiny random model's outputs hardly move for an ablation: set the state far off instead
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 3, field="state", units=[0, 1], set=3.0))
    ls = run.states[NAME]
    assert np.all(ls.state[:, 3, :2] == 3)
    np.testing.assert_array_equal(ls.state[:, :3], plain[NAME].state[:, :3])  # before the edit: untouched
    assert not np.allclose(ls.state[:, 4:], plain[NAME].state[:, 4:])  # carried forward
    logits = run.outputs["logits"]  # step 3's output reads its state before the edit (as for c)
    np.testing.assert_allclose(logits[:, :4], own[:, :4], rtol=1e-4, atol=1e-5)
    assert np.abs(logits[:, 4:] - own[:, 4:]).max() > 1e-3
    # the next layer saw the edited stream
    assert not np.allclose(
        run.states["backbone.layers.1.mixer"].state[:, 3:], plain["backbone.layers.1.mixer"].state[:, 3:]
    )
    assert not any("forward" in vars(m) for m in model.modules())


def test_an_edit_equals_a_decode_whose_cache_state_is_edited() -> None:
    """The oracle: decode token by token through the model's own cache and set the state's
    channels 0-2 in the cache right after step 3 is read."""
    model = mamba()
    with torch.no_grad():
        own = model(IDS).logits.numpy()
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 3, field="state", units=slice(0, 3), set=3.0))
    with torch.no_grad():
        out = model(IDS[:, :1], use_cache=True)
        logits = [out.logits]
        for t in range(1, IDS.shape[1]):
            if t == 4:  # after step 3 was read, before step 4 reads the state
                out.cache.get_recurrent_state(0, state_idx=0)[:, :3] = 3.0
            out = model(IDS[:, t : t + 1], cache=out.cache, use_cache=True)
            logits.append(out.logits)
    oracle = torch.cat(logits, dim=1).numpy()
    assert np.abs(oracle - own).max() > 1e-3  # the edit matters
    np.testing.assert_allclose(run.outputs["logits"], oracle, rtol=1e-4, atol=1e-5)


def test_bad_state_edits_are_clear_errors() -> None:
    model = mamba()
    with pytest.raises(rnnlens.FieldNotAvailableError, match="field='state'"):
        rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 2, field="h", scale=0))
    with pytest.raises(rnnlens.OptionError, match="out of range"):
        rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 2, field="state", units=[99], scale=0))
    with pytest.raises(rnnlens.OptionError, match="broadcastable"):
        rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 2, field="state", set=np.zeros((2, 16, 5))))
    patch = np.zeros((2, 16, 4))  # a full (sample, channel, d_state) state patch is accepted
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(NAME, 2, field="state", set=patch))
    assert np.all(run.states[NAME].state[:, 2] == 0)


def test_gated_deltanet_state_edits_carry_forward() -> None:
    torch.manual_seed(6)
    model = gdn()
    name = "model.layers.0.linear_attn"
    with torch.no_grad():
        own = model(IDS).logits.numpy()
    noop = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 2, field="state", add=0.0))
    np.testing.assert_allclose(noop.outputs["logits"], own, rtol=1e-4, atol=1e-5)
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 2, field="state", units=[1, 2], set=50.0))
    assert np.all(run.states[name].state[:, 2, 1:3] == 50)
    np.testing.assert_allclose(run.outputs["logits"][:, :3], own[:, :3], rtol=1e-4, atol=1e-5)
    # a random init decays the state fast and the mixer's gated RMS norm is scale-free: the
    # effect is small, yet far above float32 rounding (~1e-7)
    assert np.abs(run.outputs["logits"][:, 3:] - own[:, 3:]).max() > 1e-5
    plain = rnnlens.trace(model, IDS)[name].h
    assert np.abs(run.states[name].h[:, 3:] - plain[:, 3:]).max() > 1e-5
    np.testing.assert_allclose(run.states[name].h[:, :3], plain[:, :3], rtol=1e-5, atol=1e-6)


def test_rglru_state_edits_equal_a_decode_whose_state_is_edited() -> None:
    """RecurrentGemma keeps its RG-LRU state on the module: the oracle prefills 4 tokens, sets
    that state, then decodes the rest one token at a time through the model's own cache."""
    model = gemma(seed=1)
    name = "model.layers.0.temporal_block"
    with torch.no_grad():
        own = model(IDS).logits.numpy()
    noop = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 3, field="state", scale=1.0))
    np.testing.assert_allclose(noop.outputs["logits"], own, rtol=1e-4, atol=1e-5)
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 3, field="state", units=slice(0, 8), set=2.0))
    assert np.all(run.states[name].state[:, 3, :8] == 2)
    with torch.no_grad():
        cache = transformers.DynamicCache(config=model.config)
        out = model(
            IDS[:, :4],
            position_ids=torch.arange(4)[None].expand(2, -1),
            past_key_values=cache,
            use_cache=True,
        )
        logits = [out.logits]
        model.get_submodule(name).rg_lru.recurrent_states[:, :8] = 2.0
        for t in range(4, IDS.shape[1]):
            pos = torch.full((2, 1), t)
            out = model(
                IDS[:, t : t + 1],
                position_ids=pos,
                past_key_values=cache,
                use_cache=True,
                cache_position=torch.tensor([t]),
            )
            logits.append(out.logits)
    oracle = torch.cat(logits, dim=1).numpy()
    assert np.abs(oracle - own).max() > 1e-4
    np.testing.assert_allclose(run.outputs["logits"], oracle, rtol=1e-4, atol=1e-5)


def test_mlstm_memory_edits_equal_a_decode_whose_cache_is_edited() -> None:
    torch.manual_seed(5)
    model = xlstm(blocks=2, chunk_size=4)
    name = "backbone.blocks.0.mlstm_layer"
    with torch.no_grad():
        own = model(IDS).logits.numpy()
    noop = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 2, field="state", add=0.0))
    np.testing.assert_allclose(noop.outputs["logits"], own, rtol=1e-4, atol=1e-5)
    run = rnnlens.intervene(model, IDS, rnnlens.Edit(name, 2, field="state", units=[1], scale=-3.0))
    with torch.no_grad():
        out = model(IDS[:, :3], use_cache=True)
        logits = [out.logits]
        c = out.cache_params.rnn_state[0][0]
        c[:, 1] *= -3.0  # the memory after step 2, edited in the model's own cache
        for t in range(3, IDS.shape[1]):
            out = model(IDS[:, t : t + 1], cache_params=out.cache_params, use_cache=True)
            logits.append(out.logits)
    oracle = torch.cat(logits, dim=1).numpy()
    assert np.abs(oracle - own).max() > 1e-4
    np.testing.assert_allclose(run.outputs["logits"], oracle, rtol=1e-4, atol=1e-4)


def test_rwkv4_state_edits_equal_a_decode_whose_state_is_edited() -> None:
    torch.manual_seed(4)
    model = rwkv()
    name, ids = "rwkv.blocks.0.attention", IDS[:1]  # batch 1 (transformers' RWKV decode)
    with torch.no_grad():
        own = model(ids).logits.numpy()
    run = rnnlens.intervene(model, ids, rnnlens.Edit(name, 2, field="state", units=[0], scale=-2.0))
    assert np.allclose(run.states[name].state[:, 2, 0], -2 * rnnlens.trace(model, ids)[name].state[:, 2, 0])
    with torch.no_grad():
        out = model(ids[:, :3], use_cache=True)
        logits = [out.logits]
        out.state[2][:, :, 0] *= -2.0  # num of layer 0 after step 2, in the model's own state
        for t in range(3, ids.shape[1]):
            out = model(ids[:, t : t + 1], state=out.state, use_cache=True)
            logits.append(out.logits)
    oracle = torch.cat(logits, dim=1).numpy()
    assert np.abs(oracle - own).max() > 1e-4
    np.testing.assert_allclose(run.outputs["logits"], oracle, rtol=1e-4, atol=1e-4)
