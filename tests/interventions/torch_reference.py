"""The NumPy reference (float64, step by step) of a whole PyTorch nn.LSTM / GRU / RNN stack with
edits applied after each step: the oracle of the PyTorch intervention tests."""

from __future__ import annotations

from typing import Any

import numpy as np

import rnnlens
from rnnlens.testing import reference_rnn


def _ref_weights(m: Any, layer: int, reverse: bool) -> dict[str, Any]:
    sfx = f"_l{layer}" + ("_reverse" if reverse else "")
    get = lambda n: getattr(m, n + sfx).detach().double().numpy()  # noqa: E731
    w_ih, w_hh = get("weight_ih"), get("weight_hh")
    b_ih, b_hh = (get("bias_ih"), get("bias_hh")) if m.bias else (None, None)
    kind = {"LSTM": "lstm", "GRU": "gru", "RNN": "simple"}[type(m).__name__]
    if kind == "gru":  # PyTorch r, z, n -> canonical z, r, n
        h = m.hidden_size
        order = np.r_[h : 2 * h, 0:h, 2 * h : 3 * h]
        w_ih, w_hh = w_ih[order], w_hh[order]
        b_ih = None if b_ih is None else b_ih[order]
        b_hh = None if b_hh is None else b_hh[order]
    act = np.tanh
    if kind == "simple" and m.nonlinearity == "relu":
        act = lambda a: np.maximum(a, 0.0)  # noqa: E731
    proj = get("weight_hr").T if getattr(m, "proj_size", 0) else None
    return dict(
        kind=kind, kernel=w_ih.T, recurrent_kernel=w_hh.T, bias=b_ih, recurrent_bias=b_hh,
        activation=act, projection=proj,
    )  # fmt: skip


def _apply_np(state: np.ndarray, edit: rnnlens.Edit) -> np.ndarray:
    idx: Any = slice(None) if edit.units is None else edit.units
    if isinstance(idx, int):
        idx = [idx]
    part = state[:, idx]
    if edit.set is not None:
        part = np.broadcast_to(np.asarray(edit.set, np.float64), part.shape).copy()
    if edit.add is not None:
        part = part + edit.add
    if edit.scale is not None:
        part = part * edit.scale
    state[:, idx] = part
    return state


def _reference_stack(m: Any, x: np.ndarray, edits: list[rnnlens.Edit], names: list[str]) -> dict[str, Any]:
    """Every layer and direction of ``m`` (batch_first input) through the NumPy reference."""
    out: dict[str, Any] = {}
    seq = x.astype(np.float64)
    t_len = x.shape[1]
    for layer in range(m.num_layers):
        name = names[layer]
        dirs = []
        for d, direction in enumerate(["forward", "backward"][: 1 + m.bidirectional]):
            mine = [e for e in edits if e.layer == name and e.direction in (None, direction)]

            def edit(t, h, c, mine=mine):  # type: ignore[no-untyped-def]
                for e in mine:
                    steps = range(t_len)[e.step] if isinstance(e.step, slice) else [e.step % t_len]
                    if t in steps and e.target == "state":
                        if e.field == "h":
                            h = _apply_np(h, e)
                        else:
                            c = _apply_np(c, e)
                return h, c

            def edit_write(t, w, mine=mine):  # type: ignore[no-untyped-def]
                for e in mine:
                    steps = range(t_len)[e.step] if isinstance(e.step, slice) else [e.step % t_len]
                    if t in steps and e.target == "write":
                        w = _apply_np(w, e)
                return w

            ref = reference_rnn(
                x=seq, reverse=d == 1, edit=edit, edit_write=edit_write, **_ref_weights(m, layer, d == 1)
            )
            dirs.append(ref)
            out[(name, direction)] = ref
        seq = np.concatenate([r["h"] for r in dirs], axis=-1)
    out["output"] = seq
    return out
