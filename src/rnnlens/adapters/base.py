"""The adapter contract: what every framework adapter provides, in one place.

The core (:func:`rnnlens.trace`, :func:`rnnlens.describe`, :func:`rnnlens.load_model`,
:func:`rnnlens.extract_to`, the Dask driver and the CLI) talks to frameworks only through
:class:`Adapter`. An adapter knows one framework; the core knows options, cell kinds,
:class:`~rnnlens.core.states.States` and stores.

The flow of one trace:

1. the core validates every option once (:class:`TraceOptions`), the same for every
   framework, and picks the adapter whose :meth:`Adapter.can_trace` accepts the model;
2. :meth:`Adapter.capture` runs the model (unmodified) and returns :class:`Captured`:
   the selected layers' specs and, per batch, framework-neutral NumPy arrays per layer
   and direction (built from :class:`rnnlens.core.tracing.RawLayer` by the core's
   reconstruction);
3. the core assembles :class:`~rnnlens.core.states.States` from them.

A third-party adapter subclasses :class:`Adapter` and is registered through the
``rnnlens.adapters`` entry-point group (``name = "pkg.module:MyAdapter"``) or
:func:`rnnlens.adapters.register`; it is checked with :class:`rnnlens.testing.AdapterTests`.

Example:
    >>> from rnnlens.adapters import Adapter, registered
    >>> sorted(registered())
    ['flax', 'keras', 'onnx', 'tflite', 'torch', 'transformers']
    >>> issubclass(type(registered()["torch"]), Adapter)
    True
"""

from __future__ import annotations

import functools
import os
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from ..core.cells import DirectionArrays
from ..core.edits import LayerEdits
from ..core.optional import require
from ..core.spec import Field, LayerSpec
from ..errors import UnsupportedModelError

__all__ = ["Adapter", "Captured", "Inputs", "Intervened", "LayerBatch", "TraceOptions", "mro_roots"]

#: One layer of one batch: its directions' arrays and its valid-step mask (or None).
LayerBatch = tuple[dict[str, DirectionArrays], "np.ndarray | None"]
#: the model's positional and keyword inputs, as the caller gave them
Args = tuple[Any, ...]
Kwargs = Mapping[str, Any]
#: the edits of one run, planned per layer name (:func:`rnnlens.core.edits.plan_edits`)
Edits = Mapping[str, LayerEdits]


@dataclass(frozen=True)
class TraceOptions:
    """The options of :func:`rnnlens.trace`, validated and normalised by the core.

    ``layers``: names in the caller's order, or None for all. ``fields``: the fields asked
    for, or None for every field each layer has. ``mask``: (sample, time) bool or None.
    ``batch_size``: a positive int or None. ``strategy``: one of the adapter's
    :attr:`Adapter.strategies`. ``calls``: ``"join"`` or ``"each"``.
    """

    layers: tuple[str, ...] | None = None
    fields: tuple[Field, ...] | None = None
    mask: np.ndarray | None = None
    batch_size: int | None = None
    strategy: str = "auto"
    #: ``"join"``: calls of one module that continue the previous call's final state are one
    #: entry along time; ``"each"``: one entry per call (``name#k``)
    calls: str = "join"
    #: the caller reads only :attr:`Intervened.outputs` and drops the states (an ablation
    #: scan): the outputs may then share memory with the captured arrays instead of being copied
    outputs_only: bool = False


@dataclass
class Captured:
    """What :meth:`Adapter.capture` returns: the traced layers and their arrays per batch."""

    specs: list[LayerSpec]
    batches: list[dict[str, LayerBatch]]
    backend: str


@dataclass
class Intervened:
    """What :meth:`Adapter.intervene` returns: the model's outputs with the edits applied (NumPy,
    in the model's own structure) and the edited run's states, as :meth:`Adapter.capture` gives."""

    outputs: Any
    captured: Captured


@dataclass
class Inputs:
    """One piece of streamed data as :func:`rnnlens.trace` should receive it.

    ``args``/``kwargs`` are the model's inputs; ``options`` the trace options to use
    (``mask``/``batch_size`` only where the framework takes them).
    """

    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)


def mro_roots(model: Any) -> frozenset[str]:
    """Top-level package names in ``model``'s class hierarchy (imports nothing)."""
    kind: Any = type(model)
    try:
        return _roots(kind)
    except TypeError:  # a class whose metaclass makes it unhashable
        return frozenset(cls.__module__.split(".", 1)[0] for cls in kind.__mro__)


@functools.lru_cache(maxsize=512)
def _roots(kind: type) -> frozenset[str]:
    # (per class: every adapter asks it of the model at every trace call)
    return frozenset(cls.__module__.split(".", 1)[0] for cls in kind.__mro__)


class Adapter(ABC):
    """One framework behind rnnlens. Subclass, fill in the abstract methods, register.

    Class attributes:
        name: short name (``"keras"``), also the ``States.backend`` prefix.
        accepts: what models it takes, in words, for "unsupported model" messages.
        suffixes: model file suffixes :meth:`load` opens (lower case, with the dot).
        requires: the optional modules its models need (checked before a file is opened).
        strategies: the values of ``strategy=`` it supports (``"auto"`` always).
        takes_mask: whether ``mask=`` is the (sample, time) valid steps (checked and turned
            into bool by the core); otherwise the adapter gets it as given and refuses it
            clearly, or passes it on (PyTorch: to a ``forward`` with a ``mask`` parameter).
    """

    name: ClassVar[str]
    accepts: ClassVar[str]
    suffixes: ClassVar[tuple[str, ...]] = ()
    strategies: ClassVar[tuple[str, ...]] = ("auto",)
    takes_mask: ClassVar[bool] = False
    #: the modules (top-level names) its models need; a file is refused with the pip command
    #: that installs them before the adapter opens it
    requires: ClassVar[tuple[str, ...]] = ()

    def check_installed(self, purpose: str) -> None:
        """Raise :class:`~rnnlens.errors.MissingDependencyError` naming what to install when a
        module in :attr:`requires` is missing (imports each: cheap once installed)."""
        for module in self.requires:
            require(module, purpose=purpose)

    # ------------------------------------------------------------------ required

    @abstractmethod
    def can_trace(self, model: Any) -> bool:
        """Whether ``model`` is this framework's. Must import nothing (look at the class)."""

    @abstractmethod
    def describe(self, model: Any) -> list[LayerSpec]:
        """The model's recurrent layers, in model order."""

    @abstractmethod
    def capture(self, model: Any, args: Args, kwargs: Kwargs, options: TraceOptions) -> Captured:
        """Run ``model`` on its inputs once (without changing it) and capture every selected
        layer's per-step arrays. Raise an :class:`~rnnlens.errors.RnnLensError` for anything
        it cannot see exactly."""

    @abstractmethod
    def model_digest(self, model: Any) -> str:
        """The model's identity for resuming a store: sha256 (hex) over its weights *and*
        its architecture (graph, activations, layer configurations)."""

    def portable(self, model: Any) -> Any:
        """What is pickled to ship ``model`` to Dask workers: an object that unpickles as the
        model (the model itself, by default; an adapter whose models cannot be pickled as they
        are gives one that rebuilds them)."""
        return model

    @abstractmethod
    def to_inputs(self, x: Any, *, mask: np.ndarray | None, size: int) -> Inputs:
        """How one streamed piece (NumPy ``x``: array, list or dict; ``size`` samples;
        the user's (sample, time) ``mask`` or None) is passed to :func:`rnnlens.trace`."""

    # ------------------------------------------------------------------ optional

    def load(self, path: str | os.PathLike[str], *, unsafe: bool = False, **options: Any) -> Any:
        """Open a model file ending in one of :attr:`suffixes`. Nothing in the file may run
        unless ``unsafe``; an unreadable file is a :class:`~rnnlens.errors.ModelFileError`."""
        raise UnsupportedModelError(f"The {self.name} adapter does not open model files.")

    def can_open(self, path: str | os.PathLike[str]) -> bool:
        """Whether :meth:`load` opens ``path`` (by default: by suffix)."""
        return os.fspath(path).lower().endswith(self.suffixes) if self.suffixes else False

    def untraced(self, model: Any) -> list[str]:
        """Recurrent parts of ``model`` that :meth:`describe` leaves out because rnnlens cannot
        trace them, each ``"where (what): why"``; :func:`rnnlens.describe` lists them under
        its table (by default: none)."""
        return []

    def intervene(
        self, model: Any, args: Args, kwargs: Kwargs, edits: Edits, options: TraceOptions
    ) -> Intervened:
        """Run ``model`` once with ``edits`` applied to the named layers' states as they run
        (see :mod:`rnnlens.core.edits` for the semantics, :meth:`LayerEdits.steps` for the
        per-call operations), and capture the selected layers of that edited run. ``edits`` is
        checked against :meth:`describe` by the core. Adapters that cannot edit raise
        :class:`~rnnlens.errors.UnsupportedModelError` (the default)."""
        raise UnsupportedModelError(
            f"The {self.name} adapter does not support interventions yet; rnnlens.intervene works on "
            "PyTorch models."
        )

    def record(self, model: Any, options: TraceOptions) -> Any:
        """A recorder of ``model`` across calls, for :func:`rnnlens.record`: an object with
        ``start()`` / ``stop()`` (install and remove whatever records the calls; ``stop`` must
        leave nothing behind, also after an error) and ``joined()``: a :class:`Captured` in which
        calls that continued the previous call's final state are joined along time into one
        entry (named after the first call; other calls are ``name#k``), and each call's
        ``(name, entry, start, stop)``. Adapters that
        cannot record raise :class:`~rnnlens.errors.UnsupportedModelError` (the default)."""
        raise UnsupportedModelError(
            f"The {self.name} adapter does not support recording yet; rnnlens.record works on "
            "PyTorch modules."
        )

    def __repr__(self) -> str:
        return f"<rnnlens adapter {self.name!r}: {self.accepts}>"
