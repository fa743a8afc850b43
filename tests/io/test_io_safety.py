"""A store is never mixed: other model / layers / fields / batch size / data are refused;
overwrite replaces; an interrupted run resumes to exactly the uninterrupted result."""

from __future__ import annotations

import numpy as np
import pytest
from io_helpers import assert_same_store, float_model

import rnnlens
from rnnlens.io import StoreExistsError, StoreMismatchError
from rnnlens.io.layout import read_manifest

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def done(fmodel, fdata, tmp_path_factory):  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("safety") / "run.zarr"
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)
    return path


def test_mismatched_model_layers_fields_batch_size_are_refused(done, fmodel, fdata) -> None:  # type: ignore[no-untyped-def]
    other = keras.models.clone_model(fmodel)  # same architecture, fresh weights
    cases = [
        ((other,), {"layers": "gru", "batch_size": 8}, "weights and architecture"),
        ((fmodel,), {"layers": "bilstm", "batch_size": 8}, "layers"),
        ((fmodel,), {"layers": "gru", "fields": ("h", "gates"), "batch_size": 8}, "fields"),
        ((fmodel,), {"layers": "gru", "batch_size": 4}, "batch_size"),
    ]
    for (model,), kwargs, word in cases:
        with pytest.raises(StoreMismatchError, match=word) as info:
            rnnlens.extract_to(done, model, fdata, **kwargs)
        assert "overwrite=True" in str(info.value)
    with pytest.raises(StoreMismatchError, match="same data in the same order"):
        rnnlens.extract_to(done, fmodel, fdata[::-1].copy(), layers="gru", batch_size=8)
    with pytest.raises(StoreMismatchError, match="ended after 16 samples"):
        rnnlens.extract_to(done, fmodel, fdata[:16], layers="gru", batch_size=8)
    with pytest.raises(StoreExistsError, match="resume=True"):
        rnnlens.extract_to(done, fmodel, fdata, layers="gru", batch_size=8, resume=False)
    # the refusals left the store as it was
    assert rnnlens.open_states(done).complete
    # resuming a complete store with the same everything re-checks and changes nothing
    run = rnnlens.extract_to(done, fmodel, fdata, layers="gru", batch_size=8)
    assert run.completed_samples == 22


def test_overwrite_replaces_and_refuses_foreign_directories(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    rnnlens.extract_to(path, fmodel, fdata[:8], layers="gru", batch_size=8)
    rnnlens.extract_to(path, fmodel, fdata, layers="bilstm", fields=("h", "c"), batch_size=4, overwrite=True)
    stored = rnnlens.open_states(path)
    assert list(stored) == ["bilstm"] and stored["bilstm"].forward.c.shape == (22, 6, 4)
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "cat.jpg").write_bytes(b"meow")
    for overwrite in (False, True):
        with pytest.raises(StoreExistsError, match="not"):
            rnnlens.extract_to(foreign, fmodel, fdata, overwrite=overwrite)
    assert (foreign / "cat.jpg").exists()
    (tmp_path / "file.zarr").write_text("x")
    with pytest.raises(StoreExistsError, match="is a file"):
        rnnlens.extract_to(tmp_path / "file.zarr", fmodel, fdata)


def test_resume_after_an_error_mid_run_equals_an_uninterrupted_run(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    def batches(fail_at: int | None = None):  # type: ignore[no-untyped-def]
        for start in range(0, 22, 3):  # batches of 3 that straddle chunks of 4
            if fail_at is not None and start >= fail_at:
                raise KeyboardInterrupt
            yield fdata[start : start + 3]

    full = tmp_path / "full.zarr"
    rnnlens.extract_to(full, fmodel, batches(), fields=None, batch_size=4)
    part = tmp_path / "part.zarr"
    with pytest.raises(KeyboardInterrupt):
        rnnlens.extract_to(part, fmodel, batches(fail_at=12), fields=None, batch_size=4)
    manifest = read_manifest(part)
    assert manifest is not None and manifest["chunks_done"] == 3 and not manifest["complete"]
    with pytest.warns(rnnlens.RnnLensWarning, match="incomplete"):
        assert not rnnlens.open_states(part).complete
    run = rnnlens.extract_to(part, fmodel, batches(), fields=None, batch_size=4)
    assert run.completed_samples == 12
    assert_same_store(full, part)


def test_an_unused_run_and_a_new_model_object_with_the_same_weights(fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    a = float_model()
    rnnlens.extract_to(path, a, fdata, layers="gru", batch_size=8)
    b = float_model()  # rebuilt with the same seed: same weights, same hash, resumable
    assert rnnlens.extract_to(path, b, fdata, layers="gru", batch_size=8).completed_samples == 22
    with pytest.raises(rnnlens.InputError, match="No data"):
        rnnlens.extract_to(tmp_path / "empty.zarr", a, [], layers="gru")
    with pytest.raises(rnnlens.InputError, match="batch_size"):
        rnnlens.extract_to(tmp_path / "bad.zarr", a, fdata, batch_size=0)
    with pytest.raises(rnnlens.InputError, match=r"run\.append"):
        rnnlens.extract_to(tmp_path / "bad.zarr", a, mask=np.ones((2, 6), bool))


def test_a_run_that_stored_nothing_does_not_pin_its_configuration(fmodel, fdata, tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "run.zarr"
    with pytest.raises(rnnlens.LayerNotFoundError):
        rnnlens.extract_to(path, fmodel, fdata, layers="lstm")  # a typo: fails on the first batch
    assert read_manifest(path)["chunks_done"] == 0
    rnnlens.extract_to(path, fmodel, fdata, layers="gru", batch_size=8)  # the fix is accepted
    assert list(rnnlens.open_states(path)) == ["gru"]
