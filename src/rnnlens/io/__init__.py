"""Storing traced states: Zarr v3 stores (:func:`extract_to` writes, :func:`open_states`
reads lazily), export to ``.npz`` / HDF5, and the data sources extraction reads.

Importing this package imports neither zarr, xarray nor h5py; they load on first use.
The on-disk schema is described once, in :mod:`rnnlens.io.layout`.
"""

from __future__ import annotations

from .errors import DataFileError, MissingDependencyError, StoreError, StoreExistsError, StoreMismatchError
from .export import export
from .zarr import open_states

__all__ = [
    "DataFileError",
    "MissingDependencyError",
    "StoreError",
    "StoreExistsError",
    "StoreMismatchError",
    "export",
    "open_states",
]
