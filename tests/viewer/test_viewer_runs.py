"""The vectorised run detection behind match, against a plain loop (hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rnnlens.viewer.store import runs


def loop_runs(on: np.ndarray) -> list[tuple[int, int, int]]:
    out = []
    for r, row in enumerate(on):
        t = 0
        while t < len(row):
            if row[t]:
                start = t
                while t < len(row) and row[t]:
                    t += 1
                out.append((r, start, t))
            else:
                t += 1
    return out


@given(arrays(bool, st.tuples(st.integers(0, 6), st.integers(0, 12))))
def test_runs_equal_a_loop(on: np.ndarray) -> None:
    rows, starts, ends = runs(on)
    assert list(zip(rows.tolist(), starts.tolist(), ends.tolist())) == loop_runs(on)
