"""An independent, step-by-step NumPy reference of the recurrences rnnlens traces.

It shares no code with :mod:`rnnlens.core.cells` on purpose: it loops over time one step at a
time in float64, the way the equations are written in papers, and is the oracle that the
fast, batched reconstruction and every adapter are tested against. Downstream projects can
use it the same way.

Gate blocks are in rnnlens' canonical order (LSTM ``i f g o``; GRU ``z r n``); weights are
``x @ kernel`` style, i.e. (features, gates × units).

Example:
    >>> import numpy as np
    >>> from rnnlens.testing import reference_rnn
    >>> rng = np.random.default_rng(0)
    >>> out = reference_rnn("lstm", rng.normal(size=(2, 4, 3)), rng.normal(size=(3, 8)),
    ...                     rng.normal(size=(2, 8)))
    >>> out["h"].shape, out["c"].shape, out["gates"].shape
    ((2, 4, 2), (2, 4, 2), (2, 4, 4, 2))
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

__all__ = ["hard_sigmoid", "reference_rnn", "sigmoid"]

Act = Callable[[np.ndarray], np.ndarray]


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def hard_sigmoid(z: np.ndarray) -> np.ndarray:
    """Keras 3's ``hard_sigmoid``: ``relu6(z + 3) / 6``."""
    return np.clip(z + 3.0, 0.0, 6.0) / 6.0


def reference_rnn(
    kind: str,
    x: np.ndarray,
    kernel: np.ndarray,
    recurrent_kernel: np.ndarray,
    bias: np.ndarray | None = None,
    recurrent_bias: np.ndarray | None = None,
    *,
    h0: np.ndarray | None = None,
    c0: np.ndarray | None = None,
    mask: np.ndarray | None = None,
    reverse: bool = False,
    activation: Act = np.tanh,
    recurrent_activation: Act = sigmoid,
    reset_after: bool = True,
    projection: np.ndarray | None = None,
    edit: Callable[[int, np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]] | None = None,
    edit_write: Callable[[int, np.ndarray], np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Run one direction of an LSTM / GRU / simple RNN step by step.

    Returns ``h`` (sample, time, unit), and for LSTM ``c``, for LSTM and GRU ``gates``
    (sample, time, gate, unit), all in *input* time order, float64. At a masked step the
    state is carried and the gates are NaN; a ``reverse`` direction reads from the end.
    ``edit(t, h, c) -> (h, c)``, if given, replaces the state after input step ``t`` (the
    oracle of :func:`rnnlens.intervene`): what is stored and carried is what it returns.
    ``edit_write(t, w) -> w``, if given, replaces what step ``t`` writes into the linear state
    (LSTM ``i * g`` into c, GRU ``(1 - z) * n`` into h) before the state is formed from it.
    """
    x = np.asarray(x, np.float64)
    n, t, _ = x.shape
    W = np.asarray(kernel, np.float64)
    U = np.asarray(recurrent_kernel, np.float64)
    n_gates = {"lstm": 4, "gru": 3, "simple": 1}[kind]
    cu = W.shape[1] // n_gates
    units = projection.shape[1] if projection is not None else cu
    b = np.zeros(W.shape[1]) if bias is None else np.asarray(bias, np.float64)
    rb = np.zeros(W.shape[1]) if recurrent_bias is None else np.asarray(recurrent_bias, np.float64)
    h = np.zeros((n, units)) if h0 is None else np.asarray(h0, np.float64).copy()
    c = np.zeros((n, cu)) if c0 is None else np.asarray(c0, np.float64).copy()
    m = np.ones((n, t), bool) if mask is None else np.asarray(mask, bool)

    hs = np.zeros((n, t, units))
    cs = np.zeros((n, t, cu))
    gs = np.full((n, t, n_gates, cu), np.nan)
    order = range(t - 1, -1, -1) if reverse else range(t)
    for step in order:
        xt = x[:, step]
        if kind == "lstm":
            z = xt @ W + b + h @ U + rb
            i = recurrent_activation(z[:, 0:cu])
            f = recurrent_activation(z[:, cu : 2 * cu])
            g = activation(z[:, 2 * cu : 3 * cu])
            o = recurrent_activation(z[:, 3 * cu :])
            w_t = i * g if edit_write is None else np.asarray(edit_write(step, (i * g).copy()), np.float64)
            c_new = f * c + w_t
            h_new = o * activation(c_new)
            if projection is not None:
                h_new = h_new @ projection
            gates = np.stack([i, f, g, o], axis=1)
        elif kind == "gru":
            xz = xt @ W + b
            zg = recurrent_activation(xz[:, :cu] + h @ U[:, :cu] + rb[:cu])
            r = recurrent_activation(xz[:, cu : 2 * cu] + h @ U[:, cu : 2 * cu] + rb[cu : 2 * cu])
            if reset_after:
                cand = activation(xz[:, 2 * cu :] + r * (h @ U[:, 2 * cu :] + rb[2 * cu :]))
            else:
                cand = activation(xz[:, 2 * cu :] + (r * h) @ U[:, 2 * cu :] + rb[2 * cu :])
            w_t = (1.0 - zg) * cand
            if edit_write is not None:
                w_t = np.asarray(edit_write(step, w_t.copy()), np.float64)
            h_new = zg * h + w_t
            c_new = c
            gates = np.stack([zg, r, cand], axis=1)
        elif kind == "simple":
            h_new = activation(xt @ W + b + h @ U + rb)
            c_new = c
            gates = np.zeros((n, 0, cu))
        else:
            raise ValueError(f"kind must be 'lstm', 'gru' or 'simple'; received {kind!r}")
        valid = m[:, step][:, None]
        h = np.where(valid, h_new, h)
        c = np.where(valid, c_new, c)
        if edit is not None:
            h, c = (np.asarray(a, np.float64) for a in edit(step, h.copy(), c.copy()))
        hs[:, step], cs[:, step] = h, c
        if n_gates > 1:
            gs[:, step] = np.where(valid[:, :, None], gates, np.nan)
    out = {"h": hs}
    if kind == "lstm":
        out["c"] = cs
    if kind in ("lstm", "gru"):
        out["gates"] = gs
    return out
