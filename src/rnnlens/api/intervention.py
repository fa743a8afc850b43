"""``rnnlens.intervene``: run a model with some of its recurrent states set, ablated or patched at
chosen steps, and get what the model returns with the edits and the states of the edited run.

The edits (:class:`rnnlens.Edit`) are checked against the model's layers before anything runs;
the model's adapter then runs the model once, editing the states in place as its recurrent
layers compute them (:meth:`rnnlens.adapters.Adapter.intervene`). The model is not modified.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from .. import adapters
from ..adapters.base import Intervened, TraceOptions
from ..core.edits import Edit, plan_edits
from ..core.html import states_html
from ..core.options import check_fields, check_layers
from ..core.states import States
from ..core.tracing import assemble
from ..errors import UnsupportedLayerError
from .tracer import _opened

__all__ = ["Intervention", "intervene"]


@dataclass
class Intervention:
    """The result of :func:`intervene`.

    Attributes:
        outputs: what the model returned with the edits, as NumPy, in the model's own structure
            (a PyTorch module's return value, e.g. ``(output, (h_n, c_n))``).
        states: the edited run's :class:`~rnnlens.States` (edited values included).
        edits: the edits, as given.
    """

    outputs: Any
    states: States
    edits: tuple[Edit, ...]

    def __repr__(self) -> str:
        lines = [f"Intervention: {len(self.edits)} edit(s)"]
        lines += [f"  {e!r}" for e in self.edits]
        lines.append(f"  states: {len(self.states)} layer(s): {', '.join(self.states)}")
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        import html

        edits = "".join(f"<li><code>{html.escape(repr(e))}</code></li>" for e in self.edits)
        return f"<p><b>Intervention</b>: {len(self.edits)} edit(s)</p><ul>{edits}</ul>" + states_html(
            self.states
        )


def intervene(
    model: Any,
    x: Any,
    edits: Edit | Sequence[Edit],
    *,
    layers: str | Iterable[str] | None = None,
    fields: str | Sequence[str] | None = None,
    args: Sequence[Any] = (),
    **kwargs: Any,
) -> Intervention:
    """Run ``model`` on ``x`` with ``edits`` applied to recurrent states as they are computed.

    An edit at step ``t`` replaces the state after the layer has read step ``t``, before step
    ``t + 1`` reads it: an ``h`` edit changes the layer's output at ``t`` (layers above see it)
    and the carried state; a ``c`` edit changes only the carried cell state (``h_t`` stays as
    computed). Steps count in input time order for backward directions too. Edits compose in
    the order given.

    Args:
        model: a ``torch.nn.Module`` (or a model file rnnlens opens); not modified.
        x: the model's first input; ``args`` and ``kwargs`` follow it into ``forward``.
        edits: one :class:`~rnnlens.Edit` or a list.
        layers: which layers' states :attr:`Intervention.states` holds, as in
            :func:`rnnlens.trace`.
        fields: which fields it holds, as in :func:`rnnlens.trace`.

    Example:
        >>> import numpy as np, torch, rnnlens
        >>> lstm = torch.nn.LSTM(3, 4, batch_first=True)
        >>> x = torch.randn(2, 5, 3)
        >>> run = rnnlens.intervene(lstm, x, rnnlens.Edit("lstm", 2, units=[0, 1], scale=0))
        >>> bool((run.states["lstm"].h[:, 2, :2] == 0).all())
        True
        >>> out, (h_n, c_n) = run.outputs  # what the module returned with the edit
        >>> bool(np.allclose(out, run.states["lstm"].h))
        True
    """
    model = _opened(model)
    options = TraceOptions(layers=check_layers(layers), fields=check_fields(fields))
    result = _run(model, (x, *args), kwargs, edits, options)
    cap = result.captured
    states = assemble(cap.specs, cap.batches, backend=cap.backend)
    return Intervention(result.outputs, states, tuple([edits] if isinstance(edits, Edit) else edits))


def edited_outputs(model: Any, x: Any, edits: Sequence[Edit], layer: str) -> Any:
    """What ``model`` returns on ``x`` with ``edits`` applied, for a caller that reads nothing
    else (:func:`rnnlens.ablation_scan`, after its first :func:`intervene` has checked the
    names): the outputs are not copied away from the states, which nobody sees."""
    options = TraceOptions(layers=(layer,), fields=("h",), outputs_only=True)
    return _run(model, (x,), {}, edits, options).outputs


def _run(
    model: Any, args: tuple[Any, ...], kwargs: Any, edits: Edit | Sequence[Edit], options: TraceOptions
) -> Intervened:
    """The adapter's edited run, the edits planned against its layers."""
    adapter = adapters.for_model(model)
    plan = plan_edits(edits, adapter.describe(model))
    result = adapter.intervene(model, args, kwargs, plan, options)
    for layer in plan.values():  # a path that does not implement write edits never asks for them
        if layer.unapplied_writes():
            raise UnsupportedLayerError(
                f"Edit(target='write') on {layer.spec.name!r} ({layer.spec.layer_type}) is not "
                f"implemented by the {adapter.name} adapter for this layer: write edits run on "
                "PyTorch nn.LSTM / nn.GRU (dynamically quantized too) and nn.LSTMCell / nn.GRUCell loops, "
                "Keras LSTM / GRU, ONNX LSTM / GRU nodes (quantized LSTM too), Flax LSTM / GRU / MGU "
                "cells and transformers state-space mixers (every kind decompose covers). Edit the state "
                "(target='state') instead (for a GRU, adding (new write − old write) to h at that step "
                "is the same edit)."
            )
    return result
