"""Plain ``nn.RNN`` calls run in rnnlens' own scan (their states returned by the compiled function,
no host callback per step): what the model gets from them (outputs, final carry, with
``seq_lengths``, ``reverse`` / ``keep_order``, ``time_major``, ``initial_carry``) is what ``nn.RNN``
gives, seen through a second layer fed by them; an ``nn.RNN`` inside the user's own transform
goes to the host's path (refused clearly under a vmap). ``rtol = atol = 1e-5``."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import rnnlens

pytest.importorskip("flax")
import flax.linen as nn
import jax
import jax.numpy as jnp
from flax_nets import h_of

TOL = {"rtol": 1e-5, "atol": 1e-5}
F, U = 3, 4


class _Stacked(nn.Module):
    """A reversed LSTM (kept in order, its final carry returned) feeding a time-major GRU that
    starts from that carry."""

    @nn.compact
    def __call__(self, x: Any, seq_lengths: Any = None) -> Any:
        first = nn.RNN(nn.LSTMCell(U, name="first"), return_carry=True, reverse=True, keep_order=True)
        carry, ys = first(x, seq_lengths=seq_lengths)
        second = nn.RNN(nn.GRUCell(U, name="second"), time_major=True)
        return carry, ys, second(jnp.swapaxes(ys, 0, 1), initial_carry=carry[1])


def _run(fast: bool, model: Any, x: np.ndarray, **kwargs: Any) -> Any:
    from rnnlens.adapters.flax_ import run

    before = {k for k in run._CACHE.get(id(model), {})}
    states = rnnlens.trace(model, x, **kwargs)
    made = [v for k, v in run._CACHE[id(model)].items() if k not in before]
    assert all(c.fast == fast for c in made)
    return states


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_what_the_model_gets_from_rnnlens_scan_is_what_nn_rnn_gives(lengths: Any) -> None:
    x = np.random.default_rng(0).normal(size=(3, 5, F)).astype(np.float32)
    module = _Stacked()
    variables = module.init(jax.random.key(1), x)
    model = module.bind(variables)
    kwargs = {} if lengths is None else {"seq_lengths": np.array(lengths)}
    states = _run(True, model, x, **kwargs)
    carry, ys, out = module.apply(variables, x, **kwargs)
    valid = np.ones(x.shape[:2], bool) if lengths is None else np.arange(5)[None] < np.array(lengths)[:, None]
    np.testing.assert_allclose(states["first"].h[valid], np.asarray(ys)[valid], **TOL)
    np.testing.assert_allclose(states["first"].last(), h_of(carry), **TOL)
    # the second layer ran on the first one's outputs and started from its carry, as nn.RNN gave them
    np.testing.assert_allclose(states["second"].h, np.swapaxes(np.asarray(out), 0, 1), **TOL)
    assert states["first"].spec.directions == ("backward",)


class _InUserVmap(nn.Module):
    """An nn.RNN inside the user's own nn.vmap: its steps cannot leave the compiled function."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        vmapped = nn.vmap(lambda rnn, x: rnn(x), variable_axes={"params": None},
                          split_rngs={"params": False}, in_axes=0)  # fmt: skip
        return vmapped(nn.RNN(nn.GRUCell(U, name="inner")), x)


def test_an_nn_rnn_inside_the_users_vmap_falls_back_on_the_host_and_is_refused_clearly() -> None:
    x = np.random.default_rng(2).normal(size=(2, 3, 5, F)).astype(np.float32)  # vmapped over axis 0
    module = _InUserVmap()
    variables = module.init(jax.random.key(3), x)
    model = module.bind(variables)
    with pytest.raises(rnnlens.UnsupportedModelError, match=r"vmap.*batch axis"):
        rnnlens.trace(model, x)
    from rnnlens.adapters.flax_ import run  # rnnlens' scan was tried, then the host's path

    assert all(not c.fast for c in run._CACHE[id(model)].values())


def test_h_and_c_alone_come_from_the_cell_without_rnnlens_step() -> None:
    from rnnlens.adapters.flax_ import run

    rnn = nn.RNN(nn.OptimizedLSTMCell(U))
    x = np.random.default_rng(5).normal(size=(2, 6, F)).astype(np.float32)
    model = rnn.bind(rnn.init(jax.random.key(5), x))
    full = rnnlens.trace(model, x)["cell"]
    hc = rnnlens.trace(model, x, fields=("h", "c"))["cell"]
    assert hc.fields == ("h", "c")
    np.testing.assert_array_equal(hc.h, full.h)
    np.testing.assert_array_equal(hc.c, full.c)
    assert sorted(c.gates for c in run._CACHE[id(model)].values()) == [False, True]
