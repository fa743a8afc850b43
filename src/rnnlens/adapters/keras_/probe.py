"""The Keras probe: one pass over a model's graph that returns every recurrent layer's steps.

rnnlens walks the Functional graph itself (Keras' own ``Functional._run_through_graph``),
calling every non-recurrent layer as the model would, with ``training=False``. At a recurrent
layer it runs a stand-in and rebuilds exactly what the original layer returns, so downstream
layers see the same tensors. Two stand-ins, chosen per layer (see :func:`choose_strategy`):

* **sibling** (``h``, or ``reconstruct``): a ``__dict__`` copy of the layer sharing its cell and
  weights, with ``return_sequences=True, return_state=True, stateful=False``. It runs the
  framework's own kernel (the generic loop, or cuDNN where Keras would pick it).
* **emitter** (``emit``): Keras' own loop (``backend.rnn``, time-major) around a step that
  performs the cell's operations in the cell's order and outputs ``h, c`` and every gate as
  separate tensors. One pass yields h, c and gates; no per-step concatenation and no
  transposes of the wide outputs (they come back time-major and are viewed batch-major).

The walk is compiled once per model and cached: a ``tf.function`` on TensorFlow, ``jax.jit``
of a pure function of the weights on JAX (variables passed in through a ``StatelessScope``),
eager under ``torch.inference_mode`` on PyTorch. Nothing is added to the model:
calling layers on concrete tensors records no graph nodes, and stateful layers start from
their current state (passed as ``initial_state``) and are never advanced.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ...core.kinds import KINDS
from ...core.spec import Field, Kind
from ..base import Args
from . import conv as keras_conv
from .steps import _edited_step, _emit_loop, _emit_step

__all__ = ["Strategy", "cell_kind", "choose_strategy", "is_model", "is_recurrent", "probe_for"]

Strategy = Literal["auto", "emit", "reconstruct"]


def _keras():  # type: ignore[no-untyped-def]
    import keras

    return keras


def is_model(layer: Any) -> bool:
    return isinstance(layer, _keras().Model)


def is_recurrent(layer: Any) -> bool:
    k = _keras()
    return isinstance(layer, (k.layers.RNN, k.layers.Bidirectional))


def cell_kind(cell: Any) -> Kind:
    k = _keras()
    known: tuple[tuple[Kind, type], ...] = (
        ("lstm", k.layers.LSTMCell),
        ("gru", k.layers.GRUCell),
        ("simple", k.layers.SimpleRNNCell),
    )
    conv_cell = keras_conv.conv_lstm_cell_class()
    if conv_cell is not None:
        known += (("convlstm", conv_cell),)
    for kind, cls in known:
        # A subclass that overrides call() computes something else: treat it as unknown.
        if isinstance(cell, cls) and getattr(type(cell), "call", None) is getattr(cls, "call", None):
            return kind
    return "rnn"


def _gpu_present() -> bool:
    """Whether Keras' backend runs on a GPU, where its LSTM/GRU use cuDNN (all three backends
    do, for the default activations)."""
    backend = _keras().backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_logical_devices("GPU"))
    if backend == "jax":
        import jax

        return jax.default_backend() == "gpu"
    if backend == "torch":
        import torch

        return bool(torch.cuda.is_available())
    return False


def choose_strategy(layer: Any, strategy: Strategy) -> Literal["emit", "reconstruct"]:
    """``emit`` where Keras runs the generic loop anyway (CPU): one pass, ~1.1–1.3× the plain
    forward. ``reconstruct`` where a fused kernel (cuDNN) is much faster than that loop, and
    for ``implementation=1`` cells, whose operation order the emitter does not replicate, and
    unrolled layers."""
    if cell_kind(layer.cell) == "convlstm":
        return "emit"  # Keras has no fused ConvLSTM kernel: its loop is the generic one
    if strategy != "auto":
        return strategy
    if getattr(layer.cell, "implementation", 2) != 2 or layer.unroll:
        return "reconstruct"  # (the unrolled loop cannot carry several outputs under a mask)
    if getattr(layer, "use_cudnn", False) in ("auto", True) and _gpu_present():
        return "reconstruct"
    return "emit"


def _to_numpy(v: Any) -> Any:
    # keras' convert_to_numpy and EagerTensor.numpy() both copy; on big per-step outputs that
    # copy costs more than the reconstruction. EagerTensor._numpy() shares the buffer (a
    # private TF method, stable since TF 2.0; fall back to the public path without it).
    shared = getattr(v, "_numpy", None)
    if callable(shared):
        try:
            return shared()
        except Exception:  # e.g. a resource tensor; the public path knows what to do
            pass
    return _keras().ops.convert_to_numpy(v)


def _model_variables(model: Any) -> list[Any]:
    """Every variable the walk reads: the model's own, and stateful layers' current states
    (which Keras does not always track as model variables)."""
    from keras import tree

    seen: dict[int, Any] = {id(v): v for v in model.variables}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        stack.extend(getattr(layer, "layers", ()))
        for sub in (layer, getattr(layer, "forward_layer", None), getattr(layer, "backward_layer", None)):
            states = getattr(sub, "states", None) if getattr(sub, "stateful", False) else None
            if states is not None:
                for v in tree.flatten(states):
                    seen.setdefault(id(v), v)
    return list(seen.values())


def _sibling(layer: Any) -> Any:
    """A copy of ``layer`` that shares its cell and weights but returns every step and state.

    A bare ``__dict__`` copy: ``copy.copy`` on a Keras layer goes through its config (and fails
    for unregistered custom cells), and ``Layer.__setattr__`` would track the new values in
    the tracker the copy shares with the original.
    """
    sib = object.__new__(type(layer))
    sib.__dict__.update(layer.__dict__)
    sib.__dict__.update(return_sequences=True, return_state=True, stateful=False, zero_output_for_mask=False)
    return sib


class Probe:
    """Runs the model's graph once, capturing the recurrent layers in ``targets``.

    ``targets`` maps a layer name to its fields; ``emit`` names the layers (by name) to run
    through an emitter. Captured keys: ``name|mask``, ``name|x``, ``name|direction|seq``
    (sibling output, batch-major, processing order) or ``name|direction|emit<k>`` (the k-th
    emitted tensor, time-major, processing order), ``name|direction|h0`` / ``c0``.
    """

    def __init__(
        self,
        model: Any,
        recurrent: list[tuple[str, Any]],
        targets: Mapping[str, tuple[Field, ...]],
        emit: frozenset[str],
        edited: frozenset[tuple[str, str]] = frozenset(),
    ):
        k = _keras()
        self.edited = edited  # (layer, direction) run with an edit input: see _edited_step
        self.outputs = bool(edited)  # interventions also return the model's outputs
        self._edits: Mapping[str, Any] = {}
        # weak: the probe is cached per model and must not keep the model alive
        self._model = weakref.ref(model)
        self.names = {id(layer): name for name, layer in recurrent}
        self.targets = dict(targets)
        self.runners: dict[int, tuple[Any, bool]] = {}
        self._owner: dict[int, str] = {}  # a Bidirectional's direction layers -> its name
        for name, layer in recurrent:
            subs = (
                (layer.forward_layer, layer.backward_layer)
                if isinstance(layer, k.layers.Bidirectional)
                else (layer,)
            )
            for sub in subs:
                self._owner[id(sub)] = name
                if name in emit:
                    gates = "gates" in self.targets.get(name, ())
                    self.runners[id(sub)] = (_emit_step(sub.cell, cell_kind(sub.cell), gates), True)
                else:
                    self.runners[id(sub)] = (_sibling(sub), False)
        self._compiled: Callable[..., Any] | None = None

    # ---- entry point
    def __call__(self, inputs: Any, mask: Any, edits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``edits``: per ``"layer|direction"`` in :attr:`edited`, the (sample, time, k·units)
        affine edit arrays, input time order (see :func:`~.steps._edited_step`)."""
        from keras import tree

        if self._compiled is None:
            self._compiled = self._compile()
        out = self._compiled(inputs, mask, dict(edits or {}))
        return {key: tree.map_structure(_to_numpy, v) for key, v in out.items()}

    def _compile(self) -> Callable[[Any, Any, Any], dict[str, Any]]:
        """The walk, compiled the way each backend runs a model fastest for inference."""
        backend = _keras().backend.backend()
        if backend == "tensorflow":
            import tensorflow as tf

            return tf.function(self._run, reduce_retracing=True)  # type: ignore[no-any-return]
        if backend == "jax":
            return self._jax_compiled()
        if backend == "torch":
            import torch

            def eager(inputs: Any, mask: Any, edits: Any) -> dict[str, Any]:
                with torch.inference_mode():  # no autograd bookkeeping
                    return self._run(inputs, mask, edits)

            return eager
        return self._run

    def _jax_compiled(self) -> Callable[[Any, Any, Any], dict[str, Any]]:
        """``jax.jit`` of a pure function of the weights: every variable's value is an argument,
        read inside a ``StatelessScope``, so a later change to the weights (more training, a
        stateful layer's state) is seen by the next call instead of being baked into the
        compiled program as a constant, and nothing is ever written to the model."""
        import jax

        from keras import StatelessScope  # type: ignore[attr-defined]

        variables = _model_variables(self._model())

        def pure(values: list[Any], inputs: Any, mask: Any, edits: Any) -> dict[str, Any]:
            with StatelessScope(state_mapping=list(zip(variables, values))):
                return self._run(inputs, mask, edits)

        jitted = jax.jit(pure)
        return lambda inputs, mask, edits: jitted([v.value for v in variables], inputs, mask, edits)  # type: ignore[no-any-return]

    def _run(self, inputs: Any, mask: Any, edits: Mapping[str, Any]) -> dict[str, Any]:
        captured: dict[str, Any] = {}
        self._edits = edits  # read by _run_rnn while the graph is walked (traced)
        try:
            out = self._run_model(self._model(), inputs, mask, captured)
        finally:
            self._edits = {}
        if self.outputs:
            captured["|outputs"] = out
        return captured

    # ---- graph walking
    def _run_model(self, model: Any, inputs: Any, mask: Any, captured: dict[str, Any]) -> Any:
        k = _keras()
        from keras.src.backend import get_keras_mask, set_keras_mask
        from keras.src.models.functional import unpack_singleton

        from keras import tree

        if isinstance(model, k.Sequential) and getattr(model, "_functional", None) is not None:
            model = model._functional
        if isinstance(model, k.Sequential):  # built without an Input: apply layers in order
            x = inputs
            for layer in model.layers:
                kwargs = {"mask": mask} if getattr(layer, "_call_has_mask_arg", False) else {}
                x = self._call(layer, (x,), kwargs, captured)
                mask = tree.map_structure(get_keras_mask, x)
            return x
        flat = model._standardize_inputs(inputs)
        if mask is not None:
            for t, m in zip(flat, tree.flatten(mask)):
                if m is not None:
                    set_keras_mask(t, m)
        outputs = model._run_through_graph(
            flat, operation_fn=lambda op: functools.partial(self._call_packed, op, captured)
        )
        return unpack_singleton(outputs)

    def _call_packed(self, op: Any, captured: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        return self._call(op, args, kwargs, captured)

    def _call(self, op: Any, args: Args, kwargs: dict[str, Any], captured: dict[str, Any]) -> Any:
        if is_model(op):
            from keras.src.backend import get_keras_mask

            from keras import tree

            inputs = args[0] if args else kwargs.pop("inputs")
            mask = kwargs.get("mask")
            if mask is None:
                mask = tree.map_structure(get_keras_mask, inputs)
            return self._run_model(op, inputs, mask, captured)
        if id(op) in self.names:
            return self._call_recurrent(op, list(args), kwargs, captured)
        if "training" in getattr(op, "_call_context_args", ()):
            kwargs["training"] = False
        return op(*args, **kwargs)

    def _call_recurrent(
        self, layer: Any, args: list[Any], kwargs: dict[str, Any], captured: dict[str, Any]
    ) -> Any:
        k = _keras()
        ops = k.ops
        from keras.src.backend import get_keras_mask, set_keras_mask

        x = args.pop(0) if args else kwargs.pop("sequences", kwargs.pop("inputs", None))
        initial_state = kwargs.pop("initial_state", None)
        if initial_state is None and args:
            initial_state = args[0]
        mask = kwargs.pop("mask", None)
        if mask is None:
            mask = get_keras_mask(x)
        if isinstance(mask, (list, tuple)):
            mask = mask[0]
        name = self.names[id(layer)]
        record: dict[str, Any] = {}

        if isinstance(layer, k.layers.Bidirectional):
            # Bidirectional.call, with each direction run by its stand-in
            fwd_state = bwd_state = None
            if initial_state is not None:
                half = len(initial_state) // 2
                fwd_state, bwd_state = initial_state[:half], initial_state[half:]
            y, f_states = self._run_rnn(layer.forward_layer, x, mask, fwd_state, record, "forward")
            y_rev, b_states = self._run_rnn(layer.backward_layer, x, mask, bwd_state, record, "backward")
            y = ops.cast(y, layer.compute_dtype)
            y_rev = ops.cast(y_rev, layer.compute_dtype)
            if layer.return_sequences:
                y_rev = ops.flip(y_rev, axis=1)
            merged: Any
            if layer.merge_mode == "concat":
                merged = ops.concatenate([y, y_rev], axis=-1)
            elif layer.merge_mode == "sum":
                merged = y + y_rev
            elif layer.merge_mode == "ave":
                merged = (y + y_rev) / 2
            elif layer.merge_mode == "mul":
                merged = y * y_rev
            else:
                merged = (y, y_rev)
            main = list(merged) if layer.merge_mode is None else [merged]
            result: Any = merged
            if layer.return_state:
                result = (*main, *f_states, *b_states)
        else:
            direction = "backward" if layer.go_backwards else "forward"
            y, states = self._run_rnn(layer, x, mask, initial_state, record, direction)
            main = [y]
            result = [y, *states] if layer.return_state else y
        if layer.return_sequences and mask is not None:
            for t in main:
                set_keras_mask(t, mask)
        fields = self.targets.get(name)
        if fields is not None:
            if mask is not None:
                captured[f"{name}|mask"] = mask
            if ("c" in fields or "gates" in fields) and not any(self._emits(layer)):
                captured[f"{name}|x"] = x
            for key, value in record.items():
                captured[f"{name}|{key}"] = value
        return result

    def _emits(self, layer: Any) -> list[bool]:
        k = _keras()
        if isinstance(layer, k.layers.Bidirectional):
            return [self.runners[id(s)][1] for s in (layer.forward_layer, layer.backward_layer)]
        return [self.runners[id(layer)][1]]

    def _run_rnn(
        self, layer: Any, x: Any, mask: Any, initial_state: Any, record: dict[str, Any], direction: str
    ) -> tuple[Any, list[Any]]:
        """Run ``layer``'s stand-in; return what ``layer`` itself returns (output, final states)."""
        ops = _keras().ops
        from keras import tree

        kind = cell_kind(layer.cell)
        if initial_state is None and layer.stateful and layer.states is not None:
            initial_state = [ops.convert_to_tensor(v.value) for v in tree.flatten(layer.states)]
        if initial_state is None and KINDS[kind].known:
            initial_state = layer.get_initial_state(batch_size=ops.shape(x)[0])
        if initial_state is not None and not tree.is_nested(initial_state):
            initial_state = [initial_state]
        runner, emits = self.runners[id(layer)]
        if emits:
            dtype = layer.compute_dtype
            init = [ops.cast(s, dtype) for s in initial_state]
            key = f"{self._owner[id(layer)]}|{direction}"
            step_input = x
            if key in self._edits:
                features = int(x.shape[-1])
                runner = _edited_step(runner, kind, features, int(layer.cell.units), layer.cell)
                step_input = ops.concatenate([ops.cast(x, dtype), ops.cast(self._edits[key], dtype)], axis=-1)
            emitted, final = _emit_loop(runner, step_input, mask, init, go_backwards=layer.go_backwards)
            for k, tensor in enumerate(emitted):
                record[f"{direction}|emit{k}"] = tensor
            out_seq = ops.swapaxes(emitted[0], 0, 1)
            if KINDS[kind].feature_maps:
                checks = keras_conv.last_step_check(
                    layer.cell, x, mask, init, emitted, go_backwards=layer.go_backwards
                )
                record.update({f"{direction}|{key}": v for key, v in checks.items()})
            states = list(final)
        else:
            seq, *states = runner(x, initial_state=initial_state, mask=mask, training=False)
            record[f"{direction}|seq"] = seq
            out_seq = seq
        if KINDS[kind].known:
            record[f"{direction}|h0"] = initial_state[0]
            if KINDS[kind].has_c:
                record[f"{direction}|c0"] = initial_state[1]
        # Rebuild the original layer's own output (processing order, like Keras returns it).
        if layer.return_sequences:
            y = out_seq
            if layer.zero_output_for_mask and mask is not None:
                m = ops.flip(mask, axis=1) if layer.go_backwards else mask
                m = ops.reshape(m, (*ops.shape(m), *(1,) * (len(out_seq.shape) - 2)))  # N-D feature maps
                y = ops.where(m, out_seq, ops.zeros_like(out_seq))
        else:
            y = out_seq[:, -1] if not KINDS[kind].known else states[0]
        return y, states


# A traced tf.function costs seconds to build; keep one per (model, layers, fields, strategy)
# for as long as the model lives. Weak keys: the cache never keeps a model alive.
_PROBES: weakref.WeakKeyDictionary[Any, dict[Any, Probe]] = weakref.WeakKeyDictionary()


def probe_for(
    model: Any,
    recurrent: list[tuple[str, Any]],
    targets: Mapping[str, tuple[Field, ...]],
    emit: frozenset[str],
    edited: frozenset[tuple[str, str]] = frozenset(),
) -> Probe:
    key = (tuple(id(layer) for _, layer in recurrent), tuple(sorted(targets.items())), emit, edited)
    per_model = _PROBES.setdefault(model, {})
    if key not in per_model:
        per_model[key] = Probe(model, recurrent, targets, emit, edited)
    return per_model[key]
