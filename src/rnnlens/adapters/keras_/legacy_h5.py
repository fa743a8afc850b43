"""Keras 2 full-model ``.h5`` files (``tf.keras`` 2.x, standalone Keras 2), loaded into Keras 3
so that the model computes what it computed in Keras 2.

Keras 3 reads these files itself, but three things go wrong for recurrent models:

* ``time_major`` (in every Keras 2 RNN config) is an unknown argument to Keras 3: the load fails.
* ``"hard_sigmoid"`` names another function: Keras 2's is ``clip(0.2 x + 0.5, 0, 1)``, Keras 3's
  is ``relu6(x + 3) / 6``. Loaded as is, the model silently computes other numbers. It is
  mapped to :func:`keras2_hard_sigmoid` (registered as ``rnnlens>keras2_hard_sigmoid``) with an
  :class:`~rnnlens.RnnLensWarning`.
* ``CuDNNLSTM`` / ``CuDNNGRU`` do not exist in Keras 3. They become ``LSTM`` /
  ``GRU(reset_after=True)`` with ``tanh`` / ``sigmoid`` (the cuDNN formulas) and their weights
  converted from cuDNN's layout, as Keras 2 did between these layers: each gate's input
  kernel is stored as cuDNN's row-major (unit, input) buffer, recurrent kernels transposed;
  an LSTM's two bias vectors (input, recurrent) are summed, a GRU's become its two bias rows.

Files of Keras 2.0-2.2 also store a ``Sequential`` config as the bare list of its layers and a
``GRU`` without ``reset_after`` (Keras 2's original GRU, ``reset_after=False``): both are read
as those versions meant them.

Weights are matched to layers in order, as Keras does for ``.h5`` files.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import ModelFileError, RnnLensWarning, UnsupportedModelError

__all__ = [
    "is_keras2_h5",
    "keras2_hard_sigmoid",
    "load_keras2_h5",
    "model_from_h5",
    "register_custom_objects",
]

_RNN_CLASSES = ("LSTM", "GRU", "SimpleRNN", "RNN", "CuDNNLSTM", "CuDNNGRU")
_CUDNN = {"CuDNNLSTM": "lstm", "CuDNNGRU": "gru"}
# Config keys of a Keras 2 cuDNN layer that its Keras 3 LSTM/GRU equivalent accepts too
_CUDNN_KEYS = (
    "name", "trainable", "dtype", "return_sequences", "return_state", "go_backwards", "stateful",
    "units", "kernel_initializer", "recurrent_initializer", "bias_initializer", "unit_forget_bias",
    "kernel_regularizer", "recurrent_regularizer", "bias_regularizer", "activity_regularizer",
    "kernel_constraint", "recurrent_constraint", "bias_constraint",
)  # fmt: skip


def keras2_hard_sigmoid(x: Any) -> Any:
    """Keras 2's ``hard_sigmoid``: ``clip(0.2 * x + 0.5, 0, 1)`` (Keras 3's is ``relu6(x + 3) / 6``).

    The same operations in the same order as ``tf_keras.backend.hard_sigmoid``.

    Example:
        >>> import numpy as np
        >>> from rnnlens.adapters.keras_.legacy_h5 import keras2_hard_sigmoid
        >>> y = np.asarray(keras2_hard_sigmoid(np.array([-3.0, 0.0, 1.0, 3.0], "float32")))
        >>> [round(float(v), 3) for v in y]  # Keras 3's hard_sigmoid(1.0) is 0.667
        [0.0, 0.5, 0.7, 1.0]
    """
    from keras import ops

    x = ops.convert_to_tensor(x)
    return ops.clip(ops.add(ops.multiply(x, 0.2), 0.5), 0.0, 1.0)


def register_custom_objects() -> None:
    """Register :func:`keras2_hard_sigmoid` with Keras, so a model loaded from a Keras 2 file
    and saved again (``.keras``) loads again in a process that has imported rnnlens' loader."""
    import keras

    if "rnnlens>keras2_hard_sigmoid" not in keras.saving.get_custom_objects():
        keras.saving.register_keras_serializable(package="rnnlens", name="keras2_hard_sigmoid")(
            keras2_hard_sigmoid
        )


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v.decode("utf-8") if isinstance(v, bytes) else str(v)


def is_keras2_h5(path: str | Path) -> bool:
    """Whether ``path`` is an HDF5 file written by Keras 1 or 2 (not Keras 3)."""
    import h5py

    with h5py.File(path, "r") as f:
        version = _text(f.attrs.get("keras_version"))
        if version is None:
            weights = f.get("model_weights")
            version = None if weights is None else _text(weights.attrs.get("keras_version"))
    return version is None or not version.startswith("3")


class _Rewrite:
    """Rewrites a Keras 2 model config for Keras 3 and records what it changed."""

    def __init__(self) -> None:
        self.hard_sigmoid: list[str] = []  # names of layers whose hard_sigmoid was mapped
        self.cudnn: dict[str, str] = {}  # name of a converted layer (or its wrapper) -> kind

    def config(self, node: Any, owner: str | None = None) -> Any:
        if isinstance(node, list):
            return [self.config(v, owner) for v in node]
        if not isinstance(node, dict):
            return node
        cls, cfg = node.get("class_name"), node.get("config")
        if cls == "Sequential" and isinstance(cfg, list):  # Keras 2.0-2.1: the layers alone
            cfg = {"name": "sequential", "layers": cfg}
        if cls == "Sequential" and isinstance(cfg, dict):
            cfg = _sequential_input(cfg)
        if isinstance(cls, str) and isinstance(cfg, dict):
            name = cfg.get("name", owner)
            if cls in _CUDNN:
                node = {**node, "class_name": "LSTM" if cls == "CuDNNLSTM" else "GRU"}
                cfg = self._from_cudnn(cls, cfg)
                self.cudnn[str(name)] = _CUDNN[cls]
            elif cls in _RNN_CLASSES:
                cfg = _older_keys(cls, dict(cfg))
                if cfg.pop("time_major", False):
                    raise UnsupportedModelError(
                        f"Layer {name!r} ({cls}) is time_major=True (inputs shaped (time, sample, "
                        "feature)); Keras 3 has no such option. Rebuild it batch-major in Keras 2 "
                        "(time_major=False, inputs transposed) and save it again."
                    )
            if isinstance(cfg.get("layer"), dict) and "module" not in cfg["layer"]:
                # Keras 2.0-2.2 wrote a wrapped layer without its module, which Keras 3 needs
                cfg = {**cfg, "layer": {"module": "keras.layers", **cfg["layer"]}}
            inner = _class_of(cfg.get("layer"))
            if cls == "Bidirectional" and inner in _CUDNN:
                self.cudnn[str(name)] = _CUDNN[inner]  # its forward and backward layers
            cfg = {k: self._value(k, v, str(name)) for k, v in cfg.items()}
            _shift_nested_model_nodes(cfg)
            return {**node, "config": cfg}
        return {k: self.config(v, owner) for k, v in node.items()}

    def _value(self, key: str, value: Any, owner: str) -> Any:
        if key in ("activation", "recurrent_activation") and _is_hard_sigmoid(value):
            if owner not in self.hard_sigmoid:
                self.hard_sigmoid.append(owner)
            return keras2_hard_sigmoid
        return self.config(value, owner)

    @staticmethod
    def _from_cudnn(cls: str, cfg: dict[str, Any]) -> dict[str, Any]:
        if cfg.get("time_major"):
            raise UnsupportedModelError(
                f"Layer {cfg.get('name')!r} ({cls}) is time_major=True; Keras 3 has no such option."
            )
        out = {k: cfg[k] for k in _CUDNN_KEYS if k in cfg}
        out.update(activation="tanh", recurrent_activation="sigmoid", use_bias=True)
        if cls == "CuDNNGRU":
            out.pop("unit_forget_bias", None)
            out["reset_after"] = True
        return out


def _sequential_input(cfg: dict[str, Any]) -> dict[str, Any]:
    """A Sequential whose first layer holds Keras 2's ``batch_input_shape`` (files before
    tf.keras wrote an ``InputLayer``) gets that ``InputLayer``: Keras 3's legacy reader takes
    the batch shape for an input shape and adds a second batch axis."""
    layers = cfg.get("layers")
    if not isinstance(layers, list) or not layers or not isinstance(layers[0], dict):
        return cfg
    first = layers[0].get("config")
    if layers[0].get("class_name") == "InputLayer" or not isinstance(first, dict):
        return cfg
    shape = first.get("batch_input_shape")
    if shape is None:
        return cfg
    first = {k: v for k, v in first.items() if k != "batch_input_shape"}
    name = f"{cfg.get('name', 'sequential')}_input"
    given = {"batch_shape": shape, "dtype": first.get("dtype", "float32"), "name": name}
    given_layer = {"class_name": "InputLayer", "config": given}
    return {**cfg, "layers": [given_layer, {**layers[0], "config": first}, *layers[1:]]}


def _older_keys(cls: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Keras 2.0-2.2 configs: a ``GRU`` without ``reset_after`` is Keras 2's original GRU
    (``reset_after=False``, the only one before Keras 2.1.3; Keras 3's default is True), and
    ``implementation=0`` (2.0's CPU mode, the same equations) is Keras 3's 1."""
    if cls == "GRU" and "reset_after" not in cfg:
        cfg["reset_after"] = False
    if cfg.get("implementation") == 0:
        cfg["implementation"] = 1
    return cfg


def _shift_nested_model_nodes(cfg: dict[str, Any]) -> None:
    """Keras 2 counts a nested model's own construction from its ``Input`` as the model's
    node 0, so the first call on it is node 1; Keras 3 has no such node. Renumber the
    references to it (in place; ``cfg`` is already a copy). Keras 3 itself renumbers a nested
    ``Functional``'s entry in ``output_layers``, not a ``Sequential``'s, nor any inbound node."""
    layers = cfg.get("layers")
    if not isinstance(layers, list):
        return
    nested = {
        entry.get("name", entry.get("config", {}).get("name")): entry.get("class_name")
        for entry in layers
        if isinstance(entry, dict)
        and entry.get("class_name") in ("Sequential", "Functional", "Model")
        and _class_of((entry.get("config", {}).get("layers") or [None])[0]) == "InputLayer"
    }
    if not nested:
        return
    refs = [ref for entry in layers for node in entry.get("inbound_nodes", []) for ref in node]
    outputs = cfg.get("output_layers", [])
    refs += [r for r in outputs if isinstance(r, list) and nested.get(r[0]) == "Sequential"]
    for ref in refs:
        if isinstance(ref, list) and len(ref) >= 3 and ref[0] in nested and isinstance(ref[1], int):
            ref[1] = max(ref[1] - 1, 0)


def _class_of(node: Any) -> str | None:
    return node.get("class_name") if isinstance(node, dict) else None


def _is_hard_sigmoid(value: Any) -> bool:
    if isinstance(value, str):
        return value == "hard_sigmoid"
    if isinstance(value, dict):  # {"class_name": "function", "config": "hard_sigmoid", ...}
        return value.get("config") == "hard_sigmoid" and value.get("class_name") in ("function", None)
    return False


def _from_cudnn(kind: str, role: str, value: np.ndarray) -> np.ndarray:
    """One weight of a Keras 2 cuDNN layer in the layout of Keras' LSTM / GRU(reset_after=True)."""
    n_gates = 4 if kind == "lstm" else 3
    if role == "kernel":
        # cuDNN reads each gate's (input, unit) slice as a row-major (unit, input) matrix W
        # and computes W x, so the Keras kernel is that W transposed.
        return np.hstack([k.ravel().reshape(k.shape[::-1]).T for k in np.hsplit(value, n_gates)])
    if role == "recurrent_kernel":
        return np.hstack([k.T for k in np.hsplit(value, n_gates)])
    if kind == "lstm":  # (input bias, recurrent bias): only their sum enters the LSTM
        b_in, b_rec = np.split(value, 2)
        return np.asarray(b_in + b_rec)
    return value.reshape(2, -1)  # GRU: the (input, recurrent) rows of reset_after=True


def _converted_variables(model: Any, cudnn: dict[str, str]) -> dict[int, tuple[str, str]]:
    """id(variable) -> (kind, role) for every weight of a layer converted from cuDNN."""
    import keras

    out: dict[int, tuple[str, str]] = {}
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        kind = cudnn.get(layer.name)
        if kind is None:
            continue
        subs = (
            (layer.forward_layer, layer.backward_layer)
            if isinstance(layer, keras.layers.Bidirectional)
            else (layer,)
        )
        for sub in subs:
            cell = sub.cell
            for role in ("kernel", "recurrent_kernel", "bias"):
                out[id(getattr(cell, role))] = (kind, role)
    return out


def _load_weights(group: Any, model: Any, converted: dict[int, tuple[str, str]], file: str) -> None:
    """Keras' order-based ``.h5`` weight loading, converting cuDNN weights on the way."""
    from keras.src.legacy.saving.legacy_h5_format import _legacy_weights, load_attributes_from_hdf5_group

    layers = [layer for layer in model.layers if _legacy_weights(layer)]
    names = [
        n
        for n in load_attributes_from_hdf5_group(group, "layer_names")
        if load_attributes_from_hdf5_group(group[n], "weight_names")
    ]
    if len(names) != len(layers):
        raise ModelFileError(
            f"{file} holds weights for {len(names)} layers; the model it describes has "
            f"{len(layers)} layers with weights. The file is inconsistent; re-save it in Keras 2."
        )
    for name, layer in zip(names, layers):
        variables = _legacy_weights(layer)
        weight_names = load_attributes_from_hdf5_group(group[name], "weight_names")
        if len(weight_names) != len(variables):
            raise ModelFileError(
                f"{file}: layer {name!r} has {len(weight_names)} saved weights; Keras 3's "
                f"{type(layer).__name__} {layer.name!r} expects {len(variables)}."
            )
        for var, wname in zip(variables, weight_names):
            value = np.asarray(group[name][wname])
            if id(var) in converted:
                value = _from_cudnn(*converted[id(var)], value)
            if tuple(value.shape) != tuple(var.shape):
                raise ModelFileError(
                    f"{file}: weight {wname!r} has shape {value.shape}; Keras 3's {layer.name!r} "
                    f"expects {tuple(var.shape)}."
                )
            var.assign(value)
        if hasattr(layer, "finalize_state"):
            layer.finalize_state()


def load_keras2_h5(path: str | Path, *, safe_mode: bool = True) -> Any:
    """A Keras 3 model from a Keras 2 full-model ``.h5`` file (see the module's docstring).

    ``safe_mode`` refuses a ``Lambda`` layer's code, as ``keras.saving.load_model`` does.
    """
    import h5py

    p = Path(path)
    with h5py.File(p, "r") as f:
        return model_from_h5(f, p.name, safe_mode=safe_mode)


def model_from_h5(f: Any, file: str, *, safe_mode: bool = True, stacklevel: int = 4) -> Any:
    """:func:`load_keras2_h5` on an open ``h5py.File`` (``file``: its name in messages)."""
    from keras.src.legacy.saving import saving_options, saving_utils
    from keras.src.saving import serialization_lib

    register_custom_objects()
    raw = _text(f.attrs.get("model_config"))
    if raw is None:
        raise ModelFileError(
            f"{file} holds weights only (model.save_weights), not a model. Build the model in "
            "code, call model.load_weights(path), and trace that model."
        )
    rewrite = _Rewrite()
    config = rewrite.config(json.loads(raw))
    legacy_scope = saving_options.keras_option_scope(use_legacy_config=True)
    with legacy_scope, serialization_lib.SafeModeScope(safe_mode):
        model = saving_utils.model_from_config(config, custom_objects={})
    group = f.get("model_weights", f)
    _load_weights(group, model, _converted_variables(model, rewrite.cudnn), file)
    if rewrite.hard_sigmoid:
        warnings.warn(
            f"{file} is a Keras 2 model; layer(s) {rewrite.hard_sigmoid} use Keras 2's "
            "hard_sigmoid, clip(0.2*x + 0.5, 0, 1), which Keras 3's hard_sigmoid (relu6(x+3)/6) "
            "is not. They now use rnnlens>keras2_hard_sigmoid, the Keras 2 formula, so the model "
            "computes what it computed in Keras 2.",
            RnnLensWarning,
            stacklevel=stacklevel,
        )
    return model
