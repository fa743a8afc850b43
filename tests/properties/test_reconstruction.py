"""The batched reconstruction (rnnlens.core.cells) against the step-by-step reference, no framework.

Both run in float64 here, so they agree to 1e-10: any difference is a bug in the maths, not
rounding. The kernel's h is played by the reference's own h.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rnnlens.core.cells import carry_forward
from rnnlens.core.rebuild import reconstruct_direction
from rnnlens.core.spec import CellWeights
from rnnlens.errors import ParityError
from rnnlens.testing import hard_sigmoid, reference_rnn, sigmoid

N_GATES = {"lstm": 4, "gru": 3}


@st.composite
def problems(draw):  # type: ignore[no-untyped-def]
    kind = draw(st.sampled_from(["lstm", "gru"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    n, t, f = draw(st.integers(1, 5)), draw(st.integers(1, 12)), draw(st.integers(1, 5))
    cu = draw(st.integers(1, 6))
    proj = draw(st.sampled_from([None, 1, 2])) if kind == "lstm" else None
    units = proj or cu
    g = N_GATES[kind]
    mask = rng.random((n, t)) < draw(st.sampled_from([0.0, 0.3, 0.8, 1.0]))
    return {
        "kind": kind,
        "x": rng.normal(size=(n, t, f)),
        "kernel": rng.normal(size=(f, g * cu)),
        "recurrent_kernel": rng.normal(size=(units, g * cu)),
        "bias": rng.normal(size=g * cu) if draw(st.booleans()) else None,
        "recurrent_bias": rng.normal(size=g * cu) if draw(st.booleans()) else None,
        "h0": rng.normal(size=(n, units)) if draw(st.booleans()) else np.zeros((n, units)),
        "c0": rng.normal(size=(n, cu)) if kind == "lstm" and draw(st.booleans()) else None,
        "mask": None if mask.all() else mask,
        "reverse": draw(st.booleans()),
        "reset_after": draw(st.booleans()),
        "recurrent_activation": draw(st.sampled_from([sigmoid, hard_sigmoid])),
        "projection": None if proj is None else rng.normal(size=(cu, proj)) * 0.5,
    }


def _weights(p, **override) -> CellWeights:  # type: ignore[no-untyped-def]
    kw = {
        k: p[k]
        for k in (
            "kernel",
            "recurrent_kernel",
            "bias",
            "recurrent_bias",
            "reset_after",
            "recurrent_activation",
            "projection",
        )
    }
    kw.update(override)
    return CellWeights(kind=p["kind"], activation=np.tanh, **kw)


def _reference(p):  # type: ignore[no-untyped-def]
    return reference_rnn(
        p["kind"],
        p["x"],
        p["kernel"],
        p["recurrent_kernel"],
        p["bias"],
        p["recurrent_bias"],
        h0=p["h0"],
        c0=p["c0"],
        mask=p["mask"],
        reverse=p["reverse"],
        reset_after=p["reset_after"],
        recurrent_activation=p["recurrent_activation"],
        projection=p["projection"],
    )


def _kernel_output(p, ref):  # type: ignore[no-untyped-def]
    """What a framework outputs: zeros at masked steps (cuDNN-style), not the carried state."""
    return ref["h"] if p["mask"] is None else np.where(p["mask"][..., None], ref["h"], 0.0)


@settings(max_examples=200)
@given(problems(), st.booleans())
def test_reconstruction_equals_reference(p, time_major) -> None:  # type: ignore[no-untyped-def]
    """Either memory layout of the kernel's output (PyTorch's layer outputs are time-major)."""
    ref = _reference(p)
    seq = _kernel_output(p, ref)
    if time_major:
        seq = np.ascontiguousarray(seq.transpose(1, 0, 2)).transpose(1, 0, 2)
    out = reconstruct_direction(
        _weights(p),
        p["x"],
        seq,
        p["h0"],
        p["c0"],
        p["mask"],
        reverse=p["reverse"],
        want_c=True,
        want_gates=True,
        layer="l",
    )
    np.testing.assert_allclose(out.h, ref["h"], rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(np.stack(out.gates, axis=2), ref["gates"], rtol=1e-10, atol=1e-10)
    if p["kind"] == "lstm":
        np.testing.assert_allclose(out.c, ref["c"], rtol=1e-10, atol=1e-10)


@settings(max_examples=50)
@given(problems())
def test_wrong_equations_raise_parity_error(p) -> None:  # type: ignore[no-untyped-def]
    ref = _reference(p)
    if p["mask"] is not None and not p["mask"].any():
        return  # nothing valid to check against
    g = N_GATES[p["kind"]]
    # Swap the first two gate blocks: the classic "wrong gate order" bug.
    k = p["kernel"].reshape(p["kernel"].shape[0], g, -1)[:, [1, 0, *range(2, g)]].reshape(p["kernel"].shape)
    if np.allclose(k, p["kernel"]):
        return
    with pytest.raises(ParityError, match="does not reproduce"):
        reconstruct_direction(
            _weights(p, kernel=k),
            p["x"],
            _kernel_output(p, ref),
            p["h0"],
            p["c0"],
            p["mask"],
            reverse=p["reverse"],
            want_c=True,
            want_gates=True,
            layer="l",
        )


def test_carry_forward_repeats_last_valid_state_and_starts_from_h0() -> None:
    seq = np.arange(1.0, 6.0).reshape(1, 5, 1)
    mask = np.array([[False, True, False, False, True]])
    out = carry_forward(seq, mask, np.array([[-1.0]]))
    np.testing.assert_array_equal(out[0, :, 0], [-1.0, 2.0, 2.0, 2.0, 5.0])


def _inplace(fn):  # type: ignore[no-untyped-def]
    """``fn`` with the optional in-place form an adapter may attach (see rnnlens.core.rebuild)."""

    def apply(a):  # type: ignore[no-untyped-def]
        return fn(a)

    def inplace(a):  # type: ignore[no-untyped-def]
        a[...] = fn(a) * 1.0

    apply.inplace = inplace  # type: ignore[attr-defined]
    return apply


@settings(max_examples=50)
@given(problems())
def test_adapter_fast_paths_give_the_same_states(p) -> None:  # type: ignore[no-untyped-def]
    """A framework GEMM (``matmul``) and in-place activations change nothing but speed."""
    ref = _reference(p)
    calls = []

    def matmul(a, b):  # type: ignore[no-untyped-def]
        calls.append(a.shape)
        return np.matmul(a, b)

    fast = _weights(p, matmul=matmul, recurrent_activation=_inplace(p["recurrent_activation"]))
    fast = CellWeights(**{**fast.__dict__, "activation": _inplace(np.tanh)})
    out = reconstruct_direction(
        fast, p["x"], _kernel_output(p, ref), p["h0"], p["c0"], p["mask"],
        reverse=p["reverse"], want_c=True, want_gates=True, layer="l",
    )  # fmt: skip
    assert calls  # the adapter's GEMM did the work
    np.testing.assert_allclose(np.stack(out.gates, axis=2), ref["gates"], rtol=1e-10, atol=1e-10)
    if p["kind"] == "lstm":
        np.testing.assert_allclose(out.c, ref["c"], rtol=1e-10, atol=1e-10)
