"""rnnlens.record(model, to=dir): a long stream written to stores as it goes, equal to the same
recording held in memory, with only ``flush_every`` calls held at any time."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import rnnlens
from rnnlens.errors import OptionError, RnnLensError

torch = pytest.importorskip("torch")
pytest.importorskip("zarr")
from torch import nn  # noqa: E402


def _loop(m: Any, x: Any, chunk: int, hx: Any = None) -> list[Any]:
    outs = []
    with torch.no_grad():
        for t in range(0, x.shape[1], chunk):
            out, hx = m(x[:, t : t + chunk], hx)
            outs.append(out)
    return outs


@pytest.mark.parametrize(("cls", "chunk", "flush"), [(nn.GRU, 1, 16), (nn.LSTM, 3, 4)])
def test_a_stream_on_disk_equals_the_recording_in_memory(
    tmp_path: Path, cls: Any, chunk: int, flush: int
) -> None:
    torch.manual_seed(0)
    m = cls(3, 5, num_layers=2, batch_first=True).eval()
    x = torch.randn(2, 61, 3)
    with rnnlens.record(m) as mem:
        plain = _loop(m, x, chunk)
    held: list[int] = []
    with rnnlens.record(m, to=tmp_path / "rec", flush_every=flush, chunk_steps=8) as rec:
        impl = rec._impl
        hook = impl.on_call

        def watch() -> None:  # how many calls the recording holds, after each call
            held.append(len(impl.rec.entries))
            hook()

        impl.on_call = watch
        streamed = _loop(m, x, chunk)
    for a, b in zip(plain, streamed):
        assert torch.equal(a, b)  # the model ran as itself
    assert "forward" not in vars(m)
    assert max(held) <= flush + 1  # memory: the calls since the last flush, and the one linking them
    names = list(mem.states)
    assert sorted(rec.stores) == sorted(names) and all(p.exists() for p in rec.stores.values())
    for name in names:
        a, b = mem.states[name], rec.states[name]
        assert b.h.shape == (2, 61, 5)
        np.testing.assert_allclose(np.asarray(b.h[...]), a.h, rtol=0, atol=1e-6)
        if cls is nn.LSTM:
            np.testing.assert_allclose(np.asarray(b.c[...]), a.c, rtol=0, atol=1e-6)
        np.testing.assert_allclose(np.asarray(b.gates.array[...]), a.gates.array, rtol=0, atol=1e-6)
    assert sorted((c.entry, c.start, c.stop, c.name) for c in rec.calls) == sorted(
        (c.entry, c.start, c.stop, c.name) for c in mem.calls
    )
    stored = rnnlens.open_states(rec.stores[names[0]])  # a complete, checked store
    assert stored.complete and stored.lengths[...].tolist() == [61, 61]


def test_a_new_stream_gets_its_own_store_and_a_cell_loop_streams_too(tmp_path: Path) -> None:
    torch.manual_seed(1)
    gru = nn.GRU(3, 4, batch_first=True).eval()
    x = torch.randn(2, 9, 3)
    with rnnlens.record(gru, to=tmp_path / "rec", flush_every=2) as rec:
        _loop(gru, x, 1)
        _loop(gru, x[:, :4], 1)  # starts afresh: a second stream
    assert sorted(rec.stores) == ["gru", "gru#9"]
    assert rec.states["gru"].h.shape == (2, 9, 4) and rec.states["gru#9"].h.shape == (2, 4, 4)
    np.testing.assert_allclose(
        np.asarray(rec.states["gru#9"].h[...]), rnnlens.trace(gru, x[:, :4])["gru"].h, rtol=0, atol=1e-5
    )

    from rnnlens.testing.torch_models import CellLoop

    model = CellLoop(3, 4).eval()
    with torch.no_grad(), rnnlens.record(model, to=tmp_path / "cells", flush_every=3) as rec2:
        model(x)
    want = rnnlens.trace(model, x)["cell"]
    np.testing.assert_allclose(np.asarray(rec2.states["cell"].c[...]), want.c, rtol=0, atol=1e-6)


def test_an_onnx_stream_through_the_session_drop_in(tmp_path: Path) -> None:
    ort = pytest.importorskip("onnxruntime")
    from test_record_onnx import F, H, _streaming_lstm

    model = _streaming_lstm()
    x = np.random.default_rng(1).normal(size=(40, 2, F)).astype("float32")
    plain = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    zeros = np.zeros((1, 2, H), "float32")

    def loop(session: Any) -> list[Any]:
        h = c = zeros
        ys = []
        for chunk in np.split(x, range(3, 40, 3)):
            y, h, c = session.run(None, {"x": chunk, "h": h, "c": c})
            ys.append(y)
        return ys

    expected = loop(plain)
    with rnnlens.record(model, to=tmp_path / "rec", flush_every=4, chunk_steps=5) as rec:
        got = loop(rec)
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    assert list(rec.stores) == ["vad"] and len(rec.calls) == 14 and rec.calls[-1].stop == 40
    whole = rnnlens.trace(model, x, h=zeros, c=zeros)["vad"]
    np.testing.assert_allclose(np.asarray(rec.states["vad"].h[...]), whole.h, rtol=0, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rec.states["vad"].c[...]), whole.c, rtol=0, atol=1e-5)


def test_bad_targets_and_options_are_refused(tmp_path: Path) -> None:
    gru = nn.GRU(3, 4)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(RnnLensError, match="not an empty directory"):
        rnnlens.record(gru, to=tmp_path / "full")
    with pytest.raises(OptionError, match="flush_every"):
        rnnlens.record(gru, to=tmp_path / "a", flush_every=0)
