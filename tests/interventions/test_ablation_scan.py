"""rnnlens.ablation_scan: batched single-unit ablations equal one intervene() call per unit."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import LayerNotFoundError, OptionTypeError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402


class _Classifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.LSTM(3, 6, num_layers=2, batch_first=True)
        self.head = nn.Linear(6, 2)

    def forward(self, x: Any) -> Any:
        seq, _ = self.rnn(x)
        return self.head(seq[:, -1])


def _metric(out: Any) -> float:
    return float(out[:, 1].mean())


@pytest.mark.parametrize("steps", [None, slice(2, None), [1, 4]])
def test_scan_equals_one_intervention_per_unit(steps: Any) -> None:
    torch.manual_seed(0)
    m = _Classifier().eval()
    x = np.random.default_rng(0).normal(size=(5, 6, 3)).astype("float32")
    scan = rnnlens.ablation_scan(m, x, "rnn.l0", _metric, field="c", steps=steps, group=4)
    cols = [slice(None)] if steps is None else [steps] if isinstance(steps, slice) else steps
    for u in range(6):
        for j, col in enumerate(cols):
            one = rnnlens.intervene(m, x, rnnlens.Edit("rnn.l0", col, field="c", units=u, set=0.0))
            assert scan.values[u, j] == pytest.approx(_metric(one.outputs), abs=1e-6)
    base = rnnlens.intervene(m, x, rnnlens.Edit("rnn.l0", 0, add=0.0)).outputs
    assert scan.baseline == pytest.approx(_metric(base), abs=1e-7)
    assert scan.effect.shape == (6, len(cols))
    assert len(scan.top(3)) == 3
    assert "unit" in repr(scan)
    da = scan.to_xarray()
    assert da.dims == ("unit", "step") and list(da.unit.values) == list(range(6))


def test_outputs_with_the_batch_on_another_axis_are_split_right() -> None:
    torch.manual_seed(1)
    m = nn.GRU(3, 4, num_layers=2).eval()  # time-major: output (T, N, H), h_n (L, N, H)
    x = np.random.default_rng(1).normal(size=(5, 3, 3)).astype("float32")  # (T=5, N=3)
    metric = lambda out: float(out[1][-1].sum())  # noqa: E731  # the top layer's h_n
    scan = rnnlens.ablation_scan(m, x, "gru.l1", metric, units=[0, 2], steps=[4], sample_axis=1)
    for row, u in enumerate([0, 2]):
        one = rnnlens.intervene(m, x, rnnlens.Edit("gru.l1", 4, units=u, set=0.0))
        assert scan.values[row, 0] == pytest.approx(metric(one.outputs), abs=1e-6)
        assert one.outputs[1][-1][:, u].tolist() == [0.0, 0.0, 0.0]


def test_scan_errors() -> None:
    m = nn.LSTM(3, 4, batch_first=True).eval()
    x = np.zeros((2, 3, 3), "float32")
    with pytest.raises(LayerNotFoundError):
        rnnlens.ablation_scan(m, x, "lstm.l0", _metric)
    with pytest.raises(OptionTypeError, match="one number"):
        rnnlens.ablation_scan(m, x, "lstm", lambda out: out[0])


def test_cli_ablate_writes_outputs_with_and_without(tmp_path: Any) -> None:
    from rnnlens.cli import main

    torch.manual_seed(5)
    m = nn.LSTM(3, 4, batch_first=True).eval()
    torch.save(m, tmp_path / "m.pt")
    x = np.random.default_rng(5).normal(size=(2, 6, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    out = tmp_path / "o.npz"
    code = main(["ablate", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), "--layer", "lstm",
                 "--units", "1,3", "--steps", "2:", "--unsafe", "-o", str(out)])  # fmt: skip
    assert code == 0
    got = np.load(out)
    assert np.all(got["ablated_0"][:, 2:, [1, 3]] == 0)
    np.testing.assert_allclose(got["baseline_0"], m(torch.from_numpy(x))[0].detach().numpy(), atol=1e-6)
    assert main(["ablate", str(tmp_path / "m.pt"), str(tmp_path / "x.npy"), "--layer", "lstm",
                 "--steps", "x", "--unsafe", "-o", str(out)]) == 2  # fmt: skip


def test_notebook_views_are_html_with_a_heatmap() -> None:
    torch.manual_seed(6)
    m = nn.LSTM(3, 4, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = np.random.default_rng(6).normal(size=(2, 5, 3)).astype("float32")
    run = rnnlens.intervene(m, x, rnnlens.Edit("lstm.l0", 1, scale=0))
    for obj in (run, run.states, run.states["lstm.l1"]):
        page = obj._repr_html_()
        assert "<table>" in page and "<svg" in page and "lstm.l1" in page
    scan = rnnlens.ablation_scan(m, x, "lstm.l1", lambda o: float(o[0].sum()), units=[0, 1])
    assert "<svg" in scan._repr_html_() and "lstm.l1.h" in scan._repr_html_()
