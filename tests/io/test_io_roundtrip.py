"""Stored states equal the in-memory trace of the same batches, bit for bit; the lazy
reader keeps the States API."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens
from rnnlens.io.stored import LazyArray, StoredStates

keras = pytest.importorskip("keras")


def _assert_equal_states(mem: rnnlens.States, stored: StoredStates) -> None:
    assert list(mem) == list(stored)
    for name in mem:
        for dname, d in mem[name].directions.items():
            sd = stored[name].directions[dname]
            assert sd.fields == d.fields
            for field in d.fields:
                a = d.gates.array if field == "gates" else getattr(d, field)
                b = sd.gates.array[...] if field == "gates" else getattr(sd, field)[...]
                assert a.dtype == b.dtype and a.shape == b.shape, (name, dname, field)
                assert a.tobytes() == b.tobytes(), (name, dname, field)


def test_every_field_round_trips_bitwise(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "run.zarr"
    run = rnnlens.extract_to(out, fmodel, fdata, fields=None, batch_size=8)
    assert run.closed and run.n_samples == 22
    mem = rnnlens.trace(fmodel, fdata, fields=None, batch_size=8)
    stored = rnnlens.open_states(out)
    assert isinstance(stored, rnnlens.States) and stored.complete
    _assert_equal_states(mem, stored)
    assert stored.mask[...].all() and (stored.lengths[...] == 6).all()
    assert stored.backend == mem.backend
    # the States API, lazily: joined directions, one gate, last()
    assert isinstance(stored["bilstm"].h, LazyArray)
    assert stored["bilstm"].h.shape == (22, 6, 8)
    np.testing.assert_array_equal(stored["bilstm"].h[3:5, 1], mem["bilstm"].h[3:5, 1])
    np.testing.assert_array_equal(stored["bilstm"].h[..., 5], mem["bilstm"].h[..., 5])
    np.testing.assert_array_equal(np.asarray(stored["bilstm"].gates["f"]), mem["bilstm"].gates["f"])
    np.testing.assert_array_equal(
        stored["gru"].forward.gates["r"][:, -1], mem["gru"].forward.gates["r"][:, -1]
    )
    np.testing.assert_array_equal(stored["bilstm"].last(), mem["bilstm"].last())
    np.testing.assert_array_equal(stored["bilstm"].backward.last("c"), mem["bilstm"].backward.last("c"))
    loaded = stored.load(slice(8, 16))
    np.testing.assert_array_equal(loaded["gru"].h, mem["gru"].h[8:16])
    assert "22 samples" in repr(stored) and "bilstm" in repr(stored)
    attrs = stored.attrs
    assert attrs["model_name"] == "float_model" and len(attrs["model_sha256"]) == 64
    assert attrs["fields"] is None and attrs["time_order"] == "input"
    assert stored["gru"].fields == ("h", "gates") and stored["bilstm"].fields == ("h", "c", "gates")
    assert attrs["rnnlens_version"] == rnnlens.__version__
    with pytest.raises(rnnlens.FieldNotAvailableError):
        _ = stored["gru"].forward.c


def test_model_mask_and_lengths_are_stored(tmodel, tdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, lengths = tdata
    out = tmp_path / "tok.zarr"
    rnnlens.extract_to(out, tmodel, x, fields=("h", "c"), batch_size=5)
    mem = rnnlens.trace(tmodel, x, fields=("h", "c"), batch_size=5)
    stored = rnnlens.open_states(out)
    _assert_equal_states(mem, stored)
    np.testing.assert_array_equal(stored.mask[...], mem.mask)
    np.testing.assert_array_equal(stored.lengths[...], lengths)
    np.testing.assert_array_equal(stored["lstm_1"].last(), mem["lstm_1"].last())


def test_append_in_a_with_block_with_ragged_batches(tmodel, tdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Batches of any size and length: chunks stay whole, shorter batches are padded."""
    x, lengths = tdata
    out = tmp_path / "stream.zarr"
    with rnnlens.extract_to(out, tmodel, fields=("h", "c"), batch_size=4, max_time=8) as run:
        run.append(x[:3, :5])  # 3 samples, 5 steps
        run.append((x[3:10], np.zeros(7)))  # (x, y) as a Keras data set yields
        run.append({"x": x[10:], "lengths": lengths[10:]})
    stored = rnnlens.open_states(out)
    assert stored["lstm_1"].forward.h.shape == (13, 8, 5)
    assert stored["lstm_1"].forward.h.chunks == (4, 8, 5)
    h = stored["lstm_1"].forward.h[...]
    assert np.isnan(h[:3, 5:]).all() and np.isnan(h[:, 7:]).all()
    mem = rnnlens.trace(tmodel, x[3:10], fields="h")
    # (x[3:10] was traced in pieces split at chunk boundaries: equal up to float rounding)
    np.testing.assert_allclose(h[3:10, :7], mem["lstm_1"].h, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(stored.lengths[...], np.minimum(lengths, [5] * 3 + [7] * 10))


def test_longer_batch_asks_for_max_time(tmodel, tdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    x, _ = tdata
    with (
        pytest.raises(rnnlens.InputError, match="max_time"),
        rnnlens.extract_to(tmp_path / "s.zarr", tmodel, batch_size=4) as run,
    ):
        run.append(x[:4, :3])
        run.append(x[4:8])


def test_iterable_and_tf_dataset(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tf = pytest.importorskip("tensorflow")
    ds = tf.data.Dataset.from_tensor_slices((fdata, np.zeros(len(fdata)))).batch(8)
    rnnlens.extract_to(tmp_path / "tf.zarr", fmodel, ds, layers="gru", batch_size=8)
    rnnlens.extract_to(
        tmp_path / "list.zarr", fmodel, [fdata[:8], fdata[8:16], fdata[16:]], layers="gru", batch_size=8
    )
    mem = rnnlens.trace(fmodel, fdata, layers="gru", fields="h", batch_size=8)
    for name in ("tf.zarr", "list.zarr"):
        stored = rnnlens.open_states(tmp_path / name)
        assert list(stored) == ["gru"]
        assert stored["gru"].h[...].tobytes() == mem["gru"].h.tobytes()


def test_torch_dataloader_of_numpy_samples_as_a_data_source(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    # a list of NumPy samples, collated by the DataLoader into (x, y) tensor batches
    samples = [(fdata[i], np.float32(0)) for i in range(len(fdata))]
    rnnlens.extract_to(
        tmp_path / "torch.zarr", fmodel, DataLoader(samples, batch_size=8), layers=["gru"], batch_size=8
    )
    mem = rnnlens.trace(fmodel, fdata, layers="gru", fields="h", batch_size=8)
    assert rnnlens.open_states(tmp_path / "torch.zarr")["gru"].h[...].tobytes() == mem["gru"].h.tobytes()


def test_model_file_and_npy_memmap(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    model_path = tmp_path / "m.keras"
    fmodel.save(model_path)
    np.save(tmp_path / "x.npy", fdata)
    np.save(tmp_path / "len.npy", np.full(len(fdata), 4))
    run = rnnlens.extract_to(
        tmp_path / "f.zarr", model_path, tmp_path / "x.npy", lengths=tmp_path / "len.npy", batch_size=16
    )
    stored = run.open()
    assert stored.attrs["model_file"] == "m.keras"
    assert stored.attrs["model_sha256"] == rnnlens.adapters.model_digest(fmodel)
    assert (stored.lengths[...] == 4).all() and not stored.mask[:, 4:].any()
    mem = rnnlens.trace(
        fmodel, fdata, fields="h", mask=np.arange(6)[None] < np.full((22, 1), 4), batch_size=16
    )
    np.testing.assert_array_equal(stored["gru"].h[...], mem["gru"].h)


def test_a_torch_module_streams_like_a_keras_model(fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(3, 4, num_layers=2, batch_first=True, bidirectional=True).eval()
    run = rnnlens.extract_to(tmp_path / "t.zarr", lstm, fdata, fields=None, batch_size=8)
    stored = run.open()
    assert stored.backend == "torch" and list(stored) == ["lstm.l0", "lstm.l1"]
    assert stored.attrs["model_sha256"] == rnnlens.adapters.model_digest(lstm)
    for start in (0, 8, 16):
        mem = rnnlens.trace(lstm, torch.from_numpy(fdata[start : start + 8]))
        for name in mem:
            for dname in ("forward", "backward"):
                got = stored[name].directions[dname]
                want = mem[name].directions[dname]
                assert got.c[start : start + 8].tobytes() == want.c.tobytes()
                assert got.gates.array[start : start + 8].tobytes() == want.gates.array.tobytes()


def test_nested_layer_names_with_a_slash(fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def encoder(name: str):  # type: ignore[no-untyped-def]
        lstm = keras.layers.LSTM(3, return_sequences=True, name="lstm")
        return keras.Sequential([keras.Input((None, 3)), lstm], name=name)

    inp = keras.Input((None, 3))
    model = keras.Model(inp, encoder("enc2")(encoder("enc1")(inp)))
    rnnlens.extract_to(tmp_path / "n.zarr", model, fdata[:5], fields=("h", "c"), batch_size=4)
    stored = rnnlens.open_states(tmp_path / "n.zarr")
    assert list(stored) == ["enc1/lstm", "enc2/lstm"]
    assert (tmp_path / "n.zarr" / "layers" / "enc2%2Flstm" / "forward" / "c" / "zarr.json").is_file()
    mem = rnnlens.trace(model, fdata[:5], fields=("h", "c"), batch_size=4)
    assert stored["enc2/lstm"].c[...].tobytes() == mem["enc2/lstm"].c.tobytes()
