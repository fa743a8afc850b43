"""float16 ``LSTM`` / ``GRU`` / ``RNN`` nodes on ONNX Runtime's CPU provider: computed in float32.

ONNX Runtime's CPU recurrent kernels have no float16 implementation: the session inserts casts
around the node (``InsertCastTransformer``), so the kernel runs in float32 on the float16 weights
and input widened exactly to float32, carries ``h`` and ``c`` in float32 from step to step, and
only its outputs ``Y`` / ``Y_h`` / ``Y_c`` are rounded to float16. A rebuild fed those rounded
``h`` would not be the kernel's states (measured: c 1.8e-3 off); :func:`float32_direction` runs
the recurrence the way the kernel does — float32, from the node's own initial state, its own
``h`` carried — and checks it against ``Y``: each value within one float16 rounding
(``|h - Y| <= 2**-11 |Y| + 1e-6``; measured: the rounded h is ``Y`` bitwise but for ~0.1% of
values at rounding ties, which the kernel's float32 sums, in another order, round the other way).
``h`` is the kernel's ``Y``; ``c`` and the gates are the float32 states rounded to float16, as
the kernel rounds what it outputs (``c`` at the last step is its ``Y_c``).

>>> import numpy as np
>>> from rnnlens.core.spec import CellWeights
>>> rng = np.random.default_rng(0)
>>> k, u = rng.normal(size=(2, 3)).astype(np.float16), rng.normal(size=(3, 3)).astype(np.float16)
>>> w = CellWeights("simple", k, u, None, None, np.tanh, np.tanh)
>>> x = rng.normal(size=(1, 4, 2)).astype(np.float16)
>>> h = np.zeros((1, 3), np.float32)
>>> y = np.stack([h := np.tanh(x[:, t].astype(np.float32) @ k.astype(np.float32) + h @ u.astype(np.float32))
...               for t in range(4)], 1).astype(np.float16)
>>> float32_direction(w, x, y, np.zeros((1, 3), np.float16), None, None, reverse=False, layer="rnn").h.dtype
dtype('float16')
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ...core.cells import DirectionArrays, carry_forward, check_parity
from ...core.spec import CellWeights
from ...core.steploop import run_direction
from ...errors import ParityError

__all__ = ["TOLERANCE", "float32_direction", "widened"]

#: one float16 rounding (unit roundoff 2**-11), and float32 slack near 0
TOLERANCE = (2.0**-11, 1e-6)

_F32 = np.float32


def widened(w: CellWeights) -> CellWeights:
    """The weights as the kernel uses them: float16 widened (exactly) to float32."""

    def f(a: np.ndarray | None) -> np.ndarray | None:
        return None if a is None else np.asarray(a, _F32)

    return replace(
        w,
        kernel=np.asarray(w.kernel, _F32),
        recurrent_kernel=np.asarray(w.recurrent_kernel, _F32),
        bias=f(w.bias),
        recurrent_bias=f(w.recurrent_bias),
        peepholes=f(w.peepholes),
    )


def float32_direction(
    w: CellWeights,
    x: np.ndarray,
    seq: np.ndarray,
    h0: np.ndarray,
    c0: np.ndarray | None,
    mask: np.ndarray | None,
    *,
    reverse: bool,
    layer: str,
) -> DirectionArrays:
    """One direction of a float16 node: ``h`` the kernel's ``seq`` (carried at masked steps, as
    the float32 loop carries its own), ``c`` and the gates from the float32 loop, checked."""
    res = run_direction(
        widened(w),
        np.asarray(x, _F32),
        np.asarray(h0, _F32),
        None if c0 is None else np.asarray(c0, _F32),
        mask,
        reverse=reverse,
    )
    got = res.arrays.h
    try:
        check_parity(
            np.asarray(seq, _F32),
            np.asarray(got, _F32),
            mask,
            layer=layer,
            what="the float32 recurrence ONNX Runtime runs for a float16 node",
            tol=TOLERANCE,
        )
    except ParityError as e:
        raise ParityError(
            f"{str(e).split('. The cell probably')[0]}. rnnlens reproduces ONNX Runtime's CPU kernel, "
            "which runs float16 recurrent nodes in float32 (casts inserted around them); another "
            "execution provider computes them otherwise. Ask for fields=('h',): h is the kernel's own."
        ) from None
    flip = (lambda a: a[:, ::-1]) if reverse else (lambda a: a)
    h = flip(
        carry_forward(flip(np.asarray(seq)), None if mask is None else flip(mask), np.asarray(h0, seq.dtype))
    )
    c = None if res.arrays.c is None else res.arrays.c.astype(seq.dtype)
    gates = None if res.arrays.gates is None else tuple(g.astype(seq.dtype) for g in res.arrays.gates)
    return DirectionArrays(h=h, c=c, gates=gates)
