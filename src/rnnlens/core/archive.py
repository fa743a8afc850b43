"""Bounded reading of zip archives (``.keras`` files, PyTorch's zip format): the members'
declared sizes are checked before anything is decompressed, so a small file that expands to
gigabytes (a zip bomb) is refused at once, with little memory.

Example:
    >>> import io, zipfile, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "bomb.keras")
    >>> with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
    ...     z.writestr("model.weights.h5", b"\\0" * (300 << 20))
    >>> check_archive(path)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rnnlens.errors.ModelFileError: bomb.keras would expand to 300 MiB from ... KiB ...
"""

from __future__ import annotations

import os
import zipfile

from ..errors import ModelFileError

__all__ = ["MAX_RATIO", "MAX_TOTAL", "check_archive"]

#: expansion over the file's size above which a large archive is refused (weights compress ~1.1x)
MAX_RATIO = 100
#: archives may expand to this much at most, whatever the ratio
MAX_TOTAL = 64 << 30
_SMALL = 64 << 20  # below this, any ratio is fine (configs, tiny models)


def check_archive(path: str | os.PathLike[str]) -> None:
    """Refuse a zip whose members declare a total size past :data:`MAX_TOTAL`, or past
    :data:`MAX_RATIO` times the file's size (when over 64 MiB). Not a zip: nothing to check."""
    p = os.fspath(path)
    if not zipfile.is_zipfile(p):
        return
    try:
        with zipfile.ZipFile(p) as z:
            total = sum(max(i.file_size, 0) for i in z.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelFileError(f"{os.path.basename(p)} is a damaged zip archive ({e}).") from None
    size = max(os.path.getsize(p), 1)
    if total > MAX_TOTAL or (total > _SMALL and total > MAX_RATIO * size):
        raise ModelFileError(
            f"{os.path.basename(p)} would expand to {total >> 20:,} MiB from {size >> 10:,} KiB "
            f"(x{total // size:,}): refused as a likely zip bomb (limits: x{MAX_RATIO} past 64 MiB, "
            f"{MAX_TOTAL >> 30} GiB in all). If the file is genuine, re-save it uncompressed."
        )
