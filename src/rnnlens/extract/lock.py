"""One writer per store: an exclusive lock file beside the store, held for a whole run.

``run.zarr.lock`` records the owner's pid, host, PID namespace and start time; it is written to
a temporary file and hard-linked into place (atomic on local filesystems and NFS, and never
seen empty). A second run on the same store gets a :class:`~rnnlens.errors.StoreLockedError`
naming the owner. A lock left by a process that no longer runs *on this host, in this PID
namespace* is taken over; one from another host, or from another container sharing the host
name (its pids are not ours to check), is never guessed dead (delete the file by hand once you
know that run is gone).

The lock sits beside the store, not inside it, so that ``overwrite=True`` (which removes the
store) cannot remove another run's lock with it.

On an object store (a store at an fsspec URL) the lock is the object ``run.zarr.lock``,
created with an exclusive create (S3: ``If-None-Match: *``), so exactly one of two runs gets
it. A dead owner's lock is taken over by one process only: it first creates, exclusively, a
marker named after that owner (``run.zarr.lock.<pid>-<start>.takeover``), then checks the lock
still holds that owner before replacing it; the marker is removed when the new owner
releases the lock.

Example:
    >>> import tempfile, os
    >>> from rnnlens.extract.lock import StoreLock
    >>> store = os.path.join(tempfile.mkdtemp(), "run.zarr")
    >>> with StoreLock(store):
    ...     StoreLock(store).acquire()
    Traceback (most recent call last):
    ...
    rnnlens.errors.StoreLockedError: ... is in use by another extraction ...
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import StoreError, StoreLockedError
from ..io.location import Location

__all__ = ["StoreLock", "lock_path"]


def lock_path(store: Any) -> Path:
    p = Location.of(store).path
    return p.with_name(p.name + ".lock")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _pid_namespace() -> str | None:
    """This process's PID namespace (Linux: the inode of /proc/self/ns/pid), else None."""
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


class StoreLock:
    """The lock of one store; a context manager. :meth:`acquire` raises if it is held."""

    def __init__(self, store: Any) -> None:
        self.location = Location.of(store)
        self.store: Any = self.location.path if self.location.local else self.location
        self.path: Any = lock_path(store) if self.location.local else self.location.sibling(".lock")
        self._marker: Location | None = None
        self.held = False
        self._owner = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "pidns": _pid_namespace(),
            "started": time.time(),
        }

    def acquire(self) -> StoreLock:
        if self.location.local:
            self._make_parent()
        for _ in range(5):  # a stale lock taken over by another process meanwhile: look again
            if self._create():
                self.held = True
                return self
            self._drop_marker()  # a take-over of ours that another writer beat
            owner = self._read()
            if owner is None and not self.path.exists():
                continue  # released meanwhile
            if owner is None:  # never empty (written before it is linked into place): not ours
                raise StoreLockedError(
                    f"{self.store} has a lock file {self.path} that cannot be read. If no extraction "
                    "is writing this store, delete it."
                )
            if not self._stale(owner):
                raise StoreLockedError(self._message(owner))
            self._take_over(owner)
        self._drop_marker()
        raise StoreLockedError(f"{self.store}: could not take its lock {self.path}; try again.")

    def _make_parent(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise StoreError(
                f"Cannot write a store at {self.store}: a part of its parent path {self.path.parent} is "
                "a file, not a directory. Choose another output path."
            ) from None
        except OSError as e:
            raise StoreError(f"Cannot create {self.path.parent} for the store ({e.strerror}).") from None

    def _create(self) -> bool:
        """Put a lock file holding our owner record in place atomically (written to a temporary
        file first, then hard-linked: the lock is never seen half-written; on an object store,
        an exclusive create). False if one exists."""
        if not self.location.local:
            return bool(self.path.create_exclusive(json.dumps(self._owner).encode()))
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.{id(self)}.tmp")
        try:
            tmp.write_text(json.dumps(self._owner))
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError as e:
            raise StoreError(f"Cannot create the store's lock {self.path} ({e.strerror}).") from None
        finally:
            with contextlib.suppress(OSError):
                tmp.unlink()

    def _take_over(self, stale: dict[str, Any]) -> None:
        """Move a dead owner's lock aside (one process wins the rename); if what was moved is not
        the lock we judged dead (another process took over meanwhile), put it back. On an object
        store, which has no rename: see :meth:`_take_over_remote`."""
        if not self.location.local:
            self._take_over_remote(stale)
            return
        aside = self.path.with_name(f"{self.path.name}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = json.loads(aside.read_text())
        except (OSError, ValueError):
            moved = None
        if moved != stale:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        with contextlib.suppress(OSError):
            aside.unlink()

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        owner = self._read()
        mine = owner is not None and all(owner.get(k) == self._owner[k] for k in ("pid", "host"))
        if mine and self.location.local:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        elif mine:
            with contextlib.suppress(Exception):  # an unreachable store keeps a lock judged stale later
                self.path.delete()
        self._drop_marker()

    # ------------------------------------------------------------------ object stores

    def _take_over_remote(self, stale: dict[str, Any]) -> None:
        """One process wins the marker of this dead owner (an exclusive create), and only it
        deletes the dead lock; the next :meth:`_create` then puts ours in place. The marker is
        kept while we hold the lock (:meth:`release` removes it)."""
        marker = self.path.sibling(f".{stale.get('pid')}-{stale.get('started')}.takeover")
        if not marker.create_exclusive(json.dumps(self._owner).encode()):
            raise StoreLockedError(
                f"{self.store}: another process is taking over the lock of a run that ended "
                f"(pid {stale.get('pid')}); try again. If none is, delete {marker}."
            )
        self._marker = marker
        if self._read() == stale:  # else changed meanwhile: not the lock judged dead
            self.path.delete()

    def _drop_marker(self) -> None:
        if self._marker is not None:
            with contextlib.suppress(Exception):
                self._marker.delete()
            self._marker = None

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ helpers

    def _read(self) -> dict[str, Any] | None:
        try:
            if self.location.local:
                owner = json.loads(self.path.read_text())
            else:
                raw = self.path.read_bytes()
                owner = None if raw is None else json.loads(raw)
        except (OSError, ValueError):
            return None  # half-written by a process that died at once, or removed meanwhile
        return owner if isinstance(owner, dict) else None

    def _stale(self, owner: dict[str, Any]) -> bool:
        pid = owner.get("pid")
        same_host = owner.get("host") == self._owner["host"]
        # a container sharing the host name has pids of its own: os.kill here says nothing of them
        # (a lock written without one, by an older rnnlens, is judged by host alone as then)
        same_pids = owner.get("pidns", self._owner["pidns"]) == self._owner["pidns"]
        return same_host and same_pids and isinstance(pid, int) and not _alive(pid)

    def _message(self, owner: dict[str, Any]) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(owner.get("started", 0))))
        return (
            f"{self.store} is in use by another extraction (pid {owner.get('pid')} on host "
            f"{owner.get('host')!r}, since {since}). Wait for it to finish, or write to another path. "
            f"If that run is gone, delete {self.path}."
        )
