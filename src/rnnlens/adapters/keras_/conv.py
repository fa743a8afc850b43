"""Keras ``ConvLSTM1D`` / ``ConvLSTM2D`` / ``ConvLSTM3D``: h, c and gates as feature maps.

A ConvLSTM cell is an LSTM whose matmuls are convolutions, so every state is a feature map:
h, c and each gate have the per-step shape of the layer's output, ``(*spatial, channels)``
(``(channels, *spatial)`` for ``data_format="channels_first"``), and rnnlens returns them
as ``(sample, time, *spatial, channels)``.

Keras has no fused ConvLSTM kernel (the layer always runs the generic loop), so rnnlens
always takes the *emit* path here: Keras' own loop (``backend.rnn``) around
:func:`emit_step`, a step that performs ``ConvLSTMCell.call``'s operations in the same
order, through the cell's own ``input_conv`` / ``recurrent_conv`` (so padding, strides,
dilation and data format are the cell's), and outputs ``h, c`` and the gates as separate
tensors. ``strategy="reconstruct"`` has nothing to gain and is ignored for these layers.
Under a mixed precision policy the step reads the weights in the compute dtype, as
``Layer.__call__`` does.

Parity: :func:`last_step_check` runs the cell's own ``call`` on each sequence's last valid
step (from the emitted state before it) inside the same probe pass, and
:func:`check_parity` compares the result with what the emitter produced there; a mismatch
is a :class:`~rnnlens.errors.ParityError`. The step is one function applied at every step,
so one step per sequence checks the equations at the cost of one extra cell call.

This module is the ConvLSTM hook of :mod:`rnnlens.adapters.keras` and
:mod:`rnnlens.adapters.keras_.probe`; they call into it where ``kind == "convlstm"``.

Example:
    >>> import keras, numpy as np, rnnlens
    >>> layer = keras.layers.ConvLSTM2D(4, 3, padding="same", name="conv")
    >>> model = keras.Sequential([keras.Input((5, 8, 8, 1)), layer])
    >>> states = rnnlens.trace(model, np.ones((2, 5, 8, 8, 1), "float32"))
    >>> conv = states["conv"]
    >>> conv.kind, conv.h.shape, conv.c.shape, conv.gates["f"].shape, conv.last("c").shape
    ('convlstm', (2, 5, 8, 8, 4), (2, 5, 8, 8, 4), (2, 5, 8, 8, 4), (2, 8, 8, 4))
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from ...core.cells import tolerance
from ...core.spec import FIELDS_BY_KIND, LayerSpec
from ...errors import ParityError

__all__ = [
    "check_parity",
    "conv_lstm_cell_class",
    "conv_spec",
    "emit_step",
    "feature_shape",
    "last_step_check",
    "n_parts",
]


def _keras():  # type: ignore[no-untyped-def]
    import keras

    return keras


def conv_lstm_cell_class() -> type | None:
    """Keras' ``ConvLSTMCell`` (not exported under ``keras.layers``), or None if it moved."""
    try:
        from keras.src.layers.rnn.conv_lstm import ConvLSTMCell
    except ImportError:  # a Keras without it: ConvLSTM layers stay "rnn" (h only)
        return None
    return ConvLSTMCell  # type: ignore[no-any-return]


def feature_shape(cell: Any) -> tuple[int, ...]:
    """The per-step shape of h, c and each gate: ``(*spatial, filters)`` (channels_last)."""
    if cell.data_format == "channels_first":
        step_input = (None, cell.input_dim, *cell.spatial_dims)
    else:
        step_input = (None, *cell.spatial_dims, cell.input_dim)
    out, _ = cell.compute_output_shape(step_input)
    return tuple(int(d) for d in out[1:])


def conv_spec(name: str, layer_type: str, directions: tuple[str, ...], cell: Any) -> LayerSpec:
    """The :class:`LayerSpec` of a ConvLSTM layer: ``units`` (and ``cell_units``) = filters."""
    shape = feature_shape(cell)
    dims = "×".join(map(str, shape))
    layout = (
        "(sample, time, channel, *spatial)"
        if cell.data_format == "channels_first"
        else ("(sample, time, *spatial, channel)")
    )
    return LayerSpec(
        name=name,
        kind="convlstm",
        layer_type=layer_type,
        units=int(cell.filters),
        directions=directions,
        fields=FIELDS_BY_KIND["convlstm"],
        cell_units=int(cell.filters),
        notes=(f"feature maps: h, c and each gate are {layout}, per step {dims}",),
        feature_shape=shape,
    )


def _autocast(cell: Any) -> Any:
    """Read the cell's variables in its compute dtype, as ``Layer.__call__`` does under a mixed
    precision policy (``mixed_float16``: float32 weights, float16 maths)."""
    if cell.compute_dtype == cell.variable_dtype:
        return contextlib.nullcontext()
    from keras.src.backend import AutocastScope

    return AutocastScope(cell.compute_dtype)


def n_parts(fields: tuple[str, ...]) -> int:
    """How many tensors :func:`emit_step` emits: ``h, c`` and, when asked, ``i, f, g, o``."""
    return 6 if "gates" in fields else 2


def emit_step(cell: Any, *, gates: bool = True) -> Callable[[Any, Any], Any]:
    """A step function for ``backend.rnn``: ``ConvLSTMCell.call`` (inference), same operations
    in the same order, emitting ``(h, c, i, f, g, o)``, or ``(h, c)`` when ``gates`` is False."""
    ops = _keras().ops
    axis = int(cell.rank) + 1  # the kernels' output-channel axis, as the cell splits them

    def step(inputs: Any, states: Any) -> Any:
        with _autocast(cell):
            return cell_ops(ops.cast(inputs, cell.compute_dtype), states)

    def cell_ops(inputs: Any, states: Any) -> Any:
        h_tm1, c_tm1 = states[0], states[1]
        k_i, k_f, k_c, k_o = ops.split(cell.kernel, 4, axis=axis)
        r_i, r_f, r_c, r_o = ops.split(cell.recurrent_kernel, 4, axis=axis)
        if cell.use_bias:
            b_i, b_f, b_c, b_o = ops.split(cell.bias, 4)
        else:
            b_i = b_f = b_c = b_o = None
        x_i = cell.input_conv(inputs, k_i, b_i, padding=cell.padding)
        x_f = cell.input_conv(inputs, k_f, b_f, padding=cell.padding)
        x_c = cell.input_conv(inputs, k_c, b_c, padding=cell.padding)
        x_o = cell.input_conv(inputs, k_o, b_o, padding=cell.padding)
        h_i = cell.recurrent_conv(h_tm1, r_i)
        h_f = cell.recurrent_conv(h_tm1, r_f)
        h_c = cell.recurrent_conv(h_tm1, r_c)
        h_o = cell.recurrent_conv(h_tm1, r_o)
        i = cell.recurrent_activation(x_i + h_i)
        f = cell.recurrent_activation(x_f + h_f)
        g = cell.activation(x_c + h_c)
        c = f * c_tm1 + i * g
        o = cell.recurrent_activation(x_o + h_o)
        h = o * cell.activation(c)
        return ((h, c, i, f, g, o) if gates else (h, c)), [h, c]

    return step


def last_step_check(
    cell: Any, x: Any, mask: Any, initial_state: Any, emitted: Any, *, go_backwards: bool
) -> dict[str, Any]:
    """Tensors for :func:`check_parity`: at each sequence's last valid step (processing order),
    the emitted ``h, c`` and what ``cell.call`` computes there from the emitted state before.

    ``x`` (sample, time, ...) and ``mask`` (sample, time) are batch-major in input order;
    ``emitted`` comes from ``backend.rnn``: time-major, processing order. Only emitted values
    at valid steps are read (what backends emit at masked steps differs). Picking one step per
    sample is a masked sum over time (exact: one value plus zeros).
    """
    ops = _keras().ops
    h_seq, c_seq = emitted[0], emitted[1]
    h0, c0 = initial_state[0], initial_state[1]
    rank = len(h_seq.shape)
    ones = ops.ones_like(h_seq[(slice(None), slice(None)) + (0,) * (rank - 2)], dtype="int32")  # (T, N)
    position = ops.cumsum(ones, axis=0) - 1
    if mask is None:
        valid = ones > 0
    else:
        valid = ops.cast(ops.transpose(mask, (1, 0)), "bool")
        if go_backwards:
            valid = ops.flip(valid, axis=0)
    last = ops.max(ops.where(valid, position, -1), axis=0)  # (N,), -1 where nothing is valid
    before = ops.logical_and(valid, position < ops.expand_dims(last, 0))
    prev = ops.max(ops.where(before, position, -1), axis=0)  # the valid step before, or -1

    def pick(seq: Any, index: Any) -> Any:
        hit = ops.equal(position, ops.expand_dims(index, 0))
        hit = ops.reshape(hit, (*ops.shape(hit), *(1,) * (len(seq.shape) - 2)))
        return ops.sum(ops.where(hit, seq, ops.zeros_like(seq)), axis=0)

    x_tm = ops.flip(ops.swapaxes(x, 0, 1), axis=0) if go_backwards else ops.swapaxes(x, 0, 1)
    has_prev = ops.reshape(prev >= 0, (-1, *(1,) * (rank - 2)))
    h_prev = ops.where(has_prev, pick(h_seq, prev), ops.cast(h0, h_seq.dtype))
    c_prev = ops.where(has_prev, pick(c_seq, prev), ops.cast(c0, c_seq.dtype))
    with _autocast(cell):
        x_last = ops.cast(pick(x_tm, last), cell.compute_dtype)
        h_ref, (_, c_ref) = cell.call(x_last, [h_prev, c_prev], training=False)
    return {
        "check_h": pick(h_seq, last),
        "check_h_ref": h_ref,
        "check_c": pick(c_seq, last),
        "check_c_ref": c_ref,
        "check_valid": last >= 0,
    }


def check_parity(captured: Mapping[str, np.ndarray], prefix: str, *, layer: str) -> None:
    """Raise :class:`ParityError` unless the emitter's last valid step equals the cell's own.

    ``prefix`` is ``"<layer>|<direction>|"``, the keys of :func:`last_step_check`'s tensors.
    """
    valid = np.asarray(captured[f"{prefix}check_valid"], dtype=bool)
    for what in ("h", "c"):
        got = np.asarray(captured[f"{prefix}check_{what}"])[valid]
        ref = np.asarray(captured[f"{prefix}check_{what}_ref"])[valid]
        rtol, atol = tolerance(ref.dtype)
        err = np.abs(got.astype(np.float64) - ref)
        bad = err > atol + rtol * np.abs(ref)
        if bad.any():
            raise ParityError(
                f"Layer {layer!r}: the ConvLSTM probe's {what} at the last valid step differs from "
                f"what the layer's own ConvLSTMCell computes there (max error {float(err.max()):.3g} > "
                f"rtol={rtol:g}, atol={atol:g}; {int(bad.sum())} values off): this Keras version's "
                "ConvLSTMCell computes something rnnlens does not replicate, so no state of this layer "
                "is returned. Please report it with your Keras version and the layer's config."
            )
