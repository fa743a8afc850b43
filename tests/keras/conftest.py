from __future__ import annotations

import pytest

keras = pytest.importorskip("keras")


@pytest.fixture(autouse=True)
def _seed() -> None:
    keras.utils.set_random_seed(1234)
