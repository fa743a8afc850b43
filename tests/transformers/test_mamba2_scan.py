"""Mamba2's states from the forward pass (rnnlens.adapters.hf_.mamba2_scan) and the check of its
readout against the modeling file's own chunked scan (mamba2_check): every step's state is the
model's own decode cache's far past the checked steps and across many chunks (float32: rtol 1e-5,
atol 1e-6); the mixers of one pass are checked in one helper call whose part for each mixer is
what the helper gives it alone, and a mismatch names its mixer."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from ssm_builders import TOL, decoded_states  # noqa: E402

import rnnlens  # noqa: E402
from rnnlens.adapters.hf_ import mamba2_check  # noqa: E402
from rnnlens.adapters.hf_.intercept import forward_with  # noqa: E402
from rnnlens.adapters.hf_.mamba2_check import CHECK_STEPS, Checks, Pending  # noqa: E402
from rnnlens.adapters.hf_.mamba2_scan import Scan2Recorder  # noqa: E402


def _model(layers: int = 3, seed: int = 4) -> Any:
    torch.manual_seed(seed)
    cfg = transformers.Mamba2Config(
        vocab_size=50, hidden_size=16, state_size=8, num_heads=4, head_dim=8, n_groups=2,
        num_hidden_layers=layers, expand=2, chunk_size=8,
    )  # fmt: skip
    return transformers.Mamba2ForCausalLM(cfg).eval()


def _pending(model: Any, steps: int = 12) -> list[Pending]:
    """Each mixer's check as the forward pass leaves it (run mixer by mixer, as the model does)."""
    checks = Checks()
    x = torch.randn(2, steps, 16, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        for layer in model.backbone.layers:
            m = layer.mixer
            rec = Scan2Recorder(m, f"layer{m.layer_idx}", gates=False, checks=checks)
            x = forward_with(m, rec.replacements(type(m).forward))(m, x)
            assert rec.used
    return checks.pending


def test_every_step_equals_the_decode_cache_far_past_the_checked_steps() -> None:
    """72 steps (9 chunks of the model's, 9x the checked steps), three layers: the one fused
    multiply-add a step stays within float32 rounding of the decode step's multiply and add."""
    model = _model()
    ids = torch.randint(0, 50, (2, 72), generator=torch.Generator().manual_seed(7))
    states = rnnlens.trace(model, ids, fields="state")
    decoded = decoded_states(model, ids, 3)
    for i, name in enumerate(states):
        for t in range(ids.shape[1]):
            np.testing.assert_allclose(states[name].state[:, t], decoded[t][i].numpy(), **TOL)


def test_one_helper_call_checks_every_mixer_of_the_pass() -> None:
    model = _model()
    items = _pending(model)
    assert len(items) == 3 and all(i.hs.shape[1] == CHECK_STEPS for i in items)
    assert mamba2_check.check(items) == 1
    # each mixer's part of the one call is what the helper gives that mixer alone
    together = mamba2_check._Heads([i.mixer for i in items], CHECK_STEPS, 3 * 32)
    inputs = (torch.cat([getattr(i, a) for i in items], dim=-1) for a in ("hs", "B", "C", "dt"))
    with torch.no_grad():
        parts = items[0].helper(together, *inputs, None).split(32, dim=-1)
        for item, part in zip(items, parts, strict=True):
            alone = item.helper(
                mamba2_check._OneChunk(item.mixer, CHECK_STEPS), item.hs, item.B, item.C, item.dt, None
            )
            np.testing.assert_allclose(part.numpy(), alone.numpy(), rtol=1e-6, atol=1e-7)


def test_a_mismatch_names_its_mixer_and_step() -> None:
    items = _pending(_model())
    items[1].readout[1, 5, 3] += 1e-3
    with pytest.raises(rnnlens.ParityError, match=r"'layer1'.*sample 1, step 5 in processing order, unit 3"):
        mamba2_check.check(items)


def test_mixers_that_differ_or_a_helper_that_reads_more_are_checked_apart() -> None:
    model = _model()
    model.backbone.layers[2].mixer.time_step_limit = (0.0, 0.5)  # rnnlens clamps dt as the helper
    items = _pending(model)
    assert mamba2_check.check(items) == 2  # layers 0 and 1 together, 2 alone
    real = items[0].helper

    def reads_more(module: Any, *args: Any, **kwargs: Any) -> Any:
        _ = module.norm  # an attribute the stacked stand-in does not have: each mixer on its own
        return real(module, *args, **kwargs)

    for item in items:
        item.helper = reads_more
    assert mamba2_check.check(items) == 3


def test_a_helper_that_differs_in_one_mixers_heads_names_that_mixer(monkeypatch: Any) -> None:
    """The trace checks after the forward pass; the mixer whose part differs is named."""
    model = _model()
    mod = sys.modules[type(model.backbone.layers[0].mixer).__module__]
    real = mod.mamba2_scan_forward

    def last_unit_off(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        out[..., -1] += 1.0  # in the one call: the last head of the last mixer only
        return out

    monkeypatch.setattr(mod, "mamba2_scan_forward", last_unit_off)
    with pytest.raises(rnnlens.ParityError, match=r"backbone\.layers\.2\.mixer"):
        rnnlens.trace(model, torch.randint(0, 50, (2, 12)))
    assert not any("forward" in vars(m) for m in model.modules())
