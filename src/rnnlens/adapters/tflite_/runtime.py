"""The private interpreter rnnlens runs a TFLite model with, and the feeding of its inputs.

:func:`prepare` analyses the flatbuffer (:mod:`.graph`) and keeps, cached by the bytes' sha256,
a ``tf.lite.Interpreter`` built from them with ``experimental_preserve_all_tensors=True`` (so every
op's output, the fused recurrent ops' per-step ``h`` among them, can be read after ``invoke``) on one
thread. The user's interpreter, if one was given, is not used or changed.

:func:`run` feeds the graph's inputs and invokes the interpreter once per chunk of the model's
own batch size (TFLite models fix the batch: the fused ops' state tensors have it in their shape;
the last chunk is padded with zeros and cut off again), resetting the ops' state variables before
each invoke so that every chunk starts from the state the file holds, as a fresh interpreter does.

Example:
    >>> _first_line(RuntimeError("  Node number 0 failed to prepare.  "))
    'Node number 0 failed to prepare.'
"""

from __future__ import annotations

import hashlib
import threading
import warnings
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...core.optional import require
from ...errors import InputError
from .graph import Graph, analyse
from .model import content

__all__ = ["Prepared", "Run", "prepare"]

_CACHE: OrderedDict[str, Prepared] = OrderedDict()
_CACHE_LOCK = threading.Lock()
_CACHE_SIZE = 4


@dataclass
class Run:
    """What one :func:`run` read: per tensor, the chunks' values before and after ``invoke``
    (batch along axis ``0`` or, for time-major tensors, the caller's axis), and constants once."""

    before: dict[int, list[np.ndarray]]
    after: dict[int, list[np.ndarray]]
    constants: dict[int, np.ndarray]
    n: int  #: samples given
    batch: int  #: the model's batch (chunk size)


@dataclass
class Prepared:
    """A model's bytes, its analysed graph and rnnlens' own interpreter of it."""

    data: bytes
    key: str
    graph: Graph
    _interpreter: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def interpreter(self) -> Any:
        if self._interpreter is None:
            tf = require("tensorflow", purpose="Running a TFLite model")
            with warnings.catch_warnings():  # the debugging-mode note on preserve_all_tensors
                warnings.simplefilter("ignore")
                interp = tf.lite.Interpreter(
                    model_content=self.data, experimental_preserve_all_tensors=True, num_threads=1
                )
            interp.allocate_tensors()
            self._interpreter = interp
        return self._interpreter

    def run(
        self,
        feeds: dict[int, np.ndarray],
        axes: dict[int, int],
        before: Sequence[int],
        after: Sequence[int],
        constants: Sequence[int],
    ) -> Run:
        """Invoke once per chunk of the model's batch (``axes``: each feed's batch axis); read
        ``before`` (after the state reset), ``after`` and ``constants``."""
        with self.lock:
            interp = self.interpreter()
            first = next(iter(feeds))
            n = feeds[first].shape[axes[first]]
            shape0 = self.graph.shapes[first]
            batch = shape0[axes[first]] if len(shape0) > axes[first] and shape0[axes[first]] > 0 else n
            for t, v in feeds.items():
                shape = list(v.shape)
                shape[axes[t]] = batch
                if list(interp.get_tensor_details()[t]["shape"]) != shape:
                    try:
                        interp.resize_tensor_input(t, shape, strict=False)
                        interp.allocate_tensors()
                    except Exception as e:
                        raise InputError(
                            f"The TFLite model cannot take an input of shape {tuple(v.shape)} for "
                            f"{self.graph.names[t]!r} (its shape is {self.graph.shapes[t]}): "
                            f"{type(e).__name__}: {_first_line(e)}"
                        ) from e
            got_before: dict[int, list[np.ndarray]] = {t: [] for t in before}
            got_after: dict[int, list[np.ndarray]] = {t: [] for t in after}
            for start in range(0, n, batch):
                for t, v in feeds.items():
                    part = np.moveaxis(np.moveaxis(v, axes[t], 0)[start : start + batch], 0, axes[t])
                    if part.shape[axes[t]] < batch:
                        pad = list(part.shape)
                        pad[axes[t]] = batch - part.shape[axes[t]]
                        part = np.concatenate([part, np.zeros(pad, v.dtype)], axis=axes[t])
                    interp.set_tensor(t, np.ascontiguousarray(part))
                interp.reset_all_variables()
                for t in before:
                    got_before[t].append(np.array(interp.get_tensor(t)))
                interp.invoke()
                for t in after:
                    got_after[t].append(np.array(interp.get_tensor(t)))
            consts = {t: np.array(interp.get_tensor(t)) for t in constants}
            return Run(got_before, got_after, consts, n, batch)


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else "no message"


def prepare(model: Any) -> Prepared:
    """The analysed model and its interpreter, cached by the flatbuffer's sha256."""
    data = content(model)
    key = hashlib.sha256(data).hexdigest()
    with _CACHE_LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    prep = Prepared(data, key, analyse(data))
    with _CACHE_LOCK:
        _CACHE[key] = prep
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return prep
