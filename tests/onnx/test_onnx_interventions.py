"""rnnlens.intervene on ONNX models: the same edits give the same outputs and states as on the
PyTorch module the graph was exported from (itself checked against the NumPy reference in
tests/interventions), and a no-op edit gives ONNX Runtime's own outputs.

Tolerances: ``atol=1e-5`` between the ONNX and PyTorch runs (both float32, different kernels);
``atol=1e-6`` for a no-op edit against ONNX Runtime.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import OptionError

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")
from onnx_helpers import export, recurrent_model, run_ort  # noqa: E402
from torch import nn  # noqa: E402

ATOL = 1e-5


class Net(nn.Module):
    def __init__(self, cls: Any) -> None:
        super().__init__()
        self.rnn = cls(3, 5, num_layers=2, bidirectional=True)
        self.head = nn.Linear(10, 2)

    def forward(self, x: Any) -> Any:
        return self.head(self.rnn(x)[0])


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
def test_edits_on_onnx_equal_edits_on_the_exported_module(cls: Any, tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = Net(cls).eval()
    x = torch.randn(6, 4, 3)  # (time, batch, feature)
    onnx_model = rnnlens.load_model(export(m, (x,), tmp_path / "m.onnx"))
    names = rnnlens.describe(onnx_model).names
    base = "rnn"  # the module's path in Net
    pairs = {f"{base}.l0": names[0], f"{base}.l1": names[1]}
    field = "c" if cls is nn.LSTM else "h"

    def edits(layer: dict[str, str]) -> list[rnnlens.Edit]:
        return [
            rnnlens.Edit(layer[f"{base}.l0"], 2, field=field, units=[0, 3], scale=0, direction="backward"),
            rnnlens.Edit(layer[f"{base}.l1"], slice(1, 4), add=0.5, direction="forward"),
        ]

    ours = rnnlens.intervene(onnx_model, x.numpy(), edits(pairs))
    ref = rnnlens.intervene(m, x, edits({k: k for k in pairs}))
    np.testing.assert_allclose(ours.outputs[0], ref.outputs, rtol=0, atol=ATOL)
    for t_name, o_name in pairs.items():
        for d in ("forward", "backward"):
            a, b = getattr(ours.states[o_name], d), getattr(ref.states[t_name], d)
            np.testing.assert_allclose(a.h, b.h, rtol=0, atol=ATOL, err_msg=f"{o_name} {d}")
            if cls is nn.LSTM:
                np.testing.assert_allclose(a.c, b.c, rtol=0, atol=ATOL)


def test_a_no_op_edit_is_onnx_runtimes_output_and_masked_steps_are_refused() -> None:
    rng = np.random.default_rng(1)
    h, f = 4, 3
    weights = {
        "W": rng.normal(size=(1, 4 * h, f)),
        "R": rng.normal(size=(1, 4 * h, h)),
        "B": rng.normal(size=(1, 8 * h)),
    }
    model = recurrent_model("LSTM", hidden=h, features=f, weights=weights, lens=True, outputs=("Y", "Y_h"))
    x = rng.normal(size=(5, 3, f)).astype("float32")
    lens = np.array([5, 2, 4], "int32")
    own = run_ort(model, {"x": x, "lens": lens})[0]
    run = rnnlens.intervene(model, x, rnnlens.Edit("rec", 1, add=0.0), lens=lens)
    np.testing.assert_allclose(run.outputs[0], own, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(run.states["rec"].mask, np.arange(5)[None] < lens[:, None])
    edited = rnnlens.intervene(model, x, rnnlens.Edit("rec", 1, units=0, set=0.25), lens=lens)
    assert np.all(edited.outputs[0][1, 0, :, 0] == np.float32(0.25))
    assert np.all(edited.outputs[0][2:, 0, 1] == 0)  # zeros past sample 1's length, as ONNX Runtime writes
    with pytest.raises(OptionError, match="masked"):
        rnnlens.intervene(model, x, rnnlens.Edit("rec", 3, set=0.0), lens=lens)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_write_edits_on_onnx_equal_write_edits_on_the_module(cls: Any, tmp_path: Path) -> None:
    """target="write" runs in rnnlens' NumPy step loop (core/steploop.py) for ONNX nodes."""
    torch.manual_seed(1)
    m = Net(cls).eval()
    x = torch.randn(6, 4, 3)
    onnx_model = rnnlens.load_model(export(m, (x,), tmp_path / "m.onnx"))
    names = rnnlens.describe(onnx_model).names
    field = "c" if cls is nn.LSTM else "h"

    def edits(l0: str, l1: str) -> list[rnnlens.Edit]:
        return [
            rnnlens.Edit(l0, 2, field=field, units=[0, 3], scale=3, direction="backward", target="write"),
            rnnlens.Edit(l1, slice(1, 4), field=field, add=0.5, direction="forward", target="write"),
        ]

    ours = rnnlens.intervene(onnx_model, x.numpy(), edits(names[0], names[1]))
    ref = rnnlens.intervene(m, x, edits("rnn.l0", "rnn.l1"))
    np.testing.assert_allclose(ours.outputs[0], ref.outputs, rtol=0, atol=ATOL)
    np.testing.assert_allclose(ours.states[names[0]].h, ref.states["rnn.l0"].h, rtol=0, atol=ATOL)
