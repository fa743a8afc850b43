"""PyTorch cases: the floor, rnnlens, and what users do today. On CPU by default; on the
GPU with ``python -m benchmarks --device cuda`` (every case then ends with a
``torch.cuda.synchronize()``, so the times are the kernels', not their launches')."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import Case

BATCH, TIME, FEATURES, UNITS, LAYERS = 512, 100, 32, 128, 3


def device() -> str:
    return os.environ.get("RNNLENS_BENCH_DEVICE", "cpu")


def _module() -> Any:
    import torch

    torch.manual_seed(0)
    return torch.nn.LSTM(FEATURES, UNITS, num_layers=LAYERS, batch_first=True).eval().to(device())


def _data() -> Any:
    import torch

    x = np.random.default_rng(0).normal(size=(BATCH, TIME, FEATURES)).astype("float32")
    return torch.from_numpy(x).to(device())


def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` followed by a CUDA synchronize when running on the GPU."""
    if device() != "cuda":
        return fn
    import torch

    def run() -> Any:
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def forward(module: Any, x: Any) -> Callable[[], Any]:
    """The floor: the module's own call on ``x`` under ``torch.inference_mode()``."""
    import torch

    def run() -> Any:
        with torch.inference_mode():
            return module(x)

    return run


def cell_loop(lstm: Any, x: Any) -> Callable[[], Any]:
    """nn.LSTMCell per layer, a Python loop over time: every layer's h and c, no gates."""
    import torch

    cells = []
    for k in range(lstm.num_layers):
        cell = torch.nn.LSTMCell(lstm.input_size if k == 0 else lstm.hidden_size, lstm.hidden_size)
        with torch.no_grad():
            cell.weight_ih.copy_(getattr(lstm, f"weight_ih_l{k}"))
            cell.weight_hh.copy_(getattr(lstm, f"weight_hh_l{k}"))
            cell.bias_ih.copy_(getattr(lstm, f"bias_ih_l{k}"))
            cell.bias_hh.copy_(getattr(lstm, f"bias_hh_l{k}"))
        cells.append(cell.eval().to(x.device))

    def run() -> Any:
        with torch.inference_mode():
            seq = x
            for cell in cells:
                h = c = torch.zeros(x.shape[0], lstm.hidden_size, device=x.device)
                hs = []
                for t in range(seq.shape[1]):
                    h, c = cell(seq[:, t], (h, c))
                    hs.append(h)
                seq = torch.stack(hs, dim=1)
            return seq

    return run


def layer_by_layer(lstm: Any, x: Any) -> Callable[[], Any]:
    """Rebuild the stack as single-layer nn.LSTMs (what users write by hand): every layer's h."""
    import torch

    layers = []
    for k in range(lstm.num_layers):
        size_in = lstm.input_size if k == 0 else lstm.hidden_size
        one = torch.nn.LSTM(size_in, lstm.hidden_size, batch_first=True)
        with torch.no_grad():
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
                getattr(one, f"{name}_l0").copy_(getattr(lstm, f"{name}_l{k}"))
        layers.append(one.eval().to(x.device))

    def run() -> Any:
        with torch.inference_mode():
            seq, outs = x, []
            for one in layers:
                seq, _ = one(seq)
                outs.append(seq)
            return outs

    return run


def hand_lstm_layer(seq: Any, w_ih_t: Any, w_hh_t: Any, b: Any, hid: int) -> tuple[Any, Any, Any]:
    """One LSTM layer by hand on a time-major ``seq``: one ``addmm`` for every step's input
    projection into a (time, sample, 4·H) buffer, then per step ``addmm_`` of ``h @ W_hh.T`` in
    place on that step's slot, in-place activations, ``c`` and ``h`` written into preallocated
    buffers. Returns ``(h, c, gates)`` (the gates post-activation, i f g o)."""
    import torch

    steps, n = seq.shape[0], seq.shape[1]
    g = torch.addmm(b, seq.reshape(steps * n, -1), w_ih_t).view(steps, n, 4 * hid)
    c_buf, h_buf = seq.new_empty(steps, n, hid), seq.new_empty(steps, n, hid)
    h = c = seq.new_zeros(n, hid)
    for t in range(steps):
        gt = g[t].addmm_(h, w_hh_t)
        i, f, gg, o = gt.unsafe_chunk(4, 1)
        gt[:, : 2 * hid].sigmoid_()
        o.sigmoid_()
        gg.tanh_()
        c = torch.mul(f, c, out=c_buf[t]).addcmul_(i, gg)
        h = torch.tanh(c, out=h_buf[t]).mul_(o)
    return h_buf, c_buf, g


def hand_loop(lstm: Any, x: Any) -> Callable[[], Any]:
    """What a careful user writes for h, c and gates of every layer: per layer one ``addmm`` for
    every step's input projection into a (time, sample, 4·H) buffer, then per step ``addmm_`` of
    ``h @ W_hh.T`` in place on that step's slot, in-place activations, ``c`` and ``h`` written
    into preallocated buffers."""
    import torch

    weights = []
    for k in range(lstm.num_layers):
        w_ih, w_hh = getattr(lstm, f"weight_ih_l{k}"), getattr(lstm, f"weight_hh_l{k}")
        b = getattr(lstm, f"bias_ih_l{k}") + getattr(lstm, f"bias_hh_l{k}")
        weights.append((w_ih.detach().t(), w_hh.detach().t(), b.detach()))
    hid = lstm.hidden_size

    def run() -> Any:
        with torch.inference_mode():
            seq = x.transpose(0, 1)
            outs = []
            for w_ih_t, w_hh_t, b in weights:
                h_buf, c_buf, g = hand_lstm_layer(seq, w_ih_t, w_hh_t, b, hid)
                outs.append((h_buf, c_buf, g))
                seq = h_buf
            return outs

    return run


def packed_cases() -> list[Case]:
    """A PackedSequence input (lengths 50–100): ``auto`` runs the step loop on the valid steps;
    ``reconstruct`` rebuilds c and the gates from the fused kernel's h."""
    import torch
    from torch.nn.utils.rnn import pack_padded_sequence

    import rnnlens

    lstm, x = _module(), _data()
    lengths = torch.from_numpy(np.random.default_rng(1).integers(TIME // 2, TIME + 1, size=BATCH))
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)

    cases = [
        Case("module(packed) (floor)", forward(lstm, packed), "inference_mode"),
        Case("rnnlens h", lambda: rnnlens.trace(lstm, packed, fields=("h",))),
        Case("rnnlens h,c,gates (auto = emit)", lambda: rnnlens.trace(lstm, packed)),
        Case("rnnlens h,c,gates reconstruct", lambda: rnnlens.trace(lstm, packed, strategy="reconstruct")),
    ]
    return [Case(c.name, synced(c.fn), c.note) for c in cases]


def main_cases() -> list[Case]:
    import rnnlens

    lstm, x = _module(), _data()

    cases = [
        Case("module(x) (floor)", forward(lstm, x), "inference_mode"),
        Case("rnnlens h", lambda: rnnlens.trace(lstm, x, fields=("h",))),
        Case("rnnlens h,c", lambda: rnnlens.trace(lstm, x, fields=("h", "c"))),
        Case("rnnlens h,c,gates (auto)", lambda: rnnlens.trace(lstm, x)),
        Case("rnnlens h,c,gates emit", lambda: rnnlens.trace(lstm, x, strategy="emit")),
        Case("rnnlens h,c,gates reconstruct", lambda: rnnlens.trace(lstm, x, strategy="reconstruct")),
        Case(
            "rnnlens.intervene, one edit",
            lambda: rnnlens.intervene(
                lstm, x, rnnlens.Edit("lstm.l1", TIME // 2, units=list(range(16)), scale=0)
            ),
            "output + every layer's h, c, gates",
        ),
        Case("hand-written loop, h,c,gates", hand_loop(lstm, x), "addmm_ in place, preallocated"),
        Case("single-layer nn.LSTMs by hand", layer_by_layer(lstm, x), "h only"),
        Case("nn.LSTMCell loop", cell_loop(lstm, x), "h, c; no gates"),
    ]
    return [Case(c.name, synced(c.fn), c.note) for c in cases]


def cold_cases() -> list[Case]:
    """All fields with and without buffers of an earlier call to reuse (:mod:`rnnlens.core.buffers`).
    A suite of its own: releasing the buffers would take them from the other suites' cases too."""
    import rnnlens

    lstm, x = _module(), _data()

    def cold() -> Any:
        rnnlens.release_memory()  # no buffer of an earlier call to reuse: every page faults
        return rnnlens.trace(lstm, x)

    cases = [
        Case("module(x) (floor)", forward(lstm, x), "inference_mode"),
        Case("rnnlens h,c,gates, cold buffers", cold, "release_memory() first: a first call"),
        Case("rnnlens h,c,gates, buffers reused", lambda: rnnlens.trace(lstm, x), "the calls after it"),
    ]
    return [Case(c.name, synced(c.fn), c.note) for c in cases]


def ablation_cases() -> list[Case]:
    """An ablation scan of 16 units against 16 plain forward passes of the same batch."""
    import torch

    import rnnlens

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(FEATURES, UNITS, batch_first=True).eval().to(device())
    x = np.random.default_rng(0).normal(size=(64, TIME, FEATURES)).astype("float32")
    xt = torch.from_numpy(x).to(device())
    n_units = 16

    def plain() -> Any:
        with torch.inference_mode():
            return [lstm(xt) for _ in range(n_units)]

    def metric(out: Any) -> float:
        return float(out[0][:, -1].sum())

    cases = [
        Case(f"{n_units} x module(x) (floor)", plain, "64 samples each"),
        Case(
            f"ablation_scan, {n_units} units",
            lambda: rnnlens.ablation_scan(lstm, x, "lstm", metric, units=range(n_units)),
            "one pass of 16 x 64 samples + the baseline",
        ),
    ]
    return [Case(c.name, synced(c.fn), c.note) for c in cases]


SUITES: dict[str, Callable[[], list[Case]]] = {
    "torch-lstm3": main_cases,
    "torch-packed": packed_cases,
    "torch-cold": cold_cases,
    "torch-ablate": ablation_cases,
}
