"""The options of :func:`rnnlens.trace`, checked once for every framework.

Each bad option is an :class:`~rnnlens.errors.RnnLensError` (with the builtin a caller
expects: :class:`TypeError` for a wrong type, :class:`ValueError` for a wrong value) that says
what was expected, what was received and what to do.

Example:
    >>> from rnnlens.core.options import check_batch_size
    >>> check_batch_size(0)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnlens.errors.OptionError: batch_size must be a positive integer or None; received 0. ...
    >>> check_layers(["enc", "enc", "dec"])
    ('enc', 'dec')
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from ..errors import FieldNotAvailableError, InputError, OptionError, OptionTypeError, suggest
from .spec import ALL_FIELDS, Field

__all__ = ["check_batch_size", "check_fields", "check_layers", "check_mask", "check_strategy"]


def _names(value: Any, option: str, what: str, example: str) -> list[Any]:
    """A name or a non-empty iterable of names, as a list (``what``: a layer, a field)."""
    if isinstance(value, str):
        return [value]
    if not isinstance(value, Iterable) or isinstance(value, (bytes, dict)):
        raise OptionTypeError(
            f"{option} must be {what} name, a list of names or None; received {type(value).__name__} "
            f"{value!r}. Pass e.g. {example}."
        )
    names = list(value)
    if not names:
        raise OptionError(f"{option}=[] selects nothing; pass None for all, or e.g. {example}.")
    return names


def check_layers(layers: Any) -> tuple[str, ...] | None:
    """None, a layer name, or a non-empty iterable of names (order kept, duplicates dropped)."""
    if layers is None:
        return None
    names = _names(layers, "layers", "a layer", "layers='lstm' or layers=['enc', 'dec']")
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise OptionTypeError(
            f"layers must hold layer names (str); received {bad!r}. rnnlens.describe(model) lists them."
        )
    return tuple(dict.fromkeys(names))


def check_fields(fields: Any) -> tuple[Field, ...] | None:
    """None, a field name, or an iterable of names from ``h``, ``c``, ``gates``."""
    if fields is None:
        return None
    if type(fields) is tuple and fields and all(f in ALL_FIELDS for f in fields):  # the usual case
        return tuple(f for f in ALL_FIELDS if f in fields)
    asked = _names(fields, "fields", "a field", f"a subset of {list(ALL_FIELDS)}, fields=['h', 'c']")
    for f in asked:
        if f not in ALL_FIELDS:
            hint = suggest(f, ALL_FIELDS) if isinstance(f, str) else None
            raise FieldNotAvailableError(
                f"Unknown field {f!r}. Expected a subset of {list(ALL_FIELDS)}."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    return tuple(f for f in ALL_FIELDS if f in asked)


def check_batch_size(batch_size: Any) -> int | None:
    """None or a positive int (bool, float and str are refused, not rounded)."""
    if batch_size is None:
        return None
    if isinstance(batch_size, (bool, np.bool_)) or not isinstance(batch_size, (int, np.integer)):
        raise OptionTypeError(
            f"batch_size must be a positive integer or None; received {type(batch_size).__name__} "
            f"{batch_size!r}. Pass e.g. batch_size=256."
        )
    if batch_size < 1:
        raise OptionError(
            f"batch_size must be a positive integer or None; received {batch_size}. Pass e.g. batch_size=256."
        )
    return int(batch_size)


def check_strategy(strategy: Any, supported: Sequence[str], framework: str) -> str:
    """One of the adapter's strategies."""
    known = ("auto", "emit", "reconstruct")
    if not isinstance(strategy, str) or strategy not in known:
        hint = suggest(strategy, known) if isinstance(strategy, str) else None
        raise OptionError(
            f"strategy must be one of {list(known)}; received {strategy!r}."
            + (f" Did you mean {hint!r}?" if hint else "")
        )
    if strategy not in supported:
        raise OptionError(
            f"strategy={strategy!r} is not available for {framework} models; they support "
            f"{list(supported)}. Use 'auto'."
        )
    return strategy


def check_choice(option: str, value: Any, known: Sequence[str]) -> str:
    """One of ``known`` (a near miss is suggested)."""
    if isinstance(value, str) and value in known:
        return value
    hint = suggest(value, known) if isinstance(value, str) else None
    raise OptionError(
        f"{option} must be one of {list(known)}; received {value!r}."
        + (f" Did you mean {hint!r}?" if hint else "")
    )


def check_mask(mask: Any) -> np.ndarray | None:
    """None, or a (sample, time) array of booleans (or of 0 and 1 only)."""
    if mask is None:
        return None
    if hasattr(mask, "detach"):  # a torch tensor
        mask = mask.detach().cpu().numpy()
    elif hasattr(mask, "numpy") and not isinstance(mask, np.ndarray):
        mask = mask.numpy()
    try:
        a = np.asarray(mask)
    except ValueError as e:  # ragged nested lists
        raise InputError(
            f"mask could not be turned into an array ({e}); pass a (sample, time) array."
        ) from None
    if a.ndim != 2:
        raise InputError(
            f"mask must be a (sample, time) array of booleans; received shape {a.shape}. "
            "Pass one True/False per sample and step."
        )
    if a.dtype == bool:
        return a
    if a.dtype.kind not in "biuf" or (a.size and not np.isin(a, (0, 1)).all()):
        shown = a.dtype if a.dtype.kind not in "biuf" else sorted(set(np.unique(a).tolist()) - {0, 1})[:5]
        raise InputError(
            f"mask must hold booleans (or only 0 and 1); received {shown}. Pass e.g. x_lengths[:, None] > "
            "np.arange(time)."
        )
    return a.astype(bool)
