"""A linen model's layers from its parameters (before any trace), and its identity.

Linen builds its submodules as it runs, so before the first trace the cells are found in the
variables: a parameter group with a cell's parameter names (``ii … ho`` of LSTMCell and
OptimizedLSTMCell, ``ir … hn`` of GRUCell, ``if in hf hn`` of MGUCell, ``i h`` of SimpleCell) is
one cell, named by its path. After a trace :func:`rnnlens.describe` gives what the trace found
(Bidirectional layers, directions, calls).

Example:
    >>> import jax, numpy as np, flax.linen as nn
    >>> rnn = nn.RNN(nn.GRUCell(3))
    >>> model = rnn.bind(rnn.init(jax.random.key(0), np.ones((1, 2, 5), "float32")))
    >>> [(s.name, s.kind, s.units) for s in param_specs(model)]
    [('cell', 'gru', 3)]
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np

from ...core.digest import canonical_json, model_sha256
from ...core.kinds import KINDS
from ...core.spec import LayerSpec
from .nnx import input_widths, is_nnx, nnx_kind
from .run import abstract_specs, split_model

__all__ = ["digest", "guessed_specs", "param_specs"]

_SIGNATURES: tuple[tuple[frozenset[str], str, str], ...] = (
    (frozenset({"ii", "if", "ig", "io", "hi", "hf", "hg", "ho"}), "lstm", "LSTMCell"),
    (frozenset({"ir", "iz", "in", "hr", "hz", "hn"}), "gru", "GRUCell"),
    (frozenset({"if", "in", "hf", "hn"}), "mgu", "MGUCell"),
    (frozenset({"i", "h"}), "simple", "SimpleCell"),
)


def guessed_specs(model: Any) -> list[LayerSpec] | None:
    """The layers of an abstract trace (no computation) on a (1, 2, features) float32 input, for
    each input width of the cells in the parameters; None if the model takes none of them."""
    if is_nnx(model):
        return _first(model, input_widths(model))
    _, variables = split_model(model)
    widths: list[int] = []

    def walk(tree: Mapping[str, Any]) -> None:
        for k in sorted(tree):
            v = tree[k]
            if isinstance(v, Mapping):
                if k in ("ii", "ir", "if", "i") and "kernel" in v:
                    width = int(np.shape(v["kernel"])[0])
                    widths.extend([width] if width not in widths else [])
                walk(v)

    walk(variables.get("params", {}))
    return _first(model, widths)


def _first(model: Any, widths: list[int]) -> list[LayerSpec] | None:
    for width in widths:
        found = abstract_specs(model, np.zeros((1, 2, width), np.float32))
        if found:
            return found
    return None


def param_specs(model: Any) -> list[LayerSpec]:
    """Every cell found in the model's parameters, as a forward layer named by its path."""
    if is_nnx(model):
        return _nnx_cells(model)
    _, variables = split_model(model)
    out: list[LayerSpec] = []

    def walk(tree: Mapping[str, Any], path: tuple[str, ...]) -> None:
        keys = frozenset(k for k in tree if isinstance(tree[k], Mapping))
        for names, kind, cls in _SIGNATURES:
            if keys == names:
                recurrent = tree["h" if kind == "simple" else "hz" if kind == "gru" else "hf"]
                units = int(np.shape(recurrent["kernel"])[-1])
                note = "before a trace: layers as found in the parameters"
                out.append(
                    LayerSpec("/".join(path) or cls, kind, cls, units, ("forward",),  # type: ignore[arg-type]
                              KINDS[kind].fields, cell_units=units, notes=(note,))
                )  # fmt: skip
                return
        for k in sorted(keys):
            walk(tree[k], (*path, k))

    walk(variables.get("params", {}), ())
    return out


def _nnx_cells(model: Any) -> list[LayerSpec]:
    from flax import nnx

    out = []
    for path, module in nnx.iter_modules(model):
        kind = nnx_kind(module)
        if kind is not None:
            units = int(getattr(module, "hidden_features"))  # noqa: B009 (not on nnx.Module)
            name = "/".join(str(p) for p in path) or type(module).__name__
            out.append(LayerSpec(name, kind, type(module).__name__, units, ("forward",),  # type: ignore[arg-type]
                                 KINDS[kind].fields, cell_units=units))  # fmt: skip
    return out


def _config(module: Any) -> Any:
    """A module's class and fields (nested modules too), without its name, parent or weights;
    functions named by where they are defined."""
    import flax.linen as nn

    if isinstance(module, nn.Module):
        fields = {
            f.name: _config(getattr(module, f.name, None))
            for f in dataclasses.fields(module)
            if f.name not in ("parent", "name")
        }
        return {"class": f"{type(module).__module__}.{type(module).__qualname__}", "fields": fields}
    if isinstance(module, (list, tuple)):
        return [_config(v) for v in module]
    if isinstance(module, Mapping):
        return {str(k): _config(v) for k, v in module.items()}
    if callable(module):
        qualname = getattr(module, "__qualname__", type(module).__qualname__)
        return f"{getattr(module, '__module__', '')}.{qualname}"
    if isinstance(module, (str, int, float, bool, type(None))):
        return module
    if isinstance(module, np.dtype) or type(module).__module__.startswith(("jax", "numpy")):
        return str(module)
    return f"<{type(module).__qualname__}>"


def digest(model: Any) -> str:
    """sha256 over the variables (by path) and the module's configuration and parameter tree."""
    import jax

    if is_nnx(model):
        from flax import nnx

        variables = nnx.state(model, nnx.Not(nnx.RngState))  # RNG counters move as it runs
        modules = nnx.iter_modules(model)
        config: Any = [("/".join(map(str, p)), type(m).__qualname__, _attributes(m)) for p, m in modules]
    else:
        module, variables = split_model(model)
        config = _config(module)
    leaves = jax.tree_util.tree_flatten_with_path(variables)[0]
    leaves.sort(key=lambda kv: jax.tree_util.keystr(kv[0]))
    arrays = [np.asarray(v) for _, v in leaves]
    paths = [jax.tree_util.keystr(k) for k, _ in leaves]
    return model_sha256(arrays, canonical_json({"module": config, "variables": paths}))


def _attributes(module: Any) -> dict[str, Any]:
    """An nnx module's own settings (numbers, strings, functions by name): not its arrays."""
    out = {}
    for k, v in sorted(vars(module).items()):
        plain = isinstance(v, (str, int, float, bool, type(None)))
        if plain or (callable(v) and hasattr(v, "__qualname__") and not isinstance(v, type)):
            out[k] = _config(v)
    return out
