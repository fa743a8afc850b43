"""Recurrent modules behind a wrapper of ``forward`` (rnnlens.adapters.torch_.wrapped).

nnsight's ``NNsight(model)``, an envoy-style controller built here (the same shape, without
nnsight), ``functools.wraps`` instance attributes, class-level patches and forward hooks: every
layer's h, c and gates are traced through to the original ``forward``, checked against an
``nn.LSTMCell`` loop in float64 (atol 1e-5: float32 kernels against a float64 oracle) and
bitwise against the trace of the same model unwrapped; the model (its wrappers, hooks,
weights, outputs) is the same afterwards. A wrapper that never calls the original is an error
naming the module and the wrapper.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
import weakref
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import RnnLensWarning, UnsupportedLayerError

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence  # noqa: E402

from rnnlens.testing.torch_models import CellLoop, PackedClassifier, cells_of, lstm_float64  # noqa: E402

ATOL = 1e-5  # float32 trace vs the float64 LSTMCell oracle
# (the model's output under a trace of c and gates comes from rnnlens' step loop, which is within
# 1e-6 of PyTorch's oneDNN LSTM kernel on these sizes: compared with atol 1e-6)


class Encoder(nn.Module):
    def __init__(self, features: int = 3, hidden: int = 5) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x: Any) -> Any:
        return self.head(self.rnn(x)[0])


def _nnsight() -> Any:
    """nnsight, imported after TensorFlow's Keras where that is installed: importing nnsight first
    leaves ``tensorflow.python.keras`` unimportable in the same process (its ``saving.save`` is
    shadowed by a function), which broke the Keras doctests a worker ran after these tests."""
    with contextlib.suppress(ImportError):
        import keras  # noqa: F401
    return pytest.importorskip("nnsight")


def oracle(lstm: Any, x: Any) -> dict[str, dict[str, np.ndarray]]:
    """h, c and gates of every layer of ``lstm`` (batch_first), by layer name ``l<k>``: the
    float64 ``nn.LSTMCell`` loop of :func:`rnnlens.testing.torch_models.lstm_float64`."""
    return {f"l{k}": layer for k, layer in enumerate(lstm_float64(cells_of(lstm), x))}


def check_against_oracle(states: Any, prefix: str, lstm: Any, x: Any) -> None:
    ref = oracle(lstm, x)
    for k in range(lstm.num_layers):
        s = states[f"{prefix}.l{k}"]
        for f in ("h", "c"):
            np.testing.assert_allclose(getattr(s, f), ref[f"l{k}"][f], rtol=0, atol=ATOL, err_msg=f"l{k} {f}")
        for g in "ifgo":
            np.testing.assert_allclose(s.gates[g], ref[f"l{k}"][g], rtol=0, atol=ATOL, err_msg=f"l{k} {g}")


def same_states(got: Any, want: Any) -> None:
    """The same entries and names; h and c bitwise; gates (rebuilt, not the kernel's) to float32
    rounding: an unbatched cell call and the same call seen through a wrapper may rebuild them on
    different GEMMs (NumPy's, PyTorch's), 1 ulp apart."""
    assert list(got) == list(want)
    for name in want:
        assert got[name].fields == want[name].fields, name
        for f in want[name].fields:
            if f == "gates":
                for g in want[name].gates:
                    np.testing.assert_allclose(
                        got[name].gates[g], want[name].gates[g], rtol=1e-6, atol=1e-7, err_msg=name
                    )
            else:
                np.testing.assert_array_equal(getattr(got[name], f), getattr(want[name], f), err_msg=name)


def snapshot(model: Any) -> dict[str, Any]:
    """What must be the same after tracing: every module's instance dict entries and hooks, and
    the weights."""
    return {
        "forwards": {n: vars(m).get("forward") for n, m in model.named_modules()},
        "hooks": {n: (dict(m._forward_hooks), dict(m._forward_pre_hooks)) for n, m in model.named_modules()},
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
    }


def assert_unchanged(model: Any, before: dict[str, Any]) -> None:
    after = snapshot(model)
    for n, f in before["forwards"].items():
        assert after["forwards"][n] is f, n
    assert after["hooks"] == before["hooks"]
    for k, v in before["weights"].items():
        assert torch.equal(after["weights"][k], v), k


def heard(module: Any) -> list[np.ndarray]:
    """What ``module`` receives in later calls (a pre-hook that only copies its input)."""
    seen: list[np.ndarray] = []
    module.register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().numpy().copy()))
    return seen


# --------------------------------------------------------------------------- an envoy-style wrapper


class Controller:
    """The shape of nnsight's envoy controller, written here so the test runs without nnsight:
    an object (not a function) set as the module's instance ``forward``; it holds the module by
    weakref and the *unbound* class forward, and calls ``body(module, ...)``."""

    def __init__(self, module: Any) -> None:
        functools.update_wrapper(self, type(module).forward)
        self.module_ref = weakref.ref(module)
        self.body = type(module).forward
        self.calls = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.body(self.module_ref(), *args, **kwargs)


def envoy(model: Any) -> Any:
    for m in model.modules():
        m.forward = Controller(m)
    return model


@pytest.fixture
def encoder() -> Any:
    torch.manual_seed(0)
    return Encoder().eval()


def test_an_envoy_wrapped_model_is_traced_through_with_every_field(encoder: Any) -> None:
    x = torch.randn(4, 7, 3)
    want = rnnlens.trace(encoder, x)
    with torch.no_grad():
        y = encoder(x)
    envoy(encoder)
    before = snapshot(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RnnLensWarning)  # no "cell rnnlens does not know"
        states = rnnlens.trace(encoder, x)
    assert list(states) == ["rnn.l0", "rnn.l1"] == rnnlens.describe(encoder).names
    check_against_oracle(states, "rnn", encoder.rnn, x)
    same_states(states, want)
    assert_unchanged(encoder, before)
    assert vars(encoder.rnn)["forward"].calls == 1  # the wrapper ran once, as without rnnlens
    with torch.no_grad():
        assert torch.equal(encoder(x), y)


def test_an_nnsight_wrapped_model_is_traced_through_with_every_field(encoder: Any) -> None:
    nnsight = _nnsight()
    x = torch.randn(4, 7, 3)
    want = rnnlens.trace(encoder, x)
    wrapped = nnsight.NNsight(encoder)
    assert "forward" in vars(encoder.rnn)  # nnsight replaced the instance forward
    before = snapshot(encoder)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RnnLensWarning)
        states = rnnlens.trace(encoder, x)
    assert list(states) == ["rnn.l0", "rnn.l1"]
    check_against_oracle(states, "rnn", encoder.rnn, x)
    same_states(states, want)
    assert_unchanged(encoder, before)
    with wrapped.trace(x):  # nnsight still works on it
        out = wrapped.rnn.output.save()
    with torch.no_grad():  # (nnsight ran with gradients: oneDNN may differ in the last bit)
        np.testing.assert_allclose(out[0].numpy(), encoder.rnn(x)[0].numpy(), rtol=0, atol=1e-6)
    only = rnnlens.trace(encoder, x, layers="rnn.l0", fields=["c", "gates"])
    np.testing.assert_array_equal(only["rnn.l0"].c, want["rnn.l0"].c)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_a_wrapped_cell_loop_is_traced_through(kind: str) -> None:
    torch.manual_seed(1)
    model = CellLoop(3, 4, cell=kind, decay=0.5).eval()
    x = torch.randn(3, 6, 3)
    want = rnnlens.trace(model, x)
    envoy(model)
    before = snapshot(model)
    states = rnnlens.trace(model, x)
    same_states(states, want)
    assert states["cell"].kind == {"lstm": "lstm", "gru": "gru", "rnn": "simple"}[kind]
    assert_unchanged(model, before)


def test_an_nnsight_wrapped_cell_loop_matches_the_cell_oracle() -> None:
    nnsight = _nnsight()
    torch.manual_seed(2)
    model = CellLoop(3, 4, cell="lstm").eval()
    x = torch.randn(3, 6, 3)
    nnsight.NNsight(model)
    states = rnnlens.trace(model, x)
    ref = lstm_float64([model.cell], x)[0]
    for f in ("h", "c"):
        np.testing.assert_allclose(getattr(states["cell"], f), ref[f], rtol=0, atol=ATOL)
    for g in "ifgo":
        np.testing.assert_allclose(states["cell"].gates[g], ref[g], rtol=0, atol=ATOL)


# --------------------------------------------------------------------------- functools.wraps, patches


def test_a_functools_wraps_instance_forward_is_traced_through(encoder: Any) -> None:
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder, x)
    original = encoder.rnn.forward

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs)

    encoder.rnn.forward = wrapper
    before = snapshot(encoder)
    same_states(rnnlens.trace(encoder, x), want)
    assert_unchanged(encoder, before)


def test_a_wrapper_that_changes_arguments_and_outputs_traces_what_the_module_computed(encoder: Any) -> None:
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder.rnn, 2 * x)  # the module sees twice the input
    original = encoder.rnn.forward

    def wrapper(input: Any, hx: Any = None) -> Any:
        y, state = original(2 * input, hx)
        return y + 1, state  # the model gets the changed output

    encoder.rnn.forward = wrapper
    with torch.no_grad():
        y = encoder.rnn(x)[0]
    head_saw = heard(encoder.head)
    states = rnnlens.trace(encoder, x)
    # the model got the wrapper's output (of rnnlens' step loop: within 1e-6 of oneDNN's kernel)
    np.testing.assert_allclose(head_saw[0], y.numpy(), rtol=0, atol=1e-6)
    for k in ("l0", "l1"):
        np.testing.assert_array_equal(states[f"rnn.{k}"].h, want[f"lstm.{k}"].h)
        np.testing.assert_array_equal(states[f"rnn.{k}"].c, want[f"lstm.{k}"].c)


def test_a_packed_input_through_a_wrapper() -> None:
    torch.manual_seed(3)
    model = PackedClassifier(features=3, hidden=4).eval()
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 1, 3])
    want = rnnlens.trace(model, x, lengths)
    original = model.rnn.forward
    model.rnn.forward = functools.wraps(original)(lambda *a, **k: original(*a, **k))
    got = rnnlens.trace(model, x, lengths)
    same_states(got, want)
    np.testing.assert_array_equal(got.mask, want.mask)


def test_a_class_level_patch_of_torchs_forward_is_traced_through(encoder: Any) -> None:
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder, x)
    original = nn.LSTM.forward
    seen = []

    @functools.wraps(original)
    def patched(self: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(self)
        return original(self, *args, **kwargs)

    nn.LSTM.forward = patched  # type: ignore[method-assign]
    try:
        states = rnnlens.trace(encoder, x)
    finally:
        nn.LSTM.forward = original  # type: ignore[method-assign]
    same_states(states, want)
    assert seen == [encoder.rnn]  # the patch ran once, on the module itself


def _same_as_an_lstm(encoder: Any, cls: type) -> None:
    """The encoder with its LSTM swapped for an instance of ``cls`` (an ``nn.LSTM`` subclass, the
    same weights) traces as it did."""
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder, x)
    sub = cls(3, 5, num_layers=2, batch_first=True)
    sub.load_state_dict(encoder.rnn.state_dict())
    encoder.rnn = sub
    same_states(rnnlens.trace(encoder, x), want)


def test_a_class_level_patch_of_a_subclass_calling_the_base_directly(encoder: Any) -> None:
    class Sub(nn.LSTM):
        pass

    def patched(self: Any, input: Any, hx: Any = None) -> Any:  # no super(): the base by name
        return nn.LSTM.forward(self, input, hx)

    Sub.forward = patched  # type: ignore[method-assign]
    _same_as_an_lstm(encoder, Sub)


# --------------------------------------------------------------------------- hooks


def test_forward_hooks_that_change_or_keep_values(encoder: Any) -> None:
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder.rnn, 3 * x)
    encoder.rnn.register_forward_pre_hook(lambda m, args: (3 * args[0],))  # changes the input
    encoder.rnn.register_forward_hook(lambda m, args, out: (out[0] * 0.5, out[1]))  # the output
    encoder.rnn.register_forward_hook(lambda m, args, out: None)  # keeps it
    with torch.no_grad():
        y = encoder.rnn(x)[0]
    head_saw = heard(encoder.head)
    before = snapshot(encoder)
    states = rnnlens.trace(encoder, x)
    np.testing.assert_allclose(head_saw[0], y.numpy(), rtol=0, atol=1e-6)  # what the hooks made of it
    for k in ("l0", "l1"):
        for f in ("h", "c"):
            np.testing.assert_array_equal(getattr(states[f"rnn.{k}"], f), getattr(want[f"lstm.{k}"], f))
    assert_unchanged(encoder, before)


def test_hooks_and_a_wrapper_together(encoder: Any) -> None:
    x = torch.randn(2, 5, 3)
    want = rnnlens.trace(encoder, 2 * x)
    encoder.rnn.register_forward_pre_hook(lambda m, args: (2 * args[0],))
    envoy(encoder)
    check_against_oracle(rnnlens.trace(encoder, x), "rnn", encoder.rnn, 2 * x)
    same_states(rnnlens.trace(encoder, x), want)


# --------------------------------------------------------------------------- edits, refusals


def test_an_edit_through_a_wrapper_is_the_edit_without_it(encoder: Any) -> None:
    x = torch.randn(2, 6, 3)
    edit = rnnlens.Edit("rnn.l0", 2, set=0.0)
    want = rnnlens.intervene(encoder, x, edit)
    envoy(encoder)
    got = rnnlens.intervene(encoder, x, edit)
    np.testing.assert_array_equal(got.outputs, want.outputs)
    np.testing.assert_array_equal(got.states["rnn.l1"].h, want.states["rnn.l1"].h)


def test_a_replacement_that_never_calls_the_original_is_refused_by_name(encoder: Any) -> None:
    def replacement(input: Any, hx: Any = None) -> Any:
        return torch.zeros(*input.shape[:2], 5), None

    encoder.rnn.forward = replacement
    before = snapshot(encoder)
    with pytest.raises(
        UnsupportedLayerError, match=r"'rnn'.*test_a_replacement_that_never_calls.*replacement"
    ):
        rnnlens.trace(encoder, torch.randn(2, 5, 3))
    assert_unchanged(encoder, before)
    # a wrapper that skips it on some calls only: also refused, never a partial result
    calls = [0]
    original = nn.LSTM.forward.__get__(encoder.rnn)

    def sometimes(input: Any, hx: Any = None) -> Any:
        calls[0] += 1
        return original(input, hx) if calls[0] == 1 else replacement(input, hx)

    class Twice(nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.enc = inner

        def forward(self, x: Any) -> Any:
            return self.enc.rnn(x)[0] + self.enc.rnn(x)[0]

    encoder.rnn.forward = sometimes
    with pytest.raises(UnsupportedLayerError, match=r"'enc\.rnn'.*sometimes"):
        rnnlens.trace(Twice(encoder), torch.randn(2, 5, 3))


def test_a_replacement_is_not_run_under_rnnlens_when_not_selected(encoder: Any) -> None:
    class Two(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.GRU(3, 4, batch_first=True), nn.GRU(3, 4, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.a(x)[0] + self.b(x)[0]

    model = Two()
    model.b.forward = lambda input, hx=None: (torch.zeros(*input.shape[:2], 4), None)
    states = rnnlens.trace(model, torch.randn(2, 5, 3), layers="a")
    assert list(states) == ["a"]


def test_a_genuinely_unknown_cell_keeps_its_labelled_path_behind_a_wrapper() -> None:
    class Scaled(nn.RNNCell):
        def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
            return torch.tanh(input @ self.weight_ih.T)  # its own cell

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = Scaled(3, 4)

        def forward(self, x: Any) -> Any:
            return torch.stack([self.cell(x[:, t]) for t in range(x.shape[1])], 1)

    model = envoy(Loop())
    with pytest.warns(RnnLensWarning, match="does not know"):
        states = rnnlens.trace(model, torch.randn(2, 4, 3))
    assert states["cell"].kind == "rnn" and states["cell"].fields == ("h",)


def test_describe_a_wrapped_model_as_the_unwrapped_one(encoder: Any) -> None:
    plain = rnnlens.describe(encoder)
    envoy(encoder)
    assert rnnlens.describe(encoder) == plain


def test_the_packed_helper_is_unaffected() -> None:
    """A PackedSequence built outside and passed straight to a wrapped LSTM."""
    torch.manual_seed(4)
    lstm = nn.LSTM(3, 4)
    x = pack_padded_sequence(torch.randn(5, 3, 3), torch.tensor([5, 3, 2]))
    want = rnnlens.trace(lstm, x)
    envoy(lstm)
    same_states(rnnlens.trace(lstm, x), want)


@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.LSTM(3, 4, num_layers=2, bidirectional=True, proj_size=2), (6, 2, 3)),
        (lambda: nn.GRU(3, 4, num_layers=2, bidirectional=True, batch_first=True), (2, 6, 3)),
        (lambda: nn.RNN(3, 4, nonlinearity="relu", num_layers=2), (6, 2, 3)),
        (lambda: nn.LSTM(3, 4, num_layers=2), (6, 3)),  # unbatched
    ],
    ids=["lstm-bidirectional-proj", "gru-bidirectional", "rnn-relu", "lstm-unbatched"],
)
def test_wrapped_configurations_are_the_unwrapped_ones(make: Any, shape: tuple[int, ...]) -> None:
    torch.manual_seed(5)
    m = make()
    x = torch.randn(*shape)
    want = rnnlens.trace(m, x)
    original = m.forward
    m.forward = lambda input, hx=None: original(input=input, hx=hx)  # keywords to the original
    same_states(rnnlens.trace(m, x), want)
    assert "forward" in vars(m)


def test_a_wrapped_cell_called_with_keywords_and_unbatched() -> None:
    torch.manual_seed(6)

    class Loop(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = nn.LSTMCell(3, 4)

        def forward(self, x: Any) -> Any:
            state = None
            for t in range(x.shape[0]):
                state = self.cell(x[t], state)
            return state

    model = Loop()
    x = torch.randn(5, 3)
    want = rnnlens.trace(model, x)
    original = model.cell.forward
    model.cell.forward = lambda input, hx=None: original(input=input, hx=hx)
    same_states(rnnlens.trace(model, x), want)


def test_a_subclass_calling_the_base_forward_by_name_is_traced(encoder: Any) -> None:
    class ByName(nn.LSTM):
        def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
            return nn.LSTM.forward(self, input, hx)  # not super(): the base class by name

    _same_as_an_lstm(encoder, ByName)


def test_the_nnsight_object_itself_is_refused_naming_the_model_to_pass(encoder: Any) -> None:
    nnsight = _nnsight()
    wrapped = nnsight.NNsight(encoder)
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"NNsight, a wrapper.*\._module.*Encoder"):
        rnnlens.trace(wrapped, torch.randn(2, 5, 3))
    assert list(rnnlens.trace(wrapped._module, torch.randn(2, 5, 3))) == ["rnn.l0", "rnn.l1"]
