"""The Flax adapter: linen modules bound to their variables (``module.bind(variables)``) and
flax.nnx modules.

This module imports no framework: JAX and Flax are imported when a Flax model arrives.
``sites`` (the interceptor of RNN, Bidirectional and cell calls: linen's method interception,
``nnx``'s traced copy), ``scan`` (a plain ``nn.RNN`` call in rnnlens' own scan, its states
returned by the compiled function), ``cells`` / ``nnx`` (each cell's step in JAX, for its
gates), ``host`` (the steps recorded and edited on the host), ``entries`` (what is recorded),
``run`` (compiled once per input shape, run, states; chained calls joined by
:func:`rnnlens.adapters.calllog.join_calls`),
``recording`` (``rnnlens.record``), ``describe`` (layers before a trace; identity) and ``load``
(msgpack and Orbax checkpoints) do the work.

Example:
    >>> import jax, numpy as np, flax.linen as nn, rnnlens
    >>> rnn = nn.RNN(nn.LSTMCell(4))  # its cell: the field "cell" of the root module
    >>> x = np.ones((2, 5, 3), "float32")
    >>> model = rnn.bind(rnn.init(jax.random.key(0), x))
    >>> states = rnnlens.trace(model, x)
    >>> states["cell"].h.shape, list(states["cell"].gates)
    ((2, 5, 4), ['i', 'f', 'g', 'o'])
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from ...core.spec import LayerSpec
from ...errors import InputError
from ..base import Adapter, Args, Captured, Edits, Inputs, Intervened, Kwargs, TraceOptions, mro_roots
from . import run
from .describe import digest, guessed_specs, param_specs
from .load import is_orbax, load
from .portable import Portable
from .recording import FlaxRecording

__all__ = ["FlaxAdapter"]


class FlaxAdapter(Adapter):
    name = "flax"
    accepts = (
        "a flax.linen Module bound to its variables (module.bind(variables)) or a flax.nnx Module; "
        ".msgpack checkpoints and Orbax checkpoint directories (with module=)"
    )
    suffixes = (".msgpack",)
    requires = ("flax",)

    def can_trace(self, model: Any) -> bool:
        return "flax" in mro_roots(model)

    def describe(self, model: Any) -> list[LayerSpec]:
        # the latest trace's layers; else an abstract trace on a guessed input; else the parameters
        return run.site_specs(model) or guessed_specs(model) or param_specs(model)

    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        return run.capture(model, args, kwargs, options)[1]

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        outputs, captured = run.capture(model, args, kwargs, options, edits=edits)
        return Intervened(_joined(outputs), captured)

    def record(self, model: Any, options: TraceOptions) -> Any:
        return FlaxRecording(model, options)

    def can_open(self, path: str | os.PathLike[str]) -> bool:
        return super().can_open(path) or is_orbax(path)

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        return load(path, **options)  # msgpack and Orbax hold no code: unsafe changes nothing

    def portable(self, model: Any) -> Any:
        return Portable(model)

    def model_digest(self, model: Any) -> str:
        return digest(model)

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        if mask is not None:
            raise InputError(
                "Flax models take their valid steps as nn.RNN's seq_lengths, not as a data source's mask: "
                "give data without a mask, or trace batches with seq_lengths=... yourself."
            )
        return Inputs((x,), options={"batch_size": size})


def _joined(outputs: list[Any]) -> Any:
    """The outputs of the batches, joined along the samples."""
    import jax

    if len(outputs) == 1:
        return outputs[0]
    return jax.tree_util.tree_map(lambda *a: np.concatenate(a, axis=0), *outputs)
