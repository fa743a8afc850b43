"""State-space mixers of transformers models (tiny random configs, CPU, the pure-PyTorch path):
every step's state of every mixer against the model's own forward pass (the floor), and against
the usual workaround, re-running every prefix with a cache to read each step's final state.
``SUITES`` plugs the cases into ``python -m benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .harness import Case

STEPS, BATCH = 128, 4


def _cases(family: str, model: Any, steps: int = STEPS, batch: int = BATCH) -> list[Case]:
    import torch

    import rnnlens

    ids = torch.randint(0, 100, (batch, steps))
    every = steps // 8

    def forward() -> Any:
        with torch.no_grad():
            return model(ids)

    def prefixes() -> Any:  # what users do today (state-spaces/mamba#518): one prefill per prefix
        with torch.no_grad():
            return [model(ids[:, : t + 1], use_cache=True) for t in range(0, steps, every)]

    return [
        Case(f"{family}: model forward, {steps} tokens (floor)", forward, f"batch {batch}"),
        Case(
            f"{family}: rnnlens state + gates, every step", lambda: rnnlens.trace(model, ids), "every mixer"
        ),
        Case(f"{family}: rnnlens state only", lambda: rnnlens.trace(model, ids, fields="state"), ""),
        Case(f"{family}: re-run every {every}th prefix with a cache", prefixes, f"8 of {steps} steps only"),
    ]


def mamba_cases() -> list[Case]:
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=100, hidden_size=64, state_size=16, num_hidden_layers=4, expand=2
    )
    return _cases("Mamba", transformers.MambaForCausalLM(cfg).eval())


def mamba2_cases() -> list[Case]:
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(
        vocab_size=100, hidden_size=64, state_size=16, num_heads=8, head_dim=16, n_groups=1,
        num_hidden_layers=4, expand=2, chunk_size=32,
    )  # fmt: skip
    return _cases("Mamba2", transformers.Mamba2ForCausalLM(cfg).eval())


def mamba2_long_cases() -> list[Case]:
    """Mamba2 nearer a released model's shape: d_state 64, chunks of 128, 512 tokens."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.Mamba2Config(
        vocab_size=100, hidden_size=256, state_size=64, num_heads=16, head_dim=32, n_groups=1,
        num_hidden_layers=2, expand=2, chunk_size=128,
    )  # fmt: skip
    return _cases("Mamba2 long", transformers.Mamba2ForCausalLM(cfg).eval(), steps=512, batch=1)


def kimi_cases() -> list[Case]:
    """Kimi delta attention (kind ``kimi_delta``): 3 of 4 layers linear, as Kimi Linear mixes them."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.KimiLinearConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, linear_head_dim=16, linear_num_heads=4, kv_lora_rank=16, qk_rope_head_dim=8,
        v_head_dim=16, qk_nope_head_dim=16, layer_types=["linear_attention"] * 3 + ["full_attention"],
        mlp_layer_types=["dense"] * 4, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )  # fmt: skip
    return _cases("Kimi delta", transformers.KimiLinearForCausalLM(cfg).eval())


def lightning_cases() -> list[Case]:
    """MiniMax lightning attention (kind ``lightning``), blocks of 32 tokens."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.MiniMaxConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=16, block_size=32, num_local_experts=2, num_experts_per_tok=1,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
    )  # fmt: skip
    return _cases("Lightning", transformers.MiniMaxForCausalLM(cfg).eval())


def zamba_cases() -> list[Case]:
    """Zamba v1's multi-head Mamba (kind ``mamba_heads``)."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.ZambaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=4, attention_head_dim=16, n_mamba_heads=2, mamba_d_state=16,
        layers_block_type=["mamba", "mamba", "mamba", "hybrid"], tie_word_embeddings=False,
    )  # fmt: skip
    return _cases("Zamba", transformers.ZambaForCausalLM(cfg).eval())


def rglru_cases() -> list[Case]:
    """RecurrentGemma's RG-LRU (kind ``rglru``): 2 of 3 blocks recurrent, as Griffin mixes them."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.RecurrentGemmaConfig(
        vocab_size=100, hidden_size=64, lru_width=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=1, intermediate_size=128, attention_window_size=32, head_dim=16,
        block_types=["recurrent", "recurrent", "attention"],
    )  # fmt: skip
    return _cases("RG-LRU", transformers.RecurrentGemmaForCausalLM(cfg).eval())


def rwkv_cases() -> list[Case]:
    """RWKV-4 (kind ``rwkv4``): transformers' CPU path steps its WKV recurrence in Python."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=4, attention_hidden_size=64,
        intermediate_size=128, context_length=STEPS,
    )  # fmt: skip
    return _cases("RWKV-4", transformers.RwkvForCausalLM(cfg).eval())


def xlstm_cases() -> list[Case]:
    """xLSTM's mLSTM (kind ``mlstm``), chunkwise as transformers runs it."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.xLSTMConfig(
        vocab_size=100, hidden_size=64, num_heads=4, num_blocks=4, qk_dim_factor=1.0,
        v_dim_factor=1.0, chunk_size=32,
    )  # fmt: skip
    return _cases("xLSTM", transformers.xLSTMForCausalLM(cfg).eval())


def gdn_cases() -> list[Case]:
    """A gated delta-net (kind ``gated_deltanet``): Qwen3-Next, 3 of 4 layers linear."""
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.Qwen3NextConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=128, linear_num_value_heads=4, linear_num_key_heads=2,
        linear_key_head_dim=16, linear_value_head_dim=16, linear_conv_kernel_dim=4, num_experts=4,
        num_experts_per_tok=2, moe_intermediate_size=32, shared_expert_intermediate_size=32,
        layer_types=["linear_attention"] * 3 + ["full_attention"],
    )  # fmt: skip
    return _cases("Gated delta-net", transformers.Qwen3NextForCausalLM(cfg).eval())


SUITES: dict[str, Callable[[], list[Case]]] = {
    "ssm-mamba": mamba_cases,
    "ssm-mamba2": mamba2_cases,
    "ssm-mamba2-long": mamba2_long_cases,
    "ssm-kimi": kimi_cases,
    "ssm-lightning": lightning_cases,
    "ssm-zamba": zamba_cases,
    "ssm-rglru": rglru_cases,
    "ssm-rwkv": rwkv_cases,
    "ssm-xlstm": xlstm_cases,
    "ssm-gdn": gdn_cases,
}
