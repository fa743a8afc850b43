"""Where a store lives: a local directory, or an fsspec URL (``s3://``, ``gs://``, ``memory://``, …).

Every part of rnnlens that touches a store's files goes through a :class:`Location`, so a
local store keeps its POSIX guarantees (manifest replaced with ``os.replace`` after ``fsync``,
lock hard-linked into place, symbolic links refused) and an object-store one gets the
equivalents its filesystem offers: an object appears whole when its single PUT ends (the
manifest is one object), and the lock is created with an exclusive create (S3's
``If-None-Match: *``, which s3fs sends for mode ``"xb"``). Object stores have no links.

A ``file://`` URL is a local path. A Location pickles as its URL and storage options, so Dask
workers open the same store (the filesystem object is made again where it is used).

Example:
    >>> loc = Location.of("memory://doc/run.zarr")
    >>> loc.local, str(loc)
    (False, 'memory://doc/run.zarr')
    >>> loc.write_atomic("manifest/zarr.json", b"{}")
    >>> loc.read_bytes("manifest/zarr.json"), loc.read_bytes("missing")
    (b'{}', None)
    >>> loc.remove(); loc.exists()
    False
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from ..core.optional import require
from .errors import MissingDependencyError, StoreError

__all__ = ["Location"]


def _fsspec() -> Any:
    return require("fsspec", purpose="Stores at URLs (s3://, gs://, memory://, …)")


class Location:
    """A store's place: ``local`` with a :class:`~pathlib.Path`, or a URL on an fsspec filesystem."""

    def __init__(self, path: str | os.PathLike[str], storage_options: dict[str, Any] | None = None):
        text = os.fspath(path)
        if not isinstance(text, str):
            raise TypeError(f"A store path must be a str or os.PathLike of str; received {path!r}.")
        protocol, rest = _split(text)
        self.storage_options: dict[str, Any] = dict(storage_options or {})
        self.local = protocol in (None, "file", "local")
        if self.local and self.storage_options:
            raise StoreError(
                f"storage_options are for stores at URLs (s3://…, gs://…); {text!r} is a local path. "
                "Drop storage_options, or give the store's URL."
            )
        self.path = Path(rest if protocol else text)
        self.url = text if not self.local else str(self.path)
        self._fs: Any = None

    @classmethod
    def of(cls, path: Any, storage_options: dict[str, Any] | None = None) -> Location:
        """``path`` as a Location (a Location is returned as it is when no options are given)."""
        if isinstance(path, Location):
            if storage_options and storage_options != path.storage_options:
                return cls(path.url, storage_options)
            return path
        return cls(path, storage_options)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Location, (self.url, self.storage_options or None))

    def __str__(self) -> str:
        return self.url

    def __repr__(self) -> str:
        return f"Location({self.url!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Location) and (self.url, self.storage_options) == (
            other.url,
            other.storage_options,
        )

    def __hash__(self) -> int:
        return hash(self.url)

    # ------------------------------------------------------------------ the filesystem

    @property
    def fs(self) -> Any:
        """The fsspec filesystem of a URL (made on first use, then kept)."""
        if self.local:
            raise TypeError("a local Location has no fsspec filesystem; use .path")
        if self._fs is None:
            try:
                fs, root = _fsspec().core.url_to_fs(self.url, **self.storage_options)
            except ImportError as e:  # fsspec names the package of the protocol (s3fs, gcsfs, …)
                hint = " (pip install 'rnnlens[cloud]')" if self.url.lower().startswith("s3") else ""
                raise MissingDependencyError(f"{self.url}: {e}{hint}.") from None
            except (ValueError, TypeError) as e:
                raise StoreError(f"Cannot open {self.url} ({type(e).__name__}: {e}).") from None
            self._fs, self._root = fs, str(root).rstrip("/")
        return self._fs

    @property
    def root(self) -> str:
        """The store's path on its filesystem (no protocol)."""
        self.fs  # noqa: B018 - sets _root
        return self._root

    def key(self, rel: str = "") -> str:
        """The full path of ``rel`` (a ``/``-separated name inside the store) on the filesystem."""
        if self.local:
            return str(self.path / rel) if rel else str(self.path)
        return f"{self.root}/{rel}" if rel else self.root

    def zarr_store(self, *, read_only: bool) -> Any:
        """What ``zarr.open_group`` takes: the local path, or a ``FsspecStore`` on the URL."""
        if self.local:
            return str(self.path)
        import zarr

        try:
            return zarr.storage.FsspecStore.from_url(
                self.url, storage_options=self.storage_options or None, read_only=read_only
            )
        except (ImportError, ValueError, TypeError) as e:
            raise StoreError(f"Cannot open {self.url} as a Zarr store ({type(e).__name__}: {e}).") from None

    def child(self, name: str) -> Location:
        """The place ``name`` inside this one (a recording's per-entry stores)."""
        return Location(self.url.rstrip("/") + "/" + name, self.storage_options or None)

    def sibling(self, suffix: str) -> Location:
        """The place beside the store whose name adds ``suffix`` (its lock: ``run.zarr.lock``)."""
        return Location(self.url.rstrip("/") + suffix, self.storage_options or None)

    def resolved(self) -> Location:
        """The same place named the same in every process: a local path made absolute (Dask
        workers' working directories differ)."""
        return Location(self.path.resolve()) if self.local else self

    # ------------------------------------------------------------------ queries

    def exists(self, rel: str = "") -> bool:
        if self.local:
            return (self.path / rel).exists() if rel else self.path.exists()
        return bool(self._call(self.fs.exists, self.key(rel)))

    def is_file(self) -> bool:
        if self.local:
            return self.path.is_file()
        return bool(self._call(self.fs.isfile, self.root))

    def has_entries(self) -> bool:
        if self.local:
            return self.path.is_dir() and any(self.path.iterdir())
        try:  # one level: a store's top holds zarr.json or manifest/ as soon as it holds anything
            return bool(self._call(self.fs.ls, self.root, detail=False))
        except FileNotFoundError:
            return False

    def files(self, rel: str) -> set[str]:
        """The names (relative to ``rel``) of every file under ``rel``; one listing (object stores
        answer a prefix listing in pages rather than one request per chunk)."""
        if self.local:
            base = self.path / rel
            if not base.is_dir():
                return set()
            return {p.relative_to(base).as_posix() for p in base.rglob("*") if p.is_file() or p.is_symlink()}
        prefix = self.key(rel)
        found = self._call(self.fs.find, prefix, withdirs=False)
        return {str(k)[len(prefix) + 1 :] for k in found if str(k).startswith(prefix + "/")}

    def read_bytes(self, rel: str = "") -> bytes | None:
        """The bytes of ``rel``; None when it does not exist."""
        if self.local:
            try:
                return (self.path / rel).read_bytes() if rel else self.path.read_bytes()
            except (FileNotFoundError, NotADirectoryError):
                return None
        try:
            return bytes(self._call(self.fs.cat_file, self.key(rel)))
        except FileNotFoundError:
            return None

    # ------------------------------------------------------------------ changes

    def mkdir(self) -> None:
        """Create the store's directory (object stores: nothing to create)."""
        if self.local:
            try:
                self.path.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise StoreError(
                    f"Cannot write a store at {self.path}: a part of its path is a file, not a "
                    "directory. Choose another output path."
                ) from None
            except OSError as e:
                raise StoreError(f"Cannot create {self.path} for the store ({e.strerror}).") from None

    def write_atomic(self, rel: str, data: bytes) -> None:
        """Replace ``rel`` so that a reader sees the old bytes or the new, never a part: locally a
        temp file, ``fsync`` and ``os.replace``; on an object store one PUT (objects appear whole)."""
        if not self.local:
            self._call(self.fs.pipe_file, self.key(rel), data)
            return
        target = self.path / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def create_exclusive(self, data: bytes) -> bool:
        """Create this place as a file holding ``data``; False when something is there already.
        Object stores: an exclusive create (``If-None-Match: *`` on S3); a filesystem that has
        none is refused rather than given a lock that two runs could both take."""
        try:
            with self.fs.open(self.root, "xb") as f:
                f.write(data)
            return True
        except FileExistsError:
            return False
        except (NotImplementedError, ValueError) as e:
            raise StoreError(
                f"{self.url}: its filesystem ({type(self.fs).__name__}) cannot create a file only if it is "
                f"absent ({e}), so rnnlens cannot keep a second writer out of this store. Write the store "
                "to a local path or to an object store with conditional writes (S3, GCS)."
            ) from None
        except OSError as e:
            raise StoreError(f"Cannot create {self.url} ({e}).") from None

    def delete(self, rel: str = "") -> None:
        """Remove the file ``rel`` (missing: nothing to do)."""
        if self.local:
            with contextlib.suppress(FileNotFoundError):
                (self.path / rel).unlink() if rel else self.path.unlink()
            return
        with contextlib.suppress(FileNotFoundError):
            self._call(self.fs.rm_file, self.key(rel))

    def remove(self) -> None:
        """Remove the whole store (everything under it)."""
        if self.local:
            if self.path.is_dir() and not self.path.is_symlink():
                shutil.rmtree(self.path)
            else:
                self.path.unlink(missing_ok=True)
            return
        if self.exists():
            with contextlib.suppress(FileNotFoundError):
                self._call(self.fs.rm, self.root, recursive=True)

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """A filesystem call, its failures (no credentials, no bucket, no network) as one
        :class:`StoreError` naming the store; FileNotFoundError is left to the caller. Listings
        are never answered from fsspec's cache: another process (a Dask worker, a killed run)
        may have written since."""
        self.fs.invalidate_cache(self.root)
        try:
            return fn(*args, **kwargs)
        except FileNotFoundError:
            raise
        except (OSError, ValueError, PermissionError) as e:
            raise StoreError(f"{self.url}: {type(e).__name__}: {e}") from None


def _split(text: str) -> tuple[str | None, str]:
    if "://" not in text:
        return None, text
    protocol, rest = text.split("://", 1)
    return protocol.lower(), rest
