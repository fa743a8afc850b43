"""Lazy views index like NumPy; layer names that are not valid node names survive; the
progress bar draws on a terminal only."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from rnnlens.io.layout import decode_name, encode_name
from rnnlens.io.progress import ProgressBar
from rnnlens.io.stored import LazyArray

zarr = pytest.importorskip("zarr")

SHAPE = (5, 4, 3, 6)  # sample, time, gate, unit
BLOCK = np.arange(np.prod(SHAPE), dtype="float32").reshape(SHAPE)


def _stored(block: np.ndarray):  # type: ignore[no-untyped-def]
    arr = zarr.create_array(
        zarr.storage.MemoryStore(), shape=block.shape, chunks=(2, *block.shape[1:]), dtype="f4"
    )
    arr[...] = block
    return arr


GATES, OTHER = _stored(BLOCK), _stored(BLOCK + 1000)


def _index(size: int):  # type: ignore[no-untyped-def]
    ints = st.integers(-size, size - 1)
    slices = st.builds(
        slice,
        st.none() | st.integers(-size, size),
        st.none() | st.integers(-size, size),
        st.none() | st.integers(1, 3),
    )
    return ints | slices


def keys(units: int):  # type: ignore[no-untyped-def]
    return st.tuples(_index(5), _index(4), _index(units)).flatmap(
        lambda k: st.sampled_from(
            [k, k[:1], k[:2], (Ellipsis, k[2]), (k[0], Ellipsis), (k[0], Ellipsis, k[2])]
        )
    )


@given(key=keys(6), wide=keys(12), gate=st.integers(0, 2))
def test_gate_views_and_joined_directions_index_like_numpy(key, wide, gate) -> None:  # type: ignore[no-untyped-def]
    one = LazyArray([(GATES, gate)])
    joined = LazyArray([(GATES, gate), (OTHER, gate)])
    want_one = BLOCK[:, :, gate]
    want_joined = np.concatenate([BLOCK[:, :, gate], BLOCK[:, :, gate] + 1000], axis=-1)
    assert one.shape == want_one.shape and joined.shape == want_joined.shape
    np.testing.assert_array_equal(one[key], want_one[key])
    np.testing.assert_array_equal(joined[wide], want_joined[wide])
    np.testing.assert_array_equal(np.asarray(joined), want_joined)


def test_bad_indices_are_refused() -> None:
    view = LazyArray([(GATES, 0)])
    with pytest.raises(IndexError, match="too many"):
        view[0, 0, 0, 0]
    with pytest.raises(IndexError, match="newaxis"):
        view[None]
    with pytest.raises(IndexError, match="single ellipsis"):
        view[..., 0, ...]


@given(st.text(min_size=1, max_size=12))
def test_layer_names_round_trip_as_node_names(name: str) -> None:
    encoded = encode_name(name)
    assert "/" not in encoded and not encoded.startswith("__") and encoded.strip(".") != ""
    assert decode_name(encoded) == name


def test_progress_bar_draws_on_a_terminal_only() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    tty = Tty()
    bar = ProgressBar(100, stream=tty, label="extract", interval=0)
    bar.update(50)
    bar.close("-> run.zarr")
    text = tty.getvalue()
    assert "\r" in text and "50/100" in text and "%|" in text and text.endswith("-> run.zarr\n")
    pipe = io.StringIO()
    bar = ProgressBar(None, stream=pipe, label="extract", interval=0)
    bar.update(7)
    bar.close()
    assert pipe.getvalue().count("\n") == 1 and pipe.getvalue().startswith("extract: 7 samples in")
