"""A Keras layer's activations as NumPy functions, for :mod:`rnnlens.core.rebuild`.

The rebuild runs on NumPy arrays; :func:`numpy_fn` wraps a layer's own activation so it maps
NumPy to NumPy (custom callables included) and gives Keras' ``tanh`` and ``sigmoid`` NumPy
forms that write in place or into a given array.

Example::

    >>> import keras, numpy as np
    >>> from rnnlens.adapters.keras_.numpy_ops import numpy_fn
    >>> sig = numpy_fn(keras.activations.sigmoid)
    >>> out = np.empty(3, "float32")
    >>> sig.into(out, np.array([-1.0, 0.0, 1.0], "float32"))
    >>> [round(float(v), 4) for v in out]
    [0.2689, 0.5, 0.7311]
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

__all__ = ["numpy_fn"]


def numpy_fn(fn: Callable[..., Any]) -> Callable[[np.ndarray], np.ndarray]:
    """The layer's own activation as a NumPy → NumPy function (custom callables included).

    Keras' own ``tanh`` and ``sigmoid`` also get NumPy forms that write in place or into a given
    array (``inplace``, ``into``; used by :mod:`rnnlens.core.rebuild`): the rebuild calls them per
    step, where a backend op's dispatch costs more than the arithmetic. They agree with the
    backend's to a few ulp, far inside the parity tolerance every rebuilt state is checked
    against.
    """
    import keras as k

    def apply(a: np.ndarray) -> np.ndarray:
        return np.asarray(k.ops.convert_to_numpy(fn(a)), dtype=a.dtype)

    if fn is k.activations.tanh:
        apply.inplace = _tanh_inplace  # type: ignore[attr-defined]
        apply.into = _tanh_into  # type: ignore[attr-defined]
    elif fn is k.activations.sigmoid:
        apply.inplace = _sigmoid_inplace  # type: ignore[attr-defined]
        apply.into = _sigmoid_into  # type: ignore[attr-defined]
    return apply


def _tanh_inplace(a: np.ndarray) -> None:
    np.tanh(a, out=a)


def _tanh_into(out: np.ndarray, a: np.ndarray) -> None:
    np.tanh(a, out=out)


def _sigmoid_inplace(a: np.ndarray) -> None:
    _sigmoid_into(a, a)


def _sigmoid_into(out: np.ndarray, a: np.ndarray) -> None:
    # sigmoid(x) = (1 + tanh(x / 2)) / 2: NumPy's tanh is vectorised, its exp path is 2x slower
    np.multiply(a, 0.5, out=out)
    np.tanh(out, out=out)
    out *= 0.5
    out += 0.5
