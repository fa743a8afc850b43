"""Hand-written ``.tflite`` flatbuffers with one fused recurrent op, and a NumPy loop of TFLite's
equations (the oracle). The files are written with the schema module TensorFlow ships (the object
API), so every option of the ops can be set: peepholes, projection, cell clip, layer norm, CIFG,
time-major, int8 weights, BIDIRECTIONAL_SEQUENCE_LSTM, UNIDIRECTIONAL_SEQUENCE_RNN."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

GATES = ("input", "forget", "cell", "output")


def _schema() -> Any:
    from tensorflow.lite.python import schema_py_generated as s

    return s


def sigmoid(a: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-a))


class _Writer:
    def __init__(self) -> None:
        s = _schema()
        self.s = s
        self.model = s.ModelT()
        self.model.version = 3
        self.model.buffers = [s.BufferT()]
        self.model.operatorCodes = []
        self.tensors: list[Any] = []

    def tensor(
        self,
        name: str,
        shape: tuple[int, ...],
        data: np.ndarray | None = None,
        *,
        var: bool = False,
        dtype: int = 0,
        scale: float | None = None,
    ) -> int:
        s = self.s
        t = s.TensorT()
        t.name, t.shape, t.type, t.isVariable, t.buffer = name, list(shape), dtype, var, 0
        if data is not None:
            b = s.BufferT()
            b.data = np.frombuffer(np.ascontiguousarray(data).tobytes(), np.uint8)
            self.model.buffers.append(b)
            t.buffer = len(self.model.buffers) - 1
        if scale is not None:
            q = s.QuantizationParametersT()
            q.scale, q.zeroPoint = [scale], [0]
            t.quantization = q
        self.tensors.append(t)
        return len(self.tensors) - 1

    def op(self, code: int, inputs: list[int], outputs: list[int], options_type: int, options: Any) -> None:
        s = self.s
        oc = s.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        self.model.operatorCodes.append(oc)
        o = s.OperatorT()
        o.opcodeIndex = len(self.model.operatorCodes) - 1
        o.inputs, o.outputs = inputs, outputs
        o.builtinOptionsType, o.builtinOptions = options_type, options
        self.ops = [*getattr(self, "ops", []), o]

    def write(self, path: Path, inputs: list[int], outputs: list[int]) -> Path:
        import flatbuffers

        s = self.s
        sg = s.SubGraphT()
        sg.tensors, sg.inputs, sg.outputs, sg.operators, sg.name = (
            self.tensors,
            inputs,
            outputs,
            self.ops,
            "main",
        )
        self.model.subgraphs = [sg]
        b = flatbuffers.Builder(1024)
        b.Finish(self.model.Pack(b), file_identifier=b"TFL3")
        path.write_bytes(bytes(b.Output()))
        return path


def _direction(
    w: _Writer, rng: np.random.Generator, tag: str, f: int, u: int, out: int, o: dict[str, Any]
) -> tuple[list[int], dict[str, Any]]:
    """The 17 weight inputs of one LSTM direction, and the weights as the oracle takes them."""

    def arr(*shape: int) -> np.ndarray:
        return rng.normal(scale=0.5, size=shape).astype(np.float32)

    ref: dict[str, Any] = {}
    ins: list[int] = []
    int8 = o.get("int8", False)
    for prefix, cols in (("input_to", f), ("recurrent_to", out)):
        for g in GATES:
            if g == "input" and o.get("cifg"):
                ins.append(-1)
                continue
            a = arr(u, cols)
            if int8:
                q = np.clip(np.round(a / 0.01), -127, 127).astype(np.int8)
                ins.append(w.tensor(f"{tag}{prefix}_{g}", a.shape, q, dtype=9, scale=0.01))
                a = q.astype(np.float32) * 0.01
            else:
                ins.append(w.tensor(f"{tag}{prefix}_{g}", a.shape, a))
            ref[f"{prefix}_{g}"] = a
    for g in ("input", "forget", "output"):
        if o.get("peepholes") and not (g == "input" and o.get("cifg")):
            a = arr(u)
            ins.append(w.tensor(f"{tag}cell_to_{g}", a.shape, a))
            ref[f"cell_to_{g}"] = a
        else:
            ins.append(-1)
    for g in GATES:
        if g == "input" and o.get("cifg"):
            ins.append(-1)
            continue
        a = arr(u)
        ins.append(w.tensor(f"{tag}{g}_bias", a.shape, a))
        ref[f"{g}_bias"] = a
    if o.get("projection"):
        a = arr(out, u)
        ins += [w.tensor(f"{tag}projection", a.shape, a), -1]
        ref["projection"] = a
    else:
        ins += [-1, -1]
    return ins, ref


def lstm_file(
    path: Path,
    *,
    features: int = 3,
    units: int = 4,
    batch: int = 2,
    steps: int = 6,
    seed: int = 0,
    bidirectional_op: bool = False,
    merge: bool = False,
    time_major: bool = False,
    **o: Any,
) -> tuple[Path, list[dict[str, Any]]]:
    """A model of one UNIDIRECTIONAL_SEQUENCE_LSTM (or BIDIRECTIONAL_SEQUENCE_LSTM) op; options ``o``:
    peepholes, projection (an int: the output width), cell_clip, layer_norm, cifg, int8. Returns
    the path and, per direction, the weights (for :func:`lstm_oracle`)."""
    s = _schema()
    rng = np.random.default_rng(seed)
    w = _Writer()
    f, u = features, units
    out = int(o.get("projection") or u)
    x_shape = (steps, batch, f) if time_major else (batch, steps, f)
    x = w.tensor("x", x_shape)
    dirs = 2 if bidirectional_op else 1
    weights, refs = [], []
    for d in range(dirs):
        ins, ref = _direction(w, rng, f"d{d}/", f, u, out, o)
        weights.append(ins)
        refs.append(ref)
    states = []
    for d in range(dirs):
        states += [w.tensor(f"d{d}/h", (batch, out), var=True), w.tensor(f"d{d}/c", (batch, u), var=True)]
    if not bidirectional_op:
        norms = []
        for g in GATES:
            if o.get("layer_norm") and not (g == "input" and o.get("cifg")):
                a = rng.uniform(0.5, 1.5, size=u).astype(np.float32)
                norms.append(w.tensor(f"norm_{g}", (u,), a))
                refs[0][f"{g}_norm"] = a
            else:
                norms.append(-1)
        y_shape = (steps, batch, out) if time_major else (batch, steps, out)
        y = w.tensor("encoder/lstm", y_shape)
        opts = s.UnidirectionalSequenceLSTMOptionsT()
        opts.fusedActivationFunction, opts.cellClip, opts.projClip = 4, float(o.get("cell_clip", 0.0)), 0.0
        opts.timeMajor = time_major
        opts.asymmetricQuantizeInputs = bool(o.get("asymmetric"))
        w.op(
            44,
            [x, *weights[0], *states, *norms],
            [y],
            s.BuiltinOptions.UnidirectionalSequenceLSTMOptions,
            opts,
        )
        return w.write(path, [x], [y]), refs
    y_shape = (
        (steps, batch, out * (2 if merge else 1)) if time_major else (batch, steps, out * (2 if merge else 1))
    )
    ys = [w.tensor("bi/fw", y_shape)] + ([] if merge else [w.tensor("bi/bw", y_shape)])
    opts = s.BidirectionalSequenceLSTMOptionsT()
    opts.fusedActivationFunction, opts.cellClip, opts.projClip = 4, float(o.get("cell_clip", 0.0)), 0.0
    opts.mergeOutputs, opts.timeMajor = merge, time_major
    ins = [x, *weights[0], *weights[1], *states, *([-1] * 9)]
    w.op(52, ins, ys, s.BuiltinOptions.BidirectionalSequenceLSTMOptions, opts)
    return w.write(path, [x], ys), refs


def rnn_file(
    path: Path, *, features: int = 3, units: int = 4, batch: int = 2, steps: int = 6, seed: int = 0
) -> tuple[Path, dict[str, Any]]:
    """A model of one UNIDIRECTIONAL_SEQUENCE_RNN op (tanh)."""
    s = _schema()
    rng = np.random.default_rng(seed)
    w = _Writer()
    x = w.tensor("x", (batch, steps, features))
    ref = {
        k: rng.normal(scale=0.5, size=shape).astype(np.float32)
        for k, shape in (("weights", (units, features)), ("recurrent", (units, units)), ("bias", (units,)))
    }
    ins = [x, *(w.tensor(k, v.shape, v) for k, v in ref.items()), w.tensor("h", (batch, units), var=True)]
    y = w.tensor("rnn/out", (batch, steps, units))
    opts = s.SequenceRNNOptionsT()
    opts.timeMajor, opts.fusedActivationFunction = False, 4
    w.op(35, ins, [y], s.BuiltinOptions.SequenceRNNOptions, opts)
    return w.write(path, [x], [y]), ref


def rnn_oracle(x: np.ndarray, ref: dict[str, Any]) -> np.ndarray:
    h = np.zeros((x.shape[0], ref["recurrent"].shape[0]))
    hs = []
    for t in range(x.shape[1]):
        h = np.tanh(x[:, t] @ ref["weights"].T + h @ ref["recurrent"].T + ref["bias"])
        hs.append(h)
    return np.stack(hs, 1)


def lstm_oracle(
    x: np.ndarray, ref: dict[str, Any], *, cell_clip: float = 0.0, reverse: bool = False
) -> dict[str, np.ndarray]:
    """TFLite's float LSTM (lstm_eval.cc), float64, batch-major: h, c and gates (i, f, g, o)."""
    x = np.asarray(x, np.float64)
    n, t_len, _ = x.shape
    u = ref["input_to_forget"].shape[0]
    out = ref["projection"].shape[0] if "projection" in ref else u
    h, c = np.zeros((n, out)), np.zeros((n, u))
    hs, cs, gs = [], [], []
    for t in range(t_len - 1, -1, -1) if reverse else range(t_len):
        z = {}
        for g in GATES:
            if f"input_to_{g}" not in ref:
                continue
            a = x[:, t] @ ref[f"input_to_{g}"].T + h @ ref[f"recurrent_to_{g}"].T
            if g != "cell" and g != "output" and f"cell_to_{g}" in ref:
                a = a + ref[f"cell_to_{g}"] * c
            z[g] = a
        act: dict[str, np.ndarray] = {}

        def finish(g: str, a: np.ndarray) -> np.ndarray:
            if f"{g}_norm" in ref:
                a = (
                    (a - a.mean(-1, keepdims=True))
                    / np.sqrt(a.var(-1, keepdims=True) + 1e-8)
                    * ref[f"{g}_norm"]
                )
            return a + ref[f"{g}_bias"]

        act["forget"] = sigmoid(finish("forget", z["forget"]))
        act["input"] = 1 - act["forget"] if "input" not in z else sigmoid(finish("input", z["input"]))
        act["cell"] = np.tanh(finish("cell", z["cell"]))
        c = act["forget"] * c + act["input"] * act["cell"]
        if cell_clip:
            c = np.clip(c, -cell_clip, cell_clip)
        zo = z["output"] + (ref["cell_to_output"] * c if "cell_to_output" in ref else 0)
        act["output"] = sigmoid(finish("output", zo))
        h = act["output"] * np.tanh(c)
        if "projection" in ref:
            h = h @ ref["projection"].T
        hs.append(h)
        cs.append(c)
        gs.append(np.stack([act[g] for g in GATES], 1))
    order = slice(None, None, -1) if reverse else slice(None)
    return {
        "h": np.stack(hs, 1)[:, order],
        "c": np.stack(cs, 1)[:, order],
        "gates": np.stack(gs, 1)[:, order],
    }
