"""One writer per store: a second extraction on a store in use is refused with the owner named,
a lock left by a dead process on this host is taken over, the lock is released on every exit."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main
from rnnlens.errors import StoreError, StoreLockedError
from rnnlens.extract.lock import lock_path


def test_a_second_run_on_a_store_in_use_is_refused(fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    first = rnnlens.extract_to(path, fmodel, layers="gru", batch_size=8)  # open: holds the lock
    first.append(fdata[:8])
    with pytest.raises(StoreLockedError, match=rf"in use by another extraction \(pid {os.getpid()} on host"):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    with pytest.raises(StoreLockedError):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8, overwrite=True)
    first.append(fdata[8:])
    first.close()
    assert not lock_path(path).exists()
    # the refused runs changed nothing: the store is the first run's, complete
    stored = rnnlens.open_states(path)
    want = rnnlens.trace(fmodel, fdata, layers="gru", fields="h", batch_size=8)["gru"].h
    np.testing.assert_array_equal(stored["gru"].forward.h[:], want)
    # and the store can be resumed (here: found complete) once the lock is free
    assert rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8).completed_samples == 22


def test_the_lock_is_released_after_an_error(fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    with pytest.raises(rnnlens.LayerNotFoundError):
        rnnlens.extract_to(path, fmodel, fdata, layers="nope")
    assert not lock_path(path).exists()
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    with pytest.raises(rnnlens.io.errors.StoreMismatchError):  # refused in prepare: lock released too
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=4)
    assert not lock_path(path).exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    path = tmp_path / "run.zarr"
    owner = {"pid": dead.pid, "host": socket.gethostname(), "started": time.time() - 60}
    lock_path(path).write_text(json.dumps(owner))
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    assert not lock_path(path).exists()
    # a lock of another host is never guessed dead
    lock_path(path).write_text(json.dumps({**owner, "host": "elsewhere.example"}))
    with pytest.raises(StoreLockedError, match=r"'elsewhere\.example'.*delete .*run\.zarr\.lock"):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    # nor one of another PID namespace on this host name (a container: its pids are not ours)
    lock_path(path).write_text(json.dumps({**owner, "pidns": "pid:[1]"}))
    with pytest.raises(StoreLockedError, match="in use by another extraction"):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    lock_path(path).unlink()
    # one of this namespace whose process is gone is taken over
    from rnnlens.extract.lock import _pid_namespace

    lock_path(path).write_text(json.dumps({**owner, "pidns": _pid_namespace()}))
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8, overwrite=True)
    assert not lock_path(path).exists()


def test_the_cli_refuses_a_double_launch(fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    model_file = tmp_path / "m.keras"
    fmodel.save(model_file)
    data = tmp_path / "x.npy"
    np.save(data, fdata)
    path = tmp_path / "run.zarr"
    held = rnnlens.extract_to(path, fmodel, batch_size=8)  # the first launch, still running
    out = subprocess.run(
        [sys.executable, "-m", "rnnlens.cli", "extract", str(model_file), str(data), "-o", str(path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 2, out.stderr
    assert "in use by another extraction" in out.stderr and "Traceback" not in out.stderr
    held.append(fdata)
    held.close()
    assert rnnlens.open_states(path).attrs["complete"]


def test_a_parent_that_is_a_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "afile").write_text("x")
    with pytest.raises(StoreError, match="is a file, not a directory"):
        rnnlens.extract.lock.StoreLock(tmp_path / "afile" / "sub.zarr").acquire()
    np.save(tmp_path / "x.npy", np.zeros((2, 3, 3), "float32"))
    out = str(tmp_path / "afile" / "s.zarr")
    rc = main(["extract", str(tmp_path / "none.keras"), str(tmp_path / "x.npy"), "-o", out])
    assert rc == 2 and "Traceback" not in capsys.readouterr().err


def test_an_unreadable_lock_is_not_guessed_stale(fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    lock_path(path).write_text("")
    with pytest.raises(StoreLockedError, match="cannot be read"):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    assert lock_path(path).exists()
