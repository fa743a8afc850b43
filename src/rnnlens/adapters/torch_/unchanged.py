"""The model is never changed: what a module's own ``forward`` changes on it is put back.

Online and streaming models keep their recurrent state on themselves (``self.hidden = ...``),
count their calls, or update buffers (BatchNorm running statistics, ``self.h.copy_(...)``).
:func:`unchanged` takes a snapshot of every module's ``__dict__`` before a run — each binding,
the contents of its dicts, lists and sets (``_parameters``, ``_buffers``, ``_modules``, hooks, the
user's own containers), a copy of every buffer and every tensor the module holds outside its
parameters — and puts all of it back afterwards, also after an error. Parameters are not copied
(a model's weights may be most of the memory): a run that changed one in place is an error,
found by its version counter.

Example:
    >>> import torch
    >>> from rnnlens.adapters.torch_.unchanged import unchanged
    >>> bn = torch.nn.BatchNorm1d(3)
    >>> with unchanged(bn):
    ...     _ = bn(torch.randn(4, 3))
    >>> bool((bn.running_mean == 0).all()), int(bn.num_batches_tracked)
    (True, 0)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch

from ...errors import UnsupportedModelError

__all__ = ["unchanged"]

_CONTAINERS = (dict, list, set)


_ATOMS = frozenset({str, int, float, bool, type(None)})


def _tensors_in(v: Any, out: list[torch.Tensor], depth: int = 2) -> None:
    """Append the tensors held in ``v`` (itself, or in its tuples, lists and dicts, ``depth``
    levels) to ``out`` (a plain loop, not a generator: it runs for every attribute of every
    module at every trace, and was a tenth of a small model's fixed cost as a generator)."""
    if isinstance(v, torch.Tensor):
        out.append(v)
    elif depth and isinstance(v, (tuple, list)):
        for o in v:
            if type(o) not in _ATOMS:
                _tensors_in(o, out, depth - 1)
    elif depth and isinstance(v, dict):
        for o in v.values():
            if type(o) not in _ATOMS:
                _tensors_in(o, out, depth - 1)


class _Snapshot:
    """What :func:`unchanged` puts back."""

    def __init__(self, model: Any) -> None:
        self.dicts: list[tuple[dict[str, Any], dict[str, Any]]] = []
        self.containers: list[tuple[Any, Any]] = []
        self.tensors: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.params: list[tuple[str, torch.Tensor, int]] = []
        params: set[int] = set()
        for name, p in model.named_parameters(remove_duplicate=True):
            params.add(id(p))
            if not p.is_inference():
                self.params.append((name, p, p._version))
        held: list[torch.Tensor] = []
        for m in model.modules():
            d = vars(m)
            self.dicts.append((d, dict(d)))
            for v in d.values():
                if type(v) in _ATOMS:
                    continue
                if isinstance(v, _CONTAINERS):
                    self.containers.append((v, type(v)(v) if not isinstance(v, dict) else v.copy()))
                _tensors_in(v, held)
        for t in held:
            if id(t) not in params and id(t) not in self.tensors:
                self.tensors[id(t)] = (t, t.detach().clone())

    def restore(self) -> None:
        for obj, saved in self.containers:
            if isinstance(obj, list):
                obj[:] = saved
            else:
                obj.clear()
                obj.update(saved)
        for d, saved in self.dicts:
            if d.keys() != saved.keys() or any(d[k] is not v for k, v in saved.items()):
                d.clear()
                d.update(saved)
        for t, saved in self.tensors.values():
            if t.shape == saved.shape and t.dtype == saved.dtype and torch.equal(t.detach(), saved):
                continue
            mode = torch.inference_mode() if t.is_inference() else torch.no_grad()
            with mode:
                if t.shape != saved.shape:
                    t.resize_(saved.shape)
                t.copy_(saved)
        changed = [name for name, p, v in self.params if p._version != v]
        if changed:
            raise UnsupportedModelError(
                f"forward changed the parameter(s) {changed} in place, which rnnlens cannot put back "
                "(it keeps no copy of the weights). The model is now changed: reload it. rnnlens "
                "never changes a model; trace a copy (copy.deepcopy(model)) of one that does."
            )


@contextlib.contextmanager
def unchanged(model: Any) -> Iterator[_Snapshot]:
    """Run the block, then put back every attribute and buffer of ``model``'s modules (the
    snapshot it yields can also put them back before then: ``snapshot.restore()``)."""
    snapshot = _Snapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()
