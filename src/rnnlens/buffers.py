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
it), so a buffer still in use is never handed out twice. Free buffers kept here take at most
``RNNLENS_BUFFER_CACHE_MB`` MiB (default: an eighth of the machine's memory, at most 2 GiB;
``0`` turns reuse off); :func:`release_memory` returns them to the system.

>>> import numpy as np
>>> a = empty((1024, 1024), np.float32)
>>> a.shape, a.dtype
((1024, 1024), dtype('float32'))
>>> del a
>>> release_memory() >= 0
True
"""

from __future__ import annotations

import mmap
import os
import sys
import threading
from typing import Any

import numpy as np

#: buffers under this size come from NumPy's allocator (small blocks are recycled by malloc)
MIN_BYTES = 1 << 22


def _default_cap() -> int:
    env = os.environ.get("RNNLENS_BUFFER_CACHE_MB")
    if env is not None:
        try:
            return max(0, int(float(env) * (1 << 20)))
        except ValueError:
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
            found = None
            free_bytes = 0
            for i in range(len(self.maps)):
                if self._free(i):
                    if found is None and len(self.maps[i]) == nbytes:
                        found = i
                    else:
                        free_bytes += len(self.maps[i])
            m = self.maps.pop(found) if found is not None else mmap.mmap(-1, nbytes)
            self._trim(self.cap, free_bytes)
            self.maps.append(m)  # most recently used last: the oldest free ones go first
            return m

    def _trim(self, room: int, free_bytes: int) -> None:
        i = 0
        while free_bytes > room and i < len(self.maps):
            if self._free(i):
                free_bytes -= len(self.maps.pop(i))
            else:
                i += 1

    def release(self) -> int:
        with self.lock:
            # By index: a loop variable bound to a mapping would itself count as a reference.
            before = sum(len(self.maps[i]) for i in range(len(self.maps)) if self._free(i))
            self._trim(0, before)
            return before


_POOL = _Pool(_default_cap())
_NUMPY_OF = {"torch.float16": np.float16, "torch.float32": np.float32, "torch.float64": np.float64}


def empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialised C-contiguous array, in a reused buffer when it is large."""
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < MIN_BYTES or not _POOL.works or _POOL.cap == 0:
        if nbytes < MIN_BYTES:
            return np.empty(shape, dtype)
        # Its own mapping, on ordinary pages: NumPy asks for huge pages on large arrays (see above).
        return np.frombuffer(mmap.mmap(-1, nbytes), dtype=dtype).reshape(shape)
    return np.frombuffer(_POOL.take(nbytes), dtype=dtype).reshape(shape)


def empty_like_tensor(like: Any, *shape: int) -> Any:
    """``like.new_empty(shape)`` for a torch tensor, in a reused buffer when it is large and on
    the CPU (a dtype NumPy lacks, e.g. bfloat16, or another device: PyTorch's allocator)."""
    dtype = _NUMPY_OF.get(str(like.dtype))
    if like.device.type != "cpu" or dtype is None:
        return like.new_empty(shape)
    import torch

    return torch.from_numpy(empty(shape, dtype))


def release_memory() -> int:
    """Return the free buffers kept for reuse to the system; the bytes released.

    >>> import rnnlens
    >>> rnnlens.release_memory() >= 0
    True
    """
    return _POOL.release()
