"""flax.nnx modules: each cell against a per-step loop of its own ``__call__`` and the NumPy
reference (weights read from the nnx parameters here), nnx.Bidirectional with seq_lengths, a cell
in the user's own loop, an intervention, and the model untouched. ``rtol = atol = 1e-5``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.testing import reference_rnn

pytest.importorskip("flax")
from flax import nnx

TOL = {"rtol": 1e-5, "atol": 1e-5}
F, U = 3, 4
CELLS = {
    "lstm": nnx.LSTMCell,
    "optimized_lstm": nnx.OptimizedLSTMCell,
    "gru": nnx.GRUCell,
    "simple": nnx.SimpleCell,
}


def _v(x: Any) -> np.ndarray:
    return np.asarray(x[...] if isinstance(x, nnx.Variable) else x)


def _reference(kind: str, cell: Any) -> dict[str, Any]:
    """reference_rnn's weights of an nnx cell, canonical gate order."""
    if kind == "lstm":
        return {
            "kernel": np.concatenate([_v(getattr(cell, n).kernel) for n in ("ii", "if_", "ig", "io")], -1),
            "recurrent_kernel": np.concatenate(
                [_v(getattr(cell, n).kernel) for n in ("hi", "hf", "hg", "ho")], -1
            ),
            "recurrent_bias": np.concatenate(
                [_v(getattr(cell, n).bias) for n in ("hi", "hf", "hg", "ho")], -1
            ),
        }
    if kind == "optimized_lstm":
        return {"kernel": _v(cell.dense_i.kernel), "recurrent_kernel": _v(cell.dense_h.kernel),
                "recurrent_bias": _v(cell.dense_h.bias)}  # fmt: skip
    if kind == "gru":  # nnx stores r, z, n; rnnlens z, r, n

        def zrn(a: np.ndarray) -> np.ndarray:
            return np.concatenate([a[..., U : 2 * U], a[..., :U], a[..., 2 * U :]], axis=-1)

        return {"kernel": zrn(_v(cell.dense_i.kernel)), "bias": zrn(_v(cell.dense_i.bias)),
                "recurrent_kernel": zrn(_v(cell.dense_h.kernel))}  # fmt: skip
    bias = cell.dense_i.bias if cell.dense_i.bias is not None else cell.dense_h.bias
    return {"kernel": _v(cell.dense_i.kernel), "bias": _v(bias), "recurrent_kernel": _v(cell.dense_h.kernel)}


def _x(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, 5, F)).astype(np.float32)


@pytest.mark.parametrize("kind", list(CELLS))
def test_every_nnx_cell_equals_a_loop_of_its_own_call_and_the_reference(kind: str) -> None:
    rnn = nnx.RNN(CELLS[kind](F, U, rngs=nnx.Rngs(1)), rngs=nnx.Rngs(2))
    x = _x()
    before = rnnlens.adapters.model_digest(rnn)
    ls = rnnlens.trace(rnn, x)["cell"]
    assert rnnlens.adapters.model_digest(rnn) == before
    carry = rnn.cell.initialize_carry(x[:, 0].shape, rngs=nnx.Rngs(0))
    for t in range(x.shape[1]):
        carry, y = rnn.cell(carry, x[:, t])
        np.testing.assert_allclose(ls.h[:, t], np.asarray(y), **TOL)
        if isinstance(carry, tuple):
            np.testing.assert_allclose(ls.c[:, t], np.asarray(carry[0]), **TOL)
    want = reference_rnn("lstm" if "lstm" in kind else kind, x, **_reference(kind, rnn.cell))
    np.testing.assert_allclose(ls.h, want["h"], **TOL)
    if "gates" in want:
        np.testing.assert_allclose(ls.gates.array, want["gates"], **TOL)


class _Net(nnx.Module):
    def __init__(self, rngs: nnx.Rngs) -> None:
        self.bi = nnx.Bidirectional(nnx.RNN(nnx.GRUCell(F, U, rngs=rngs), rngs=rngs),
                                    nnx.RNN(nnx.GRUCell(F, U, rngs=rngs), rngs=rngs))  # fmt: skip
        self.looped = nnx.LSTMCell(2 * U, U, rngs=rngs)

    def __call__(self, x: Any, seq_lengths: Any = None) -> Any:
        y = self.bi(x, seq_lengths=seq_lengths)
        carry = self.looped.initialize_carry(y[:, 0].shape, rngs=nnx.Rngs(0))
        for t in range(y.shape[1]):
            carry, out = self.looped(carry, y[:, t])
        return y, out


def test_nnx_bidirectional_with_seq_lengths_a_looped_cell_and_an_intervention() -> None:
    model = _Net(nnx.Rngs(3))
    x, lengths = _x(1), np.array([5, 2, 4])
    valid = np.arange(5)[None, :] < lengths[:, None]
    states = rnnlens.trace(model, x, seq_lengths=lengths)
    assert list(states) == ["bi", "looped"]
    for direction, rnn in (("forward", model.bi.forward_rnn), ("backward", model.bi.backward_rnn)):
        ref = {**_reference("gru", rnn.cell), "reverse": direction == "backward"}
        want = reference_rnn("gru", x, mask=valid, **ref)
        np.testing.assert_allclose(states["bi"].directions[direction].h, want["h"], **TOL)
        np.testing.assert_allclose(states["bi"].directions[direction].gates.array, want["gates"], **TOL)
    _, out = model(x, seq_lengths=lengths)
    np.testing.assert_allclose(states["looped"].h[:, -1], np.asarray(out), **TOL)

    def edit(t: int, h: np.ndarray, c: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if t == 0:
            h[:, 1] = 0.0
        return h, c

    run = rnnlens.intervene(model, x, rnnlens.Edit("bi", 0, units=1, scale=0.0, direction="forward"))
    fwd = model.bi.forward_rnn.cell
    np.testing.assert_allclose(
        run.states["bi"].forward.h, reference_rnn("gru", x, edit=edit, **_reference("gru", fwd))["h"], **TOL
    )
