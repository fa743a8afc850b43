"""bfloat16 ``nn.LSTM`` / ``nn.GRU`` on CPU (a bfloat16 module; ``torch.autocast("cpu",
dtype=torch.bfloat16)``): every field, as PyTorch's kernels compute them (LSTM: oneDNN; GRU: the
native kernel, every op rounded to bfloat16), against the module's own h and c_n and an
independent float64 loop on the bfloat16-rounded weights, fed the module's h.

Measured (this CPU, oneDNN with bfloat16): h bitwise the module's (it is the kernel's own); the
loop's h rounds to the kernel's bfloat16 h except at rare ties (within 2**-8 relative, the
parity tolerance); c at the last step bitwise ``c_n``; gates against the float64 loop ≤ 8.7e-8,
c ≤ one bfloat16 rounding (c is carried in bfloat16).
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import rnnlens  # noqa: E402
from rnnlens.adapters.torch_.bfloat16 import onednn_bfloat16  # noqa: E402

pytestmark = pytest.mark.skipif(not onednn_bfloat16(), reason="PyTorch runs bfloat16 LSTMs natively here")


def _reference(
    module: object, layer: int, d: int, x: np.ndarray, h_seq: np.ndarray, dtype: object = None
) -> dict:
    """float64: bias summed in bfloat16, c carried in bfloat16, fed the kernel's h; (time, sample, ·)."""
    sfx = f"_l{layer}" + ("_reverse" if d else "")

    dtype = dtype or torch.bfloat16

    def w(name: str) -> torch.Tensor:
        return getattr(module, name + sfx).detach().to(dtype)

    w_ih, w_hh = w("weight_ih").double().numpy(), w("weight_hh").double().numpy()
    bias = (w("bias_ih") + w("bias_hh")).double().numpy()
    t_len, n = x.shape[:2]
    hid = w_hh.shape[1]
    x = torch.from_numpy(x).to(dtype).double().numpy()
    out = {k: np.zeros((t_len, n, hid)) for k in ("h", "c", "i", "f", "g", "o")}
    h, c = np.zeros((n, hid)), np.zeros((n, hid))
    for s in range(t_len - 1, -1, -1) if d else range(t_len):
        pre = x[s] @ w_ih.T + h @ w_hh.T + bias
        i, f, g, o = np.split(pre, 4, axis=1)
        i, f, g, o = 1 / (1 + np.exp(-i)), 1 / (1 + np.exp(-f)), np.tanh(g), 1 / (1 + np.exp(-o))
        c_new = f * c + i * g
        out["h"][s] = o * np.tanh(c_new)
        c = torch.from_numpy(c_new).to(dtype).double().numpy()
        for k, v in zip("cifgo", (c, i, f, g, o)):
            out[k][s] = v
        h = h_seq[s]
    return out


def _check(layer: object, module: object, index: int, x: np.ndarray, n_dir: int, hid: int) -> None:
    for d in range(n_dir):
        sl = slice(d * hid, (d + 1) * hid)
        h_seq = layer.h[:, :, sl].swapaxes(0, 1).astype(np.float64)  # type: ignore[attr-defined]
        ref = _reference(module, index, d, x, h_seq)
        # within one bfloat16 rounding of h and of c (a c on a tie may round the other way)
        c = layer.c[:, :, sl].swapaxes(0, 1)  # type: ignore[attr-defined]
        assert (np.abs(ref["h"] - h_seq) <= 2.0**-8 * (np.abs(h_seq) + np.abs(c)) + 1e-6).all()
        for k in "ifgo":
            got = layer.gates[k][:, :, sl].swapaxes(0, 1)  # type: ignore[attr-defined]
            np.testing.assert_allclose(got, ref[k], rtol=0, atol=1e-6)
        assert (np.abs(c - ref["c"]) <= 2.0**-7 * np.abs(c) + 1e-6).mean() > 0.99  # (after such a tie)


def test_bfloat16_module_stacked_bidirectional() -> None:
    torch.manual_seed(0)
    module = torch.nn.LSTM(4, 16, num_layers=2, bidirectional=True, batch_first=True).to(torch.bfloat16)
    x = (torch.randn(3, 20, 4) * 2).to(torch.bfloat16)
    with torch.no_grad():
        y, (h_n, c_n) = module(x)
    states = rnnlens.trace(module, x)
    np.testing.assert_array_equal(states["lstm.l1"].h, y.float().numpy())
    for layer in range(2):
        st = states[f"lstm.l{layer}"]
        np.testing.assert_array_equal(st.c[:, -1, :16], c_n[2 * layer].float().numpy())
        np.testing.assert_array_equal(st.c[:, 0, 16:], c_n[2 * layer + 1].float().numpy())
        np.testing.assert_array_equal(st.h[:, -1, :16], h_n[2 * layer].float().numpy())
    _check(states["lstm.l0"], module, 0, x.float().numpy().swapaxes(0, 1), 2, 16)
    _check(states["lstm.l1"], module, 1, states["lstm.l0"].h.swapaxes(0, 1), 2, 16)


def test_autocast_float_module() -> None:
    """A float32 module under autocast: the input and weights rounded to bfloat16, as autocast does."""
    torch.manual_seed(1)
    module = torch.nn.LSTM(5, 24)
    x = torch.randn(15, 4, 5)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        y, (_, c_n) = module(x)
        layer = rnnlens.trace(module, x)["lstm"]
    np.testing.assert_array_equal(layer.h, y.float().numpy().swapaxes(0, 1))
    np.testing.assert_array_equal(layer.c[:, -1], c_n[0].float().numpy())
    _check(layer, module, 0, x.numpy(), 1, 24)
    assert module.weight_ih_l0.dtype == torch.float32  # the model is not changed


def test_refused_where_not_reproduced() -> None:
    from torch.nn.utils.rnn import pack_padded_sequence

    torch.manual_seed(2)
    module = torch.nn.LSTM(3, 4).to(torch.bfloat16)
    packed = pack_padded_sequence(torch.randn(5, 2, 3).to(torch.bfloat16), [5, 3])
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"PackedSequence.*fields=\('h',\)"):
        rnnlens.trace(module, packed)
    assert rnnlens.trace(module, packed, fields=("h",))["lstm"].h.shape == (2, 5, 4)
    # oneDNN off: PyTorch's native kernel, every op rounded to bfloat16 -- stepped with its own ops
    x = torch.randn(5, 2, 3).to(torch.bfloat16)
    with torch.backends.mkldnn.flags(enabled=False), torch.no_grad():
        y, (_, c_n) = module(x)
        layer = rnnlens.trace(module, x)["lstm"]
    np.testing.assert_array_equal(layer.h, y.float().numpy().swapaxes(0, 1))
    np.testing.assert_array_equal(layer.c[:, -1], c_n[0].float().numpy())
    # edits: refused, saying why and the way out
    with pytest.raises(rnnlens.UnsupportedLayerError, match=r"bfloat16.*model.float\(\)"):
        rnnlens.intervene(module, x, rnnlens.Edit("lstm", 1, scale=0.0))


@pytest.mark.parametrize("cls", [torch.nn.LSTM, torch.nn.GRU])
def test_float16_native_kernel(cls: type) -> None:
    """float16 modules run PyTorch's native kernel on CPU: stepped with its own ops, h and c_n
    bitwise; gates within a few float16 roundings of a float64 loop (measured ≤ 2 * 2**-11)."""
    torch.manual_seed(4)
    module = cls(5, 16, num_layers=2, bidirectional=True, batch_first=True).half()
    x = (torch.randn(3, 12, 5) * 2).half()
    with torch.no_grad():
        y, final = module(x)
    states = rnnlens.trace(module, x)
    name = cls.__name__.lower()
    np.testing.assert_array_equal(states[f"{name}.l1"].h, y.numpy())
    if cls is torch.nn.LSTM:
        np.testing.assert_array_equal(states["lstm.l1"].c[:, -1, :16], final[1][2].numpy())
        h_seq = states["lstm.l0"].h[:, :, :16].swapaxes(0, 1).astype(np.float64)
        ref = _reference(module, 0, 0, x.float().numpy().swapaxes(0, 1), h_seq, torch.float16)
        for k in "ifgo":
            got = states["lstm.l0"].gates[k][:, :, :16].swapaxes(0, 1)
            assert (np.abs(got - ref[k]) <= 4 * 2.0**-11 * (1 + np.abs(ref[k]))).all()


def _gru_reference(module: object, layer: int, d: int, x: np.ndarray, h_seq: np.ndarray) -> dict:
    """float64 GRU on the bfloat16-rounded weights and input, fed the kernel's h: z, r, n."""
    sfx = f"_l{layer}" + ("_reverse" if d else "")

    def w(name: str) -> np.ndarray:
        return getattr(module, name + sfx).detach().to(torch.bfloat16).double().numpy()

    w_ih, w_hh, b_ih, b_hh = w("weight_ih"), w("weight_hh"), w("bias_ih"), w("bias_hh")
    x = torch.from_numpy(np.ascontiguousarray(x)).to(torch.bfloat16).double().numpy()
    hid = w_hh.shape[1]
    out = {k: np.zeros(x.shape[:2] + (hid,)) for k in "zrn"}
    h = np.zeros((x.shape[1], hid))
    for s in range(x.shape[0] - 1, -1, -1) if d else range(x.shape[0]):
        xi, hh = x[s] @ w_ih.T + b_ih, h @ w_hh.T + b_hh
        r = 1 / (1 + np.exp(-(xi[:, :hid] + hh[:, :hid])))
        z = 1 / (1 + np.exp(-(xi[:, hid : 2 * hid] + hh[:, hid : 2 * hid])))
        out["n"][s] = np.tanh(xi[:, 2 * hid :] + r * hh[:, 2 * hid :])
        out["r"][s], out["z"][s] = r, z
        h = h_seq[s]
    return out


@pytest.mark.parametrize("autocast", [False, True])
def test_gru(autocast: bool) -> None:
    torch.manual_seed(3)
    module = torch.nn.GRU(5, 16, num_layers=2, bidirectional=True, batch_first=True)
    x = torch.randn(3, 12, 5) * 2
    if not autocast:
        module, x = module.to(torch.bfloat16), x.to(torch.bfloat16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y, _ = module(x)
        states = rnnlens.trace(module, x)
    np.testing.assert_array_equal(states["gru.l1"].h, y.float().numpy())
    inp = x.float().numpy().swapaxes(0, 1)
    for layer in range(2):
        st = states[f"gru.l{layer}"]
        for d in range(2):
            sl = slice(d * 16, (d + 1) * 16)
            ref = _gru_reference(module, layer, d, inp, st.h[:, :, sl].swapaxes(0, 1).astype(np.float64))
            for k in "zrn":
                got = st.gates[k][:, :, sl].swapaxes(0, 1)
                assert (np.abs(got - ref[k]) <= 4 * 2.0**-8 * (1 + np.abs(ref[k]))).all()
        inp = st.h.swapaxes(0, 1)
