"""Calls of one recurrent module that chain: each starts from exactly the state the previous one
returned (a decoder ``nn.LSTM`` fed one token at a time, a streaming loop). :func:`chain_calls`
groups a run's recorded calls into chains and :func:`merge` joins one chain along time into a
single call, before conversion (one rebuild per chain, not one per call), for
:func:`rnnlens.trace` (``calls="join"``) and :func:`rnnlens.record` alike.

Example:
    >>> from rnnlens.adapters.torch_.chains import chain_calls
    >>> chain_calls([])
    []
"""

from __future__ import annotations

from typing import Any

import torch

from .calls import _SeqCall

__all__ = ["chain_calls", "merge", "steps_of"]


def chain_calls(entries: list[Any]) -> list[list[Any]]:
    """``entries`` (calls in call order) grouped into chains; a cell's calls stay one group."""
    chains: list[list[Any]] = []
    last: dict[int, list[Any]] = {}
    for entry in entries:
        if isinstance(entry, _SeqCall):
            chain = last.get(id(entry.plan.module))
            if chain is not None and _continues(chain[-1], entry):
                chain.append(entry)
                continue
            chains.append([entry])
            last[id(entry.plan.module)] = chains[-1]
        else:
            chains.append([entry])
    return chains


def _layer_of(final: Any, layer: int, call: _SeqCall) -> Any:
    """Layer ``layer``'s rows of a returned final state (one direction: one row per layer)."""
    rows = slice(layer, layer + 1)
    if isinstance(final, (tuple, list)):
        return tuple(f[rows] for f in final)
    return final[rows]


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and torch.equal(a, b)
    )


def _continues(prev: _SeqCall, call: _SeqCall) -> bool:
    """``call`` starts from exactly the state ``prev`` returned (one direction, tensors, not packed)."""
    if prev.final is None or call.plan.cfg.n_dir != 1 or call.packed or prev.packed:
        return False
    if call.unbatched != prev.unbatched or not call.hx or any(v is None for v in call.hx.values()):
        return False
    return all(_same(call.hx[layer], _layer_of(prev.final, layer, call)) for layer in call.hx)


def _time_axis(call: _SeqCall) -> int:
    return 0 if call.unbatched or not call.plan.cfg.batch_first else 1


def steps_of(call: _SeqCall) -> int:
    top = max(call.outputs)
    return int(call.outputs[top].shape[_time_axis(call)])


def merge(chain: list[_SeqCall]) -> _SeqCall:
    """One call standing for a chain: inputs and outputs of every layer joined along time, the
    first call's initial state and the last call's final state."""
    first = chain[0]
    axis = _time_axis(first)
    out = _SeqCall(first.plan, first.index, first.packed, first.unbatched)
    out.hx = dict(first.hx)
    out.final = chain[-1].final
    for layer in first.inputs:
        out.inputs[layer] = torch.cat([c.inputs[layer] for c in chain], dim=axis)
    for layer in first.outputs:
        out.outputs[layer] = torch.cat([c.outputs[layer] for c in chain], dim=axis)
    for layer in first.c:  # emitted by the step loop: (time, sample, unit) per direction
        out.c[layer] = [torch.cat([c.c[layer][d] for c in chain]) for d in range(len(first.c[layer]))]
    for layer in first.gates:
        out.gates[layer] = [
            tuple(torch.cat([c.gates[layer][d][k] for c in chain]) for k in range(len(gates)))
            for d, gates in enumerate(first.gates[layer])
        ]
    return out
