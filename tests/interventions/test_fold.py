"""h edits that fix units to constants over a range of steps run on PyTorch's fused kernel with
folded weights (rnnlens.adapters.torch_.fold): equal to the NumPy reference with the same
edits, and to rnnlens' own step loop, on hypothesis configurations; edits of other kinds still
run the loop.

Tolerances: against the float64 reference ``rtol=1e-4, atol=1e-5`` (as the other intervention
tests); against the step loop ``atol=1e-5`` (both float32; the fold adds the constant's product
to the bias before the GEMM, the loop inside it).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_reference import _reference_stack

import rnnlens
from rnnlens.adapters.torch_ import fold, record

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5


@pytest.fixture
def folds(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Records, for each edited layer call, whether the fold ran it."""
    seen: list[bool] = []

    def spy(*args: Any) -> Any:
        out = fold.run_folded(*args)
        seen.append(out is not None)
        return out

    monkeypatch.setattr(record, "run_folded", spy)
    return seen


@st.composite
def configs(draw):  # type: ignore[no-untyped-def]
    cls = draw(st.sampled_from([nn.LSTM, nn.GRU, nn.RNN]))
    layers = draw(st.integers(1, 2))
    hidden = draw(st.integers(2, 6))
    kw: dict[str, Any] = dict(num_layers=layers, batch_first=draw(st.booleans()), bias=draw(st.booleans()))
    if cls is nn.LSTM and draw(st.booleans()):
        kw["proj_size"] = draw(st.integers(1, hidden - 1))
    torch.manual_seed(draw(st.integers(0, 2**16)))
    m = cls(3, hidden, **kw).eval()
    n, t = draw(st.integers(1, 4)), draw(st.integers(1, 7))
    base = type(m).__name__.lower()
    names = [f"{base}.l{k}" for k in range(layers)] if layers > 1 else [base]
    width = kw.get("proj_size") or hidden
    a = draw(st.integers(0, t - 1))
    b = draw(st.integers(a, t - 1))
    step = draw(st.sampled_from([a, slice(a, b + 1), slice(a, None)]))
    units = draw(st.lists(st.integers(0, width - 1), min_size=1, max_size=width, unique=True))
    # bias-free layers take ablations only (a constant needs a bias to go into)
    value = draw(st.floats(-1.5, 1.5, allow_nan=False, width=32)) if kw["bias"] else 0.0
    per_sample = draw(st.booleans())
    if per_sample:  # other units, or none, per sample: several groups in one call
        keep = np.random.default_rng(draw(st.integers(0, 99))).random((n, len(units))) < 0.5
        edit = rnnlens.Edit(draw(st.sampled_from(names)), step, units=units, scale=keep.astype("float32"))
    else:
        edit = rnnlens.Edit(draw(st.sampled_from(names)), step, units=units, set=value)
    x = np.random.default_rng(draw(st.integers(0, 2**16))).normal(size=(n, t, 3)).astype("float32")
    return m, x, [edit], names


@settings(max_examples=80, deadline=None)
@given(configs())
def test_folded_edits_equal_the_reference(cfg: Any) -> None:
    m, x, edits, names = cfg
    seen: list[bool] = []
    original = record.run_folded

    def spy(*args: Any) -> Any:
        out = original(*args)
        seen.append(out is not None)
        return out

    record.run_folded = spy
    try:
        xin = x if m.batch_first else np.ascontiguousarray(x.transpose(1, 0, 2))  # time-major
        run = rnnlens.intervene(m, torch.from_numpy(xin), edits, fields=("h",))
    finally:
        record.run_folded = original
    assert seen == [True]
    ref = _reference_stack(m, x, edits, names)
    y = run.outputs[0] if m.batch_first else run.outputs[0].transpose(1, 0, 2)
    np.testing.assert_allclose(y, ref["output"], rtol=RTOL, atol=ATOL)
    for name in names:
        np.testing.assert_allclose(run.states[name].h, ref[(name, "forward")]["h"], rtol=RTOL, atol=ATOL)
    # the returned final state: the model's h_n (and c_n) after the edits
    final = run.outputs[1][0] if isinstance(m, nn.LSTM) else run.outputs[1]
    np.testing.assert_allclose(final[-1], ref["output"][:, -1], rtol=RTOL, atol=ATOL)
    if isinstance(m, nn.LSTM):
        c_last = ref[(names[-1], "forward")]["c"][:, -1]
        np.testing.assert_allclose(run.outputs[1][1][-1], c_last, rtol=RTOL, atol=ATOL)


def test_the_scan_through_the_fold_equals_the_step_loop(folds: list[bool], monkeypatch: Any) -> None:
    torch.manual_seed(1)
    gru = nn.GRU(4, 6, num_layers=2, batch_first=True).eval()
    x = np.random.default_rng(2).normal(size=(5, 9, 4)).astype("float32")

    def metric(out: Any) -> float:
        return float(out[0][:, -3:].sum())

    for steps in (None, slice(2, 6), [0, 4, 8]):
        folds.clear()
        folded = rnnlens.ablation_scan(gru, x, "gru.l0", metric, steps=steps, value=0.3)
        assert folds and all(folds)
        with monkeypatch.context() as patch:
            patch.setattr(record, "run_folded", lambda *a: None)  # the step loop
            looped = rnnlens.ablation_scan(gru, x, "gru.l0", metric, steps=steps, value=0.3)
        np.testing.assert_allclose(folded.effect, looped.effect, rtol=1e-4, atol=1e-5)


def test_a_no_op_edit_on_the_fold_is_the_models_own_output_bit_for_bit() -> None:
    torch.manual_seed(3)
    lstm = nn.LSTM(3, 5, batch_first=True).eval()
    x = torch.randn(4, 8, 3)
    run = rnnlens.intervene(lstm, x, rnnlens.Edit("lstm", slice(None), scale=1.0), fields=("h",))
    with torch.no_grad():
        y, (h, c) = lstm(x)
    np.testing.assert_array_equal(run.outputs[0], y.numpy())
    np.testing.assert_array_equal(run.outputs[1][0], h.numpy())
    np.testing.assert_array_equal(run.outputs[1][1], c.numpy())


@pytest.mark.parametrize(
    "edit",
    [
        rnnlens.Edit("lstm", 2, units=[1], add=0.5),  # leaves the unit live
        rnnlens.Edit("lstm", 2, units=[1], scale=0.5),
        rnnlens.Edit("lstm", slice(1, None, 2), units=[1], scale=0),  # steps with gaps
        rnnlens.Edit("lstm", 2, field="c", units=[1], scale=0),
    ],
)
def test_other_edits_run_the_step_loop(folds: list[bool], edit: rnnlens.Edit) -> None:
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4, batch_first=True).eval()
    rnnlens.intervene(lstm, torch.randn(2, 6, 3), edit, fields=("h", "c") if edit.field == "c" else ("h",))
    assert not any(folds)
