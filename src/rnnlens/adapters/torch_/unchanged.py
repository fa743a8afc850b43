"""The model is never changed: what a module's own ``forward`` changes on it is put back.

Online and streaming models keep their recurrent state on themselves (``self.hidden = ...``),
count their calls, or update buffers (BatchNorm running statistics, ``self.h.copy_(...)``).
:func:`unchanged` takes a snapshot of every module's ``__dict__`` before a run — each binding,
the contents of its dicts, lists and sets (``_parameters``, ``_buffers``, ``_modules``, hooks, the
user's own containers), a copy of every buffer and every tensor the module holds outside its
parameters — and puts all of it back afterwards, also after an error.

Parameters: whether ``forward`` changes one in place cannot be known before it runs. Where they
take no more than :data:`PARAM_COPY_LIMIT` bytes in all (every recurrent model of usual size:
a 2-layer LSTM of 1024 units holds 50 MiB), they are copied too (in one flat copy) and a parameter the run
changed is put back (the copy costs about 1 ms per MiB, against a trace of the same model that
takes far longer). Above it a copy would double the memory of the weights: a changed parameter
is found by its version counter after the run and is an error that says so (the change cannot
be undone; trace a copy of such a model).

A run of PyTorch's own code only (a bare ``nn.LSTM``, no hook, no patch: :mod:`.trusted`) changes
nothing on the model: ``unchanged(model, own_code_only=True)`` keeps only each module's bindings
(the ``training`` flags rnnlens sets) and its weight lists, no copies.

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
import operator
from collections.abc import Iterator
from typing import Any

import torch

from ...errors import UnsupportedModelError

__all__ = ["PARAM_COPY_LIMIT", "unchanged"]

_CONTAINERS = (dict, list, set)
#: parameters up to this many bytes in all are copied before a run, to put back what it changes
PARAM_COPY_LIMIT = 64 * 2**20


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
        #: (parameter, version before the run or None, copy or None); named only for an error
        self.params: list[tuple[torch.Tensor, int | None, _Copy | None]] = []
        self.model = model
        # one pass over the modules: their dicts, and the parameters in named_parameters' order
        # (each once), without named_parameters' generators (a tenth of a small model's fixed cost)
        params: dict[int, torch.Tensor] = {}
        held: list[torch.Tensor] = []
        for m in model.modules():
            d = vars(m)
            self.dicts.append((d, d.copy()))
            for k, v in d.items():
                if type(v) in _ATOMS:
                    continue
                if isinstance(v, _CONTAINERS):
                    if not v:  # (most: a module's hook dicts) empty: emptied again if filled, no copy
                        self.containers.append((v, None))
                        continue
                    self.containers.append((v, type(v)(v) if not isinstance(v, dict) else v.copy()))
                    if k == "_parameters" and isinstance(v, dict):  # the parameters: copied below
                        for p in v.values():
                            if p is not None and id(p) not in params:
                                params[id(p)] = p
                        continue
                _tensors_in(v, held)
        named = list(params.values())
        copied = sum(p.numel() * p.element_size() for p in named) <= PARAM_COPY_LIMIT
        copies = _copies(named) if copied and named else [None] * len(named)
        for p, saved in zip(named, copies):
            version = None if p.is_inference() else p._version
            if version is not None or saved is not None:
                self.params.append((p, version, saved))
        for t in held:
            if id(t) not in params and id(t) not in self.tensors:
                self.tensors[id(t)] = (t, t.detach().clone())

    def restore(self) -> None:
        for obj, saved in self.containers:
            if saved is None:  # empty before the run
                if obj:
                    obj.clear()
                continue
            if isinstance(obj, list):
                obj[:] = saved
            else:
                obj.clear()
                obj.update(saved)
        for d, saved in self.dicts:
            if not _same_bindings(d, saved):
                d.clear()
                d.update(saved)
        for t, saved in self.tensors.values():
            if t.shape == saved.shape and t.dtype == saved.dtype and torch.equal(t.detach(), saved):
                continue
            _put_back(t, saved)
        changed: list[torch.Tensor] = []
        for p, version, copy in self.params:
            if copy is not None:
                moved = p._version != version if version is not None else not torch.equal(p.detach(), copy())
                if moved:
                    _put_back(p, copy())
            elif version is not None and p._version != version:
                changed.append(p)
        if changed:
            names = {id(p): name for name, p in self.model.named_parameters()}
            changed_names = [names.get(id(p), "?") for p in changed]
            raise UnsupportedModelError(
                f"forward changed the parameter(s) {changed_names} in place, which rnnlens cannot put back "
                f"(weights over {PARAM_COPY_LIMIT // 2**20} MiB are not copied before a run). The model "
                "is now changed: reload it. rnnlens never changes a model; trace a copy "
                "(copy.deepcopy(model)) of one that does."
            )


def _same_bindings(d: dict[str, Any], saved: dict[str, Any]) -> bool:
    """Whether ``d`` binds the same names to the very objects ``saved`` does (pairs taken in
    order, in C: a binding deleted and made again compares as changed, and is put back)."""
    return d.keys() == saved.keys() and all(map(operator.is_, d.values(), saved.values()))


class _Copy:
    """A parameter's values before the run: a slice of one flat copy of all of them, viewed in
    the parameter's shape only when it is needed (rarely: a run that changed the parameter)."""

    __slots__ = ("flat", "offset", "shape")

    def __init__(self, flat: torch.Tensor, offset: int, shape: torch.Size) -> None:
        self.flat, self.offset, self.shape = flat, offset, shape

    def __call__(self) -> torch.Tensor:
        if self.offset < 0:  # a copy of its own
            return self.flat
        return self.flat[self.offset : self.offset + self.shape.numel()].view(self.shape)


def _copies(params: list[torch.Tensor]) -> list[_Copy]:
    """A copy of each parameter, taken in one op where all are dense and share a dtype and device
    (one flat copy: a third of the cost of a clone per parameter on a one-layer LSTM of 32 units,
    where the copies were a fifth of the fixed cost of a trace call)."""
    with torch.no_grad():
        one = len({(p.dtype, p.device, p.layout) for p in params}) == 1 and params[0].layout == torch.strided
        if not one:
            return [_Copy(p.detach().clone(), -1, p.shape) for p in params]
        flat = torch.cat([p.reshape(-1) for p in params]) if len(params) < 2 else _flatten(params)
    out, offset = [], 0
    for p in params:
        out.append(_Copy(flat, offset, p.shape))
        offset += p.numel()
    return out


def _flatten(params: list[torch.Tensor]) -> torch.Tensor:
    """The parameters' values, one after another, in one new tensor (one op)."""
    try:
        return torch._C._nn.flatten_dense_tensors(params)
    except (AttributeError, RuntimeError):  # PyTorch without it: one reshape per parameter
        return torch.cat([p.reshape(-1) for p in params])


def _put_back(t: torch.Tensor, saved: torch.Tensor) -> None:
    """``t``'s values (and shape) as ``saved``, in place."""
    mode = torch.inference_mode() if t.is_inference() else torch.no_grad()
    with mode:
        if t.shape != saved.shape:
            t.resize_(saved.shape)
        t.copy_(saved)


class _Flags:
    """The snapshot of a run of PyTorch's own code only (:mod:`.trusted`): each module's
    bindings (the ``training`` flags rnnlens sets, the stand-in ``forward`` it installs) and the
    lists a recurrent module's ``forward`` refreshes when its weights were swapped outside
    ``__setattr__`` (``_flat_weights``, ``_flat_weight_refs``)."""

    def __init__(self, model: Any) -> None:
        d = vars(model)  # (a module without submodules, the usual case: no modules() generator)
        modules = model.modules() if d.get("_modules") else (model,)
        self.dicts: list[tuple[dict[str, Any], dict[str, Any]]] = [(vars(m), vars(m).copy()) for m in modules]
        self.lists: list[tuple[list[Any], list[Any]]] = [
            (v, v.copy()) for d, _ in self.dicts for k in _FLAT if type(v := d.get(k)) is list
        ]

    def restore(self) -> None:
        for obj, kept in self.lists:
            if len(obj) != len(kept) or not all(map(operator.is_, obj, kept)):
                obj[:] = kept
        for d, saved in self.dicts:
            if not _same_bindings(d, saved):
                d.clear()
                d.update(saved)


_FLAT = ("_flat_weights", "_flat_weight_refs", "_flat_weights_names", "_all_weights")


@contextlib.contextmanager
def unchanged(model: Any, *, own_code_only: bool = False) -> Iterator[_Snapshot | _Flags]:
    """Run the block, then put back every attribute and buffer of ``model``'s modules (the
    snapshot it yields can also put them back before then: ``snapshot.restore()``).
    ``own_code_only``: the block runs PyTorch's own code only (:func:`.trusted.own_code_only`),
    which changes nothing on the model but what rnnlens sets itself: the ``training`` flags."""
    snapshot = _Flags(model) if own_code_only else _Snapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()
