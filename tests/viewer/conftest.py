"""Fixtures for the viewer tests: a store with planted patterns, a tokens file, a live server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("zarr")

from viewer_helpers import MAX_TIME, N_SAMPLES, UNITS, start

from rnnlens.testing.stores import planted_store
from rnnlens.viewer import ViewerServer


@pytest.fixture(scope="session")
def planted(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("viewer") / "planted.zarr"
    return planted_store(path, n_samples=N_SAMPLES, max_time=MAX_TIME, units=UNITS)


@pytest.fixture(scope="session")
def tokens_file(tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    """Sample s, step t has the token ``s<s>t<t>``; steps the mask drops have none."""
    path = tmp_path_factory.mktemp("tokens") / "tokens.txt"
    lines = []
    for s in range(N_SAMPLES):
        steps = MAX_TIME - 5 if s % 2 else MAX_TIME
        lines.append(" ".join(f"s{s}t{t}" for t in range(steps)))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def server(planted, tokens_file) -> Iterator[ViewerServer]:  # type: ignore[no-untyped-def]
    srv = start(planted, tokens=tokens_file)
    yield srv
    srv.shutdown()
    srv.server_close()
