"""rnnlens.core.buffers: a large buffer is reused only once nothing refers to it any more."""

from __future__ import annotations

import gc

import numpy as np
import pytest

from rnnlens.core import buffers

torch = pytest.importorskip("torch")

SHAPE = (1024, 1024)  # 4 MiB of float32: at the pool's threshold


@pytest.fixture
def pool(monkeypatch: pytest.MonkeyPatch) -> buffers._Pool:
    p = buffers._Pool(64 << 20)
    monkeypatch.setattr(buffers, "_POOL", p)
    return p


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def test_the_reference_counting_the_pool_relies_on_holds_here(pool: buffers._Pool) -> None:
    assert pool.works


def test_a_dropped_buffer_is_reused(pool: buffers._Pool) -> None:
    a = buffers.empty(SHAPE, np.float32)
    where = _address(a)
    del a
    assert _address(buffers.empty(SHAPE, np.float32)) == where


@pytest.mark.parametrize(
    "keep",
    [
        lambda a: a[3:, 5:],  # a NumPy view
        lambda a: torch.from_numpy(a),  # a tensor sharing the memory
        lambda a: torch.from_numpy(a)[1:].numpy(),  # NumPy of a tensor view
        lambda a: memoryview(a),
        lambda a: np.swapaxes(a, 0, 1)[::2, 3:],
    ],
)
def test_a_buffer_still_referred_to_is_never_handed_out_again(pool: buffers._Pool, keep) -> None:
    a = buffers.empty(SHAPE, np.float32)
    a[:] = 7.0
    held = keep(a)
    where = _address(a)
    del a
    gc.collect()
    b = buffers.empty(SHAPE, np.float32)
    assert _address(b) != where
    b[:] = -1.0
    assert float(np.asarray(held).min()) == 7.0
    del held
    gc.collect()
    assert _address(buffers.empty(SHAPE, np.float32)) == where


def test_other_sizes_small_buffers_and_other_devices_are_not_pooled(pool: buffers._Pool) -> None:
    a = buffers.empty(SHAPE, np.float32)
    where = _address(a)
    del a
    assert _address(buffers.empty((1024, 1025), np.float32)) != where
    small = buffers.empty((8, 8), np.float64)
    assert small.shape == (8, 8) and len(pool.maps) == 2
    from rnnlens.adapters.torch_.emit_loop import _empty

    t = _empty(torch.zeros(1, dtype=torch.bfloat16), 2048, 2048)  # NumPy has no bfloat16
    assert t.dtype == torch.bfloat16 and t.shape == (2048, 2048) and len(pool.maps) == 2
    assert _empty(torch.zeros(1), 2048, 2048).dtype == torch.float32 and len(pool.maps) == 3


def test_the_pool_holds_at_most_its_cap_and_releases_it(pool: buffers._Pool) -> None:
    pool.cap = 10 << 20
    held = [buffers.empty((1 << 20, 1 + k), np.float32) for k in range(4)]  # 4, 8, 12, 16 MiB
    for k, a in enumerate(held):
        a[:] = k  # every array stays valid, kept by the pool or not
    assert sum(len(m) for m in pool.maps) <= pool.cap  # in use or free: what a drop leaves behind
    assert [float(a[0, 0]) for a in held] == [0.0, 1.0, 2.0, 3.0]
    del held, a
    gc.collect()
    free = sum(len(pool.maps[i]) for i in range(len(pool.maps)) if pool._free(i))
    assert 0 < free <= pool.cap
    assert buffers.release_memory() == free
    assert pool.maps == []


def test_no_reuse_when_the_cap_is_zero(pool: buffers._Pool) -> None:
    pool.cap = 0
    a = buffers.empty(SHAPE, np.float32)
    assert a.flags.writeable and a.flags.c_contiguous
    assert pool.maps == []


def test_a_held_trace_is_not_overwritten_by_the_next(pool: buffers._Pool) -> None:
    import rnnlens

    torch.manual_seed(0)
    lstm = torch.nn.LSTM(8, 64, num_layers=2, batch_first=True).eval()
    rng = np.random.default_rng(0)
    x1, x2 = (rng.normal(size=(128, 40, 8)).astype("f4") for _ in range(2))
    first = rnnlens.trace(lstm, x1)
    expected = {f: getattr(first["lstm.l1"], f).copy() for f in ("h", "c")}
    gates = first["lstm.l1"].gates["i"].copy()
    assert len(pool.maps) > 0  # the gate buffers (128·40·256 floats) went through the pool
    second = rnnlens.trace(lstm, x2)
    for f, v in expected.items():
        np.testing.assert_array_equal(getattr(first["lstm.l1"], f), v)
    np.testing.assert_array_equal(first["lstm.l1"].gates["i"], gates)
    assert not np.array_equal(second["lstm.l1"].h, expected["h"])
    del first
    gc.collect()
    third = rnnlens.trace(lstm, x1)  # reuses the first's buffers: the same numbers again
    np.testing.assert_array_equal(third["lstm.l1"].h, expected["h"])
    np.testing.assert_array_equal(third["lstm.l1"].gates["i"], gates)


def test_the_cap_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from rnnlens import RnnLensWarning

    monkeypatch.setenv("RNNLENS_BUFFER_CACHE_MB", "64")
    assert buffers._default_cap() == 64 << 20
    monkeypatch.setenv("RNNLENS_BUFFER_CACHE_MB", "0")
    assert buffers._default_cap() == 0
    monkeypatch.setenv("RNNLENS_BUFFER_CACHE_MB", "lots")
    with pytest.warns(RnnLensWarning, match="not a number of MiB"):
        assert buffers._default_cap() == 0
    monkeypatch.delenv("RNNLENS_BUFFER_CACHE_MB")
    assert 0 < buffers._default_cap() <= 2 << 30
