"""Every error rnnlens raises.

Each error subclasses :class:`RnnLensError` *and* the builtin a caller would expect
(``KeyError`` for names, ``ValueError`` for shapes, dtypes and values, ``TypeError`` for
objects of the wrong kind), so ``except KeyError`` keeps working for code that does not
know rnnlens.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = [
    "DataFileError",
    "DirectionNotAvailableError",
    "FieldNotAvailableError",
    "InputError",
    "LayerNotFoundError",
    "MissingDependencyError",
    "ModelFileError",
    "OptionError",
    "OptionTypeError",
    "ParityError",
    "RnnLensError",
    "RnnLensWarning",
    "SchedulerError",
    "StoreError",
    "StoreExistsError",
    "StoreLockedError",
    "StoreMismatchError",
    "UnsupportedLayerError",
    "UnsupportedModelError",
]


class RnnLensError(Exception):
    """Base class of every error raised by rnnlens."""


class LayerNotFoundError(RnnLensError, KeyError):
    """A layer name that the model (or a ``States`` object) does not have."""

    def __init__(self, name: str, available: Iterable[str], *, what: str = "recurrent layer"):
        self.name = name
        self.available = list(available)
        message = f"No {what} named {name!r}. " + _listing(name, self.available)
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would otherwise show the message quoted
        return str(self.args[0])


class UnsupportedLayerError(RnnLensError, TypeError):
    """A layer that rnnlens cannot trace the way it was asked to."""


class UnsupportedModelError(RnnLensError, TypeError):
    """A model object or file of a kind that rnnlens cannot read."""


class ModelFileError(RnnLensError, ValueError):
    """A model file that is missing, corrupt, truncated, or unsafe to load as asked."""


class InputError(RnnLensError, ValueError):
    """Model input with the wrong shape, dtype or size."""


class OptionError(InputError):
    """An option of :func:`rnnlens.trace` (``layers``, ``fields``, ``batch_size``, ``strategy``,
    ...) with a value rnnlens cannot use."""


class OptionTypeError(OptionError, TypeError):
    """An option of the wrong type (``batch_size=2.5``, ``layers=5``)."""


class MissingDependencyError(RnnLensError, ImportError):
    """An optional package (zarr, xarray, h5py, onnx) that this feature needs is not installed."""


class DataFileError(RnnLensError, ValueError):
    """A data file (``.npy`` / ``.npz``) that is missing, corrupt, truncated or of the wrong kind."""


class StoreError(RnnLensError, ValueError):
    """A state store that cannot be written or read as asked."""


class StoreExistsError(StoreError, FileExistsError):
    """The output path exists and may not be resumed or replaced as asked."""


class StoreLockedError(StoreError):
    """The store is being written by another extraction (its lock file is held)."""


class StoreMismatchError(StoreError):
    """Resuming a store with a different model, layers, fields, batch size or data."""


class SchedulerError(RnnLensError, ConnectionError):
    """The Dask scheduler of a distributed extraction cannot be reached."""


class FieldNotAvailableError(RnnLensError, ValueError):
    """A field (``h``, ``c``, ``gates``) that a layer does not have."""


class DirectionNotAvailableError(RnnLensError, AttributeError):
    """``.backward`` (or ``.forward``) of a layer that does not run in that direction."""


class ParityError(RnnLensError, ArithmeticError):
    """Reconstructed states disagree with what the framework's own kernel computed.

    rnnlens never returns states that fail this check: a mismatch means the cell does not
    compute what rnnlens believes it computes (for example a subclassed cell with a custom
    ``call``), and the numbers would be wrong.
    """


def suggest(name: str, available: Iterable[str]) -> str | None:
    """The closest name in ``available``, or None when nothing is close."""
    matches = difflib.get_close_matches(name, list(available), n=1, cutoff=0.5)
    return matches[0] if matches else None


def _listing(name: str, available: list[str]) -> str:
    if not available:
        return "The model has none."
    hint = suggest(name, available)
    did_you_mean = f" Did you mean {hint!r}?" if hint else ""
    return f"Expected one of {available}.{did_you_mean}"


class RnnLensWarning(UserWarning):
    """Something worth knowing that does not stop the trace (e.g. an unknown cell: h only)."""
