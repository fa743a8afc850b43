"""The transformers adapter: models with state-space / linear-recurrent mixers (Mamba and its
hybrids, Mamba2, gated delta-nets, Kimi delta attention, lightning attention, RecurrentGemma,
RWKV-4, xLSTM), traced on transformers' pure-PyTorch path.

This module imports no framework; :mod:`.recognise` (which modules are mixers, by what they
compute), :mod:`.trace` (the run) and the per-family modules do the work. A transformers model
with no recurrent module is left to the PyTorch adapter (its ``nn.LSTM`` modules, if any).
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from ...core.spec import LayerSpec
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from .recognise import kind_of, unknown

__all__ = ["TransformersAdapter"]


class TransformersAdapter(Adapter):
    name = "transformers"
    accepts = (
        "a transformers model with state-space / linear-recurrent mixers (Mamba, Mamba2, gated "
        "delta-net, Kimi delta, lightning attention, RG-LRU, RWKV-4, mLSTM; input_ids first)"
    )

    def can_trace(self, model: Any) -> bool:
        """Claims a transformers model with a recurrent mixer, known or not (an unknown one is
        then refused by name, not left to the PyTorch adapter's nn.LSTM search)."""
        if "transformers" not in mro_roots(model) or not hasattr(model, "modules"):
            return False
        return any(kind_of(m) is not None or unknown(m) for m in model.modules())

    def describe(self, model: Any) -> list[LayerSpec]:
        from . import trace

        return trace.describe(model)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        from . import trace

        return trace.capture(model, args, kwargs, options)

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        from . import trace

        return trace.intervene(model, args, kwargs, edits, options)

    def model_digest(self, model: Any) -> str:
        """sha256 over the config and every parameter and buffer."""
        h = hashlib.sha256(model.config.to_json_string(use_diff=False).encode())
        for name, t in model.state_dict().items():
            h.update(name.encode())
            h.update(np.ascontiguousarray(t.detach().cpu().float().numpy()).tobytes())
        return h.hexdigest()

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        import torch

        kwargs = {} if mask is None else {"attention_mask": torch.from_numpy(np.asarray(mask, np.int64))}
        return Inputs(args=(torch.from_numpy(np.asarray(x)),), kwargs=kwargs)
