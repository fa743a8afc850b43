"""PyTorch ``quantize_dynamic`` recurrent modules in a word-language model (traced; the kernel
itself is tested in test_torch_quantized_dynamic.py), ``torch.autocast`` and bfloat16 modules
(h is the kernel's own; c and gates, which rnnlens would compute differently from the oneDNN
kernel, are refused with ``fields=('h',)`` offered; edited runs under autocast refused), float16
modules (every field, h the kernel's)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.cli.command import main  # noqa: E402


class WordLM(torch.nn.Module):
    """A word-language-model: embedding, LSTM, GRU, decoder."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = torch.nn.Embedding(20, 6)
        self.lstm = torch.nn.LSTM(6, 8, batch_first=True)
        self.gru = torch.nn.GRU(8, 5, batch_first=True)
        self.out = torch.nn.Linear(5, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(self.emb(x))
        y, _ = self.gru(y)
        return self.out(y)


def _quantized(layers: set[type]) -> torch.nn.Module:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(WordLM().eval(), layers, dtype=torch.qint8)


X = torch.randint(0, 20, (2, 7))


def test_quantize_dynamic_word_lm_traced() -> None:
    """LSTM, GRU and the decoder quantized: every layer traced, h the module's own, edits run."""
    model = _quantized({torch.nn.LSTM, torch.nn.GRU, torch.nn.Linear})
    assert [s.name for s in rnnlens.describe(model)] == ["lstm", "gru"]
    states = rnnlens.trace(model, X)
    with torch.no_grad():
        y, _ = model.lstm(model.emb(X))
        g, _ = model.gru(y)
    np.testing.assert_array_equal(states["lstm"].h, y.numpy())
    np.testing.assert_array_equal(states["gru"].h, g.numpy())
    assert np.isfinite(states["lstm"].c).all() and list(states["gru"].gates) == ["z", "r", "n"]
    result = rnnlens.intervene(model, X, [rnnlens.Edit("lstm", 0, scale=0)])
    assert (result.states["lstm"].h[:, 0] == 0).all()


def test_one_quantized_layer_beside_a_float_one() -> None:
    model = _quantized({torch.nn.LSTM})
    assert isinstance(model.gru, torch.nn.GRU)
    states = rnnlens.trace(model, X)
    assert list(states) == ["lstm", "gru"]


def test_quantized_file_in_cli(tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "q.pt"
    torch.save(_quantized({torch.nn.LSTM}), path)
    assert main(["inspect", str(path), "--unsafe"]) == 0
    out = capsys.readouterr().out
    assert "lstm" in out and "gru" in out


def test_autocast_h_is_the_kernels() -> None:
    """(float16 autocast on CPU: PyTorch's own LSTM fails there, a oneDNN primitive error.)"""
    dtype = torch.bfloat16
    torch.manual_seed(0)
    model = WordLM().eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=dtype):
        own, _ = model.lstm(model.emb(X))
        states = rnnlens.trace(model, X, fields=("h",))
        np.testing.assert_array_equal(np.asarray(states["lstm"].h, np.float32), own.float().numpy())
        # every field, as the bfloat16 kernels compute them (test_torch_bfloat16.py)
        states = rnnlens.trace(model, X)
        np.testing.assert_array_equal(states["lstm"].h, own.float().numpy())
        assert list(states["gru"].gates) == ["z", "r", "n"]
        with pytest.raises(rnnlens.UnsupportedLayerError, match="autocast"):
            rnnlens.intervene(model, X, [rnnlens.Edit("lstm", 0, scale=0)])
    plain = rnnlens.trace(model, X)  # outside autocast: every field as before
    assert plain["lstm"].c.dtype == np.float32


def test_bfloat16_module() -> None:
    """Every field (h the kernels' own); a PackedSequence: c and gates refused, h offered."""
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(0)
    model = WordLM().eval().to(torch.bfloat16)
    x = torch.randn(2, 7, 6).to(torch.bfloat16)
    with torch.no_grad():
        own, _ = model.lstm(x)
        y_gru, _ = model.gru(own)
    np.testing.assert_array_equal(rnnlens.trace(model.lstm, x)["lstm"].h, own.float().numpy())
    np.testing.assert_array_equal(rnnlens.trace(model.gru, own)["gru"].h, y_gru.float().numpy())
    packed = pack_padded_sequence(own, [7, 4], batch_first=True)
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"PackedSequence.*fields=\('h',\)"):
        rnnlens.trace(model.gru, packed)
    assert rnnlens.trace(model.gru, packed, fields=("h",))["gru"].h.shape == (2, 7, 5)


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
@pytest.mark.parametrize("strategy", ["auto", "emit"])
def test_float16_module_every_field(cls: type, strategy: str) -> None:
    """h is the float16 kernel's own (every strategy: the loop stands aside); c and gates are
    stepped with the native kernel's own float16 ops fed its h (test_torch_bfloat16.py: h and c_n
    bitwise); against a free-running float64 reference on the same (float16) weights and input,
    20 steps of 16 units, 5 seeds: measured h ≤ 3.7e-4, c / gates ≤ 9.8e-4 / 6.8e-4 (LSTM),
    gates ≤ 7.3e-4 (GRU); asserted within 2e-3."""
    from rnnlens.testing import reference_rnn

    torch.manual_seed(1)
    module = cls(4, 16, batch_first=True).eval().half()
    x = (torch.randn(3, 20, 4) * 2).half()
    with torch.no_grad():
        own, _ = module(x)
    name = cls.__name__.lower()
    layer = rnnlens.trace(module, x, strategy=strategy)[name]
    np.testing.assert_array_equal(layer.h, own.numpy())
    w = {k: v.double().numpy() for k, v in module.state_dict().items()}
    if cls is torch.nn.GRU:  # PyTorch's blocks r, z, n; the reference's z, r, n
        w = {k: np.concatenate([np.split(v, 3)[i] for i in (1, 0, 2)]) for k, v in w.items()}
    ref = reference_rnn(
        name, x.double().numpy(), w["weight_ih_l0"].T, w["weight_hh_l0"].T, w["bias_ih_l0"], w["bias_hh_l0"]
    )
    np.testing.assert_allclose(layer.h.astype(np.float64), ref["h"], rtol=0, atol=2e-3)
    np.testing.assert_allclose(layer.gates.array.astype(np.float64), ref["gates"], rtol=0, atol=2e-3)
    if cls is torch.nn.LSTM:
        np.testing.assert_allclose(layer.c.astype(np.float64), ref["c"], rtol=0, atol=2e-3)
