"""Damage to a store is an error, never data: a flipped byte fails its chunk's crc32c checksum, a
deleted chunk (which zarr would read back as the fill value: NaN states, an all-False mask) is
found when the store is opened."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main
from rnnlens.errors import StoreError


@pytest.fixture
def store(fmodel, fdata, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", fields=("h",), batch_size=8)
    return path


def _chunks(store: Path, key: str) -> list[Path]:
    return sorted(p for p in (store / key / "c").rglob("*") if p.is_file())


def test_every_chunk_is_written_and_checksummed(store: Path, fdata: np.ndarray) -> None:
    assert len(_chunks(store, "mask")) == 3  # 22 samples in chunks of 8, an all-True mask chunk too
    meta = (store / "mask" / "zarr.json").read_text()
    assert "crc32c" in meta


def test_a_flipped_byte_is_an_error_not_data(store: Path) -> None:
    chunk = _chunks(store, "layers/gru/forward/h")[1]
    raw = bytearray(chunk.read_bytes())
    raw[10] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    states = rnnlens.open_states(store)
    states["gru"].forward.h[:8]  # an undamaged chunk still reads
    with pytest.raises(ValueError, match="checksum"):
        states["gru"].forward.h[8:16]


@pytest.mark.parametrize("key", ["mask", "layers/gru/forward/h"])
def test_a_deleted_chunk_is_found_on_open(store: Path, key: str, capsys: pytest.CaptureFixture[str]) -> None:
    _chunks(store, key)[-1].unlink()
    with pytest.raises(StoreError, match=rf"array '{key}' is missing 1 of its 3 chunks"):
        rnnlens.open_states(store)
    assert rnnlens.open_states(store, verify=False)["gru"].forward.h.shape[0] == 22
    assert main(["export", str(store), "-o", str(store.parent / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "missing 1 of its 3 chunks" in err and "Traceback" not in err


def test_verify_checks_every_chunk(store: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["verify", str(store)]) == 0
    assert "ok, 9 chunks in 3 arrays checked" in capsys.readouterr().err
    chunk = _chunks(store, "mask")[0]
    raw = bytearray(chunk.read_bytes())
    raw[0] ^= 0x01
    chunk.write_bytes(bytes(raw))
    assert main(["verify", str(store)]) == 2
    assert "chunk 0 of array 'mask'" in capsys.readouterr().err


def test_resume_rewrites_deleted_chunks_from_the_same_data(store: Path, fmodel, fdata) -> None:  # type: ignore[no-untyped-def]
    before = rnnlens.open_states(store)["gru"].forward.h[:]
    _chunks(store, "layers/gru/forward/h")[1].unlink()
    _chunks(store, "mask")[2].unlink()
    # other data: refused, and nothing is written (the rewritten chunks wait for the input check)
    with pytest.raises(rnnlens.io.errors.StoreMismatchError, match="same data in the same order"):
        rnnlens.extract_to(store, fmodel, fdata[::-1].copy(), layers="gru", fields=("h",), batch_size=8)
    assert len(_chunks(store, "layers/gru/forward/h")) == 2
    run = rnnlens.extract_to(store, fmodel, fdata, layers="gru", fields=("h",), batch_size=8)
    assert run.completed_samples == 22
    assert main(["verify", str(store)]) == 0
    np.testing.assert_array_equal(rnnlens.open_states(store)["gru"].forward.h[:], before)


def test_resume_rewrites_corrupt_and_linked_chunks(store: Path, fmodel, fdata, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A rerun of a complete store does not call flipped bytes or a linked chunk complete."""
    before = rnnlens.open_states(store)["gru"].forward.h[:]
    chunk = _chunks(store, "layers/gru/forward/h")[0]
    raw = bytearray(chunk.read_bytes())
    raw[12] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    linked = _chunks(store, "mask")[1]
    linked.unlink()
    linked.symlink_to(secret)
    run = rnnlens.extract_to(store, fmodel, fdata, layers="gru", fields=("h",), batch_size=8)
    assert run.completed_samples == 22
    assert secret.read_bytes() == b"not yours" and not linked.is_symlink()
    assert main(["verify", str(store)]) == 0
    np.testing.assert_array_equal(rnnlens.open_states(store)["gru"].forward.h[:], before)


def test_damaged_chunks_past_the_memory_bound_ask_for_overwrite(  # type: ignore[no-untyped-def]
    fmodel, fdata, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Damaged chunks are held in memory until the input is verified: the bound is on bytes."""
    import rnnlens.extract.run as run_module

    path = tmp_path / "small.zarr"
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", fields=("h",), batch_size=2)
    for chunk in _chunks(path, "layers/gru/forward/h"):
        chunk.unlink()
    monkeypatch.setattr(run_module, "_MAX_REDO_BYTES", 1000)  # the chunks take more than this
    with pytest.raises(StoreError, match=r"would hold .* MiB in memory"):
        rnnlens.extract_to(path, fmodel, fdata, layers="gru", fields=("h",), batch_size=2)
    monkeypatch.undo()  # within the bound: every chunk is rewritten
    run = rnnlens.extract_to(path, fmodel, fdata, layers="gru", fields=("h",), batch_size=2)
    assert run.completed_samples == len(fdata)
    assert main(["verify", str(path)]) == 0


def test_a_chunk_replaced_by_a_symlink_is_refused(store: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.bin"
    secret.write_bytes(b"not yours")
    chunk = _chunks(store, "layers/gru/forward/h")[0]
    chunk.unlink()
    chunk.symlink_to(secret)
    with pytest.raises(StoreError, match="symbolic link"):
        rnnlens.open_states(store)
    from rnnlens.viewer.store import StoreView

    with pytest.raises(StoreError, match="symbolic link"):
        StoreView(store)
