"""PyTorch adapter: traced states against the independent NumPy reference and PyTorch itself.

Tolerances
----------
* Against :func:`rnnlens.testing.reference_rnn` (float64, step by step) the float32 traces
  agree to ``rtol=1e-4, atol=1e-5`` (sizes here: ≤ 6 units, ≤ 7 steps, ≤ 3 layers).
* Against the module's own outputs: ``fields=("h",)`` runs PyTorch's own kernel layer by layer
  and is bitwise equal. With ``c``/``gates`` on CPU the states come from rnnlens' loop, which
  computes PyTorch's cell with the biases folded into the input projection: within
  ``atol=1e-6`` of both the native kernel (oneDNN off) and the oneDNN LSTM kernel PyTorch picks
  for float32 (measured: ≤ 1e-7 here, ~2e-7 at 128 units and 100 steps).
"""

from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rnnlens
from rnnlens.errors import (
    FieldNotAvailableError,
    InputError,
    LayerNotFoundError,
    ModelFileError,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from rnnlens.testing import reference_rnn

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence  # noqa: E402

import rnnlens.adapters.torch_.load as tload  # noqa: E402
import rnnlens.adapters.torch_.trace as tadapter  # noqa: E402
from rnnlens.testing.torch_models import CellLoop, EncoderDecoder, PackedClassifier  # noqa: E402

RTOL, ATOL = 1e-4, 1e-5  # float32 trace vs float64 reference
KERNEL_ATOL = 1e-6  # emitted h vs PyTorch's oneDNN LSTM kernel

# --------------------------------------------------------------------------- helpers


def _relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0.0)


def canonical(m: Any, kind: str, layer: int = 0, reverse: bool = False, cell: bool = False) -> dict[str, Any]:
    """Reference weights from a torch module, written independently of the adapter."""
    sfx = "" if cell else f"_l{layer}" + ("_reverse" if reverse else "")

    def get(name: str) -> np.ndarray | None:
        t = getattr(m, name + sfx, None)
        return None if t is None else t.detach().double().numpy()

    w_ih, w_hh, b_ih, b_hh = get("weight_ih"), get("weight_hh"), get("bias_ih"), get("bias_hh")
    assert w_ih is not None and w_hh is not None
    if kind == "gru":  # PyTorch stores r, z, n; the reference wants z, r, n

        def swap(a: np.ndarray | None) -> np.ndarray | None:
            if a is None:
                return None
            r, z, n = np.split(a, 3, axis=0)
            return np.concatenate([z, r, n], axis=0)

        w_ih, w_hh, b_ih, b_hh = swap(w_ih), swap(w_hh), swap(b_ih), swap(b_hh)
    hr = get("weight_hr") if not cell else None
    return {
        "kernel": w_ih.T,
        "recurrent_kernel": w_hh.T,
        "bias": b_ih,
        "recurrent_bias": b_hh,
        "projection": None if hr is None else hr.T,
    }


def reference_stack(
    m: Any, kind: str, x: np.ndarray, mask: np.ndarray | None, h0: Any, c0: Any, relu: bool = False
) -> list[list[dict[str, np.ndarray]]]:
    """Every layer and direction of a (multi-layer, maybe bidirectional) RNN, by the reference."""
    n_dir = 2 if m.bidirectional else 1
    act = _relu if relu else np.tanh
    out: list[list[dict[str, np.ndarray]]] = []
    inp = x.astype(np.float64)
    for layer in range(m.num_layers):
        dirs = []
        for d in range(n_dir):
            k = layer * n_dir + d
            dirs.append(
                reference_rnn(
                    kind,
                    inp,
                    **canonical(m, kind if kind != "simple" else "rnn", layer, d == 1),
                    h0=None if h0 is None else h0[k],
                    c0=None if c0 is None else c0[k],
                    mask=mask,
                    reverse=d == 1,
                    activation=act,
                )
            )
        out.append(dirs)
        inp = np.concatenate([r["h"] for r in dirs], axis=-1)
    return out


def layer_names(root: str, num_layers: int) -> list[str]:
    return [root] if num_layers == 1 else [f"{root}.l{i}" for i in range(num_layers)]


def no_leftovers(model: Any) -> None:
    for m in model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
        assert "forward" not in vars(m)


def close(got: np.ndarray, want: np.ndarray, what: str) -> None:
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=what)


# --------------------------------------------------------------------------- against the reference


@st.composite
def configs(draw: Any) -> dict[str, Any]:
    kind = draw(st.sampled_from(["lstm", "gru", "rnn_tanh", "rnn_relu"]))
    hidden = draw(st.integers(1, 5))
    proj = 0
    if kind == "lstm" and hidden > 1 and draw(st.booleans()):
        proj = draw(st.integers(1, hidden - 1))
    time = draw(st.integers(1, 7))
    batch = draw(st.integers(1, 4))
    packed = draw(st.booleans())
    lengths = draw(st.lists(st.integers(1, time), min_size=batch, max_size=batch)) if packed else None
    return {
        "kind": kind,
        "hidden": hidden,
        "proj": proj,
        "features": draw(st.integers(1, 4)),
        "num_layers": draw(st.integers(1, 3)),
        "bidirectional": draw(st.booleans()),
        "batch_first": draw(st.booleans()),
        "bias": draw(st.booleans()),
        "time": time,
        "batch": batch,
        "lengths": lengths,
        "initial_state": draw(st.booleans()),
        # "all": c and gates (emitted on CPU); "h": the kernel only; "reconstruct": c and gates
        # rebuilt from the kernel's h (the path used for GPUs and packed input)
        "mode": draw(st.sampled_from(["all", "h", "reconstruct"])),
        "seed": draw(st.integers(0, 2**16)),
    }


def _build(cfg: dict[str, Any]) -> Any:
    torch.manual_seed(cfg["seed"])
    common = {
        "num_layers": cfg["num_layers"],
        "bidirectional": cfg["bidirectional"],
        "batch_first": cfg["batch_first"],
        "bias": cfg["bias"],
    }
    kind = cfg["kind"]
    if kind == "lstm":
        m = nn.LSTM(cfg["features"], cfg["hidden"], proj_size=cfg["proj"], **common)
    elif kind == "gru":
        m = nn.GRU(cfg["features"], cfg["hidden"], **common)
    else:
        m = nn.RNN(cfg["features"], cfg["hidden"], nonlinearity=kind[4:], **common)
    with torch.no_grad():  # larger weights than the default init: saturating gates get tested too
        for p in m.parameters():
            p.mul_(2.0)
    return m.eval()


@settings(max_examples=50, deadline=None)
@given(configs())
def test_matches_reference(cfg: dict[str, Any]) -> None:
    m = _build(cfg)
    kind = {"lstm": "lstm", "gru": "gru"}.get(cfg["kind"], "simple")
    n, t, n_dir, layers = cfg["batch"], cfg["time"], 1 + cfg["bidirectional"], cfg["num_layers"]
    units = cfg["proj"] or cfg["hidden"]
    g = torch.Generator().manual_seed(cfg["seed"])
    x = torch.randn(n, t, cfg["features"], generator=g)  # batch-major here; the module may not be
    h0 = c0 = None
    hx: Any = None
    if cfg["initial_state"]:
        h0 = torch.randn(layers * n_dir, n, units, generator=g)
        c0 = torch.randn(layers * n_dir, n, cfg["hidden"], generator=g)
        hx = (h0, c0) if kind == "lstm" else h0
    if cfg["lengths"] is not None:
        lengths = torch.tensor(cfg["lengths"])
        arg: Any = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        t = int(lengths.max())
        mask: np.ndarray | None = np.arange(t)[None, :] < lengths.numpy()[:, None]
    else:
        arg = x if cfg["batch_first"] else x.transpose(0, 1)
        mask = None
    args = (arg,) if hx is None else (arg, hx)
    fields = ("h",) if cfg["mode"] == "h" else None
    strategy = "reconstruct" if cfg["mode"] == "reconstruct" else "auto"
    states = rnnlens.trace(m, *args, fields=fields, strategy=strategy)
    with torch.no_grad():
        out, final = m(*args)

    root = {"lstm": "lstm", "gru": "gru"}.get(cfg["kind"], "rnn")
    names = layer_names(root, layers)
    assert list(states) == names
    ref = reference_stack(
        m,
        kind,
        x[:, :t].numpy(),
        mask,
        None if h0 is None else h0.double().numpy(),
        None if c0 is None else c0.double().numpy(),
        relu=cfg["kind"] == "rnn_relu",
    )
    for layer, name in enumerate(names):
        ls = states[name]
        assert ls.units == units and ls.h.shape == (n, t, n_dir * units)
        assert ls.h.dtype == np.float32
        for d, direction in enumerate(ls.directions):
            ds, r = ls.directions[direction], ref[layer][d]
            close(ds.h, r["h"], f"{name} {direction} h")
            if cfg["mode"] != "h" and kind == "lstm":
                assert ds.c.shape == (n, t, cfg["hidden"])
                close(ds.c, r["c"], f"{name} {direction} c")
            if cfg["mode"] != "h" and kind in ("lstm", "gru"):
                close(ds.gates.array, r["gates"], f"{name} {direction} gates")
            if cfg["mode"] == "h":
                assert ds.fields == ("h",)
    if mask is not None:
        np.testing.assert_array_equal(states.mask, mask)
    else:
        assert states.mask is None

    # The top layer's h is the module's own output (at valid steps); the last valid state of
    # each layer and direction is h_n (and c_n).
    atol = 0.0 if cfg["mode"] == "h" else KERNEL_ATOL
    if mask is None:
        own = out.numpy() if cfg["batch_first"] else out.numpy().transpose(1, 0, 2)
    else:
        own = pad_packed_sequence(out, batch_first=True)[0].numpy()
    top = states[names[-1]].h
    valid = np.ones((n, t), bool) if mask is None else mask
    np.testing.assert_allclose(top[valid], own[valid], rtol=0, atol=atol)
    h_n, c_n = final if kind == "lstm" else (final, None)
    last = np.full(n, t - 1) if mask is None else mask.sum(1) - 1
    for layer, name in enumerate(names):
        for d, direction in enumerate(states[name].directions):
            ds = states[name].directions[direction]
            step = last if d == 0 else np.zeros(n, int)
            np.testing.assert_allclose(ds.h[np.arange(n), step], h_n[layer * n_dir + d], rtol=0, atol=atol)
            if c_n is not None and cfg["mode"] != "h":
                np.testing.assert_allclose(
                    ds.c[np.arange(n), step], c_n[layer * n_dir + d], rtol=0, atol=KERNEL_ATOL
                )
    no_leftovers(m)


# --------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU, nn.RNN])
@pytest.mark.parametrize("batch_first", [True, False])
def test_h_only_is_the_kernels_own_output_bitwise(cls: Any, batch_first: bool) -> None:
    torch.manual_seed(0)
    m = cls(5, 8, num_layers=3, bidirectional=True, batch_first=batch_first).eval()
    x = torch.randn(4, 9, 5) if batch_first else torch.randn(9, 4, 5)
    with torch.no_grad():
        out, final = m(x)
    states = rnnlens.trace(m, x, fields="h")
    own = out.numpy() if batch_first else out.numpy().transpose(1, 0, 2)
    name = cls.__name__.lower()
    np.testing.assert_array_equal(states[f"{name}.l2"].h, own)
    h_n = final[0] if cls is nn.LSTM else final
    for layer in range(3):
        np.testing.assert_array_equal(
            states[f"{name}.l{layer}"].last(), torch.cat([h_n[2 * layer], h_n[2 * layer + 1]], -1)
        )


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_emitted_states_match_both_cpu_kernels(cls: Any) -> None:
    """With oneDNN off, PyTorch's CPU LSTM/GRU is its native cell; with it on, oneDNN's kernel."""
    torch.manual_seed(1)
    m = cls(6, 16, num_layers=2, bidirectional=True, batch_first=True).eval()
    x = torch.randn(8, 12, 6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # oneDNN's TF32 note
        with torch.backends.mkldnn.flags(enabled=False):
            with torch.no_grad():
                out, _ = m(x)
            states = rnnlens.trace(m, x)
    name = cls.__name__.lower()
    np.testing.assert_allclose(states[f"{name}.l1"].h, out.numpy(), rtol=0, atol=KERNEL_ATOL)
    # and with oneDNN on (PyTorch's default for float32 LSTMs), within 1e-6
    with torch.no_grad():
        out, _ = m(x)
    np.testing.assert_allclose(rnnlens.trace(m, x)[f"{name}.l1"].h, out.numpy(), rtol=0, atol=KERNEL_ATOL)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_emitted_h_at_benchmark_size_is_within_the_stated_tolerance(cls: Any) -> None:
    """The benchmark's layer size (128 units, 100 steps, 3 layers): rounding does not grow past 1e-6."""
    torch.manual_seed(5)
    m = cls(32, 128, num_layers=3, batch_first=True).eval()
    x = torch.randn(64, 100, 32)
    with torch.no_grad():
        out, _ = m(x)
    h = rnnlens.trace(m, x, strategy="emit")[f"{cls.__name__.lower()}.l2"].h
    np.testing.assert_allclose(h, out.numpy(), rtol=0, atol=KERNEL_ATOL)


@pytest.mark.parametrize("cls", [nn.LSTM, nn.GRU])
def test_emit_and_reconstruct_agree_on_large_buffers(cls: Any) -> None:
    """Sizes where the emitted buffers are large (> 8 MiB): the same states either way."""
    torch.manual_seed(11)
    m = cls(8, 64, num_layers=2, bidirectional=cls is nn.GRU, batch_first=True).eval()
    x = torch.randn(256, 40, 8)
    emitted = rnnlens.trace(m, x, strategy="emit")
    rebuilt = rnnlens.trace(m, x, strategy="reconstruct")
    for name in emitted:
        a, b = emitted[name], rebuilt[name]
        np.testing.assert_allclose(a.h, b.h, rtol=0, atol=KERNEL_ATOL)
        for gate in a.gates:
            np.testing.assert_allclose(a.gates[gate], b.gates[gate], rtol=RTOL, atol=ATOL, err_msg=gate)
        if cls is nn.LSTM:
            np.testing.assert_allclose(a.c, b.c, rtol=RTOL, atol=ATOL)
    with pytest.raises(InputError, match="strategy"):
        rnnlens.trace(m, x, strategy="fast")


def test_float64_module() -> None:
    torch.manual_seed(2)
    m = nn.LSTM(3, 4, batch_first=True).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64)
    states = rnnlens.trace(m, x)
    with torch.no_grad():
        out, _ = m(x)
    assert states["lstm"].h.dtype == np.float64 and states["lstm"].gates.array.dtype == np.float64
    np.testing.assert_allclose(states["lstm"].h, out.numpy(), rtol=0, atol=1e-12)


def test_unbatched_input() -> None:
    torch.manual_seed(3)
    m = nn.GRU(3, 4, num_layers=2).eval()
    x = torch.randn(6, 3)  # (time, feature)
    h0 = torch.randn(2, 4)
    states = rnnlens.trace(m, x, h0)
    with torch.no_grad():
        out, h_n = m(x, h0)
    assert states["gru.l1"].h.shape == (1, 6, 4)
    np.testing.assert_allclose(states["gru.l1"].h[0], out.numpy(), rtol=0, atol=KERNEL_ATOL)
    np.testing.assert_allclose(states["gru.l0"].last()[0], h_n[0].numpy(), rtol=0, atol=KERNEL_ATOL)


def test_projection_shapes_and_spec() -> None:
    m = nn.LSTM(3, 6, proj_size=2, num_layers=2, batch_first=True).eval()
    states = rnnlens.trace(m, torch.randn(2, 4, 3))
    ls = states["lstm.l1"]
    assert ls.h.shape == (2, 4, 2) and ls.c.shape == (2, 4, 6) and ls.gates["f"].shape == (2, 4, 6)
    assert ls.spec.units == 2 and ls.spec.cell_units == 6


# --------------------------------------------------------------------------- packed sequences


@pytest.mark.parametrize("initial_state", [False, True])
def test_packed_backward_reads_initial_state_at_trailing_padding(initial_state: bool) -> None:
    torch.manual_seed(4)
    m = nn.LSTM(3, 4, bidirectional=True, batch_first=True).eval()
    x = torch.randn(3, 6, 3)
    lengths = torch.tensor([6, 2, 4])
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    h0 = torch.randn(2, 3, 4) if initial_state else torch.zeros(2, 3, 4)
    c0 = torch.randn(2, 3, 4) if initial_state else torch.zeros(2, 3, 4)
    states = rnnlens.trace(m, packed, (h0, c0))
    mask = np.arange(6)[None] < lengths.numpy()[:, None]
    np.testing.assert_array_equal(states.mask, mask)
    bwd, fwd = states["lstm"].backward, states["lstm"].forward
    # sample 1 has 2 valid steps: the backward direction has not started at steps 2..5
    np.testing.assert_array_equal(bwd.h[1, 2:], np.broadcast_to(h0[1, 1].numpy(), (4, 4)))
    np.testing.assert_array_equal(bwd.c[1, 2:], np.broadcast_to(c0[1, 1].numpy(), (4, 4)))
    # the forward direction carries its last valid state through the padding
    np.testing.assert_array_equal(fwd.h[1, 2:], np.broadcast_to(fwd.h[1, 1], (4, 4)))
    assert np.isnan(fwd.gates["i"][1, 2:]).all() and not np.isnan(fwd.gates["i"][1, :2]).any()
    with torch.no_grad():
        _, (h_n, c_n) = m(packed, (h0, c0))
    np.testing.assert_allclose(states["lstm"].last(), torch.cat([h_n[0], h_n[1]], -1), rtol=0, atol=1e-6)
    np.testing.assert_allclose(bwd.last("c"), c_n[1].numpy(), rtol=0, atol=1e-6)


def test_packed_model_with_lengths_argument() -> None:
    torch.manual_seed(5)
    model = PackedClassifier(features=3, hidden=4).eval()
    x = torch.randn(3, 5, 3)
    lengths = torch.tensor([5, 1, 3])
    states = rnnlens.trace(model, x, lengths)
    assert list(states) == ["rnn"]
    assert states["rnn"].h.shape == (3, 5, 8)
    np.testing.assert_array_equal(states.mask.sum(1), [5, 1, 3])


# --------------------------------------------------------------------------- model structures


def test_encoder_decoder_with_repeated_calls() -> None:
    torch.manual_seed(6)
    model = EncoderDecoder(features=3, hidden=4).eval()
    x = torch.randn(2, 5, 3)
    states = rnnlens.trace(model, x, calls="each")
    assert list(states) == ["encoder.l0", "encoder.l1", "decoder", "decoder#1"]
    with torch.no_grad():
        enc, (h, _) = model.encoder(x)
        first, h_dec = model.decoder(enc, h[-1:].contiguous())
        second, _ = model.decoder(torch.tanh(first), h_dec)
    np.testing.assert_allclose(states["encoder.l1"].h, enc.numpy(), rtol=0, atol=KERNEL_ATOL)
    np.testing.assert_allclose(states["decoder"].h, first.numpy(), rtol=0, atol=KERNEL_ATOL)
    np.testing.assert_allclose(states["decoder#1"].h, second.numpy(), rtol=0, atol=KERNEL_ATOL)
    # the second call started from the first call's final state
    ref = reference_rnn(
        "gru",
        np.tanh(first.double().numpy()),
        **canonical(model.decoder, "gru"),
        h0=h_dec[0].double().numpy(),
    )
    close(states["decoder#1"].gates.array, ref["gates"], "decoder#1 gates")
    # selecting one call by name
    only = rnnlens.trace(model, x, layers=["decoder#1"], fields="h", calls="each")
    assert list(only) == ["decoder#1"]
    np.testing.assert_array_equal(only["decoder#1"].h, second.numpy())
    # by default the second call, which starts from the first call's final state, is joined on
    with pytest.raises(rnnlens.LayerNotFoundError, match="calls='each'"):
        rnnlens.trace(model, x, layers=["decoder#1"])
    joined = rnnlens.trace(model, x)
    assert list(joined) == ["encoder.l0", "encoder.l1", "decoder"]
    np.testing.assert_array_equal(
        joined["decoder"].h, np.concatenate([states["decoder"].h, states["decoder#1"].h], 1)
    )
    np.testing.assert_array_equal(
        joined["decoder"].gates.array,
        np.concatenate([states["decoder"].gates.array, states["decoder#1"].gates.array], 1),
    )
    no_leftovers(model)


class GreedyDecoder(nn.Module):
    """A decoder ``nn.LSTM`` fed one step at a time, its own output becoming the next input."""

    def __init__(self, features: int, hidden: int, layers: int = 2) -> None:
        super().__init__()
        self.rnn = nn.LSTM(features, hidden, num_layers=layers, batch_first=True)
        self.out = nn.Linear(hidden, features)

    def forward(self, start: Any, steps: int) -> Any:
        x, state, ys = start, None, []
        for _ in range(steps):
            y, state = self.rnn(x, state)
            x = torch.tanh(self.out(y))
            ys.append(x)
        return torch.cat(ys, 1)


@pytest.mark.parametrize("strategy", ["emit", "reconstruct"])
def test_a_decoder_called_once_per_step_is_one_entry(strategy: str) -> None:
    torch.manual_seed(11)
    model = GreedyDecoder(3, 5).eval()
    start, steps = torch.randn(2, 1, 3), 7
    states = rnnlens.trace(model, start, steps, strategy=strategy)
    assert list(states) == ["rnn.l0", "rnn.l1"]
    with torch.no_grad():
        ys = model(start, steps)
    inputs = torch.cat([start, ys[:, :-1]], 1).double().numpy()  # what each step read, in order
    ref0 = reference_rnn("lstm", inputs, **canonical(model.rnn, "lstm", 0))
    ref1 = reference_rnn("lstm", ref0["h"], **canonical(model.rnn, "lstm", 1))
    for name, ref in (("rnn.l0", ref0), ("rnn.l1", ref1)):
        assert states[name].h.shape == (2, steps, 5)
        close(states[name].h, ref["h"], f"{name} h")
        close(states[name].c, ref["c"], f"{name} c")
        close(states[name].gates.array, ref["gates"], f"{name} gates")
    each = rnnlens.trace(model, start, steps, calls="each", fields="h")
    assert len(each) == 2 * steps and "rnn.l1#6" in each
    with pytest.raises(rnnlens.OptionError, match="Did you mean 'each'"):
        rnnlens.trace(model, start, steps, calls="eahc")
    no_leftovers(model)


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("decay", [1.0, 0.5])
def test_cell_loop(cell: str, decay: float) -> None:
    torch.manual_seed(7)
    model = CellLoop(features=3, hidden=4, cell=cell, decay=decay).eval()
    x = torch.randn(2, 6, 3)
    states = rnnlens.trace(model, x)
    assert list(states) == ["cell"]
    ls = states["cell"]
    with torch.no_grad():
        hs = model(x)
    assert ls.h.shape == (2, 6, 4)
    np.testing.assert_array_equal(ls.h, hs.numpy())
    kind = {"lstm": "lstm", "gru": "gru", "rnn": "simple"}[cell]
    w = canonical(model.cell, cell if cell != "rnn" else "simple", cell=True)
    w.pop("projection")
    # step by step: each call reads the hx it was given (the previous output times decay)
    h_prev = np.zeros((2, 4))
    c_prev = np.zeros((2, 4))
    for t in range(6):
        r = reference_rnn(kind, x[:, t : t + 1].double().numpy(), **w, h0=h_prev, c0=c_prev)
        close(ls.h[:, t], r["h"][:, 0], f"h step {t}")
        if cell == "lstm":
            close(ls.c[:, t], r["c"][:, 0], f"c step {t}")
        if cell in ("lstm", "gru"):
            close(ls.gates.array[:, t], r["gates"][:, 0], f"gates step {t}")
        h_prev = ls.h[:, t].astype(np.float64) * decay
        if cell == "lstm":
            c_prev = ls.c[:, t].astype(np.float64)
    no_leftovers(model)


def test_cell_with_changing_batch_size_is_refused() -> None:
    cell = nn.GRUCell(2, 3)

    class Shrinking(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.cell = cell

        def forward(self, x: Any) -> Any:
            h = self.cell(x[:, 0])
            return self.cell(x[:1, 1], h[:1])

    with pytest.raises(UnsupportedLayerError, match="batch sizes"):
        rnnlens.trace(Shrinking(), torch.randn(3, 2, 2))


def test_in_place_change_of_a_captured_output_is_noticed() -> None:
    class Residual(nn.Module):
        def __init__(self, spoil_input: bool = False) -> None:
            super().__init__()
            self.rnn = nn.LSTM(4, 4, batch_first=True)
            self.spoil_input = spoil_input

        def forward(self, x: Any) -> Any:
            out, _ = self.rnn(x)
            out += x  # modifies the LSTM's output tensor in place
            if self.spoil_input:
                x.mul_(0)
            return out

    torch.manual_seed(8)
    model = Residual().eval()
    x = torch.randn(2, 5, 4)
    with torch.no_grad():
        want, _ = model.rnn(x)
    for fields in (("h",), None):
        states = rnnlens.trace(model, x, fields=fields)
        np.testing.assert_allclose(states["rnn"].h, want.numpy(), rtol=0, atol=KERNEL_ATOL)
    model.spoil_input = True
    with pytest.raises(UnsupportedModelError, match=r"x.clone\(\)"):
        rnnlens.trace(model, x.clone())
    no_leftovers(model)


def test_a_subclass_overriding_forward_is_traced_through_super_forward() -> None:
    """A subclass's own forward runs unchanged; its super().forward call is what is traced:
    every field of every layer, exact, no warning (it was kind "rnn" with a warning before)."""

    class Doubling(nn.GRU):
        def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
            out, h = super().forward(input, hx)
            return out * 2, h

    m = Doubling(3, 4, batch_first=True).eval()
    x = torch.randn(2, 5, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        states = rnnlens.trace(m, x)
    assert states["gru"].kind == "gru" and states["gru"].fields == ("h", "gates")
    with torch.no_grad():
        out, _ = m(x)
    np.testing.assert_allclose(states["gru"].h, out.numpy() / 2, rtol=0, atol=KERNEL_ATOL)
    want = reference_rnn("gru", x.numpy(), **canonical(m, "gru", 0, False))
    np.testing.assert_allclose(states["gru"].gates.array, want["gates"], rtol=1e-5, atol=1e-5)
    assert type(m) is Doubling and "forward" not in vars(m)


class Forecasting(nn.LSTM):
    """As a forecasting library ships it: handles zero-length sequences and packs itself."""

    def forward(self, x: Any, lengths: Any = None, hx: Any = None) -> Any:  # type: ignore[override]
        if lengths is None:
            return super().forward(x, hx)
        packed = pack_padded_sequence(x, lengths.clamp(min=1), batch_first=True, enforce_sorted=False)
        out, (h, c) = super().forward(packed, hx)
        out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        return out, (h, c)


def test_a_packing_lstm_subclass_gives_every_layer_with_its_mask() -> None:
    torch.manual_seed(7)
    m = Forecasting(3, 4, num_layers=2, batch_first=True).eval()
    x, lengths = torch.randn(3, 6, 3), torch.tensor([6, 2, 4])
    states = rnnlens.trace(m, x, lengths)
    assert list(states) == ["lstm.l0", "lstm.l1"]
    with torch.no_grad():
        _, (h_n, c_n) = m(x, lengths)
    for layer in (0, 1):
        ls = states[f"lstm.l{layer}"]
        assert ls.kind == "lstm" and ls.mask.sum(axis=1).tolist() == [6, 2, 4]
        np.testing.assert_allclose(ls.last(), h_n[layer].numpy(), rtol=0, atol=KERNEL_ATOL)
        np.testing.assert_allclose(ls.last("c"), c_n[layer].numpy(), rtol=1e-6, atol=1e-6)
    no_leftovers(m)


def test_root_names_and_describe() -> None:
    model = nn.Sequential(nn.Linear(3, 3), nn.LSTM(3, 5, num_layers=2, proj_size=2), nn.GRUCell(3, 4))
    specs = rnnlens.describe(model)
    assert specs.names == ["1.l0", "1.l1", "2"]
    assert specs[0].units == 2 and specs[0].cell_units == 5 and specs[0].fields == ("h", "c", "gates")
    assert specs[2].kind == "gru" and specs[2].layer_type == "GRUCell"
    assert [s.name for s in tadapter.describe(nn.RNN(2, 3, nonlinearity="relu"))] == ["rnn"]
    assert tadapter.describe(nn.LSTMCell(2, 3))[0].name == "lstmcell"
    assert "lstm" in repr(specs)


def test_modules_not_called_have_no_entries() -> None:
    class Partial(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.used = nn.GRU(2, 3)
            self.unused = nn.LSTM(2, 3)

        def forward(self, x: Any) -> Any:
            return self.used(x)[0]

    model = Partial()
    x = torch.randn(4, 2, 2)
    assert list(rnnlens.trace(model, x)) == ["used"]
    with pytest.raises(LayerNotFoundError, match="did not call"):
        rnnlens.trace(model, x, layers="unused")
    with pytest.raises(LayerNotFoundError, match=r"'used' is traced as \['used'\]"):
        rnnlens.trace(model, x, layers="used#1")


# --------------------------------------------------------------------------- bad input


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(3, 5)
        self.rnn = nn.LSTM(5, 4, num_layers=2, batch_first=True, dropout=0.5)
        self.out = nn.Linear(4, 2)

    def forward(self, x: Any) -> Any:
        return self.out(self.rnn(self.embed(x))[0])


def test_training_flags_restored_and_dropout_off() -> None:
    torch.manual_seed(9)
    model = Tagger()
    model.train()
    model.out.eval()
    x = torch.randn(2, 4, 3)
    a = rnnlens.trace(model, x)["rnn.l1"].h
    b = rnnlens.trace(model, x)["rnn.l1"].h
    np.testing.assert_array_equal(a, b)  # eval mode: no dropout between layers
    assert model.training and model.rnn.training and not model.out.training
    no_leftovers(model)


def test_no_recurrent_module() -> None:
    with pytest.raises(UnsupportedLayerError, match="no recurrent layer"):
        rnnlens.trace(nn.Sequential(nn.Linear(2, 2)), torch.randn(1, 2))


@pytest.mark.parametrize("fields", [("h",), None])
def test_wrong_input_shape_says_what_was_expected(fields: Any) -> None:
    model = Tagger()
    model.train()
    # the LSTM (a trained submodule, traced on its own) gets 3 features instead of 5
    with pytest.raises(InputError, match=r"'lstm' \(LSTM\).*Expected 5, got 3") as info:
        rnnlens.trace(model.rnn, torch.randn(2, 4, 3), fields=fields)
    for expected in (
        "(batch, time, 5)",
        "batch_first=True",
        "input_size=5",
        "received a tensor of shape (2, 4, 3)",
    ):
        assert expected in str(info.value)
    assert isinstance(info.value, ValueError)
    assert model.training and model.rnn.training
    no_leftovers(model)


def test_wrong_hx_is_an_input_error() -> None:
    rnn = nn.GRU(3, 4, num_layers=2)
    with pytest.raises(InputError, match="hx"):
        rnnlens.trace(rnn, torch.randn(5, 2, 3), torch.zeros(1, 2, 4))
    no_leftovers(rnn)


def test_layer_names_are_checked_before_running() -> None:
    model = Tagger()
    with pytest.raises(LayerNotFoundError, match=r"Did you mean 'rnn.l1'\?") as info:
        rnnlens.trace(model, torch.randn(2, 4, 3), layers=["rnn.l7"])
    assert "rnn.l0" in str(info.value)
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnsupportedLayerError, match="not a recurrent layer"):
        rnnlens.trace(model, torch.randn(2, 4, 3), layers="embed")
    with pytest.raises(FieldNotAvailableError):
        rnnlens.trace(nn.GRU(2, 2), torch.randn(3, 1, 2), fields=("c",))
    no_leftovers(model)


def test_mask_and_batch_size_options() -> None:
    rnn = nn.LSTM(2, 3)
    with pytest.raises(InputError, match="PackedSequence"):
        rnnlens.trace(rnn, torch.randn(4, 1, 2), mask=np.ones((1, 4), bool))
    with pytest.raises(InputError, match="batch_size"):
        rnnlens.trace(rnn, torch.randn(4, 1, 2), batch_size=1)

    class Masked(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.GRU(2, 3, batch_first=True)

        def forward(self, x: Any, mask: Any = None) -> Any:
            return self.rnn(x * mask[..., None])[0]

    x = torch.randn(2, 4, 2)
    mask = torch.tensor([[1.0, 1, 0, 0], [1, 1, 1, 1]])
    states = rnnlens.trace(Masked(), x, mask=mask)  # passed on to forward
    assert states["rnn"].h.shape == (2, 4, 3)


def test_module_call_errors_outside_recurrent_modules() -> None:
    with pytest.raises(InputError, match="forward failed"):
        rnnlens.trace(Tagger(), torch.randn(2, 4, 7))
    with pytest.raises(UnsupportedModelError, match=r"torch\.nn\.Module"):
        tadapter.capture(object(), (1,), {}, rnnlens.adapters.TraceOptions())


# --------------------------------------------------------------------------- loading


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(3, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # typed: TorchScript compiles it
        return self.rnn(x)[0]


def _same_weights(a: Any, b: Any) -> bool:
    return all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )


def test_load_state_dict(tmp_path: Any) -> None:
    src = Small()
    path = tmp_path / "small.pt"
    torch.save(src.state_dict(), path)
    with pytest.raises(UnsupportedModelError, match="module=") as info:
        tload.load_model(path)
    assert "state dict" in str(info.value)
    loaded = tload.load_model(path, module=Small())
    assert _same_weights(src, loaded)
    assert _same_weights(src, tload.load_model(str(path), module=Small))  # a class works too
    ckpt = tmp_path / "ckpt.pth"
    torch.save({"epoch": 3, "state_dict": src.state_dict()}, ckpt)
    assert _same_weights(src, tload.load_model(ckpt, module=Small()))
    with pytest.raises(InputError, match="do not fit"):
        tload.load_model(path, module=Tagger())
    with pytest.raises(FileNotFoundError):
        tload.load_model(tmp_path / "missing.pt", module=Small())


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_full_pickle_needs_unsafe(tmp_path: Any) -> None:
    path = tmp_path / "whole.pt"
    src = EncoderDecoder()
    torch.save(src, path)
    with pytest.raises(ModelFileError, match="unsafe=True"):
        tload.load_model(path)
    loaded = tload.load_model(path, unsafe=True)
    assert isinstance(loaded, EncoderDecoder) and _same_weights(src, loaded)
    not_torch = tmp_path / "junk.pt"
    not_torch.write_bytes(pickle.dumps([1, 2]) + b"garbage")
    with pytest.raises(ModelFileError, match="not a PyTorch file"):
        tload.load_model(not_torch)
    no_weights = tmp_path / "list.pt"
    torch.save([1, 2], no_weights)
    with pytest.raises(ModelFileError, match="not model weights"):
        tload.load_model(no_weights)


@pytest.mark.filterwarnings("ignore:`torch.jit.*is deprecated:DeprecationWarning")
def test_torchscript(tmp_path: Any) -> None:
    torch.manual_seed(10)
    src = Small().eval()
    path = tmp_path / "scripted.pt"
    torch.jit.script(src).save(str(path))
    with pytest.raises(ModelFileError, match="unsafe=True"):  # opening TorchScript runs its code
        tload.load_model(path)
    scripted = tload.load_model(path, unsafe=True)
    assert isinstance(scripted, torch.jit.ScriptModule)
    assert rnnlens.describe(scripted).names == ["rnn"]
    x = torch.randn(2, 3, 3)
    with torch.no_grad():
        want = scripted(x)
    # traced through its ONNX export, named as describe names it, against the reference
    states = rnnlens.trace(scripted, x)
    assert list(states) == ["rnn"]
    ref = reference_rnn("gru", x.double().numpy(), **canonical(src.rnn, "gru"))
    close(states["rnn"].h, ref["h"], "scripted h")
    close(states["rnn"].gates.array, ref["gates"], "scripted gates")
    np.testing.assert_allclose(states["rnn"].h, want.numpy(), rtol=0, atol=1e-6)
    with pytest.raises(UnsupportedModelError, match=r"TorchScript.*load_model"):
        rnnlens.intervene(scripted, x, [rnnlens.Edit("rnn", 0, scale=0)])
    # weights into the Python module: traceable the usual way
    python = tload.load_model(path, module=Small(), unsafe=True)
    np.testing.assert_allclose(rnnlens.trace(python, x)["rnn"].h, want.numpy(), rtol=0, atol=KERNEL_ATOL)


class StackedTagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.LSTM(3, 5, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(10, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.enc(x)[0])


@pytest.mark.parametrize("compile", ["script", "trace"])
def test_a_scripted_stacked_bilstm_is_traced_through_onnx(compile: str) -> None:
    torch.manual_seed(12)
    src = StackedTagger().eval()
    x = torch.randn(2, 6, 3)
    compiled = torch.jit.script(src) if compile == "script" else torch.jit.trace(src, x)
    states = rnnlens.trace(compiled, x)
    assert list(states) == ["enc.l0", "enc.l1"] == rnnlens.describe(compiled).names
    refs = reference_stack(src.enc, "lstm", x.numpy(), None, None, None)
    for layer in range(2):
        for d, direction in enumerate(("forward", "backward")):
            got = getattr(states[f"enc.l{layer}"], direction)
            close(got.h, refs[layer][d]["h"], f"l{layer} {direction} h")
            close(got.c, refs[layer][d]["c"], f"l{layer} {direction} c")
    only = rnnlens.trace(compiled, x, layers="enc.l1", fields="h")
    assert list(only) == ["enc.l1"]


def test_a_subclass_that_never_calls_super_forward_is_an_error() -> None:
    class Replaced(nn.GRU):
        def forward(self, input: Any, hx: Any = None) -> Any:  # type: ignore[override]
            return input * 2, None  # computes something else entirely

    m = Replaced(3, 4, batch_first=True)
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"did not go through super\(\)\.forward"):
        rnnlens.trace(nn.Sequential(m), torch.randn(2, 5, 3))
    no_leftovers(m)


def test_the_digest_of_a_module_without_source_is_the_same_in_another_process() -> None:
    """As on a Dask worker: a class defined in a notebook, pickled by value, has no source file."""
    import subprocess
    import sys

    cloudpickle = pytest.importorskip("cloudpickle")
    code = (
        "import cloudpickle, sys, torch\n"
        "from rnnlens.adapters import model_digest\n"
        "exec('class Net(torch.nn.Module):\\n def __init__(self):\\n  super().__init__()\\n"
        "  self.rnn = torch.nn.GRU(3, 4)\\n def forward(self, x):\\n  return self.rnn(x)[0] * 2\\n')\n"
        "torch.manual_seed(0)\n"
        "m = Net()\n"
        "sys.stdout.buffer.write(cloudpickle.dumps((m, model_digest(m))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True, timeout=120)
    model, digest = cloudpickle.loads(out.stdout)
    assert rnnlens.adapters.model_digest(model) == digest
