"""Errors of the storage layer, in rnnlens' hierarchy (each also subclasses the builtin a
caller would expect)."""

from __future__ import annotations

from ..errors import RnnLensError

__all__ = [
    "DataFileError",
    "MissingDependencyError",
    "SchedulerError",
    "StoreError",
    "StoreExistsError",
    "StoreMismatchError",
]


class MissingDependencyError(RnnLensError, ImportError):
    """An optional package (zarr, xarray, h5py) that this feature needs is not installed."""


class DataFileError(RnnLensError, ValueError):
    """A data file (``.npy`` / ``.npz``) that is missing, corrupt, truncated or of the wrong kind."""


class StoreError(RnnLensError, ValueError):
    """A state store that cannot be written or read as asked."""


class StoreExistsError(StoreError, FileExistsError):
    """The output path exists and may not be resumed or replaced as asked."""


class StoreMismatchError(StoreError):
    """Resuming a store with a different model, layers, fields, batch size or data."""


class SchedulerError(RnnLensError, ConnectionError):
    """The Dask scheduler of a distributed extraction cannot be reached."""
