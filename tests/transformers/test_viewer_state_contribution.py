"""The viewer's click-to-colour on a state-space mixer: a click on a row of its ``state_norm``
heatmap colours each step by the part of that row's norm it wrote — the projection of its
contribution on the stored state row — checked against the stored state and ``state_norm``
(read here, not rebuilt by rnnlens); a click on its ``h`` or on RWKV-4's stabiliser row says why
it is refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ssm_builders import IDS, mamba, mamba2

import rnnlens
import transformers
from rnnlens.errors import InputError
from rnnlens.viewer.contribution import contribution
from rnnlens.viewer.store import StoreView


@pytest.fixture(scope="module", params=["mamba", "mamba2"])
def store(request, tmp_path_factory) -> tuple[Path, str]:  # type: ignore[no-untyped-def]
    model = mamba() if request.param == "mamba" else mamba2()
    path = tmp_path_factory.mktemp("ssm") / "s.zarr"
    rnnlens.extract_to(path, model, IDS.numpy(), batch_size=2, fields=None)
    return path, "backbone.layers.1.mixer"


@pytest.mark.parametrize(("sample", "t", "row"), [(0, 6, 3), (1, 2, 0), (1, 0, 5)])
def test_a_state_row_is_coloured_by_the_projections_of_its_writes(store, sample, t, row) -> None:  # type: ignore[no-untyped-def]
    path, layer = store
    view = StoreView(path)
    r = contribution(view, layer, "forward", sample=sample, t=t, unit=row, field="state_norm")
    d = rnnlens.open_states(path)[layer].directions["forward"]
    state = np.asarray(d.state[sample, t], np.float64)
    value = state.reshape(-1, state.shape[-1])[row]
    norm = float(np.asarray(d.state_norm[sample, t, row]))
    dec = rnnlens.decompose(rnnlens.open_states(path), layer)
    writes = dec.at(t, samples=slice(sample, sample + 1))[0].reshape(t + 1, -1, state.shape[-1])[:, row]
    expected = writes @ value / np.linalg.norm(value)
    assert r["norm"] is True and r["steps"] == [0, t]
    np.testing.assert_allclose(r["values"][: t + 1], expected, rtol=1e-5, atol=1e-6 * norm)
    assert not any(r["values"][t + 1 :])
    # the projections and the initial term's sum to the row's norm, as stored (float32)
    assert r["total"] == pytest.approx(norm, rel=1e-5, abs=1e-6)
    assert r["total"] == pytest.approx(sum(r["values"]) + r["initial"], rel=1e-12, abs=1e-12)


def test_a_click_on_a_mixers_output_or_past_its_rows_says_why(store) -> None:  # type: ignore[no-untyped-def]
    path, layer = store
    view = StoreView(path)
    with pytest.raises(InputError, match="state_norm heatmap"):
        contribution(view, layer, "forward", sample=0, t=1, unit=0, field="h")
    rows = view.width(layer, "state_norm")
    with pytest.raises(InputError, match=f"unit {rows} is out of range"):
        contribution(view, layer, "forward", sample=0, t=1, unit=rows, field="state_norm")


def test_rwkv4s_stabiliser_row_is_refused(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import torch

    torch.manual_seed(0)
    cfg = transformers.RwkvConfig(vocab_size=50, hidden_size=8, attention_hidden_size=8,
                                  intermediate_size=16, num_hidden_layers=2, context_length=16)  # fmt: skip
    model = transformers.RwkvForCausalLM(cfg).eval()
    path = tmp_path / "s.zarr"
    rnnlens.extract_to(path, model, IDS.numpy(), batch_size=2, fields=None)
    view = StoreView(path)
    layer = next(n for n in view.layer_names() if n.endswith("attention"))
    r = contribution(view, layer, "forward", sample=0, t=4, unit=1, field="state_norm")  # den
    norm = float(np.asarray(rnnlens.open_states(path)[layer].directions["forward"].state_norm[0, 4, 1]))
    assert r["total"] == pytest.approx(norm, rel=1e-5)
    with pytest.raises(InputError, match="not decomposed"):
        contribution(view, layer, "forward", sample=0, t=4, unit=2, field="state_norm")  # max
