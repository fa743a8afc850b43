"""Modules that call PyTorch's fused recurrent op themselves (``torch._VF.lstm`` / ``gru`` /
``rnn_tanh``, both overloads), with no ``nn.LSTM`` module to observe: every layer and direction
against the NumPy reference on the same weights (rtol 1e-4, atol 1e-5; float32 vs float64), the
mask from the lengths the model packed, ``last()`` against the op's own final state, and the
model's output unchanged. A recurrence with no recurrent op at all keeps a clear refusal."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from torch import _VF, nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.testing import reference_rnn  # noqa: E402
from torch_nets import canonical_from_torch  # noqa: E402

TOL = {"rtol": 1e-4, "atol": 1e-5, "equal_nan": True}


class OwnLSTM(nn.Module):
    """Holds an LSTM's weights itself and calls the fused op (a hand-rolled nn.LSTM)."""

    def __init__(self, features: int, hidden: int, layers: int, bidirectional: bool) -> None:
        super().__init__()
        self.like = [
            nn.LSTM(features, hidden, num_layers=layers, bidirectional=bidirectional)
        ]  # not a submodule
        self.weights = nn.ParameterList(self.like[0]._flat_weights)
        self.layers, self.bidirectional, self.hidden = layers, bidirectional, hidden

    def forward(self, x: Any) -> Any:
        rows = self.layers * (2 if self.bidirectional else 1)
        h0 = torch.full((rows, x.shape[1], self.hidden), 0.1)
        y, h_n, c_n = _VF.lstm(
            x, (h0, h0), list(self.weights), True, self.layers, 0.0, self.training, self.bidirectional, False
        )
        self.final = (h_n, c_n)
        return y


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = OwnLSTM(3, 4, layers=2, bidirectional=True)
        self.head = nn.Linear(8, 2)

    def forward(self, x: Any) -> Any:
        return self.head(self.enc(x))


def test_a_module_calling_vf_lstm_is_traced_with_every_layer() -> None:
    torch.manual_seed(0)
    net = Net().eval()
    x = torch.randn(6, 2, 3)
    with torch.no_grad():
        expected_out = net(x)
    plain_final = net.enc.final
    states = rnnlens.trace(net, x)
    for own, traced in zip(plain_final, net.enc.final):  # what the op returned inside the trace
        np.testing.assert_allclose(traced.numpy(), own.numpy(), rtol=0, atol=1e-6)
    assert list(states) == ["enc.l0", "enc.l1"]
    like = net.enc.like[0]
    inp = x.double().numpy().transpose(1, 0, 2)
    h0 = np.full((2, 4), 0.1)
    for layer in range(2):
        refs = [
            reference_rnn(
                "lstm", inp, **canonical_from_torch(like, "lstm", layer, d == 1), h0=h0, c0=h0, reverse=d == 1
            )
            for d in range(2)
        ]
        got = states[f"enc.l{layer}"]
        for d, direction in enumerate(("forward", "backward")):
            one = getattr(got, direction)
            np.testing.assert_allclose(one.h, refs[d]["h"], **TOL)
            np.testing.assert_allclose(one.c, refs[d]["c"], **TOL)
            np.testing.assert_allclose(one.gates.array, refs[d]["gates"], **TOL)
        inp = np.concatenate([r["h"] for r in refs], -1)
    h_n, c_n = plain_final
    np.testing.assert_allclose(states["enc.l1"].forward.last(), h_n[2].numpy(), rtol=0, atol=1e-6)
    np.testing.assert_allclose(states["enc.l1"].backward.last("c"), c_n[3].numpy(), rtol=0, atol=1e-6)
    with torch.no_grad():
        np.testing.assert_array_equal(net(x).numpy(), expected_out.numpy())  # the model is untouched
    assert not any("forward" in vars(m) for m in net.modules())


SEEN: dict[Any, Any] = {}  # what the op returned inside a call, by model


class PackedGRU(nn.Module):
    """Packs its batch itself and calls the packed overload of ``_VF.gru`` (the root module)."""

    def __init__(self) -> None:
        super().__init__()
        self.like = [nn.GRU(3, 5, batch_first=True)]
        self.weights = nn.ParameterList(self.like[0]._flat_weights)

    def forward(self, x: Any, lengths: Any) -> Any:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        h0 = torch.zeros(1, x.shape[0], 5)
        data, h_n = _VF.gru(
            packed.data, packed.batch_sizes, h0, list(self.weights), True, 1, 0.0, False, False
        )
        SEEN[self] = (data, h_n)  # outside the module: rnnlens puts back what forward sets on it
        return data, h_n[0][packed.unsorted_indices]


def test_the_packed_overload_gives_the_mask_and_the_carried_state() -> None:
    torch.manual_seed(1)
    model = PackedGRU().eval()
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    states = rnnlens.trace(model, x, lengths)
    (name,) = list(states)
    assert name == "packedgru"
    mask = np.arange(5)[None] < lengths.numpy()[:, None]
    np.testing.assert_array_equal(states[name].mask, mask)
    ref = reference_rnn(
        "gru", x.double().numpy(), **canonical_from_torch(model.like[0], "gru", 0, False), mask=mask
    )
    np.testing.assert_allclose(states[name].h, ref["h"], **TOL)
    np.testing.assert_allclose(states[name].gates.array, ref["gates"], **TOL)
    traced = SEEN[model]
    with torch.no_grad():
        _, h_n = model(x, lengths)
    np.testing.assert_allclose(states[name].last(), h_n.numpy(), rtol=0, atol=1e-6)
    for got, own in zip(traced, SEEN[model]):  # the op's own (packed-order) results inside the trace
        np.testing.assert_allclose(got.numpy(), own.numpy(), rtol=0, atol=1e-6)


class StepRNN(nn.Module):
    """Calls ``torch.rnn_tanh`` once per step, carrying its state: one chained entry."""

    def __init__(self) -> None:
        super().__init__()
        self.like = [nn.RNN(2, 3)]
        self.weights = nn.ParameterList(self.like[0]._flat_weights)

    def forward(self, x: Any) -> Any:
        h = torch.zeros(1, x.shape[1], 3)
        for t in range(x.shape[0]):
            _, h = torch.rnn_tanh(x[t : t + 1], h, list(self.weights), True, 1, 0.0, False, False, False)
        return h


def test_direct_calls_in_a_loop_join_into_one_entry() -> None:
    torch.manual_seed(2)
    model = StepRNN().eval()
    x = torch.randn(7, 2, 2)
    states = rnnlens.trace(model, x)
    assert list(states) == ["steprnn"]
    ref = reference_rnn(
        "simple",
        x.double().numpy().transpose(1, 0, 2),
        **canonical_from_torch(model.like[0], "simple", 0, False),
    )
    np.testing.assert_allclose(states["steprnn"].h, ref["h"], **TOL)
    assert len(rnnlens.trace(model, x, calls="each")) == 7


def test_training_mode_dropout_between_layers_is_refused() -> None:
    class Dropped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weights = nn.ParameterList(nn.LSTM(2, 3, num_layers=2)._flat_weights)

        def forward(self, x: Any) -> Any:
            h = torch.zeros(2, x.shape[1], 3)
            return _VF.lstm(x, (h, h), list(self.weights), True, 2, 0.5, True, False, False)[0]

    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"dropout=0\.5"):
        rnnlens.trace(Dropped(), torch.randn(4, 1, 2))


def test_a_recurrence_without_a_recurrent_op_is_refused_clearly() -> None:
    class Handmade(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.wx, self.wh = nn.Linear(2, 3), nn.Linear(3, 3)

        def forward(self, x: Any) -> Any:
            h = torch.zeros(x.shape[0], 3)
            for t in range(x.shape[1]):
                h = torch.tanh(self.wx(x[:, t]) + self.wh(h))
            return h

    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"nn\.RNNCell.*") as info:
        rnnlens.trace(Handmade(), torch.randn(2, 4, 2))
    assert "cell" in str(info.value).lower() and "torch._VF" in str(info.value)
