"""The adapter conformance suite on TFLite: hand-written flatbuffers (tflite_builder) of one
UNIDIRECTIONAL_SEQUENCE_LSTM op, or one BIDIRECTIONAL_SEQUENCE_LSTM op for the bidirectional cases
(batch 2: the suite's 5 samples run in chunks); reference weights read from the builder's arrays."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnlens.testing import AdapterTests, Built

tf = pytest.importorskip("tensorflow")
from tflite_builder import GATES, lstm_file  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _reference(ref: dict[str, Any], reverse: bool) -> dict[str, Any]:
    return {
        "kernel": np.concatenate([ref[f"input_to_{g}"] for g in GATES], 0).T,
        "recurrent_kernel": np.concatenate([ref[f"recurrent_to_{g}"] for g in GATES], 0).T,
        "bias": np.concatenate([ref[f"{g}_bias"] for g in GATES]),
        "reverse": reverse,
    }


class TestTFLiteAdapter(AdapterTests):
    adapter_name = "tflite"
    kinds = ("lstm",)

    @pytest.fixture(autouse=True)
    def _tmp(self, tmp_path: Path) -> None:
        self.tmp = tmp_path

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        path = self.tmp / f"{kind}-{bidirectional}-{seed}.tflite"
        steps = self.steps
        path, refs = lstm_file(
            path, features=features, units=units, steps=steps, seed=seed, bidirectional_op=bidirectional
        )
        layer = "bi/fw" if bidirectional else "encoder/lstm"
        names = ("forward", "backward") if bidirectional else ("forward",)
        return Built(str(path), layer, {d: _reference(r, d == "backward") for d, r in zip(names, refs)})

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray:
        it = tf.lite.Interpreter(model_path=model)
        it.allocate_tensors()
        outs = []
        for start in range(0, len(x), 2):  # the model's batch is 2
            part = x[start : start + 2]
            part = np.concatenate([part, np.zeros((2 - len(part), *x.shape[1:]), x.dtype)])
            it.reset_all_variables()
            it.set_tensor(it.get_input_details()[0]["index"], part)
            it.invoke()
            ys = [it.get_tensor(d["index"]) for d in it.get_output_details()]
            last = [ys[0][:, -1]] + ([ys[1][:, 0]] if len(ys) > 1 else [])
            outs.append(np.concatenate(last, -1))
        return np.concatenate(outs)[: len(x)]
