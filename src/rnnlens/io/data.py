"""Where extraction input comes from: arrays, ``.npy`` / ``.npz`` files, or iterables of batches.

A *batch* follows Keras' conventions: an array (or a list / dict of arrays for a model with
several inputs), or a tuple ``(x,)``, ``(x, y)`` or ``(x, y, sample_weight)`` of which only
``x`` is used (so a ``tf.data.Dataset`` or a ``torch.utils.data.DataLoader`` built for
training can be passed as is; a list batch is read like a tuple, as Keras does). A dict with
the key ``"x"`` and only the keys ``x``, ``y``, ``mask``, ``lengths``, ``sample_weight``
carries per-batch ``mask`` (sample, time) and/or ``lengths`` (sample,). Tensors of any
framework are turned into NumPy arrays here.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InputError
from .errors import DataFileError

__all__ = [
    "Batch",
    "Digest",
    "NpyFile",
    "NpyFiles",
    "load_array",
    "load_data",
    "open_source",
    "open_whole",
    "unpack_batch",
]

_STRUCT_KEYS = frozenset({"x", "y", "mask", "lengths", "sample_weight"})


@dataclass
class Batch:
    """One batch of model input, as NumPy: ``x`` an array, or a list / dict of arrays."""

    x: Any
    mask: np.ndarray | None = None
    lengths: np.ndarray | None = None

    @property
    def size(self) -> int:
        return int(_leaves(self.x)[0][1].shape[0])

    def slice(self, start: int, stop: int) -> Batch:
        sl = slice(start, stop)
        return Batch(
            _map(self.x, lambda a: a[sl]),
            None if self.mask is None else self.mask[sl],
            None if self.lengths is None else self.lengths[sl],
        )


# --------------------------------------------------------------------------- files


def load_array(path: str | os.PathLike[str], *, what: str = "data") -> np.ndarray:
    """A ``.npy`` file, memory-mapped read-only (``np.load(mmap_mode="r")``; never unpickles).

    Example:
        >>> load_array("missing.npy")
        Traceback (most recent call last):
        ...
        FileNotFoundError: No data file at 'missing.npy'.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"No {what} file at {str(path)!r}.")
    if p.suffix.lower() != ".npy":
        raise DataFileError(f"{what} file {p.name!r}: expected a NumPy .npy file.")
    try:
        a = np.load(p, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise DataFileError(
            f"Could not read {what} file {p.name} as a NumPy .npy array ({type(e).__name__}: {e}). "
            "The file may be truncated or corrupt, or hold Python objects (refused: they would "
            "be unpickled); re-save it with numpy.save(path, array) from a numeric array."
        ) from None
    if not isinstance(a, np.ndarray):  # pragma: no cover - np.load returns arrays for .npy
        raise DataFileError(f"{what} file {p.name} does not hold one array.")
    if a.ndim == 0:
        raise DataFileError(f"{what} file {p.name} holds a scalar; expected (sample, time, ...) data.")
    return a


class NpyFile:
    """A ``.npy`` file that reads one batch at a time through a short-lived memory map.

    Indexing maps the file (``np.load(mmap_mode="r")``), copies the selection and unmaps it
    again, so the pages read for earlier batches do not stay in the process's resident
    memory: extracting a file ten times larger takes no more memory.
    """

    def __init__(self, path: str | os.PathLike[str], *, what: str = "data"):
        a = load_array(path, what=what)  # checks the header and the file's size once
        self.path = Path(path)
        self.shape: tuple[int, ...] = tuple(int(d) for d in a.shape)
        self.dtype = a.dtype
        del a

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        m = np.load(self.path, mmap_mode="r", allow_pickle=False)
        try:
            return np.array(m[key])
        finally:
            del m

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[...]
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"NpyFile({str(self.path)!r}, shape={self.shape}, dtype={self.dtype})"


class NpyFiles:
    """Several ``.npy`` files read as one array, concatenated along the first (sample) axis.

    Every file must have the same dtype and the same shape after the first axis. Slices
    read only the files they cross, each through a short-lived memory map (:class:`NpyFile`).

    Example:
        >>> import numpy as np, tempfile, os
        >>> d = tempfile.mkdtemp()
        >>> for i, n in enumerate((3, 2)):
        ...     np.save(os.path.join(d, f"{i}.npy"), np.full((n, 4, 1), i, "float32"))
        >>> x = NpyFiles([os.path.join(d, "0.npy"), os.path.join(d, "1.npy")])
        >>> x.shape, x[2:4, 0, 0].tolist()
        ((5, 4, 1), [0.0, 1.0])
    """

    def __init__(self, paths: Iterable[str | os.PathLike[str]], *, what: str = "data"):
        self.files = [NpyFile(p, what=what) for p in paths]
        if not self.files:
            raise InputError(f"The list of {what} files is empty; expected one or more .npy paths.")
        first = self.files[0]
        for f in self.files[1:]:
            if f.dtype != first.dtype or f.shape[1:] != first.shape[1:]:
                raise DataFileError(
                    f"{what} file {f.path.name} holds {f.shape} {f.dtype}, but {first.path.name} holds "
                    f"{first.shape} {first.dtype}; files read as one data set need the same dtype and "
                    "the same shape after the first (sample) axis. Pad them to one length."
                )
        self.starts = np.cumsum([0] + [len(f) for f in self.files])
        self.shape: tuple[int, ...] = (int(self.starts[-1]), *first.shape[1:])
        self.dtype = first.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        rest: tuple[Any, ...] = ()
        if isinstance(key, tuple):
            key, rest = (key[0], key[1:]) if key else (slice(None), ())
        if key is Ellipsis:
            key, rest = slice(None), (Ellipsis,) + rest
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self.shape[0] if key < 0 else 0)
            if not 0 <= i < self.shape[0]:
                raise IndexError(f"index {key} is out of range for {self.shape[0]} samples")
            k = int(np.searchsorted(self.starts, i, side="right")) - 1
            return self.files[k][(i - int(self.starts[k]),) + rest]
        if not isinstance(key, slice) or key.step not in (None, 1):
            raise TypeError("NpyFiles takes an integer or a contiguous slice along the sample axis.")
        start, stop, _ = key.indices(self.shape[0])
        parts = []
        for k, f in enumerate(self.files):
            lo, hi = max(start, int(self.starts[k])), min(stop, int(self.starts[k + 1]))
            if lo < hi:
                parts.append(f[(slice(lo - int(self.starts[k]), hi - int(self.starts[k])),) + rest])
        if not parts:
            return np.empty((0, *self.shape[1:]), self.dtype)[(slice(None),) + rest]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        a = self[...]
        return a if dtype is None else a.astype(dtype, copy=False)

    def __repr__(self) -> str:
        return f"NpyFiles({len(self.files)} files, shape={self.shape}, dtype={self.dtype})"


def load_data(path: str | os.PathLike[str]) -> tuple[Any, np.ndarray | None, np.ndarray | None]:
    """``x, mask, lengths`` from a ``.npy`` file (x only, as an :class:`NpyFile`) or an
    ``.npz`` file with an array ``x`` (or a single array) and optional ``mask`` and ``lengths``."""
    p = Path(path)
    if p.suffix.lower() != ".npz":
        return NpyFile(p), None, None
    if not p.is_file():
        raise FileNotFoundError(f"No data file at {str(path)!r}.")
    try:
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if "x" in keys:
                key = "x"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise DataFileError(
                    f"{p.name} holds arrays {keys}; expected one named 'x' (optional: 'mask', 'lengths')."
                )
            x = z[key]
            mask = z["mask"] if "mask" in keys else None
            lengths = z["lengths"] if "lengths" in keys else None
    except DataFileError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise DataFileError(
            f"Could not read data file {p.name} as a NumPy .npz archive ({type(e).__name__}: {e}). "
            "The file may be truncated or corrupt; re-save it with numpy.savez(path, x=..., lengths=...)."
        ) from None
    return x, mask, lengths


# --------------------------------------------------------------------------- batches


def _is_lazy(v: Any) -> bool:
    """An array read on indexing: ``.npy`` file(s) or a Zarr array (kept lazy, read per batch)."""
    if isinstance(v, (NpyFile, NpyFiles)):
        return True
    return type(v).__module__.startswith("zarr.") and hasattr(v, "shape") and hasattr(v, "dtype")


def _to_numpy(v: Any, what: str) -> Any:
    if isinstance(v, np.ndarray) or _is_lazy(v):
        return v
    if hasattr(v, "detach") and hasattr(v, "cpu"):  # a tensor that may need grad or sit on a device
        return np.asarray(v.detach().cpu().numpy())
    if hasattr(v, "numpy"):
        v = v.numpy()
    try:
        a = np.asarray(v)
    except ValueError as e:
        raise InputError(
            f"{what} could not be turned into an array ({e}). Pad sequences to one length and pass "
            "lengths= (or a mask)."
        ) from None
    return a


def _leaves(x: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(x, Mapping):
        return [(f"[{k!r}]", v) for k, v in x.items()]
    if isinstance(x, (list, tuple)):
        return [(f"[{i}]", v) for i, v in enumerate(x)]
    return [("", x)]


def _map(x: Any, fn: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [fn(v) for v in x]
    return fn(x)


def _is_packed(batch: Any) -> bool:
    return type(batch).__name__ == "PackedSequence" and hasattr(batch, "batch_sizes")


def _check_x(x: Any, what: str) -> Any:
    x = _map(x, lambda v: _to_numpy(v, what))
    leaves = _leaves(x)
    if not leaves:
        raise InputError(f"{what} holds no arrays.")
    sizes = set()
    for key, a in leaves:
        if a.ndim < 2:
            raise InputError(
                f"{what}{key} has shape {a.shape}; expected (sample, time, ...) with a batch axis first. "
                "For one sequence use x[None]."
            )
        if a.dtype.kind not in "biuf":
            raise InputError(f"{what}{key} has dtype {a.dtype}; expected numbers.")
        sizes.add(a.shape[0])
    if len(sizes) != 1:
        raise InputError(f"All arrays of {what} must have the same number of samples; got {sorted(sizes)}.")
    if sizes == {0}:
        raise InputError(f"{what} has 0 samples (an empty batch).")
    return x


def unpack_batch(batch: Any, *, mask: Any = None, lengths: Any = None, what: str = "batch") -> Batch:
    """One batch in Keras' conventions → :class:`Batch` (see the module docstring)."""
    if _is_packed(batch):
        raise InputError(
            f"{what} is a PackedSequence; streaming extraction needs padded batches it can split and "
            "store. Pass the padded tensor (torch.nn.utils.rnn.pad_packed_sequence(..., "
            "batch_first=True)) with lengths=."
        )
    if isinstance(batch, Mapping) and "x" in batch and set(batch) <= _STRUCT_KEYS:
        if mask is None:
            mask = batch.get("mask")
        if lengths is None:
            lengths = batch.get("lengths")
        batch = batch["x"]
    elif isinstance(batch, (tuple, list)):
        if not 1 <= len(batch) <= 3:
            raise InputError(
                f"{what} is a {type(batch).__name__} of {len(batch)} items; expected (x,), (x, y) or "
                "(x, y, sample_weight) as in Keras. For a model with several inputs make x itself a "
                "list or dict: ([x1, x2], y)."
            )
        batch = batch[0]
    x = _check_x(batch, what)
    n = int(_leaves(x)[0][1].shape[0])
    m = None if mask is None else np.asarray(_to_numpy(mask, "mask"))
    ln = None if lengths is None else np.asarray(_to_numpy(lengths, "lengths"))
    if m is not None:
        if m.ndim != 2 or m.shape[0] != n:
            raise InputError(f"mask has shape {m.shape}; expected (sample, time) with {n} samples.")
        m = m.astype(bool, copy=False)
    if ln is not None:
        if ln.ndim != 1 or ln.shape[0] != n:
            raise InputError(f"lengths has shape {ln.shape}; expected ({n},), one length per sample.")
        if ln.dtype.kind not in "iu" or (ln.size and int(ln.min()) < 0):
            raise InputError("lengths must be non-negative integers (the number of valid steps).")
    return Batch(x, m, ln)


@dataclass
class Source:
    """Batches to extract; ``total`` samples when known in advance."""

    batches: Iterator[Batch]
    total: int | None


def _is_path_list(data: Any) -> bool:
    return (
        isinstance(data, (list, tuple))
        and bool(data)
        and all(isinstance(p, (str, os.PathLike)) for p in data)
    )


def _resolve(data: Any, mask: Any, lengths: Any) -> tuple[Any, Any, Any]:
    """Open what ``data``, ``mask`` and ``lengths`` name as files (lazily where possible)."""
    if _is_path_list(data):
        data = NpyFiles(data)
    elif isinstance(data, (str, os.PathLike)):
        x, file_mask, file_lengths = load_data(data)
        mask = file_mask if mask is None else mask
        lengths = file_lengths if lengths is None else lengths
        data = x
    if isinstance(mask, (str, os.PathLike)):
        mask = load_array(mask, what="mask")
    if isinstance(lengths, (str, os.PathLike)):
        lengths = load_array(lengths, what="lengths")
    return data, mask, lengths


def open_whole(data: Any, *, mask: Any = None, lengths: Any = None, why: str = "") -> Batch:
    """``data`` (an array, a dict of arrays, a ``.npy`` / ``.npz`` path, a list of ``.npy``
    paths, a Zarr array) as one :class:`Batch` holding every sample; files and Zarr arrays
    stay lazy (read when sliced). Iterables of batches are refused: they cannot be split."""
    data, mask, lengths = _resolve(data, mask, lengths)
    if not _is_whole(data):
        raise InputError(
            f"data is a {type(data).__name__}; {why or 'this needs'} data that can be sliced by sample: "
            "a NumPy or Zarr array (or a dict of them), a .npy/.npz path or a list of .npy paths. "
            "Iterables of batches (loaders, tf.data) cannot be split into chunks; save them to "
            ".npy first, or extract them in one process."
        )
    return unpack_batch(data, mask=mask, lengths=lengths, what="data")


def open_source(data: Any, *, batch_size: int, mask: Any = None, lengths: Any = None) -> Source:
    """Normalise ``data`` (see :func:`rnnlens.extract_to`) into a stream of batches."""
    data, mask, lengths = _resolve(data, mask, lengths)
    if _is_whole(data):
        whole = unpack_batch(data, mask=mask, lengths=lengths, what="data")
        return Source(_slices(whole, batch_size), whole.size)
    if isinstance(data, Iterable):
        return Source(_stream(data, mask, lengths), None)
    raise InputError(
        f"data is a {type(data).__name__}; expected an array, a dict of arrays, a .npy/.npz path, "
        "or an iterable of batches (a tf.data.Dataset, a torch DataLoader, a list of arrays)."
    )


def _is_array(v: Any) -> bool:
    return hasattr(v, "shape") and hasattr(v, "dtype") and not isinstance(v, (str, bytes))


def _is_whole(data: Any) -> bool:
    """One array (or a dict of arrays for several inputs) holding every sample; lists, tuples
    and other iterables are streams of batches."""
    if _is_packed(data):
        return False
    if _is_array(data):
        return True
    if not isinstance(data, Mapping) or not data:
        return False
    if "x" in data and set(data) <= _STRUCT_KEYS:
        x = data["x"]
        if isinstance(x, Mapping):
            return bool(x) and all(_is_array(v) for v in x.values())
        return _is_array(x)
    return all(_is_array(v) for v in data.values())


def _slices(whole: Batch, batch_size: int) -> Iterator[Batch]:
    n = whole.size
    for start in range(0, n, batch_size):
        yield whole.slice(start, min(start + batch_size, n))


def _stream(data: Iterable[Any], mask: Any, lengths: Any) -> Iterator[Batch]:
    offset = 0
    for i, item in enumerate(data):
        b = unpack_batch(item, what=f"batch {i}")
        if mask is not None and b.mask is None:
            b.mask = np.asarray(mask[offset : offset + b.size], dtype=bool)
        if lengths is not None and b.lengths is None:
            b.lengths = np.asarray(lengths[offset : offset + b.size])
        if b.mask is not None or b.lengths is not None:
            b = unpack_batch(b.x, mask=b.mask, lengths=b.lengths, what=f"batch {i}")
        offset += b.size
        yield b


# --------------------------------------------------------------------------- hashing


class Digest:
    """sha256 of a chunk's input, independent of how the chunk's samples were split into batches."""

    def __init__(self) -> None:
        self._parts: dict[str, Any] = {}

    def update(self, b: Batch) -> None:
        items = [(f"x{key}", a) for key, a in _leaves(b.x)]
        if b.mask is not None:
            items.append(("mask", b.mask))
        if b.lengths is not None:
            items.append(("lengths", b.lengths))
        for key, a in items:
            a = np.ascontiguousarray(a)
            h = self._parts.get(key)
            if h is None:
                h = self._parts[key] = hashlib.sha256(f"{a.dtype.str}{a.shape[1:]}".encode())
            h.update(a.data.cast("B") if a.size else b"")

    def hexdigest(self) -> str:
        total = hashlib.sha256()
        for key in sorted(self._parts):
            total.update(key.encode())
            total.update(self._parts[key].digest())
        return total.hexdigest()


def chain(previous: str, chunk_digest: str) -> str:
    """The running input hash after one more chunk."""
    return hashlib.sha256(f"{previous}:{chunk_digest}".encode()).hexdigest()
