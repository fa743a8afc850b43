"""SIGKILL an extraction at a random moment, rerun it: the store equals an uninterrupted run
bit for bit (every array).

Each child process imports TensorFlow (seconds), so by default one kill and one resume run;
``RNNLENS_KILL_ROUNDS=5`` kills five times in a row before the final run.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from io_helpers import assert_same_store

import rnnlens
from rnnlens.io.layout import read_manifest

keras = pytest.importorskip("keras")

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")

CHILD = textwrap.dedent(
    """
    import os, sys
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras  # noqa: F401  (import TensorFlow before saying "ready")
    import rnnlens

    store, model, data = sys.argv[1:4]

    def report(done, total):
        print(f"progress {done}", flush=True)

    print("ready", flush=True)
    rnnlens.extract_to(store, model, data, fields=None, batch_size=4, progress=report)
    print("finished", flush=True)
    """
)

N_BATCHES = 12


def _child(tmp_path, store):  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [
            sys.executable,
            str(tmp_path / "child.py"),
            str(store),
            str(tmp_path / "m.keras"),
            str(tmp_path / "x.npy"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=tmp_path,
    )


def _kill_at(proc, target: int, delay: float) -> str:  # type: ignore[no-untyped-def]
    """Kill ``proc`` ``delay`` seconds after it reports ``progress target`` (or after "ready"
    when ``target`` is 0); return what it had reported."""
    want = "ready" if target == 0 else f"progress {target * 4}"
    seen = ""
    assert proc.stdout is not None
    for line in proc.stdout:
        seen = line.strip()
        if seen in (want, "finished"):
            break
    time.sleep(delay)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return seen


def test_sigkill_at_random_points_then_resume_equals_uninterrupted(fmodel, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(int(os.environ.get("RNNLENS_KILL_SEED", time.time_ns() % 2**32)))
    fmodel.save(tmp_path / "m.keras")
    x = np.random.default_rng(5).normal(size=(N_BATCHES * 4 - 2, 6, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "child.py").write_text(CHILD)

    reference = tmp_path / "reference.zarr"
    rnnlens.extract_to(reference, tmp_path / "m.keras", tmp_path / "x.npy", fields=None, batch_size=4)

    store = tmp_path / "killed.zarr"
    history = []
    for _ in range(int(os.environ.get("RNNLENS_KILL_ROUNDS", "1"))):
        target = int(rng.integers(0, N_BATCHES))
        delay = float(rng.uniform(0, 0.6 if target == 0 else 0.05))
        seen = _kill_at(_child(tmp_path, store), target, delay)
        manifest = read_manifest(store) if store.exists() else None
        done = None if manifest is None else manifest["chunks_done"]
        history.append((target, round(delay, 3), seen, done))
        if manifest is not None:
            assert 0 <= manifest["chunks_done"] <= N_BATCHES
    print("kill history (target, delay, last report, chunks done):", history)
    final = _child(tmp_path, store)
    out, _ = final.communicate(timeout=120)
    assert final.returncode == 0 and "finished" in out, (history, out)
    assert_same_store(reference, store)
    assert rnnlens.open_states(store).complete, history
