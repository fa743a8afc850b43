"""Flax: ``rnnlens.trace`` of a linen ``nn.RNN`` (batch 32 × 200 steps, 64 features → 128 units)
against the module's own jitted forward, for OptimizedLSTMCell, LSTMCell and GRUCell; the
intervention (edits applied step by step through the host) beside them.
``SUITES`` plugs the cases into ``python -m benchmarks``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .harness import Case

STEPS, BATCH, FEATURES, UNITS = 200, 32, 64, 128


def cases(cell_name: str) -> list[Case]:
    import flax.linen as nn
    import jax
    import jax.numpy as jnp

    import rnnlens

    rnn = nn.RNN(getattr(nn, cell_name)(UNITS))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(BATCH, STEPS, FEATURES)), jnp.float32)
    variables = rnn.init(jax.random.key(0), x)
    model = rnn.bind(variables)
    forward = jax.jit(rnn.apply)

    def own() -> Any:
        return jax.block_until_ready(forward(variables, x))

    edit = rnnlens.Edit("cell", slice(50, 60), units=[0, 1], scale=0.0)
    return [
        Case("module's own jitted forward (floor)", own),
        Case("rnnlens h", lambda: rnnlens.trace(model, x, fields=("h",))),
        Case("rnnlens h,c,gates", lambda: rnnlens.trace(model, x)),
        Case("rnnlens intervene (host path)", lambda: rnnlens.intervene(model, x, edit)),
    ]


def _suite(cell_name: str) -> Callable[[], list[Case]]:
    return lambda: cases(cell_name)


SUITES: dict[str, Callable[[], list[Case]]] = {
    "flax-optimized-lstm": _suite("OptimizedLSTMCell"),
    "flax-lstm": _suite("LSTMCell"),
    "flax-gru": _suite("GRUCell"),
}
