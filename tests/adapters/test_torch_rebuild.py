"""The rebuild on PyTorch's kernels (its GEMM, activations and elementwise arithmetic, as the
torch adapter hands them to :mod:`rnnlens.core.rebuild`) against the NumPy step-by-step reference.

Everything runs in float64, so rebuild and reference agree to 1e-10: a difference is a bug in
how the kernels are used (a wrong ``out=``, an aliasing write, a lost sign), not rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("torch")

from rnnlens.adapters.torch_.weights import _ELEMENTWISE, _SIGMOID, _TANH, _matmul
from rnnlens.core.rebuild import reconstruct_direction
from rnnlens.core.rebuild_ops import _NumPyElementwise
from rnnlens.core.spec import CellWeights
from rnnlens.errors import ParityError
from rnnlens.testing import reference_rnn

N_GATES = {"lstm": 4, "gru": 3}


def _problem(kind: str, seed: int, n: int, t: int, f: int, u: int, masked: bool, reverse: bool):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    g = N_GATES[kind]
    mask = rng.random((n, t)) < 0.7 if masked else None
    p = {
        "x": rng.normal(size=(n, t, f)),
        "kernel": rng.normal(size=(f, g * u)),
        "recurrent_kernel": rng.normal(size=(u, g * u)),
        "bias": rng.normal(size=g * u),
        "recurrent_bias": rng.normal(size=g * u),
        "h0": rng.normal(size=(n, u)),
        "c0": rng.normal(size=(n, u)) if kind == "lstm" else None,
        "mask": mask,
    }
    ref = reference_rnn(
        kind, p["x"], p["kernel"], p["recurrent_kernel"], p["bias"], p["recurrent_bias"],
        h0=p["h0"], c0=p["c0"], mask=mask, reverse=reverse,
    )  # fmt: skip
    w = CellWeights(
        kind, p["kernel"], p["recurrent_kernel"], p["bias"], p["recurrent_bias"], _TANH, _SIGMOID,
        matmul=_matmul, elementwise=_ELEMENTWISE,
    )  # fmt: skip
    return p, ref, w


def _rebuild(p, w, seq, reverse):  # type: ignore[no-untyped-def]
    return reconstruct_direction(
        w, p["x"], seq, p["h0"], p["c0"], p["mask"],
        reverse=reverse, want_c=True, want_gates=True, layer="l",
    )  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["lstm", "gru"]), st.integers(0, 2**32 - 1), st.integers(1, 6), st.integers(1, 9),
    st.integers(1, 5), st.integers(1, 6), st.booleans(), st.booleans(), st.booleans(),
)  # fmt: skip
def test_torch_kernels_rebuild_the_reference(kind, seed, n, t, f, u, masked, reverse, time_major) -> None:  # type: ignore[no-untyped-def]
    """Either layout of the kernel's output: PyTorch's layer outputs are time-major."""
    p, ref, w = _problem(kind, seed, n, t, f, u, masked, reverse)
    seq = ref["h"] if p["mask"] is None else np.where(p["mask"][..., None], ref["h"], 0.0)
    if time_major:
        seq = np.ascontiguousarray(seq.transpose(1, 0, 2)).transpose(1, 0, 2)
    out = _rebuild(p, w, seq, reverse)
    np.testing.assert_allclose(out.h, ref["h"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.stack(out.gates, axis=2), ref["gates"], rtol=1e-10, atol=1e-10)
    if kind == "lstm":
        np.testing.assert_allclose(out.c, ref["c"], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
@pytest.mark.parametrize("bad", [np.nan, 1e-3])
def test_a_kernel_output_off_by_a_little_or_nan_is_a_parity_error(kind, bad) -> None:  # type: ignore[no-untyped-def]
    p, ref, w = _problem(kind, 0, 4, 6, 3, 5, False, False)
    seq = np.ascontiguousarray(ref["h"].transpose(1, 0, 2)).transpose(1, 0, 2)  # time-major
    seq[2, 3, 1] += bad
    with pytest.raises(ParityError):
        _rebuild(p, w, seq, False)


def test_elementwise_ops_agree_with_numpy() -> None:
    rng = np.random.default_rng(3)
    a, b, c = (rng.normal(size=(7, 5)) for _ in range(3))
    for name, args in [("mul", (a, b)), ("addcmul", (a, b)), ("sub", (a, b)), ("submul", (c, a, b))]:
        outs = []
        for ew in (_ELEMENTWISE, _NumPyElementwise()):
            out = c.copy() if name == "addcmul" else np.empty_like(a)
            getattr(ew, name)(out, *args)
            outs.append(out)
        np.testing.assert_allclose(outs[0], outs[1], rtol=1e-14, err_msg=name)
    for ew in (_ELEMENTWISE, _NumPyElementwise()):
        assert ew.absmax(np.array([1.0, -3.0, 2.0])) == 3.0
        assert np.isnan(ew.absmax(np.array([1.0, np.nan, -3.0])))
        assert np.isnan(ew.absmax(np.array([np.nan, 1.0])))
