"""The emitting step the probe runs inside Keras' own loop: the cell's own operations, returning
h, c and the post-activation gates of every step (``_emit_step``), and the loop around it
(``_emit_loop``: ``backend.rnn``, with JAX's masking quirks handled)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ...core.spec import Kind
from . import conv as keras_conv

__all__: list[str] = []


def _keras():  # type: ignore[no-untyped-def]
    import keras

    return keras


def _emit_step(cell: Any, kind: Kind, gates: bool = True) -> Callable[[Any, Any], Any]:
    """A step function for ``backend.rnn``: the cell's own operations (``LSTMCell.call`` /
    ``GRUCell.call``, implementation 2, inference), in the same order, emitting
    ``(h, c, i, f, g, o)`` or ``(h, z, r, n)``."""
    if kind == "convlstm":
        return keras_conv.emit_step(cell, gates=gates)
    ops = _keras().ops
    u = int(cell.units)

    def lstm_step(inputs: Any, states: Any) -> Any:
        h_tm1, c_tm1 = states[0], states[1]
        z = ops.matmul(inputs, cell.kernel)
        z = ops.add(z, ops.matmul(h_tm1, cell.recurrent_kernel))
        if cell.use_bias:
            z = ops.add(z, cell.bias)
        z0, z1, z2, z3 = ops.split(z, 4, axis=1)
        i = cell.recurrent_activation(z0)
        f = cell.recurrent_activation(z1)
        g = cell.activation(z2)
        c = f * c_tm1 + i * g
        o = cell.recurrent_activation(z3)
        h = o * cell.activation(c)
        return (h, c, i, f, g, o), [h, c]

    def gru_step(inputs: Any, states: Any) -> Any:
        h_tm1 = states[0]
        input_bias = recurrent_bias = None
        if cell.use_bias:
            if not cell.reset_after:
                input_bias = cell.bias
            else:
                input_bias, recurrent_bias = (
                    ops.squeeze(e, axis=0) for e in ops.split(cell.bias, cell.bias.shape[0], axis=0)
                )
        matrix_x = ops.matmul(inputs, cell.kernel)
        if cell.use_bias:
            matrix_x = ops.add(matrix_x, input_bias)
        x_z, x_r, x_h = ops.split(matrix_x, 3, axis=-1)
        if cell.reset_after:
            matrix_inner = ops.matmul(h_tm1, cell.recurrent_kernel)
            if cell.use_bias:
                matrix_inner += recurrent_bias
        else:
            matrix_inner = ops.matmul(h_tm1, cell.recurrent_kernel[:, : 2 * u])
        recurrent_z = matrix_inner[:, :u]
        recurrent_r = matrix_inner[:, u : 2 * u]
        recurrent_h = matrix_inner[:, 2 * u :]
        z = cell.recurrent_activation(x_z + recurrent_z)
        r = cell.recurrent_activation(x_r + recurrent_r)
        if cell.reset_after:
            recurrent_h = r * recurrent_h
        else:
            recurrent_h = ops.matmul(r * h_tm1, cell.recurrent_kernel[:, 2 * u :])
        hh = cell.activation(x_h + recurrent_h)
        h = z * h_tm1 + (1 - z) * hh
        return (h, z, r, hh), [h]

    def simple_step(inputs: Any, states: Any) -> Any:  # SimpleRNNCell.call, inference
        h = ops.matmul(inputs, cell.kernel)
        if cell.bias is not None:
            h = ops.add(h, cell.bias)
        out = h + ops.matmul(states[0], cell.recurrent_kernel)
        if cell.activation is not None:
            out = cell.activation(out)
        return (out,), [out]

    step = {"lstm": lstm_step, "gru": gru_step, "simple": simple_step}[kind]
    if cell.compute_dtype == cell.variable_dtype:
        return step

    def mixed(inputs: Any, states: Any) -> Any:  # mixed_float16 / mixed_bfloat16, as Layer.__call__ runs it
        with keras_conv._autocast(cell):
            return step(ops.cast(inputs, cell.compute_dtype), states)

    return mixed


def _edited_step(
    step: Callable[[Any, Any], Any], kind: Kind, features: int, units: int, cell: Any = None
) -> Callable[[Any, Any], Any]:
    """``step`` with an intervention: each step's input carries, after its ``features`` input
    features, the affine edit ``state' = a * state + b`` of that step (``a_h, b_h`` and for an
    LSTM ``a_c, b_c``, ``units`` wide each; ``a = 1, b = 0`` where nothing is edited), applied
    to the step's h (output and carried state) and c (carried state) before the next step. An
    LSTM or GRU step then carries ``a_w, b_w``: the edit of what the step wrote into its linear
    state (``i ⊙ g`` into c, ``(1 − z) ⊙ n`` into h; :func:`~rnnlens.core.edits.edit_arrays`
    with ``writes=True``), applied before the state is formed from it. Unedited (``a = 1,
    b = 0``), ``a * w + b`` is ``w`` exactly, so the state is the cell's own."""
    u = units

    def edited(inputs: Any, states: Any) -> Any:
        x_t, e = inputs[:, :features], inputs[:, features:]
        out, _ = step(x_t, states)
        if kind == "lstm":
            _, c, i, f, g, o = out
            c = f * states[1] + (e[:, 4 * u : 5 * u] * (i * g) + e[:, 5 * u :])
            h = o * cell.activation(c)
            h = e[:, :u] * h + e[:, u : 2 * u]
            c = e[:, 2 * u : 3 * u] * c + e[:, 3 * u : 4 * u]
            return (h, c, i, f, g, o), [h, c]
        if kind == "gru":
            _, z, r, n = out
            h = z * states[0] + (e[:, 2 * u : 3 * u] * ((1 - z) * n) + e[:, 3 * u :])
            h = e[:, :u] * h + e[:, u : 2 * u]
            return (h, z, r, n), [h]
        h = e[:, :u] * out[0] + e[:, u : 2 * u]
        return (h, *out[1:]), [h]

    return edited


def _emit_loop(
    step: Callable[[Any, Any], Any], x: Any, mask: Any, init: list[Any], *, go_backwards: bool
) -> tuple[Any, Any]:
    """Keras' own loop (``backend.rnn``, time-major) around an emitting step. Returns the
    emitted tensors (time-major, processing order) and the final states.

    TensorFlow's and PyTorch's loops carry every emitted tensor over masked steps themselves.
    JAX's masked loop assumes one output tensor (it ``where``s the output against
    ``states[0]``) and flips a backward run's outputs as one array, so on JAX the step masks
    the states itself and the sequence is reversed beforehand. Emitted values at masked steps
    are never used (:func:`rnnlens.core.cells.split_emitted` carries h and c and sets gates to NaN),
    so they need no masking.
    """
    from keras.src import backend

    ops = _keras().ops
    xt = ops.swapaxes(x, 0, 1)
    mt = None if mask is None else ops.transpose(mask, (1, 0))
    if backend.backend() != "jax":
        _, emitted, final = backend.rnn(
            step,
            xt,
            init,
            go_backwards=go_backwards,
            mask=mt,
            unroll=False,
            # time-major: with no static length backend.rnn would take the batch axis (shape[1])
            # as its iteration cap (fixed batch, variable time); the loop stops at the real length
            input_length=x.shape[1] or 2**31 - 1,
            time_major=True,
            zero_output_for_mask=False,
            return_all_outputs=True,
        )
        return emitted, final
    if go_backwards:
        xt = ops.flip(xt, axis=0)
        mt = None if mt is None else ops.flip(mt, axis=0)
    inputs: Any = xt
    fn = step
    if mt is not None:
        inputs = (xt, ops.cast(mt, "bool"))

        def fn(packed: Any, states: Any) -> Any:
            x_t, m_t = packed
            out, new = step(x_t, states)
            kept = [ops.where(_rows(m_t, s), n, s) for n, s in zip(new, states)]
            # h is the layer's output too: repeat the previous one at masked steps, as Keras
            # does, since downstream layers read it.
            return (ops.where(_rows(m_t, out[0]), out[0], states[0]), *out[1:]), kept

    _, emitted, final = backend.rnn(fn, inputs, init, unroll=False, time_major=True, return_all_outputs=True)
    return emitted, final


def _rows(m: Any, like: Any) -> Any:
    """A (batch,) mask shaped to broadcast over ``like``'s rows."""
    return _keras().ops.reshape(m, (-1,) + (1,) * (len(like.shape) - 1))
