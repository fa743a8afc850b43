"""A third-party adapter, registered at run time and through the ``rnnlens.adapters`` entry-point
group, traced end to end and run through the conformance suite: the contract is enough to add
a framework without touching rnnlens."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens import adapters
from rnnlens.adapters import Adapter, Captured, Inputs, TraceOptions
from rnnlens.core.spec import CellWeights, LayerSpec
from rnnlens.core.tracing import RawDirection, RawLayer, resolve_fields, select_layers, to_direction_arrays
from rnnlens.testing import AdapterTests, Built


class ToyRNN:
    """A 'framework' of one tanh RNN layer, with its own forward loop."""

    def __init__(self, features: int, units: int, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.W = rng.normal(size=(features, units)).astype(np.float32) * 0.5
        self.U = rng.normal(size=(units, units)).astype(np.float32) * 0.5
        self.b = rng.normal(size=units).astype(np.float32) * 0.1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        h = np.zeros((x.shape[0], self.U.shape[0]), np.float32)
        out = []
        for t in range(x.shape[1]):
            h = np.tanh(x[:, t] @ self.W + h @ self.U + self.b)
            out.append(h)
        return np.stack(out, axis=1)


class ToyAdapter(Adapter):
    name = "toy"
    accepts = "a ToyRNN"

    def can_trace(self, model: Any) -> bool:
        return isinstance(model, ToyRNN)

    def describe(self, model: Any) -> list[LayerSpec]:
        units = model.U.shape[0]
        return [LayerSpec("toy", "simple", "ToyRNN", units, ("forward",), ("h",))]

    def capture(
        self, model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], options: TraceOptions
    ) -> Captured:
        specs = select_layers(self.describe(model), options.layers)
        fields = resolve_fields(specs, options.fields)
        try:
            x = np.asarray(args[0], np.float32)
        except (TypeError, ValueError) as e:
            raise rnnlens.InputError(f"x must be a float array ({e}).") from None
        if x.ndim != 3 or x.shape[2] != model.W.shape[0]:
            raise rnnlens.InputError(f"x must be (sample, time, {model.W.shape[0]}); received {x.shape}.")
        weights = CellWeights("simple", model.W, model.U, model.b, None, np.tanh, np.tanh)
        raw = RawLayer(x, None, {"forward": RawDirection(seq=model(x), weights=weights)})
        batch = {s.name: (to_direction_arrays(s, raw, fields[s.name]), None) for s in specs}
        return Captured(specs, [batch], backend="toy")

    def model_digest(self, model: Any) -> str:
        h = hashlib.sha256()
        for a in (model.W, model.U, model.b):
            h.update(a.tobytes())
        return h.hexdigest()

    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        return Inputs((x,))


@pytest.fixture
def toy() -> Any:
    registered = adapters.register(ToyAdapter)
    yield registered
    adapters.unregister("toy")


def test_unknown_models_list_the_installed_adapters() -> None:
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"Installed adapters: .*keras: .*onnx: "):
        rnnlens.trace(ToyRNN(2, 3, 0), np.zeros((1, 2, 2)))


def test_a_registered_adapter_traces(toy: Any) -> None:
    model = ToyRNN(2, 3, 0)
    x = np.random.default_rng(1).normal(size=(4, 5, 2)).astype(np.float32)
    states = rnnlens.trace(model, x)
    assert states.backend == "toy" and list(states) == ["toy"]
    np.testing.assert_allclose(states["toy"].h, model(x), rtol=0, atol=0)
    assert rnnlens.describe(model).names == ["toy"]
    with pytest.raises(rnnlens.OptionError):
        rnnlens.trace(model, x, strategy="emit")  # not among the toy's strategies


def test_entry_point_adapters_are_found(monkeypatch: pytest.MonkeyPatch) -> None:
    from importlib.metadata import EntryPoint

    ep = EntryPoint("toy", f"{__name__}:ToyAdapter", adapters.ENTRY_POINT_GROUP)
    monkeypatch.setattr(adapters, "entry_points", lambda group: [ep] if group == ep.group else [])
    monkeypatch.setattr(adapters, "_adapters", None)
    assert isinstance(adapters.registered()["toy"], ToyAdapter)
    assert adapters.for_model(ToyRNN(2, 3, 0)).name == "toy"
    monkeypatch.setattr(adapters, "_adapters", None)  # the next lookup starts again


class TestToyAdapterConformance(AdapterTests):
    adapter_name = "toy"
    kinds = ("simple",)
    bidirectional = False

    @pytest.fixture(autouse=True)
    def _registered(self, toy: Any) -> None:
        pass

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        m = ToyRNN(features, units, seed)
        return Built(m, "toy", {"forward": {"kernel": m.W, "recurrent_kernel": m.U, "bias": m.b}})

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        return model(x)[:, -1]
