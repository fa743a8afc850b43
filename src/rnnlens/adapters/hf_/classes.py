"""transformers mixer classes by kind (names only: importing this imports nothing). The first
test of :func:`~rnnlens.adapters.hf_.recognise.kind_of` (a class or any base class named here);
mixers not named here are found by what they compute.

Example:
    >>> from rnnlens.adapters.hf_.classes import KIND_OF
    >>> KIND_OF["MambaMixer"], KIND_OF["Qwen3NextGatedDeltaNet"]
    ('mamba', 'gated_deltanet')
"""

from __future__ import annotations

__all__ = ["CLASSES", "KIND_OF"]

#: class name -> kind; hybrids' mixers are the same computation under their own class names
KIND_OF: dict[str, str] = {
    **dict.fromkeys(("MambaMixer", "FalconMambaMixer", "JambaMambaMixer"), "mamba"),
    **dict.fromkeys(
        (
            "Mamba2Mixer",
            "BambaMixer",
            "NemotronHMamba2Mixer",
            "Zamba2MambaMixer",
            "GraniteMoeHybridMambaLayer",
            "FalconH1Mixer",
        ),
        "mamba2",
    ),
    "RecurrentGemmaRecurrentBlock": "rglru",
    "RwkvSelfAttention": "rwkv4",
    "xLSTMLayer": "mlstm",
    "Qwen3NextGatedDeltaNet": "gated_deltanet",
}
CLASSES = frozenset(KIND_OF)
