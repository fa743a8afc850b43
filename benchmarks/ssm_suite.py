"""State-space mixers of transformers models (tiny random configs, CPU, the pure-PyTorch path):
every step's state of every mixer against the model's own forward pass (the floor), and against
the usual workaround, re-running every prefix with a cache to read each step's final state.
``SUITES`` plugs the cases into ``python -m benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .harness import Case

STEPS, BATCH = 128, 4


def _cases(family: str, model: Any) -> list[Case]:
    import torch

    import rnnlens

    ids = torch.randint(0, 100, (BATCH, STEPS))

    def forward() -> Any:
        with torch.no_grad():
            return model(ids)

    def prefixes() -> Any:  # what users do today (state-spaces/mamba#518): one prefill per prefix
        with torch.no_grad():
            return [model(ids[:, : t + 1], use_cache=True) for t in range(0, STEPS, 16)]

    return [
        Case(f"{family}: model forward, {STEPS} tokens (floor)", forward, f"batch {BATCH}"),
        Case(
            f"{family}: rnnlens state + gates, every step", lambda: rnnlens.trace(model, ids), "every mixer"
        ),
        Case(f"{family}: rnnlens state only", lambda: rnnlens.trace(model, ids, fields="state"), ""),
        Case(f"{family}: re-run every 16th prefix with a cache", prefixes, "8 of 128 steps only"),
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


SUITES: dict[str, Callable[[], list[Case]]] = {"ssm-mamba": mamba_cases, "ssm-mamba2": mamba2_cases}
