"""Optional packages, imported on first use with a message naming the extra that provides them."""

from __future__ import annotations

import importlib
from typing import Any

from .errors import MissingDependencyError

__all__ = ["require"]

_EXTRAS = {"zarr": "zarr", "xarray": "zarr", "h5py": None, "fsspec": "cloud"}


def require(module: str, *, purpose: str) -> Any:
    """Import ``module`` or raise :class:`MissingDependencyError` saying how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = _EXTRAS.get(module)
        how = f"pip install 'rnnlens[{extra}]'" if extra else f"pip install {module}"
        raise MissingDependencyError(
            f"{purpose} needs the optional package {module!r}, which is not installed "
            f"({type(e).__name__}: {e}). Install it with: {how}"
        ) from None
