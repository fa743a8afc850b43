"""The tools people would use instead of rnnlens, run beside it on the same models (the ``bench``
extra: torchlens, nnsight, transformer-lens): for each, what it returns, whether that is exact
against an independent reference, and its time as a ratio to the model's plain forward
(``torch.inference_mode``), measured interleaved (:mod:`.harness`).

Three models (suites ``peers-cell``, ``peers-lstm``, ``peers-mamba``; ``--only peers`` runs all):

- ``nn.LSTMCell(32, 64)`` in a Python loop, batch 64, 100 steps (reference: an ``nn.LSTMCell``
  loop in float64 with the same weights, gates computed from them);
- a fused 2-layer ``nn.LSTM(32, 64)``, batch 64, 100 steps (reference: the same, per layer);
- a tiny ``MambaForCausalLM`` (4 layers, hidden 64, state 16), 4 × 128 tokens, built from a
  config (reference: the model's own cache, decoding one token at a time).

A peer that is not installed is left out with a line saying so. Each tool runs on its own deep
copy of the model (nnsight replaces its modules' ``forward``; torchlens wraps torch's functions
while it logs and is asked to unwrap them afterwards), so no case sees another's changes. The
"what" and "exact" of each case are in its note; ``max abs Δ`` is the largest absolute difference
over every array the tool returns that the reference has.
"""

from __future__ import annotations

import contextlib
import copy
import importlib
import importlib.metadata
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import Case

BATCH, TIME, FEATURES, UNITS = 64, 100, 32, 64
TOKENS, TOKEN_BATCH, MAMBA_LAYERS = 128, 4, 4
PEERS = ("torchlens", "nnsight", "transformer_lens")
_DIST = {"torchlens": "torchlens", "nnsight": "nnsight", "transformer_lens": "transformer-lens"}


def available(peer: str) -> bool:
    if peer == "nnsight":  # imported first, it leaves TensorFlow's Keras unimportable (the Keras suite)
        with contextlib.suppress(ImportError):
            importlib.import_module("keras")
    try:
        importlib.import_module(peer)
    except Exception:  # a broken install is as good as none here
        return False
    return True


def versions() -> str:
    """The peers' versions, as the table names them."""
    out = []
    for p in PEERS:
        try:
            out.append(f"{_DIST[p]} {importlib.metadata.version(_DIST[p])}")
        except importlib.metadata.PackageNotFoundError:
            out.append(f"{_DIST[p]} not installed")
    return ", ".join(out)


def _skip(peer: str, notes: list[str]) -> bool:
    if available(peer):
        return False
    line = f"{_DIST[peer]} is not installed: its cases are left out (pip install 'rnnlens[bench]')"
    print(f"  note: {line}")
    notes.append(line)
    return True


def _np(a: Any) -> np.ndarray:
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a, dtype=np.float64)


def _diff(got: Any, want: Any) -> float:
    return float(np.max(np.abs(_np(got) - _np(want))))


def _exact(d: float, tol: float) -> str:
    return f"max abs Δ {d:.1e} ({'exact' if d <= tol else 'NOT exact'}, tol {tol:.0e})"


# --------------------------------------------------------------------------- references


def _rnnlens_diff(states: Any, names: list[str], ref: list[dict[str, np.ndarray]]) -> float:
    d = 0.0
    for name, r in zip(names, ref):
        s = states[name]
        for f in ("h", "c"):
            if f in s.fields:
                d = max(d, _diff(getattr(s, f), r[f]))
        if "gates" in s.fields:
            d = max(d, *(_diff(s.gates[g], r[g]) for g in "ifgo"))
    return d


def _rnnlens_on(nnsight_model: Any, x: Any, what: str, names: list[str], ref: Any) -> Case:
    """rnnlens on the model nnsight wrapped (its modules' forward replaced by nnsight's
    controllers): traced through them, every field (rnnlens.adapters.torch_.wrapped)."""
    import rnnlens

    d = _rnnlens_diff(rnnlens.trace(nnsight_model, x), names, ref)
    return Case(
        f"{what}: rnnlens h, c, gates on NNsight(model)",
        lambda: rnnlens.trace(nnsight_model, x),
        f"the same fields through nnsight's wrappers; {_exact(d, 1e-5)}",
    )


def _forward(model: Any, *args: Any) -> Callable[[], Any]:
    import torch

    def run() -> Any:
        with torch.inference_mode():
            return model(*args)

    return run


def _quiet(fn: Callable[[], Any]) -> Callable[[], Any]:
    def run() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fn()

    return run


def _torchlens(model: Any, *args: Any) -> Any:
    import torchlens
    from torchlens.options import CaptureOptions

    # unwrap_when_done: torch's functions are put back after logging (else every later case,
    # the floor included, would run through torchlens' wrappers)
    return torchlens.trace(model, *args, capture=CaptureOptions(unwrap_when_done=True))


def _passes(trace: Any, label: str) -> list[Any]:
    return [trace[f"{label}:{k}"].out for k in range(1, trace[label].num_passes + 1)]


# --------------------------------------------------------------------------- the cell loop


def cell_cases() -> list[Case]:
    import torch

    import rnnlens
    from rnnlens.testing.torch_models import CellLoop, lstm_float64

    torch.manual_seed(0)
    model = CellLoop(FEATURES, UNITS, cell="lstm").eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(BATCH, TIME, FEATURES)).astype("float32"))
    ref = lstm_float64([model.cell], x)
    notes: list[str] = []
    full = rnnlens.trace(model, x)
    hc = rnnlens.trace(model, x, fields=("h", "c"))
    cases = [
        Case(f"cell loop: forward (floor), b{BATCH} T{TIME}", _forward(model, x), "nn.LSTMCell(32, 64)"),
        Case(
            "cell loop: rnnlens h, c",
            lambda: rnnlens.trace(model, x, fields=("h", "c")),
            f"h, c per step; {_exact(_rnnlens_diff(hc, ['cell'], ref), 1e-5)}",
        ),
        Case(
            "cell loop: rnnlens h, c, gates",
            lambda: rnnlens.trace(model, x),
            f"h, c, gates i f g o per step; {_exact(_rnnlens_diff(full, ['cell'], ref), 1e-5)}",
        ),
    ]
    if not _skip("nnsight", notes):
        import nnsight

        wrapped = nnsight.NNsight(copy.deepcopy(model))

        def nnsight_hc() -> Any:
            with torch.no_grad(), wrapped.trace(x) as tracer:
                outs = nnsight.save(list())
                for _ in tracer.iter[:]:  # every call of the cell
                    outs.append(wrapped.cell.output)
            return outs

        outs = _quiet(nnsight_hc)()
        d = max(
            _diff(torch.stack([o[0] for o in outs], 1), ref[0]["h"]),
            _diff(torch.stack([o[1] for o in outs], 1), ref[0]["c"]),
        )
        cases.append(
            Case("cell loop: nnsight tracer.iter[:]", _quiet(nnsight_hc), f"h, c per step; {_exact(d, 1e-5)}")
        )
        cases.append(_rnnlens_on(wrapped._module, x, "cell loop", ["cell"], ref))
    if not _skip("torchlens", notes):
        mine = copy.deepcopy(model)
        trace = _quiet(lambda: _torchlens(mine, x))()
        cell_ops = [lab for lab in trace.layer_labels if lab.startswith("lstmcell_")]
        hs, cs = (torch.stack(_passes(trace, lab), 1) for lab in cell_ops[:2])
        d = max(_diff(hs, ref[0]["h"]), _diff(cs, ref[0]["c"]))
        cases.append(
            Case(
                "cell loop: torchlens trace",
                _quiet(lambda: _torchlens(mine, x)),
                f"every op's output: h, c per step (no gates); {_exact(d, 1e-5)}",
            )
        )
    return cases


# --------------------------------------------------------------------------- a fused 2-layer LSTM


def lstm_cases() -> list[Case]:
    import torch

    import rnnlens
    from rnnlens.testing.torch_models import cells_of, lstm_float64

    torch.manual_seed(0)

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = torch.nn.LSTM(FEATURES, UNITS, num_layers=2, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.rnn(x)[0]

    model = Net().eval()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(BATCH, TIME, FEATURES)).astype("float32"))
    ref = lstm_float64(cells_of(model.rnn), x)
    notes: list[str] = []
    names = ["rnn.l0", "rnn.l1"]
    h_only = rnnlens.trace(model, x, fields="h")
    full = rnnlens.trace(model, x)
    cases = [
        Case(f"2-layer LSTM: forward (floor), b{BATCH} T{TIME}", _forward(model, x), "nn.LSTM(32, 64, 2)"),
        Case(
            "2-layer LSTM: rnnlens h",
            lambda: rnnlens.trace(model, x, fields="h"),
            f"h of both layers per step; {_exact(_rnnlens_diff(h_only, names, ref), 1e-5)}",
        ),
        Case(
            "2-layer LSTM: rnnlens h, c, gates",
            lambda: rnnlens.trace(model, x),
            f"h, c, gates of both layers per step; {_exact(_rnnlens_diff(full, names, ref), 1e-5)}",
        ),
    ]
    if not _skip("nnsight", notes):
        import nnsight

        wrapped = nnsight.NNsight(copy.deepcopy(model))

        def nnsight_out() -> Any:
            with torch.no_grad(), wrapped.trace(x):
                out = nnsight.save(wrapped.rnn.output)
            return out

        y, (h_n, c_n) = _quiet(nnsight_out)()
        d = max(_diff(y, ref[1]["h"]), _diff(h_n[0], ref[0]["h"][:, -1]), _diff(c_n[1], ref[1]["c"][:, -1]))
        cases.append(
            Case(
                "2-layer LSTM: nnsight rnn.output",
                _quiet(nnsight_out),
                f"top layer's h per step, each layer's last h, c only; {_exact(d, 1e-5)}",
            )
        )
        cases.append(_rnnlens_on(wrapped._module, x, "2-layer LSTM", names, ref))
    if not _skip("torchlens", notes):
        mine = copy.deepcopy(model)
        trace = _quiet(lambda: _torchlens(mine, x))()
        lstm_ops = [lab for lab in trace.layer_labels if lab.startswith("lstm_")]
        y = trace[lstm_ops[0]].out
        d = _diff(y, ref[1]["h"])
        cases.append(
            Case(
                "2-layer LSTM: torchlens trace",
                _quiet(lambda: _torchlens(mine, x)),
                f"the fused op's outputs: top layer's h per step, last h, c; {_exact(d, 1e-5)}",
            )
        )
    return cases


# --------------------------------------------------------------------------- a tiny Mamba


def _mamba() -> Any:
    import torch

    import transformers

    torch.manual_seed(0)
    cfg = transformers.MambaConfig(
        vocab_size=100, hidden_size=64, state_size=16, num_hidden_layers=MAMBA_LAYERS, expand=2
    )
    return transformers.MambaForCausalLM(cfg).eval()


def decoded_states(model: Any, ids: Any) -> np.ndarray:
    """(layer, batch, time, d_inner, state): each layer's state after each token, decoding one
    token at a time through the model's own cache."""
    import torch

    steps = []
    with torch.no_grad():
        out = model(ids[:, :1], use_cache=True)
        steps.append([out.cache.get_recurrent_state(i, state_idx=0).clone() for i in range(MAMBA_LAYERS)])
        for t in range(1, ids.shape[1]):
            out = model(ids[:, t : t + 1], cache=out.cache, use_cache=True)
            steps.append([out.cache.get_recurrent_state(i, state_idx=0).clone() for i in range(MAMBA_LAYERS)])
    return np.stack([np.stack([s[i].numpy() for s in steps], 1) for i in range(MAMBA_LAYERS)])


def mamba_cases() -> list[Case]:
    import torch

    import rnnlens

    model = _mamba()
    ids = torch.from_numpy(np.random.default_rng(0).integers(0, 100, size=(TOKEN_BATCH, TOKENS)))
    with _quiet_logs():
        ref = decoded_states(model, ids)
    notes: list[str] = []
    names = [f"backbone.layers.{i}.mixer" for i in range(MAMBA_LAYERS)]

    def d_of(states: Any) -> float:
        return max(_diff(states[n].state, ref[i]) for i, n in enumerate(names))

    d_state = d_of(rnnlens.trace(model, ids, fields="state"))
    d_all = d_of(rnnlens.trace(model, ids))
    cases = [
        Case(
            f"Mamba: forward (floor), {TOKEN_BATCH}×{TOKENS} tokens",
            _forward(model, ids),
            "4 layers, hidden 64",
        ),
        Case(
            "Mamba: rnnlens state",
            lambda: rnnlens.trace(model, ids, fields="state"),
            f"h, state of every layer per step; {_exact(d_state, 1e-5)}",
        ),
        Case(
            "Mamba: rnnlens every field",
            lambda: rnnlens.trace(model, ids),
            f"h, gates (dt, B, C), state, state_norm per step; {_exact(d_all, 1e-5)}",
        ),
    ]
    if not _skip("transformer_lens", notes):
        from transformer_lens.model_bridge import TransformerBridge

        mine = copy.deepcopy(model)
        with tempfile.TemporaryDirectory() as d, _quiet_logs():
            mine.config.save_pretrained(d)  # boots from a local config: no hub
            bridge = TransformerBridge.boot_transformers(d, hf_model=mine)
        for block in bridge.blocks:
            block.mixer.eager_scan = True  # its opt-in Python scan, which the state hooks need
        hooks = [f"blocks.{i}.mixer.hook_ssm_state" for i in range(MAMBA_LAYERS)]

        def tl_states() -> Any:
            with torch.no_grad():
                return bridge.run_with_cache(ids, names_filter=lambda n: n in hooks)[1]

        cache = tl_states()
        # (its layout: batch, d_inner, step, state)
        d = max(_diff(cache[h].transpose(1, 2), ref[i]) for i, h in enumerate(hooks))
        cases.append(
            Case(
                "Mamba: TransformerLens eager scan",
                tl_states,
                f"state of every layer per step (hook_ssm_state); {_exact(d, 1e-5)}",
            )
        )
    if not _skip("nnsight", notes):
        import nnsight

        wrapped = nnsight.NNsight(copy.deepcopy(model))

        def nnsight_mixers() -> Any:
            with torch.no_grad(), wrapped.trace(ids):
                outs = nnsight.save(list())
                for i in range(MAMBA_LAYERS):  # (the block runs in nnsight's worker: no comprehension)
                    outs.append(wrapped.backbone.layers[i].mixer.output)
            return outs

        outs = _quiet(nnsight_mixers)()
        d = max(_diff(o, rnnlens.trace(model, ids, fields="h")[n].h) for o, n in zip(outs, names))
        cases.append(
            Case(
                "Mamba: nnsight mixer outputs",
                _quiet(nnsight_mixers),
                f"each mixer's output per step (no state); vs rnnlens h {_exact(d, 1e-5)}",
            )
        )
    if not _skip("torchlens", notes):
        # minutes per call (it logs each of ~2,000 ops, the scan's 128 steps per layer among
        # them): timed once beside one forward, outside the rounds, and printed
        mine_tl = copy.deepcopy(model)
        floor = _forward(model, ids)
        floor()
        t0 = time.perf_counter()
        floor()
        t1 = time.perf_counter()
        trace = _quiet(lambda: _torchlens(mine_tl, ids))()
        t2 = time.perf_counter()
        shape = (TOKEN_BATCH, int(ref.shape[3]), int(ref.shape[4]))
        scans = [
            lab
            for lab in trace.layer_labels
            if lab.startswith("add_") and trace[lab].num_passes == TOKENS and tuple(trace[lab].shape) == shape
        ]
        found = "not found"
        if len(scans) == MAMBA_LAYERS:  # the state update of each layer's scan, one pass per step
            d = max(_diff(torch.stack(_passes(trace, lab), 1), ref[i]) for i, lab in enumerate(scans))
            found = f"found as ops {scans}: {_exact(d, 1e-5)}"
        print(
            f"  note: Mamba, torchlens trace (one run, not interleaved): {t2 - t1:.1f} s = "
            f"{(t2 - t1) / (t1 - t0):.0f}× the forward ({t1 - t0:.2f} s); every op's output, "
            f"the states unnamed among them, {found}"
        )
    return cases


@contextlib.contextmanager
def _quiet_logs() -> Any:
    """transformers' fallback notices (no causal_conv1d / mamba_ssm on CPU) and TransformerLens'
    boot messages, kept out of the table."""
    import logging

    level = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(level)


SUITES = {"peers-cell": cell_cases, "peers-lstm": lstm_cases, "peers-mamba": mamba_cases}
