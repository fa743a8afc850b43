"""The storage layer's errors (defined with every other error in :mod:`rnnlens.errors`)."""

from __future__ import annotations

from ..errors import (
    DataFileError,
    MissingDependencyError,
    SchedulerError,
    StoreError,
    StoreExistsError,
    StoreMismatchError,
)

__all__ = [
    "DataFileError",
    "MissingDependencyError",
    "SchedulerError",
    "StoreError",
    "StoreExistsError",
    "StoreMismatchError",
]
