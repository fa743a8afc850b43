"""Frozen descriptions of recurrent layers and their weights, shared by every backend.

Adapters translate a framework's layer into these; everything downstream (the maths in
:mod:`rnnlens.core.cells`, the containers in :mod:`rnnlens.core.states`, writers) sees only these.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from .kinds import FIELDS_BY_KIND, GATE_NAMES, KINDS, Field, Kind

__all__ = [
    "ALL_FIELDS",
    "FIELDS_BY_KIND",
    "GATE_NAMES",
    "CellWeights",
    "Elementwise",
    "Field",
    "Kind",
    "LayerSpec",
    "call_entry",
]

ALL_FIELDS: tuple[Field, ...] = ("h", "c", "gates", "state", "state_norm")


def call_entry(layer: str, call: int) -> str:
    """The entry of call number ``call`` of ``layer`` (a layer called several times): ``layer``
    for the first, ``layer#<call>`` after it — the names of ``States`` entries and of edits.

    Example:
        >>> call_entry("gru", 0), call_entry("gru", 3)
        ('gru', 'gru#3')
    """
    return f"{layer}#{call}" if call else layer


Activation = Callable[[np.ndarray], np.ndarray]
MatMul = Callable[[np.ndarray, np.ndarray], np.ndarray]


class Elementwise(Protocol):
    """In-place elementwise arithmetic on NumPy arrays of one shape: what :mod:`rnnlens.core.rebuild`
    runs after its GEMMs (the ``c`` scan, the parity check). An adapter gives its framework's
    kernels (PyTorch's run on both cores, NumPy's on one); ``None`` in :class:`CellWeights`
    means NumPy's."""

    def mul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """``out = a * b``."""

    def addcmul(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """``out += a * b``."""

    def sub(self, out: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """``out = a - b``."""

    def submul(self, out: np.ndarray, c: np.ndarray, a: np.ndarray, b: np.ndarray) -> None:
        """``out = c - a * b``."""

    def absmax(self, a: np.ndarray) -> float:
        """The largest ``|a|`` (NaN if any value is NaN); ``a`` is not empty."""


@dataclass(frozen=True, eq=False)
class CellWeights:
    """One direction's weights in canonical gate order.

    Pre-activations are ``x @ kernel + bias`` and ``h_prev @ recurrent_kernel +
    recurrent_bias``, both of width ``n_gates * cell_units``, gate blocks in the order of
    :data:`GATE_NAMES`. For GRU the two halves stay apart because the candidate ``n`` uses
    ``r * (h_prev @ U_n + b_n)`` when ``reset_after`` (Keras' default, PyTorch's only form)
    and ``(r * h_prev) @ U_n`` otherwise. ``projection`` is PyTorch's ``proj_size`` matrix,
    stored as ``(cell_units, units)``: ``h = (o * act(c)) @ projection``.

    ``activation`` and ``recurrent_activation`` are the layer's own functions, wrapped to
    map a NumPy array to a NumPy array, so custom activations are honoured exactly.
    ``matmul``, when an adapter gives one, is its framework's GEMM on NumPy arrays: rebuilding
    then runs on the framework's thread pool instead of NumPy's BLAS, whose spinning threads
    would compete with the framework's for the cores (measured 3× slower activations on 2
    cores). ``None``: :func:`numpy.matmul`. ``elementwise`` likewise (:class:`Elementwise`).
    """

    kind: Kind
    kernel: np.ndarray
    recurrent_kernel: np.ndarray
    bias: np.ndarray | None
    recurrent_bias: np.ndarray | None
    activation: Activation
    recurrent_activation: Activation
    reset_after: bool = True
    projection: np.ndarray | None = None
    matmul: MatMul | None = None
    elementwise: Elementwise | None = None
    #: LSTM peepholes (ONNX ``P``): (3, cell_units) in the order i, f, o; ``i`` and ``f`` read
    #: ``c_{t-1}``, ``o`` reads ``c_t``
    peepholes: np.ndarray | None = None
    #: ONNX ``clip``: every gate's pre-activation is clipped to [-clip, clip]
    clip: float | None = None
    #: ONNX ``input_forget``: the forget gate is ``1 - i``
    input_forget: bool = False
    #: TFLite ``cell_clip``: ``c`` itself is clipped to [-cell_clip, cell_clip] after each step
    cell_clip: float | None = None

    @property
    def plain(self) -> bool:
        """No peepholes, clip or coupled gates: the LSTM every framework computes."""
        return (
            self.peepholes is None and self.clip is None and not self.input_forget and self.cell_clip is None
        )

    @property
    def cell_units(self) -> int:
        """Width of ``c`` and of each gate block."""
        n = max(len(KINDS[self.kind].gates), 1)
        return int(self.kernel.shape[1]) // n

    @property
    def units(self) -> int:
        """Width of ``h``."""
        if self.projection is not None:
            return int(self.projection.shape[1])
        return self.cell_units


@dataclass(frozen=True)
class LayerSpec:
    """What rnnlens found about one recurrent layer (see :func:`rnnlens.describe`).

    ``feature_shape`` is the per-step shape of h, c and each gate where it is not
    ``(units,)``: ConvLSTM feature maps, e.g. ``(8, 8, 16)`` for ``(*spatial, channels)``.
    ``state_shape`` is the per-step shape of ``state`` for kinds that have one.
    """

    name: str
    kind: Kind
    layer_type: str
    units: int
    directions: tuple[str, ...]
    fields: tuple[Field, ...]
    cell_units: int | None = None
    notes: tuple[str, ...] = field(default=())
    feature_shape: tuple[int, ...] | None = None
    #: the per-step shape of ``state`` (state-space mixers), e.g. ``(d_inner, d_state)``
    state_shape: tuple[int, ...] | None = None
    #: constants of the recurrence that no per-step array holds, as the model computes them
    #: (Mamba's and Mamba2's ``A = -exp(A_log)``): what :func:`rnnlens.decompose` needs
    constants: Mapping[str, np.ndarray] = field(default_factory=dict, compare=False)

    @property
    def gate_names(self) -> tuple[str, ...]:
        return GATE_NAMES[self.kind]

    @property
    def bidirectional(self) -> bool:
        return len(self.directions) == 2
