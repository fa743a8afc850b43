"""State-space and linear-recurrent mixers of transformers models (tiny random configs, CPU,
pure-PyTorch path): every step's state against independent oracles of the model's own —
the cache after a prefill (last step), the cache after a token-by-token decode (Mamba, every
step) and the state after each prefix (RecurrentGemma, every step) — within float32 tolerance
(rtol 1e-5, atol 1e-6; measured 0.0), the logits unchanged and nothing left on the model."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ssm_builders import IDS, TOL, decoded_states, gdn, gemma, mamba, mamba2, rwkv, xlstm  # noqa: E402

import rnnlens  # noqa: E402
import rnnlens.cli.command  # noqa: E402


def _equals_prefill_and_decode(model: Any, states: Any, names: list[str]) -> None:
    """Every step's state is the cache after decoding up to it; the last, the prefill's cache."""
    with torch.no_grad():
        prefill = model(IDS, use_cache=True).cache
    decoded = decoded_states(model, IDS, len(names))
    for i, name in enumerate(names):
        np.testing.assert_allclose(
            states[name].state[:, -1], prefill.get_recurrent_state(i, state_idx=0).numpy(), **TOL
        )
        for t in range(IDS.shape[1]):
            np.testing.assert_allclose(states[name].state[:, t], decoded[t][i].numpy(), **TOL)


def _untouched(model: Any, before: Any) -> None:
    with torch.no_grad():
        assert torch.equal(model(IDS).logits, before)
    assert not any("forward" in vars(m) for m in model.modules())


@pytest.mark.parametrize("falcon", [False, True], ids=["mamba", "falcon_mamba"])
def test_mamba_states_at_every_step_equal_the_decode_cache(falcon: bool) -> None:
    model = mamba(falcon)
    with torch.no_grad():
        before = model(IDS).logits
    states = rnnlens.trace(model, IDS)
    names = ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    assert list(states) == names == rnnlens.describe(model).names
    ls = states[names[0]]
    assert ls.kind == "mamba" and ls.state.shape == (2, 7, 16, 4) and list(ls.gates) == ["dt", "B", "C", "x"]
    assert ls.gates["dt"].shape == (2, 7, 16) and ls.gates["B"].shape == (2, 7, 4)
    assert ls.gates["x"].shape == (2, 7, 16)
    _equals_prefill_and_decode(model, states, names)
    _untouched(model, before)
    # the states come out of the forward pass itself (rnnlens' scan stands in for the helper's):
    # each mixer's output is bitwise the one it computes without rnnlens
    own = _mixer_outputs(model, names)
    for name in names:
        assert np.array_equal(states[name].h, own[name])


def test_mamba_attention_mask_is_the_mask_and_options_are_checked() -> None:
    model = mamba()
    mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    states = rnnlens.trace(model, IDS, attention_mask=mask, layers="backbone.layers.1.mixer", fields="state")
    ls = states["backbone.layers.1.mixer"]
    np.testing.assert_array_equal(ls.mask, mask.bool().numpy())
    assert ls.fields == ("h", "state")
    with pytest.raises(rnnlens.LayerNotFoundError, match=r"backbone\.layers\.1\.mixer"):
        rnnlens.trace(model, IDS, layers="backbone.layers.1.mixr")
    with pytest.raises(rnnlens.FieldNotAvailableError):
        rnnlens.trace(model, IDS, fields="c")
    with pytest.raises(rnnlens.InputError, match="attention_mask"):
        rnnlens.trace(model, IDS, mask=np.ones((2, 7), bool))


def test_a_decoding_call_is_refused() -> None:
    model = mamba()
    with torch.no_grad():
        cache = model(IDS[:, :3], use_cache=True).cache
    with pytest.raises(rnnlens.UnsupportedLayerError, match="decoding mode"):
        rnnlens.trace(model, IDS[:, 3:4], cache=cache, use_cache=True)
    assert not any("forward" in vars(m) for m in model.modules())


def test_recurrent_gemma_states_equal_the_state_after_each_prefix() -> None:
    model = gemma()
    with torch.no_grad():
        before = model(IDS).logits
    states = rnnlens.trace(model, IDS)
    names = ["model.layers.0.temporal_block", "model.layers.1.temporal_block"]  # layer 2 is attention
    assert list(states) == names
    blocks = [model.get_submodule(n) for n in names]
    assert states[names[0]].state.shape == (2, 7, 16) and list(states[names[0]].gates) == ["r", "i", "x"]
    with torch.no_grad():
        for t in range(IDS.shape[1]):
            model(IDS[:, : t + 1], use_cache=True)  # the state is kept on the rg_lru module
            for name, block in zip(names, blocks):
                np.testing.assert_allclose(
                    states[name].state[:, t], block.rg_lru.recurrent_states.numpy(), **TOL
                )
    # the gates reproduce the recurrence (rnnlens checks it; here independently at one step)
    g = states[names[0]].gates
    a = np.exp(-8.0 * g["r"] * np.logaddexp(0, blocks[0].rg_lru.recurrent_param.detach().numpy()))
    assert np.all((a > 0) & (a < 1))
    _untouched(model, before)


@pytest.mark.parametrize("family", ["mamba", "xlstm"])
def test_a_store_round_trip_equals_trace_and_xarray_opens_it(family: str, tmp_path: Any) -> None:
    """Every state, state part and gate is stored as its own (sample, time, ...) array with
    dimension names; open_states and plain xarray read them back bit for bit."""
    if family == "mamba":
        model = mamba()
    else:
        torch.manual_seed(5)
        model = xlstm(blocks=1, chunk_size=None)
    data = tmp_path / "ids.npy"
    np.save(data, IDS.numpy())
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, str(data), fields=None, batch_size=2)  # as trace batches them
    stored = rnnlens.open_states(store)
    direct = rnnlens.trace(model, IDS)
    assert list(stored) == list(direct)
    for name, ls in direct.items():
        got = stored[name]
        np.testing.assert_array_equal(got.h[:], ls.h)
        np.testing.assert_array_equal(got.state[:], ls.state)
        for gate in ls.gates:
            np.testing.assert_array_equal(np.asarray(got.gates[gate][:]), ls.gates[gate])
        for part, arr in ls.state_parts.items():
            np.testing.assert_array_equal(got.state_parts[part][:], arr)
        loaded = stored.load()[name]
        np.testing.assert_array_equal(loaded.state, ls.state)
    xr = pytest.importorskip("xarray")
    name = next(iter(direct))
    from rnnlens.io.layout import direction_path

    ds = xr.open_zarr(store, group=direction_path(name, "forward"), consolidated=False)
    assert ds["state"].dims[:2] == ("sample", "time")
    np.testing.assert_array_equal(ds["state"].values, direct[name].state)
    assert rnnlens.cli.command.main(["verify", str(store)]) == 0


def test_mamba2_states_at_every_step_equal_the_decode_cache() -> None:
    """The chunked prefill keeps states at chunk boundaries only; rnnlens gives every step."""
    model = mamba2()
    with torch.no_grad():
        before = model(IDS).logits
    states = rnnlens.trace(model, IDS)
    names = ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    assert list(states) == names
    ls = states[names[0]]
    assert ls.kind == "mamba2" and ls.state.shape == (2, 7, 4, 8, 8)
    assert ls.gates["dt"].shape == (2, 7, 4) and ls.gates["B"].shape == (2, 7, 2, 8)
    assert ls.gates["x"].shape == (2, 7, 4, 8)
    _equals_prefill_and_decode(model, states, names)
    _untouched(model, before)
    # the scan's output is the readout of rnnlens' step-by-step states (the decode path's
    # operations), not the chunked scan's: h is the mixer's own within float32 rounding
    own = _mixer_outputs(model, names)
    for name in names:
        np.testing.assert_allclose(states[name].h, own[name], **TOL)


def test_mamba2_states_past_the_checked_steps_and_chunk_boundaries() -> None:
    """Past the steps the chunked scan checks (mamba2_scan.CHECK_STEPS) and across several of
    its chunks, every step's state is still the decode cache's, each mixer's output the
    mixer's own and the prefill cache the one the chunked scan leaves (float32 rounding)."""
    from rnnlens.adapters.hf_.intercept import forward_with
    from rnnlens.adapters.hf_.mamba2_scan import CHECK_STEPS, Scan2Recorder

    model = mamba2()
    ids = torch.randint(0, 50, (3, 4 * CHECK_STEPS + 3), generator=torch.Generator().manual_seed(5))
    names = ["backbone.layers.0.mixer", "backbone.layers.1.mixer"]
    states = rnnlens.trace(model, ids)
    decoded = decoded_states(model, ids, len(names))
    for i, name in enumerate(names):
        for t in range(ids.shape[1]):
            np.testing.assert_allclose(states[name].state[:, t], decoded[t][i].numpy(), **TOL)
    own = _mixer_outputs(model, names, ids)
    for name in names:
        np.testing.assert_allclose(states[name].h, own[name], **TOL)
    # left padding past the checked steps: the mixer zeroes padded inputs before its scan, so
    # the real tokens' states are an unpadded run's
    mask = torch.ones_like(ids)
    mask[1, : CHECK_STEPS + 2] = 0
    padded = rnnlens.trace(model, ids, attention_mask=mask, fields="state")
    alone = rnnlens.trace(model, ids[1:2, CHECK_STEPS + 2 :], fields="state")
    for name in names:
        np.testing.assert_allclose(padded[name].state[1, CHECK_STEPS + 2 :], alone[name].state[0], **TOL)
    mixer = model.backbone.layers[0].mixer
    x = torch.randn(3, ids.shape[1], 16, generator=torch.Generator().manual_seed(6))
    rec = Scan2Recorder(mixer, names[0], gates=False)
    mine, theirs = (transformers.DynamicCache(config=model.config) for _ in range(2))
    with torch.no_grad():
        out = forward_with(mixer, rec.replacements(type(mixer).forward))(mixer, x, cache=mine)
        np.testing.assert_allclose(out.numpy(), mixer(x, cache=theirs).numpy(), **TOL)
    assert rec.used
    last = mine.get_recurrent_state(0, state_idx=0)
    np.testing.assert_array_equal(last.numpy(), rec.states[:, -1].numpy())
    np.testing.assert_allclose(last.numpy(), theirs.get_recurrent_state(0, state_idx=0).numpy(), **TOL)
    # a cache keeping intermediate states: the helper runs as it is (rnnlens then rebuilds)
    mine, theirs = (transformers.DynamicCache(config=model.config) for _ in range(2))
    for c in (mine, theirs):
        c.activate_past_recording(recurrent_states_to_keep=3)
    rec = Scan2Recorder(mixer, names[0], gates=False)
    with torch.no_grad():
        out = forward_with(mixer, rec.replacements(type(mixer).forward))(mixer, x, cache=mine)
        assert torch.equal(out, mixer(x, cache=theirs)) and not rec.used


def _mixer_outputs(model: Any, names: list[str], ids: Any = IDS) -> dict[str, np.ndarray]:
    """Each mixer's output in a plain forward pass (hooks in the test, not rnnlens)."""
    own: dict[str, np.ndarray] = {}
    hooks = [
        model.get_submodule(n).register_forward_hook(lambda m, a, o, n=n: own.__setitem__(n, o.numpy()))
        for n in names
    ]
    try:
        with torch.no_grad():
            model(ids)
    finally:
        for h in hooks:
            h.remove()
    return own


def test_a_hybrid_gives_its_mamba2_layers_and_skips_attention() -> None:
    torch.manual_seed(3)
    cfg = transformers.BambaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=2, mamba_d_state=8,
        mamba_expand=2, mamba_chunk_size=4, attn_layer_indices=[1],
    )  # fmt: skip
    model = transformers.BambaForCausalLM(cfg).eval()
    with torch.no_grad():
        before = model(IDS).logits
        prefill = model(IDS, use_cache=True).cache
    states = rnnlens.trace(model, IDS)
    assert list(states) == ["model.layers.0.mamba", "model.layers.2.mamba"]  # layer 1 is attention
    for layer, name in ((0, "model.layers.0.mamba"), (2, "model.layers.2.mamba")):
        own = prefill.get_recurrent_state(layer, state_idx=0).numpy()
        np.testing.assert_allclose(states[name].state[:, -1], own, **TOL)
    _untouched(model, before)


def test_rwkv4_wkv_states_equal_the_decode_state() -> None:
    """Batch 1: transformers' RWKV decode mis-broadcasts at batch > 1 (its own bug)."""
    torch.manual_seed(4)
    model = rwkv()
    ids = IDS[:1]
    states = rnnlens.trace(model, ids)
    names = ["rwkv.blocks.0.attention", "rwkv.blocks.1.attention"]
    assert list(states) == names and states[names[0]].state.shape == (1, 7, 3, 16)
    assert list(states[names[0]].gates) == ["r", "k", "v"]
    with torch.no_grad():
        prefill = model(ids, use_cache=True).state
        out = model(ids[:, :1], use_cache=True)
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t : t + 1], state=out.state, use_cache=True)
            for i, name in enumerate(names):
                for part in range(3):  # num, den, max (decode starts max at -1e30, a prefill at -1e38)
                    own = out.state[2 + part][:, :, i].numpy()
                    np.testing.assert_allclose(states[name].state[:, t, part], own, rtol=1e-5, atol=1e-5)
    for i, name in enumerate(names):
        np.testing.assert_allclose(states[name].state[:, -1, 0], prefill[2][:, :, i].numpy(), **TOL)
    # a traced prefill with the model's own cache gives the same states
    cached = rnnlens.trace(model, ids, use_cache=True)
    np.testing.assert_allclose(cached[names[1]].state[:, :, :2], states[names[1]].state[:, :, :2], **TOL)


def test_xlstm_matrix_memory_at_every_step_equals_the_decode_cache() -> None:
    torch.manual_seed(5)
    model = xlstm(blocks=2, chunk_size=4)
    with torch.no_grad():
        before = model(IDS).logits
    states = rnnlens.trace(model, IDS)
    names = ["backbone.blocks.0.mlstm_layer", "backbone.blocks.1.mlstm_layer"]
    assert list(states) == names
    ls = states[names[0]]
    assert ls.kind == "mlstm" and ls.state.shape == (2, 7, 2, 32, 32)
    assert set(ls.state_parts) == {"n", "m"} and list(ls.gates) == ["i", "f", "o", "k", "v"]
    tol = {"rtol": 1e-5, "atol": 1e-5}  # chunkwise (prefill) and step-wise (decode) sums round differently
    with torch.no_grad():
        out = model(IDS[:, :1], use_cache=True)
        for t in range(1, IDS.shape[1]):
            out = model(IDS[:, t : t + 1], cache_params=out.cache_params, use_cache=True)
            for i, name in enumerate(names):
                c, n_, m = (s.float().numpy() for s in out.cache_params.rnn_state[i])
                np.testing.assert_allclose(states[name].state[:, t], c, **tol)
                np.testing.assert_allclose(states[name].state_parts["n"][:, t], n_, **tol)
                np.testing.assert_allclose(states[name].state_parts["m"][:, t], m, **tol)
    _untouched(model, before)


def test_gated_deltanet_states_at_every_step_equal_the_decode_cache() -> None:
    torch.manual_seed(6)
    model = gdn()
    with torch.no_grad():
        before = model(IDS).logits
    states = rnnlens.trace(model, IDS)
    name = "model.layers.0.linear_attn"
    assert list(states) == [name]  # layer 1 is full attention
    assert states[name].state.shape == (2, 7, 4, 8, 8) and list(states[name].gates) == ["beta", "g", "k", "v"]
    assert states[name].gates["k"].shape == (2, 7, 2, 8)  # per key head: 2 keys serve 4 value heads
    tol = {"rtol": 1e-5, "atol": 1e-6}
    with torch.no_grad():
        out = model(IDS[:, :1], use_cache=True)
        cache = out.past_key_values
        np.testing.assert_allclose(
            states[name].state[:, 0], cache.get_recurrent_state(0, state_idx=0).numpy(), **tol
        )
        for t in range(1, IDS.shape[1]):
            out = model(IDS[:, t : t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            np.testing.assert_allclose(
                states[name].state[:, t], cache.get_recurrent_state(0, state_idx=0).numpy(), **tol
            )
    _untouched(model, before)


def test_jamba_mamba_layers_with_their_dt_b_c_norms() -> None:
    torch.manual_seed(7)
    cfg = transformers.JambaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        intermediate_size=32, mamba_d_state=4, mamba_d_conv=4, mamba_expand=2, mamba_dt_rank=4,
        attn_layer_period=2, attn_layer_offset=1, expert_layer_period=2, expert_layer_offset=1, num_experts=2,
        use_mamba_kernels=False,
    )  # fmt: skip
    model = transformers.JambaForCausalLM(cfg).eval()
    states = rnnlens.trace(model, IDS)
    assert list(states) == ["model.layers.0.mamba"]  # layer 1 is attention
    with torch.no_grad():
        cache = model(IDS, use_cache=True).past_key_values
    np.testing.assert_allclose(
        states["model.layers.0.mamba"].state[:, -1], cache.get_recurrent_state(0, state_idx=0).numpy(), **TOL
    )


def test_a_state_space_store_exports_and_opens_in_the_viewer(tmp_path: Any) -> None:
    from rnnlens.viewer.store import StoreView

    model = mamba()
    data = tmp_path / "ids.npy"
    np.save(data, IDS.numpy())
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, str(data), fields=None)
    assert rnnlens.cli.command.main(["export", str(store), "-o", str(tmp_path / "out.npz")]) == 0
    exported = np.load(tmp_path / "out.npz")
    direct = rnnlens.trace(model, IDS)["backbone.layers.0.mixer"]
    np.testing.assert_array_equal(exported["backbone.layers.0.mixer_forward_state"], direct.state)
    np.testing.assert_array_equal(exported["backbone.layers.0.mixer_forward_gates_B"], direct.gates["B"])
    assert rnnlens.cli.command.main(["export", str(store), "-o", str(tmp_path / "out.h5")]) == 0
    view = StoreView(store)
    # the state is not a row of units; its norm over d_state is, one value per channel
    assert view.fields("backbone.layers.0.mixer") == ["h", "state_norm"]
    assert view.width("backbone.layers.0.mixer", "state_norm") == 16
    stored = rnnlens.open_states(store)["backbone.layers.0.mixer"]
    np.testing.assert_allclose(stored.state_norm[:], np.linalg.norm(direct.state, axis=-1), rtol=1e-6)
    meta = view.meta()
    assert [layer["name"] for layer in meta["layers"]] == [
        "backbone.layers.0.mixer",
        "backbone.layers.1.mixer",
    ]


def _nemotron_h() -> Any:
    cfg = transformers.NemotronHConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, hybrid_override_pattern="M*",
        num_attention_heads=2, num_key_value_heads=1, head_dim=8, mamba_num_heads=4, mamba_head_dim=8,
        n_groups=2, ssm_state_size=8, expand=2, chunk_size=4, intermediate_size=32,
    )  # fmt: skip
    return transformers.NemotronHForCausalLM(cfg)


def _zamba2() -> Any:
    cfg = transformers.Zamba2Config(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
        attention_head_dim=8, mamba_d_state=8, mamba_headdim=8, mamba_ngroups=1, n_mamba_heads=4,
        mamba_expand=2, chunk_size=4, intermediate_size=32, layers_block_type=["mamba", "hybrid"],
        use_mem_rope=False,
    )  # fmt: skip
    return transformers.Zamba2ForCausalLM(cfg)


def _granite_hybrid() -> Any:
    cfg = transformers.GraniteMoeHybridConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8, mamba_chunk_size=4,
        intermediate_size=32, layer_types=["mamba", "attention"], num_local_experts=2, num_experts_per_tok=1,
    )  # fmt: skip
    return transformers.GraniteMoeHybridForCausalLM(cfg)


def _falcon_h1(rms_norm: bool) -> Any:
    cfg = transformers.FalconH1Config(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=8, mamba_d_ssm=32, mamba_n_heads=4, mamba_d_head=8, mamba_n_groups=1, mamba_d_state=8,
        mamba_chunk_size=4, intermediate_size=32, mamba_rms_norm=rms_norm,
        ssm_multipliers=[0.5, 1.5, 0.7, 1.2, 0.9], ssm_in_multiplier=1.3,
    )  # fmt: skip
    return transformers.FalconH1ForCausalLM(cfg)


@pytest.mark.parametrize(
    ("build", "names"),
    [
        (lambda: _falcon_h1(False), ["model.layers.0.mamba", "model.layers.1.mamba"]),
        (lambda: _falcon_h1(True), ["model.layers.0.mamba", "model.layers.1.mamba"]),
        (_nemotron_h, ["model.layers.0.mixer"]),
        (_zamba2, ["model.layers.0.mamba", "model.layers.1.mamba_decoder.mamba"]),
        (_granite_hybrid, ["model.layers.0.mamba"]),
    ],
    ids=["falcon_h1", "falcon_h1_rms_norm", "nemotron_h", "zamba2", "granite_moe_hybrid"],
)
def test_more_hybrids_give_their_mamba2_layers(build: Any, names: list[str]) -> None:
    torch.manual_seed(8)
    model = build().eval()
    with torch.no_grad():
        before = model(IDS).logits
        cache = model(IDS, use_cache=True).past_key_values
    states = rnnlens.trace(model, IDS)
    assert list(states) == names
    for name in names:
        layer = model.get_submodule(name).layer_idx
        own = cache.get_recurrent_state(layer, state_idx=0).numpy()
        np.testing.assert_allclose(states[name].state[:, -1], own, **TOL)
    _untouched(model, before)


def test_a_norm_only_store_is_small_and_the_viewer_reads_it(tmp_path: Any) -> None:
    """fields=("h", "state_norm"): the state reduced over d_state at extraction time."""
    from rnnlens.viewer.store import StoreView

    model = mamba()
    data = tmp_path / "ids.npy"
    np.save(data, IDS.numpy())
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, str(data), fields=("h", "state_norm"))
    stored = rnnlens.open_states(store)["backbone.layers.0.mixer"]
    assert stored.fields == ("h", "state_norm")
    direct = rnnlens.trace(model, IDS, fields="state")["backbone.layers.0.mixer"]
    norm = np.linalg.norm(direct.state, axis=-1)
    view = StoreView(store)
    (column,) = view.columns("backbone.layers.0.mixer", "state_norm", "forward", [3])
    np.testing.assert_allclose(np.asarray(column), norm[:, :, 3], rtol=1e-6)


FAMILIES = {
    "mamba": lambda: mamba(),
    "falcon_mamba": lambda: mamba(True),
    "mamba2": mamba2,
    "rglru": gemma,
    "mlstm": lambda: xlstm(blocks=1, chunk_size=None),
    "rwkv4": rwkv,
    "gated_deltanet": gdn,
    "falcon_h1": lambda: _falcon_h1(True),
}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_family_is_stored_and_shown_in_the_viewer(family: str, tmp_path: Any) -> None:
    """extract_to keeps every field of every mixer bit for bit (as trace gives them, same
    batch); the viewer lists each mixer with h and state_norm and reads their columns."""
    from rnnlens.viewer.store import StoreView

    torch.manual_seed(9)
    model = FAMILIES[family]().eval()
    data = tmp_path / "ids.npy"
    np.save(data, IDS.numpy())
    store = tmp_path / "run.zarr"
    rnnlens.extract_to(store, model, str(data), fields=None, batch_size=2)
    stored, direct = rnnlens.open_states(store), rnnlens.trace(model, IDS)
    assert list(stored) == list(direct) and direct
    view = StoreView(store)
    for name, ls in direct.items():
        assert ls.kind == stored[name].kind
        np.testing.assert_array_equal(stored[name].state[:], ls.state)
        for gate in ls.gates:
            np.testing.assert_array_equal(np.asarray(stored[name].gates[gate][:]), ls.gates[gate])
        assert view.fields(name) == ["h", "state_norm"]
        (column,) = view.columns(name, "state_norm", "forward", [0])
        np.testing.assert_allclose(np.asarray(column), ls.state_norm[:, :, 0], rtol=1e-6)


def test_a_rebuild_that_differs_is_a_parity_error_also_for_per_head_outputs() -> None:
    """mLSTM outputs are (batch, head, time, d_v): a mismatch is named as a ParityError at its
    step (it was an unpacking ValueError when the check assumed three dimensions)."""
    from rnnlens.adapters.hf_.edits import check_unedited

    own = torch.zeros(2, 3, 5, 4)
    bad = own.clone()
    bad[1, 2, 3, 0] = 1.0
    with pytest.raises(rnnlens.ParityError, match="step 3"):
        check_unedited(own, bad, None, layer="m", what="x", time_axis=2)
    check_unedited(
        own, bad, {2: []}, layer="m", what="x", time_axis=2
    )  # an edit at 2: steps 0..2 are checked


@pytest.mark.parametrize("family", ["mamba", "mamba2"])
def test_a_scan_helper_that_computes_something_else_is_a_parity_error(family: str, monkeypatch: Any) -> None:
    """The states come out of the forward pass only while the modeling file's scan helper agrees
    with rnnlens' scan (a replaced or customised helper is caught, not silently traced)."""
    import sys

    model = mamba() if family == "mamba" else mamba2()
    mod = sys.modules[type(model.backbone.layers[0].mixer).__module__]
    helper = f"{family}_scan_forward"
    real = getattr(mod, helper)
    monkeypatch.setattr(mod, helper, lambda *a, **k: 1.5 * real(*a, **k))
    with pytest.raises(rnnlens.ParityError, match=r"backbone\.layers\.0\.mixer"):
        rnnlens.trace(model, IDS)
    assert not any("forward" in vars(m) for m in model.modules())
