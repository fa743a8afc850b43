"""Tiny random transformers models for the state-space tests (no model hub), the inputs they
share, and the token-by-token decode through a model's own cache used as the oracle."""

from __future__ import annotations

from typing import Any

import torch

import transformers

TOL = {"rtol": 1e-5, "atol": 1e-6}
IDS = torch.tensor([[1, 2, 3, 4, 5, 6, 7], [7, 6, 5, 4, 3, 2, 1]])


def _seeded(seed: int | None) -> None:
    if seed is not None:
        torch.manual_seed(seed)


def mamba(falcon: bool = False, seed: int | None = 0) -> Any:
    _seeded(seed)
    kw = dict(vocab_size=50, hidden_size=8, state_size=4, num_hidden_layers=2, expand=2)
    if falcon:
        return transformers.FalconMambaForCausalLM(transformers.FalconMambaConfig(**kw)).eval()
    return transformers.MambaForCausalLM(transformers.MambaConfig(**kw)).eval()


def mamba2(seed: int | None = 2) -> Any:
    _seeded(seed)
    cfg = transformers.Mamba2Config(
        vocab_size=50, hidden_size=16, state_size=8, num_heads=4, head_dim=8, n_groups=2,
        num_hidden_layers=2, expand=2, chunk_size=4,
    )  # fmt: skip
    return transformers.Mamba2ForCausalLM(cfg).eval()


def gemma_config() -> Any:
    return transformers.RecurrentGemmaConfig(
        vocab_size=50, hidden_size=16, lru_width=16, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=1, intermediate_size=32, attention_window_size=8, head_dim=8,
        block_types=["recurrent", "recurrent", "attention"],
    )  # fmt: skip


def gemma(seed: int | None = 1) -> Any:
    _seeded(seed)
    return transformers.RecurrentGemmaForCausalLM(gemma_config()).eval()


def rwkv() -> Any:
    cfg = transformers.RwkvConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, attention_hidden_size=16, intermediate_size=32,
        context_length=16,
    )  # fmt: skip
    return transformers.RwkvForCausalLM(cfg).eval()


def xlstm(blocks: int = 2, chunk_size: int | None = 4) -> Any:
    # hidden 64: the cache rounds q/k/v widths up to multiples of 64, the layers do not
    kw = {} if chunk_size is None else {"chunk_size": chunk_size}
    cfg = transformers.xLSTMConfig(
        vocab_size=50,
        hidden_size=64,
        num_heads=2,
        num_blocks=blocks,
        qk_dim_factor=1.0,
        v_dim_factor=1.0,
        **kw,
    )
    return transformers.xLSTMForCausalLM(cfg).eval()


def gdn() -> Any:
    cfg = transformers.Qwen3NextConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, intermediate_size=32, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=8, linear_value_head_dim=8, linear_conv_kernel_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16,
        layer_types=["linear_attention", "full_attention"],
    )  # fmt: skip
    return transformers.Qwen3NextForCausalLM(cfg).eval()


def decoded_states(model: Any, ids: torch.Tensor, layers: int) -> list[list[torch.Tensor]]:
    """The recurrent state of each of ``layers`` cache layers after each token, decoding one
    token at a time through the model's own cache (Mamba / Mamba2)."""
    with torch.no_grad():
        out = model(ids[:, :1], use_cache=True)
        steps = [[out.cache.get_recurrent_state(i, state_idx=0).clone() for i in range(layers)]]
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append([out.cache.get_recurrent_state(i, state_idx=0).clone() for i in range(layers)])
    return steps
