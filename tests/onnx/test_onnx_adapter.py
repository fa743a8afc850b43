"""ONNX adapter: models exported from PyTorch and hand-built graphs, run by ONNX Runtime.

Oracles and tolerances
----------------------
* The PyTorch backend on the same module (``rnnlens.trace(module, x)``): h, c and gates of every
  layer and direction agree within ``rtol=1e-5, atol=1e-6`` (float32; measured max abs error
  3e-7 for hidden 6, 9 steps).
* The independent float64 step loop :func:`rnnlens.testing.reference_rnn` with weights taken
  from the torch module or converted from the ONNX tensors by gate *name* in this file:
  ``rtol=1e-4, atol=1e-5`` (float32 traces).
* ONNX Runtime itself: ``h`` at valid steps is the node's own ``Y``, bit for bit.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from onnx_helpers import (  # noqa: E402
    ACTS,
    canonical_from_onnx,
    export,
    recurrent_model,
    run_ort,
)
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnnlens  # noqa: E402
import rnnlens.adapters.onnx_.session as osession  # noqa: E402
import rnnlens.adapters.onnx_.trace as oadapter  # noqa: E402
from onnx import numpy_helper  # noqa: E402
from rnnlens.testing import reference_rnn  # noqa: E402
from torch_nets import canonical_from_torch  # noqa: E402

TORCH_RTOL, TORCH_ATOL = 1e-5, 1e-6  # ONNX trace vs PyTorch trace, float32
REF_RTOL, REF_ATOL = 1e-4, 1e-5  # float32 trace vs float64 reference

_CLASSES = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn_tanh": nn.RNN, "rnn_relu": nn.RNN}


def _module(
    kind: str, *, hidden: int = 5, layers: int = 1, bidirectional: bool = False, batch_first: bool = False
):
    extra = {"nonlinearity": "relu"} if kind == "rnn_relu" else {}
    return _CLASSES[kind](
        3, hidden, num_layers=layers, bidirectional=bidirectional, batch_first=batch_first, **extra
    )


def _arrays(d: Any) -> dict[str, np.ndarray]:
    out = {"h": d.h}
    if "c" in d.fields:
        out["c"] = d.c
    if "gates" in d.fields:
        out["gates"] = d.gates.array
    return out


def _same_states(got: rnnlens.States, want: rnnlens.States) -> None:
    """Layer by layer in model order (names differ between backends), every direction and field."""
    assert len(got) == len(want)
    for (gname, g), (wname, w) in zip(got.items(), want.items()):
        assert g.kind == w.kind and g.units == w.units and list(g.directions) == list(w.directions)
        for dname in w.directions:
            ga, wa = _arrays(g.directions[dname]), _arrays(w.directions[dname])
            assert set(ga) == set(wa), (gname, wname)
            for f in wa:
                np.testing.assert_allclose(
                    ga[f],
                    wa[f],
                    rtol=TORCH_RTOL,
                    atol=TORCH_ATOL,
                    equal_nan=True,
                    err_msg=f"{gname} {dname} {f}",
                )


# --------------------------------------------------------------------------- exported from PyTorch


@pytest.mark.parametrize(
    ("kind", "layers", "bidirectional", "batch_first"),
    [
        ("lstm", 2, True, True),
        ("lstm", 1, False, False),
        ("gru", 2, True, False),
        ("gru", 1, False, True),
        ("rnn_tanh", 2, True, True),
        ("rnn_relu", 1, False, False),
    ],
)
def test_exported_matches_torch_backend_and_reference(
    tmp_path: Path, kind: str, layers: int, bidirectional: bool, batch_first: bool
) -> None:
    torch.manual_seed(layers * 10 + bidirectional)
    m = _module(kind, layers=layers, bidirectional=bidirectional, batch_first=batch_first)
    x = torch.randn(3, 6, 3) if batch_first else torch.randn(6, 3, 3)
    path = export(m, (x,), tmp_path / "m.onnx")
    got = rnnlens.trace(str(path), x.numpy())
    _same_states(got, rnnlens.trace(m, x))
    # names: one node per layer; what describe lists is what trace returns
    assert len(got) == layers
    assert rnnlens.describe(path).names == list(got)
    # against the float64 reference, from the torch module's own weights
    inp = (x.numpy() if batch_first else x.numpy().transpose(1, 0, 2)).astype(np.float64)
    ref_kind = {"lstm": "lstm", "gru": "gru"}.get(kind, "simple")
    act = (lambda z: np.maximum(z, 0.0)) if kind == "rnn_relu" else np.tanh
    for layer, ls in enumerate(got.values()):
        outs = []
        for k, dname in enumerate(ls.directions):
            ref = reference_rnn(
                ref_kind,
                inp,
                **canonical_from_torch(m, ref_kind, layer, k == 1),
                reverse=k == 1,
                activation=act,
            )
            d = ls.directions[dname]
            for f, a in _arrays(d).items():
                np.testing.assert_allclose(
                    a, ref[f], rtol=REF_RTOL, atol=REF_ATOL, err_msg=f"{ls.name} {dname} {f}"
                )
            outs.append(ref["h"])
        inp = np.concatenate(outs, axis=-1)


@pytest.mark.slow  # the dynamo exporter alone takes ~15 s on a busy 2-core machine
def test_dynamo_export_lstm_and_gru(tmp_path: Path) -> None:
    """torch.onnx.export(dynamo=True) keeps ONNX LSTM/GRU ops but leaves Y_h/Y_c unnamed:
    rnnlens names them in its copy and still checks the last states."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.LSTM(3, 4, batch_first=True, bidirectional=True)
            self.dec = nn.GRU(8, 5, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.dec(self.enc(x)[0])[0]

    torch.manual_seed(3)
    net = Net().eval()
    x = torch.randn(2, 7, 3)
    path = export(net, (x,), tmp_path / "d.onnx", dynamo=True)
    model = onnx.load(str(path))
    ops = [n.op_type for n in model.graph.node if n.op_type in ("LSTM", "GRU")]
    assert ops == ["LSTM", "GRU"]
    got = rnnlens.trace(model, x.numpy())
    _same_states(got, rnnlens.trace(net, x))
    np.testing.assert_allclose(list(got.values())[-1].last(), net(x)[:, -1].detach().numpy(), atol=1e-6)


class Packed(nn.Module):
    def __init__(self, kind: str, layers: int) -> None:
        super().__init__()
        self.rnn = _module(kind, hidden=4, layers=layers, bidirectional=True, batch_first=True)

    def forward(self, x: Any, lengths: Any) -> Any:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.rnn(packed)
        return pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]


@pytest.mark.parametrize(("kind", "layers"), [("lstm", 2), ("gru", 1)])
def test_packed_sequence_exports_sequence_lens(tmp_path: Path, kind: str, layers: int) -> None:
    """enforce_sorted=False: the exporter sorts the batch by length (TopK + Gather) before the
    nodes; rnnlens follows those Gathers back and returns the samples in input order."""
    torch.manual_seed(5)
    m = Packed(kind, layers).eval()
    x, lengths = torch.randn(4, 6, 3), torch.tensor([6, 2, 4, 1])
    path = export(m, (x, lengths), tmp_path / "p.onnx", input_names=("x", "lengths"))
    model = onnx.load(str(path))
    node = next(n for n in model.graph.node if n.op_type in ("LSTM", "GRU"))
    assert node.input[4], "the exporter should feed sequence_lens"
    got = rnnlens.trace(model, x.numpy(), lengths=lengths.numpy())  # by name
    want = rnnlens.trace(m, x, lengths)
    expected_mask = np.arange(6)[None, :] < lengths.numpy()[:, None]
    np.testing.assert_array_equal(got.mask, expected_mask)
    np.testing.assert_array_equal(want.mask, expected_mask)
    _same_states(got, want)
    assert len(got) == layers
    assert all(oadapter._prepare(model).nodes[k].batch_gathers for k in range(layers))
    ls = next(iter(got.values()))
    assert np.isnan(ls.forward.gates.array[~expected_mask]).all()
    assert not np.isnan(ls.forward.gates.array[expected_mask]).any()


# --------------------------------------------------------------------------- hand-built graphs


@st.composite
def graph_configs(draw: Any) -> dict[str, Any]:
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    cfg: dict[str, Any] = {
        "op": op,
        "hidden": draw(st.integers(1, 4)),
        "features": draw(st.integers(1, 3)),
        "time": draw(st.integers(1, 6)),
        "batch": draw(st.integers(1, 3)),
        "direction": draw(st.sampled_from(["forward", "reverse", "bidirectional"])),
        "layout": 0,  # ONNX Runtime (1.32) refuses layout=1: see test_batchwise_layout_...
        "bias": draw(st.booleans()),
        "lens": draw(st.booleans()),
        "initial": draw(st.booleans()),
        "name_last": draw(st.booleans()),  # Y_h (Y_c) named by the node, or left out
        "seed": draw(st.integers(0, 2**16)),
        "attrs": {},
    }
    n_dir = 2 if cfg["direction"] == "bidirectional" else 1
    if op == "GRU":
        cfg["attrs"]["linear_before_reset"] = draw(st.sampled_from([0, 1]))
    if draw(st.booleans()):
        if op == "RNN":
            per_dir = [draw(st.sampled_from(["Tanh", "Relu"]))]
        else:
            f = draw(st.sampled_from(["Sigmoid", "HardSigmoid"]))
            g = draw(st.sampled_from(["Tanh", "Softsign"]))
            per_dir = [f, g, g] if op == "LSTM" else [f, g]
        cfg["attrs"]["activations"] = per_dir * n_dir
    return cfg


@given(graph_configs())
def test_hand_built_graphs_against_reference_and_onnxruntime(cfg: dict[str, Any]) -> None:
    op, hidden, feat, t, n = cfg["op"], cfg["hidden"], cfg["features"], cfg["time"], cfg["batch"]
    rng = np.random.default_rng(cfg["seed"])
    n_dir = 2 if cfg["direction"] == "bidirectional" else 1
    g = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    weights = {
        "W": rng.normal(0, 0.6, (n_dir, g * hidden, feat)),
        "R": rng.normal(0, 0.6, (n_dir, g * hidden, hidden)),
    }
    if cfg["bias"]:
        weights["B"] = rng.normal(0, 0.5, (n_dir, 2 * g * hidden))
    weights = {k: v.astype(np.float32) for k, v in weights.items()}
    initial: dict[str, np.ndarray] = {}
    if cfg["initial"]:
        initial["initial_h"] = rng.normal(0, 0.5, (n_dir, n, hidden)).astype(np.float32)
        if op == "LSTM":
            initial["initial_c"] = rng.normal(0, 0.5, (n_dir, n, hidden)).astype(np.float32)
        if cfg["layout"]:  # [batch, direction, unit]
            initial = {k: v.transpose(1, 0, 2) for k, v in initial.items()}
    last = ["Y_h", "Y_c"][: 2 if op == "LSTM" else 1] if cfg["name_last"] else []
    model = recurrent_model(
        op,
        hidden=hidden,
        features=feat,
        direction=cfg["direction"],
        layout=cfg["layout"],
        weights=weights,
        lens=cfg["lens"],
        initial=initial,
        outputs=["Y", *last],
        **cfg["attrs"],
    )
    x = rng.normal(size=(n, t, feat)).astype(np.float32)  # (sample, time, feature)
    lens = rng.integers(1, t + 1, size=n).astype(np.int32)
    feeds = {"x": x if cfg["layout"] else x.transpose(1, 0, 2)}
    if cfg["lens"]:
        feeds["lens"] = lens
    states = rnnlens.trace(model, feeds)
    ls = states["rec"]
    mask = np.arange(t)[None, :] < lens[:, None] if cfg["lens"] else None
    np.testing.assert_array_equal(states.mask, mask)

    # ONNX Runtime's own Y at valid steps, bit for bit
    (y,) = run_ort(model, feeds)
    y = y if cfg["layout"] else y.transpose(2, 0, 1, 3)  # → [batch, time, direction, unit]
    valid = np.ones((n, t), bool) if mask is None else mask
    # against the float64 reference, weights converted by gate name
    acts = cfg["attrs"].get("activations")
    for k, dname in enumerate(ls.directions):
        d = ls.directions[dname]
        np.testing.assert_array_equal(d.h[valid], y[:, :, k][valid])
        w = canonical_from_onnx(
            op, weights["W"][k], weights["R"][k], weights["B"][k] if cfg["bias"] else None
        )
        h0 = c0 = None
        if initial:
            layout_idx = (slice(None), k) if cfg["layout"] else (k,)
            h0 = initial["initial_h"][layout_idx]
            c0 = initial["initial_c"][layout_idx] if op == "LSTM" else None
        kw: dict[str, Any] = {}
        if acts:
            per = acts[k * len(acts) // n_dir : (k + 1) * len(acts) // n_dir]
            if op == "RNN":
                kw["activation"] = ACTS[per[0]]
            else:
                kw["recurrent_activation"], kw["activation"] = ACTS[per[0]], ACTS[per[1]]
        ref = reference_rnn(
            {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}[op],
            x,
            **w,
            h0=h0,
            c0=c0,
            mask=mask,
            reverse=dname == "backward",
            reset_after=bool(cfg["attrs"].get("linear_before_reset", 1)),
            **kw,
        )
        for f, a in _arrays(d).items():
            np.testing.assert_allclose(
                a, ref[f], rtol=REF_RTOL, atol=REF_ATOL, equal_nan=True, err_msg=f"{dname} {f}"
            )


@pytest.mark.parametrize("source", ["Identity", "Constant"])
def test_weights_computed_in_the_graph_or_constant_nodes(source: str) -> None:
    rng = np.random.default_rng(7)
    w = {"W": rng.normal(size=(1, 9, 2)), "R": rng.normal(size=(1, 9, 3)), "B": rng.normal(size=(1, 18))}
    model = recurrent_model("GRU", hidden=3, features=2, weights=w, linear_before_reset=1)
    g = model.graph
    for k in ("W", "R", "B"):
        init = next(t for t in g.initializer if t.name == k)
        if source == "Identity":  # a runtime tensor: fetched from ONNX Runtime
            g.node.insert(0, onnx.helper.make_node("Identity", [k], [k + "_rt"]))
        else:  # a Constant node instead of an initializer
            g.node.insert(0, onnx.helper.make_node("Constant", [], [k + "_rt"], value=init))
            g.initializer.remove(init)
    g.node[-1].input[1:4] = ["W_rt", "R_rt", "B_rt"]
    onnx.checker.check_model(model)
    x = rng.normal(size=(4, 2, 2)).astype(np.float32)
    ls = rnnlens.trace(model, x)["rec"]
    ref = reference_rnn(
        "gru", x.transpose(1, 0, 2), **canonical_from_onnx("GRU", w["W"][0], w["R"][0], w["B"][0])
    )
    np.testing.assert_allclose(ls.gates.array, ref["gates"], rtol=REF_RTOL, atol=REF_ATOL)


def test_float16_graph_is_traced_in_float16() -> None:
    """ONNX Runtime's CPU kernels take float32 and float16 (not float64)."""
    rng = np.random.default_rng(2)
    w = {"W": rng.normal(size=(1, 16, 2)), "R": rng.normal(size=(1, 16, 4)), "B": rng.normal(size=(1, 32))}
    model = recurrent_model("LSTM", hidden=4, features=2, weights=w, dtype=np.float16)
    x = rng.normal(size=(5, 2, 2)).astype(np.float16)
    ls = rnnlens.trace(model, x)["rec"]
    assert ls.h.dtype == ls.c.dtype == ls.gates.array.dtype == np.float16
    w16 = {k: v.astype(np.float16) for k, v in w.items()}
    ref = reference_rnn(
        "lstm", x.transpose(1, 0, 2), **canonical_from_onnx("LSTM", w16["W"][0], w16["R"][0], w16["B"][0])
    )
    for f in ("h", "c"):
        np.testing.assert_allclose(getattr(ls, f), ref[f], rtol=1e-2, atol=1e-2)
    np.testing.assert_allclose(ls.gates.array, ref["gates"], rtol=1e-2, atol=1e-2)


def test_batchwise_layout_is_refused_by_onnxruntime() -> None:
    rng = np.random.default_rng(0)
    w = {"W": rng.normal(size=(1, 12, 2)), "R": rng.normal(size=(1, 12, 4))}
    model = recurrent_model("GRU", hidden=4, features=2, weights=w, layout=1)
    assert rnnlens.describe(model).names == ["rec"]
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"layout == 1"):
        rnnlens.trace(model, np.zeros((2, 5, 2), np.float32))


# --------------------------------------------------------------------------- untouched, files, extract


def test_model_object_and_file_untouched(tmp_path: Path) -> None:
    torch.manual_seed(0)
    m = _module("lstm", layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(2, 4, 3)
    path = export(m, (x,), tmp_path / "m.onnx")
    file_bytes = path.read_bytes()
    model = onnx.load(str(path))
    before = model.SerializeToString()
    outputs_before = [o.name for o in model.graph.output]
    rnnlens.trace(model, x.numpy())
    rnnlens.trace(str(path), x.numpy(), fields=("h",))
    rnnlens.describe(model)
    assert model.SerializeToString() == before
    assert [o.name for o in model.graph.output] == outputs_before
    assert path.read_bytes() == file_bytes


def test_session_is_cached_by_content(tmp_path: Path) -> None:
    torch.manual_seed(1)
    m = _module("gru", batch_first=True)
    path = export(m, (torch.randn(2, 4, 3),), tmp_path / "g.onnx")
    a, b = onnx.load(str(path)), onnx.load(str(path))
    pa = oadapter._prepare(a)
    assert oadapter._prepare(b) is pa  # same bytes: same session
    b.graph.initializer[0].raw_data = np.zeros(len(b.graph.initializer[0].raw_data), np.uint8).tobytes()
    assert oadapter._prepare(b) is not pa  # changed weights: a new one


def test_load_model_and_framework_of(tmp_path: Path) -> None:
    from rnnlens.adapters import for_model

    def framework_of(m: Any) -> str | None:
        try:
            return for_model(m).name
        except rnnlens.UnsupportedModelError:
            return None

    torch.manual_seed(2)
    path = export(_module("rnn_tanh", batch_first=True), (torch.randn(2, 4, 3),), tmp_path / "r.onnx")
    model = rnnlens.load_model(path)
    assert isinstance(model, onnx.ModelProto)
    assert framework_of(model) == framework_of(str(path)) == framework_of(path) == "onnx"
    assert framework_of("model.keras") is None


@pytest.mark.parametrize(
    "damage",
    [
        lambda b: b[: len(b) // 2],  # truncated
        lambda b: b"not an onnx file at all" * 10,
        lambda b: b"",
    ],
    ids=["truncated", "garbage", "empty"],
)
def test_corrupt_file_is_a_model_file_error(tmp_path: Path, damage: Any) -> None:
    torch.manual_seed(3)
    good = export(_module("lstm", batch_first=True), (torch.randn(2, 4, 3),), tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(damage(good.read_bytes()))
    with pytest.raises(rnnlens.ModelFileError, match=r"bad\.onnx"):
        rnnlens.load_model(bad)
    with pytest.raises(rnnlens.ModelFileError):
        rnnlens.trace(str(bad), np.zeros((2, 4, 3), np.float32))


def test_extract_to_with_onnx_path(tmp_path: Path) -> None:
    """What ``rnnlens extract m.onnx data.npy -o run.zarr --fields h,c --batch-size 3`` runs."""
    pytest.importorskip("zarr")
    from rnnlens.adapters import model_digest as weights_sha256
    from rnnlens.io.errors import StoreMismatchError

    torch.manual_seed(4)
    m = _module("lstm", layers=2, batch_first=True)
    x = torch.randn(2, 5, 3)
    path = export(m, (x,), tmp_path / "m.onnx", dynamic_axes={"x": {0: "batch", 1: "time"}})
    data = np.random.default_rng(0).normal(size=(7, 5, 3)).astype(np.float32)
    np.save(tmp_path / "data.npy", data)
    out = tmp_path / "run.zarr"
    rnnlens.extract_to(out, str(path), str(tmp_path / "data.npy"), fields=("h", "c"), batch_size=3)
    stored = rnnlens.open_states(out)
    direct = rnnlens.trace(str(path), data)
    assert list(stored) == list(direct)
    for name, ls in direct.items():  # chunks of 3 vs one batch of 7: same kernel, other blocking
        np.testing.assert_allclose(stored[name].forward.h[:], ls.forward.h, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(stored[name].forward.c[:], ls.forward.c, rtol=1e-6, atol=1e-7)
    # the weights hash covers the initializers: same file, same hash; other weights, refused
    assert weights_sha256(onnx.load(str(path))) == weights_sha256(str(path))
    rnnlens.extract_to(out, str(path), str(tmp_path / "data.npy"), fields=("h", "c"), batch_size=3)
    torch.manual_seed(5)
    other = export(
        _module("lstm", layers=2, batch_first=True), (x,), tmp_path / "o.onnx", dynamic_axes={"x": {0: "b"}}
    )
    assert weights_sha256(str(other)) != weights_sha256(str(path))
    with pytest.raises(StoreMismatchError, match="weights"):
        rnnlens.extract_to(out, str(other), str(tmp_path / "data.npy"), fields=("h", "c"), batch_size=3)


def test_names_of_unnamed_and_duplicate_nodes() -> None:
    rng = np.random.default_rng(0)
    w = {"W": rng.normal(size=(1, 8, 2)), "R": rng.normal(size=(1, 8, 2))}
    model = recurrent_model("LSTM", hidden=2, features=2, weights=w, name="")
    d = rnnlens.describe(model)
    assert d.names == ["LSTM_0"] and d[0].cell_units == 2 and d[0].fields == ("h", "c", "gates")
    # a second LSTM fed by the first (Y [time, 1, batch, 2] squeezed to [time, batch, 2])
    model.graph.node[0].name = "enc"
    model.graph.initializer.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
    model.graph.node.append(onnx.helper.make_node("Squeeze", ["Y", "axes1"], ["Y2in"], name="squeeze"))
    model.graph.node.append(onnx.helper.make_node("LSTM", ["Y2in", "W", "R"], ["Y2"], hidden_size=2))
    model.graph.output.append(onnx.helper.make_tensor_value_info("Y2", onnx.TensorProto.FLOAT, [None] * 4))
    x = rng.normal(size=(3, 2, 2)).astype(np.float32)
    states = rnnlens.trace(model, x)
    assert list(states) == ["enc", "LSTM_1"]
    _, y2 = run_ort(model, {"x": x})
    np.testing.assert_array_equal(states["LSTM_1"].h, y2[:, 0].transpose(1, 0, 2))
    with pytest.raises(rnnlens.UnsupportedLayerError, match="not a recurrent layer"):
        rnnlens.trace(model, x, layers="squeeze")
    with pytest.raises(rnnlens.LayerNotFoundError, match="Did you mean 'enc'"):
        rnnlens.trace(model, x, layers="encc")
    only = rnnlens.trace(model, x, layers="LSTM_1", fields="h")
    assert list(only) == ["LSTM_1"] and only["LSTM_1"].fields == ("h",)
    # one name on two nodes (ONNX Runtime refuses to run such a graph; describe still lists both)
    model.graph.node[-1].name = "enc"
    assert rnnlens.describe(model).names == ["enc", "enc#1"]


# --------------------------------------------------------------------------- unsupported and bad input


def _lstm_weights(rng: np.random.Generator, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {"W": rng.normal(size=(1, 12 + 4, 2)), "R": rng.normal(size=(1, 16, 4)), **extra}


@pytest.mark.parametrize(
    ("weights_extra", "attrs", "reason"),
    [
        ({}, {"activations": ["Sigmoid", "Elu", "Elu"]}, "activations"),
        ({}, {"activations": ["Sigmoid", "Tanh", "Softsign"]}, "different g and h"),
    ],
    ids=["elu", "g!=h"],
)
def test_unsupported_attributes_give_h_only_or_a_clear_error(
    weights_extra: Any, attrs: Any, reason: str
) -> None:
    rng = np.random.default_rng(0)
    model = recurrent_model(
        "LSTM", hidden=4, features=2, weights=_lstm_weights(rng, **weights_extra), **attrs
    )
    x = rng.normal(size=(5, 2, 2)).astype(np.float32)
    spec = rnnlens.describe(model)[0]
    assert spec.fields == ("h",) and reason in spec.notes[0]
    with pytest.raises(rnnlens.UnsupportedLayerError, match=reason) as e:
        rnnlens.trace(model, x, fields=("h", "c"))
    assert "fields=('h',)" in str(e.value)
    with pytest.warns(rnnlens.RnnLensWarning, match=reason):
        states = rnnlens.trace(model, x)
    (y,) = run_ort(model, {"x": x})
    np.testing.assert_array_equal(states["rec"].h, y[:, 0].transpose(1, 0, 2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert rnnlens.trace(model, x, fields="h")["rec"].fields == ("h",)


def test_zero_peepholes_are_fine() -> None:
    rng = np.random.default_rng(1)
    model = recurrent_model("LSTM", hidden=4, features=2, weights=_lstm_weights(rng, P=np.zeros((1, 12))))
    assert rnnlens.trace(model, np.ones((3, 2, 2), np.float32))["rec"].fields == ("h", "c", "gates")


def _two_input_model() -> Any:
    """x (time, batch, 2) and a 'scale' input multiplied into it before an LSTM."""
    rng = np.random.default_rng(0)
    model = recurrent_model(
        "LSTM",
        hidden=3,
        features=2,
        weights={"W": rng.normal(size=(1, 12, 2)), "R": rng.normal(size=(1, 12, 3))},
    )
    g = model.graph
    g.node[0].input[0] = "xs"
    g.node.insert(0, onnx.helper.make_node("Mul", ["x", "scale"], ["xs"], name="mul"))
    g.input.append(onnx.helper.make_tensor_value_info("scale", onnx.TensorProto.FLOAT, [1]))
    onnx.checker.check_model(model)
    return model


def test_several_inputs_positionally_by_name_or_dict() -> None:
    model = _two_input_model()
    x = np.random.default_rng(1).normal(size=(4, 2, 2)).astype(np.float32)
    s = np.array([0.5], np.float32)
    a = rnnlens.trace(model, x, s)["rec"].h
    np.testing.assert_array_equal(rnnlens.trace(model, x, scale=s)["rec"].h, a)
    np.testing.assert_array_equal(rnnlens.trace(model, {"scale": s, "x": x})["rec"].h, a)
    np.testing.assert_array_equal(rnnlens.trace(model, [x, s])["rec"].h, a)
    np.testing.assert_array_equal(
        rnnlens.trace(model, torch.from_numpy(x), scale=torch.from_numpy(s))["rec"].h, a
    )
    # float64 is cast to the graph's float32, like Keras does
    np.testing.assert_array_equal(rnnlens.trace(model, x.astype(np.float64), s)["rec"].h, a)
    assert not np.allclose(rnnlens.trace(model, x, np.array([1.0], np.float32))["rec"].h, a)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda m, x, s: rnnlens.trace(m, x), r"Missing model input\(s\) \['scale'\]"),
        (lambda m, x, s: rnnlens.trace(m, x, scael=s), "no input named 'scael'.*Did you mean 'scale'"),
        (lambda m, x, s: rnnlens.trace(m, x, s, x), "3 positional input"),
        (lambda m, x, s: rnnlens.trace(m, x, s, scale=s), "given twice"),
        (lambda m, x, s: rnnlens.trace(m, {"x": x}, s), "either as one dict"),
        (lambda m, x, s: rnnlens.trace(m, x[0], s), r"shape \(2, 2\).*time, batch, 2"),
        (lambda m, x, s: rnnlens.trace(m, x[..., :1], s), r"shape \(4, 2, 1\)"),
        (lambda m, x, s: rnnlens.trace(m, x.astype(np.int64), s), "dtype int64"),
        (lambda m, x, s: rnnlens.trace(m, x, s, mask=np.ones((2, 4), bool)), "sequence_lens"),
        (lambda m, x, s: rnnlens.trace(m, x, s, batch_size=2), "batch_size"),
        (lambda m, x, s: rnnlens.trace(m, x, s, strategy="emit"), "reconstruct"),
    ],
    ids=[
        "missing",
        "misspelt",
        "too-many",
        "twice",
        "dict+args",
        "rank",
        "static-dim",
        "dtype",
        "mask",
        "batch_size",
        "emit",
    ],
)
def test_bad_inputs_are_input_errors(call: Any, match: str) -> None:
    model = _two_input_model()
    x = np.zeros((4, 2, 2), np.float32)
    with pytest.raises(rnnlens.InputError, match=match):
        call(model, x, np.ones(1, np.float32))


def test_wrong_weights_are_a_parity_error_not_wrong_states() -> None:
    """The guard: weights that are not what ONNX Runtime ran fail the step and last-state checks."""
    rng = np.random.default_rng(3)
    model = recurrent_model(
        "LSTM", hidden=4, features=2, weights=_lstm_weights(rng), outputs=["Y", "Y_h", "Y_c"]
    )
    x = rng.normal(size=(5, 2, 2)).astype(np.float32)
    rnnlens.trace(model, x)
    prep = oadapter._prepare(model)  # cached: ONNX Runtime keeps running the real weights
    prep.static["R"] = prep.value("R") * 1.01
    try:
        with pytest.raises(rnnlens.ParityError, match="Layer 'rec'"):
            rnnlens.trace(model, x)
        assert rnnlens.trace(model, x, fields="h")["rec"].h.shape == (2, 5, 4)  # h is ONNX Runtime's own
    finally:
        osession._CACHE.clear()


def test_graph_without_recurrent_nodes() -> None:
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Relu", ["x"], ["y"], name="relu")],
        "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])],
    )
    model = onnx.helper.make_model(graph)
    assert rnnlens.describe(model) == ()
    with pytest.raises(rnnlens.UnsupportedLayerError, match="dynamo=False"):
        rnnlens.trace(model, np.zeros(2, np.float32))


def test_not_an_onnx_model() -> None:
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"onnx\.ModelProto"):
        oadapter.describe(onnx.GraphProto())
    with pytest.raises(FileNotFoundError):
        rnnlens.trace("missing.onnx", np.zeros((1, 1, 1)))
