"""Large state buffers reused across calls, in memory whose pages are already touched.

Why: every fresh 4 KiB page costs a fault on first touch. On the 2-core VM of the benchmarks
that is about 1.4 µs a page (37 ms for one 105 MB gate buffer, where filling a touched buffer
takes 7 ms), and an all-fields trace of the benchmark's 3-layer LSTM returns 470 MB of
states: the faults were a third of its time. The fused kernel pays them only for its
temporaries. So a buffer rnnlens hands out (the emitted gates, ``c`` and ``h``, rebuilt gates,
scratch blocks) is kept here, and once every array that used it has been dropped, the next
call of the same size gets it again. Transparent huge pages would also avoid the faults, but
where the kernel compacts memory for them (``defrag=madvise``) they stalled calls by up to 7×.

A buffer is free when nothing but this pool refers to its mapping (NumPy views, tensors made
with ``torch.from_numpy`` and the arrays of a :class:`rnnlens.States` all hold a reference to
it), so a buffer still in use is never handed out twice. The pool refers to at most
``RNNLENS_BUFFER_CACHE_MB`` MiB of buffers, in use or free (default: an eighth of the
machine's memory, at most 2 GiB; ``0`` turns reuse off), so that is also the most it keeps
once every array is dropped; :func:`release_memory` returns the free ones to the system.

>>> import numpy as np
>>> a = empty((1024, 1024), np.float32)
>>> a.shape, a.dtype
((1024, 1024), dtype('float32'))
>>> del a
>>> release_memory() >= 0
True
"""

from __future__ import annotations

import math
import mmap
import os
import sys
import threading
import warnings
from typing import Any

import numpy as np

from ..errors import RnnLensWarning

#: buffers under this size come from NumPy's allocator (small blocks are recycled by malloc)
MIN_BYTES = 1 << 22


def _default_cap() -> int:
    env = os.environ.get("RNNLENS_BUFFER_CACHE_MB")
    if env is not None:
        try:
            return max(0, int(float(env) * (1 << 20)))
        except ValueError:
            warnings.warn(
                f"RNNLENS_BUFFER_CACHE_MB={env!r} is not a number of MiB; rnnlens reuses no buffers "
                "(set it to e.g. 1024, or 0 to say so).",
                RnnLensWarning,
                stacklevel=2,
            )
            return 0
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = 8 << 30
    return min(2 << 30, total // 8)


class _Pool:
    """Anonymous mappings, each free when only this pool refers to it."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.maps: list[mmap.mmap] = []
        self.lock = threading.Lock()
        self.works = self._check()

    def _free(self, i: int) -> bool:
        # The list's reference and getrefcount's argument: nothing else holds the mapping.
        return sys.getrefcount(self.maps[i]) == 2

    def _check(self) -> bool:
        """Whether this interpreter counts references as :meth:`_free` expects (else no reuse)."""
        self.maps.append(mmap.mmap(-1, mmap.PAGESIZE))
        try:
            if not self._free(0):
                return False
            view = np.frombuffer(self.maps[0], np.uint8)[1:]
            busy = not self._free(0)
            del view
            return busy and self._free(0)
        finally:
            self.maps.clear()

    def take(self, nbytes: int) -> mmap.mmap:
        with self.lock:
            found = next(
                (i for i in range(len(self.maps)) if len(self.maps[i]) == nbytes and self._free(i)), None
            )
            m = self.maps.pop(found) if found is not None else mmap.mmap(-1, nbytes)
            if nbytes <= self.cap:
                self.maps.append(m)  # most recently used last: the oldest go first
                self._trim(self.cap)
            return m

    def _trim(self, room: int) -> int:
        """Keep at most ``room`` bytes: drop the oldest free buffers, then stop keeping the
        oldest ones still in use (their arrays free them as usual when dropped), so that what
        the pool can hold on to once everything is dropped never exceeds ``room``. Returns the
        free bytes dropped."""
        total = sum(len(m) for m in self.maps)
        dropped = 0
        for free_only in (True, False):
            i = 0
            while total > room and i < len(self.maps):
                if not free_only or self._free(i):
                    size = len(self.maps.pop(i))
                    total -= size
                    dropped += size if free_only else 0
                else:
                    i += 1
        return dropped

    def release(self) -> int:
        with self.lock:
            return self._trim(0)


_POOL = _Pool(_default_cap())


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, in a reused buffer when it is large."""
    dtype = np.dtype(dtype)
    nbytes = math.prod(shape) * dtype.itemsize  # (np.prod: ~5 µs a call, several calls a layer)
    if nbytes < MIN_BYTES:
        return np.empty(shape, dtype)
    if not _POOL.works or _POOL.cap == 0:
        # Its own mapping, on ordinary pages: NumPy asks for huge pages on large arrays (see above).
        return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)
    return np.frombuffer(_POOL.take(nbytes), dtype=dtype).reshape(shape)


def release_memory() -> int:
    """Return the free buffers kept for reuse to the system; the bytes released.

    >>> import rnnlens
    >>> rnnlens.release_memory() >= 0
    True
    """
    return _POOL.release()
