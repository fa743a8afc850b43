"""Names a filesystem or Zarr would refuse are made safe (the real name kept in attributes), and
model archives are bounded before anything is decompressed."""

from __future__ import annotations

import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

import rnnlens

keras = pytest.importorskip("keras")


@pytest.mark.parametrize("name", ["zarr.json", "n" * 300])
def test_awkward_layer_names_round_trip(name: str, tmp_path: Path) -> None:
    if "." in name and keras.backend.backend() == "torch":
        pytest.skip("Keras' torch backend refuses '.' in a layer name (torch parameter names)")
    model = keras.Sequential([keras.Input((None, 2)), keras.layers.GRU(3, return_sequences=True, name=name)])
    x = np.random.default_rng(0).normal(size=(5, 4, 2)).astype("float32")
    path = tmp_path / "run.zarr"
    rnnlens.extract_to(path, model, x, batch_size=4)
    stored = rnnlens.open_states(path)
    assert list(stored) == [name]
    np.testing.assert_array_equal(stored[name].forward.h[:], rnnlens.trace(model, x, fields="h")[name].h)


@pytest.mark.parametrize("suffix", [".keras", ".pt"])
def test_a_zip_bomb_is_refused_fast_with_little_memory(suffix: str, tmp_path: Path) -> None:
    bomb = tmp_path / f"bomb{suffix}"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z:
        for k in range(3):
            z.writestr(f"m{k}.bin", b"\0" * (256 << 20))  # 768 MiB of zeros in under 1 MB
    assert bomb.stat().st_size < 8 << 20
    tracemalloc.start()
    start = time.perf_counter()
    with pytest.raises(rnnlens.ModelFileError, match="zip bomb"):
        rnnlens.load_model(bomb)
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert seconds < 5 and peak < 64 << 20
