"""Tiny random configs of the recurrent families transformers ships beyond the first ones
(:mod:`ssm_builders`), and a decode oracle that reads any family's per-layer recurrent state
from its own cache."""

from __future__ import annotations

from typing import Any

import torch

import transformers

#: shared sizes: hidden 32, 2 heads of 8 in the linear-attention layers, a tiny MoE where needed
_LINEAR = dict(
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=8, linear_value_head_dim=8,
    linear_conv_kernel_dim=4,
)  # fmt: skip
_ATTN = dict(
    vocab_size=50, hidden_size=32, num_attention_heads=2, num_key_value_heads=1, intermediate_size=32
)  # fmt: skip
_MOE = dict(
    num_experts=4, num_experts_per_tok=2, moe_intermediate_size=16, shared_expert_intermediate_size=16
)  # fmt: skip


def olmo_hybrid() -> Any:
    cfg = transformers.OlmoHybridConfig(
        **_ATTN, **_LINEAR, num_hidden_layers=2, layer_types=["linear_attention", "full_attention"],
        pad_token_id=0, eos_token_id=1,
    )  # fmt: skip
    return transformers.OlmoHybridForCausalLM(cfg)


def qwen3_5() -> Any:
    cfg = transformers.Qwen3_5TextConfig(
        **_ATTN, **_LINEAR, num_hidden_layers=2, head_dim=16,
        layer_types=["linear_attention", "full_attention"],
    )  # fmt: skip
    return transformers.Qwen3_5ForCausalLM(cfg)


def qwen3_5_moe() -> Any:
    cfg = transformers.Qwen3_5MoeTextConfig(
        **_ATTN, **_LINEAR, **_MOE, num_hidden_layers=2, head_dim=16,
        layer_types=["linear_attention", "full_attention"],
    )  # fmt: skip
    return transformers.Qwen3_5MoeForCausalLM(cfg)


def lara_mini() -> Any:
    cfg = transformers.LaraMiniConfig(
        **_ATTN, **_LINEAR, **_MOE, num_hidden_layers=2, head_dim=16,
        layer_types=["linear_attention", "full_attention"],
    )  # fmt: skip
    return transformers.LaraMiniForCausalLM(cfg)


def kimi_linear() -> Any:
    cfg = transformers.KimiLinearConfig(
        **{**_ATTN, "num_key_value_heads": 2}, num_hidden_layers=2, linear_head_dim=8, linear_num_heads=2,
        linear_conv_kernel_dim=4,
        layer_types=["linear_attention", "full_attention"], mlp_layer_types=["dense", "dense"],
        kv_lora_rank=8, qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=8, moe_intermediate_size=16,
        num_local_experts=2, num_experts_per_tok=1, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return transformers.KimiLinearForCausalLM(cfg)


def minimax(block_size: int = 3) -> Any:
    cfg = transformers.MiniMaxConfig(
        **_ATTN, num_hidden_layers=2, head_dim=16, layer_types=["linear_attention", "full_attention"],
        block_size=block_size, num_local_experts=2, num_experts_per_tok=1,
    )  # fmt: skip
    return transformers.MiniMaxForCausalLM(cfg)


def zamba() -> Any:
    cfg = transformers.ZambaConfig(
        vocab_size=50, hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=2, attention_head_dim=8, n_mamba_heads=2, mamba_d_state=4, mamba_dt_rank=4,
        layers_block_type=["mamba", "hybrid"], tie_word_embeddings=False, use_mamba_kernels=False,
    )  # fmt: skip
    return transformers.ZambaForCausalLM(cfg)


def recurrent_state(cache: Any, layer: int) -> torch.Tensor:
    """A cache's recurrent state of one layer: MiniMax keeps its ``KᵀV`` memory apart."""
    if hasattr(cache, "linear_cache"):
        return cache.linear_cache[layer]
    return cache.get_recurrent_state(layer, state_idx=0)


def decode(model: Any, ids: torch.Tensor, layers: list[int]) -> tuple[list[list[torch.Tensor]], torch.Tensor]:
    """Each of ``layers``' recurrent state after each token, decoding one token at a time
    through the model's own cache; and the logits of that decode."""
    steps, logits = [], []
    cache = None
    with torch.no_grad():
        for t in range(ids.shape[1]):
            kw = {} if cache is None else {"cache": cache}
            out = model(ids[:, t : t + 1], use_cache=True, **kw)
            cache = getattr(out, "cache", None) or out.past_key_values
            steps.append([recurrent_state(cache, i).clone() for i in layers])
            logits.append(out.logits if hasattr(out, "logits") else out.last_hidden_state)
    return steps, torch.cat(logits, dim=1)


def bailing_hybrid() -> Any:
    cfg = transformers.BailingHybridConfig(
        **{**_ATTN, "num_key_value_heads": 2}, num_hidden_layers=2, head_dim=8, layer_group_size=2,
        kv_lora_rank=8, qk_rope_head_dim=4, v_head_dim=8, qk_nope_head_dim=8, moe_intermediate_size=16,
        num_local_experts=4, num_experts_per_tok=2, n_group=1, topk_group=1, first_k_dense_replace=2,
        pad_token_id=0, eos_token_id=2, num_mtp_layers=0,
    )  # fmt: skip
    return transformers.BailingHybridForCausalLM(cfg)


def glm5_next() -> Any:
    """The text model alone (GLM-5-Next ships only a vision-language head)."""
    cfg = transformers.Glm5NextTextConfig(
        **{**_ATTN, "num_key_value_heads": 2}, num_hidden_layers=2, linear_head_dim=8, linear_num_heads=2,
        layer_types=["linear_attention", "linear_attention"], mlp_layer_types=["dense", "dense"],
        kv_lora_rank=8, q_lora_rank=8, qk_rope_head_dim=0, v_head_dim=8, qk_nope_head_dim=8,
        moe_intermediate_size=16, n_routed_experts=2, num_experts_per_tok=1, index_topk=16, index_head_dim=8,
        index_n_heads=2, hc_mult=2, pad_token_id=0,
    )  # fmt: skip
    return transformers.Glm5NextTextModel(cfg)


def qwen4_exp() -> Any:
    cfg = transformers.Qwen4ExpTextConfig(
        **_ATTN, **_LINEAR, **_MOE, num_hidden_layers=2, head_dim=16, hc_count=2, hc_lowrank=8,
        layer_types=["linear_attention", "full_attention"], indexer_n_heads=2, indexer_kv_heads=1,
        indexer_head_dim=16, indexer_budget=4, indexer_compress_ratio=2,
    )  # fmt: skip
    return transformers.Qwen4ExpForCausalLM(cfg)


def zaya() -> Any:
    """An attention model whose CCA projection keeps the previous token's value projection in
    the recurrent cache slot: a recurrent slot rnnlens does not know (refused by name)."""
    cfg = transformers.ZayaConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        head_dim=16, moe_intermediate_size=16, num_experts=2, router_hidden_size=8, eos_token_id=2,
    )  # fmt: skip
    return transformers.ZayaForCausalLM(cfg)
