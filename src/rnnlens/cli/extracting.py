"""``rnnlens extract``'s own rules: ``--fields`` per layer, and what a failed run leaves behind.

In Python, ``fields=[...]`` must be present in every traced layer. On the command line one
``--fields`` list serves a whole model, so each layer takes the listed fields it has; a field
that no selected layer has is an error. A failed run leaves no half-made store: a store it
created with no chunk done is removed; one with chunks done is kept, and the message says that
running the same command again resumes it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from typing import Any

from ..core.spec import ALL_FIELDS
from ..errors import InputError, suggest
from ..io.layout import any_chunk_done, read_manifest
from ..io.location import Location

__all__ = ["FIELDS_HELP", "choose_fields", "cleanup_failed", "existed_before", "guarded", "parse_fields"]

FIELDS_HELP = (
    f"comma-separated subset of {','.join(ALL_FIELDS)}, or all (default: all, every field each "
    "layer has); each layer takes the listed fields it has"
)


def parse_fields(text: str | None) -> tuple[str, ...] | None:
    """``--fields``: None for every field (``all`` or not given), else the names, checked.

    >>> parse_fields("all") is None, parse_fields("h, c")
    (True, ('h', 'c'))
    """
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    if not items or "all" in items:
        return None
    for f in items:
        if f not in ALL_FIELDS:
            hint = suggest(f, (*ALL_FIELDS, "all"))
            raise InputError(
                f"--fields: unknown field {f!r}; expected {','.join(ALL_FIELDS)} or all."
                + (f" Did you mean {hint!r}?" if hint else "")
            )
    return tuple(dict.fromkeys(items))


def choose_fields(
    asked: tuple[str, ...] | None, specs: Sequence[Any], layers: Sequence[str] | None
) -> tuple[str, ...] | None:
    """The ``fields=`` to pass to :func:`rnnlens.extract_to` so that each selected layer gets
    the asked fields it has. ``specs``: :func:`rnnlens.describe`'s layers.

    Raises InputError for a field no selected layer has, and where the layers would need
    different subsets that are not all of their fields (one store run takes one ``fields=``).
    """
    if asked is None:
        return None
    chosen = [s for s in specs if layers is None or s.name in layers] or list(specs)
    nobody = [f for f in asked if not any(f in s.fields for s in chosen)]
    if nobody:
        have = ", ".join(f"{s.name} ({s.layer_type}): {','.join(s.fields)}" for s in chosen)
        raise InputError(f"--fields: no selected layer has {','.join(nobody)}. The layers have {have}.")
    wanted = {"h", *asked}
    shares = {s.name: tuple(f for f in s.fields if f in wanted) for s in chosen}
    if all(set(shares[s.name]) == set(s.fields) for s in chosen):
        return None  # every layer takes all it has
    if all(set(share) == wanted for share in shares.values()):
        return tuple(f for f in ALL_FIELDS if f in wanted)
    split = "; ".join(f"{n}: {','.join(v)}" for n, v in shares.items())
    raise InputError(
        f"--fields {','.join(asked)} gives these layers different subsets ({split}), and one store "
        "run takes one list: pass --fields all, or run extract once per group of layers with --layers."
    )


def cleanup_failed(out: str, storage_options: dict[str, Any] | None, existed: bool) -> str:
    """After a failed run into ``out``: remove a store this run created with no chunk done, and
    say what is left (a sentence to add to the error, or '')."""
    try:
        loc = Location.of(out, storage_options)
        manifest = read_manifest(loc)
    except Exception:  # the store's own trouble is already the error being reported
        return ""
    if manifest is None or not any_chunk_done(manifest):
        if not existed and loc.exists():
            loc.remove()
            return f"Nothing was written; {out} was removed."
        return ""
    done = int(manifest.get("samples_done", 0))
    return (
        f"The {done} samples already written are kept in {out}: run the same command again to "
        "resume, or add --overwrite to start over."
    )


def existed_before(out: str, storage_options: dict[str, Any] | None) -> bool:
    """Whether ``out`` already has entries (so a failed run must not remove it)."""
    try:
        return Location.of(out, storage_options).has_entries()
    except Exception:
        return True  # when unsure, never remove


def guarded(run: Callable[[], None], out: str, storage_options: dict[str, Any] | None) -> None:
    """Run ``run``; on failure clean up (see :func:`cleanup_failed`) and re-raise with the
    sentence to report as the exception's ``rnnlens_note``."""
    existed = existed_before(out, storage_options)
    try:
        run()
    except KeyboardInterrupt:
        raise
    except BaseException as e:
        note = cleanup_failed(out, storage_options, existed)
        if note:
            with contextlib.suppress(AttributeError):
                e.rnnlens_note = note  # type: ignore[attr-defined]
        raise
