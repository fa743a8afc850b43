"""The viewer on a store extracted from a real Keras model (bidirectional LSTM with c and gates,
and a GRU): every field and direction the store has is served exactly as stored, and the
pickers list exactly those names."""

from __future__ import annotations

import base64

import numpy as np
import pytest
from viewer_helpers import start

import rnnlens

keras = pytest.importorskip("keras")


@pytest.fixture(scope="module")
def real(tmp_path_factory):  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(5)
    inp = keras.Input((None, 3))
    b = keras.layers.Bidirectional(keras.layers.LSTM(4, return_sequences=True), name="bilstm")(inp)
    g = keras.layers.GRU(3, return_sequences=True, name="gru")(b)
    model = keras.Model(inp, g)
    x = np.random.default_rng(1).normal(size=(9, 6, 3)).astype("float32")
    path = tmp_path_factory.mktemp("real") / "run.zarr"
    rnnlens.extract_to(path, model, x, fields=None, batch_size=4, lengths=np.array([6, 4, 5] * 3))
    server = start(path)
    yield path, server
    server.shutdown()
    server.server_close()


def _get(server, path):  # type: ignore[no-untyped-def]
    import json
    import urllib.request

    with urllib.request.urlopen(server.url + path.lstrip("/"), timeout=10) as r:
        return json.load(r)


def test_meta_lists_the_stores_own_names(real) -> None:  # type: ignore[no-untyped-def]
    _, server = real
    layers = {lay["name"]: lay for lay in _get(server, "/api/meta")["layers"]}
    assert layers["bilstm"]["fields"] == ["h", "c", "i", "f", "g", "o"]
    assert layers["bilstm"]["directions"] == ["forward", "backward"]
    assert layers["gru"]["fields"] == ["h", "z", "r", "n"]


@pytest.mark.parametrize(
    ("layer", "field", "direction", "pick"),
    [
        ("bilstm", "c", "backward", lambda ls: ls.backward.c),
        ("bilstm", "f", "forward", lambda ls: ls.forward.gates["f"]),
        ("bilstm", "h", "backward", lambda ls: ls.backward.h),
        ("gru", "n", "forward", lambda ls: ls.forward.gates["n"]),
    ],
)
def test_every_field_and_direction_is_served_as_stored(real, layer, field, direction, pick) -> None:  # type: ignore[no-untyped-def]
    path, server = real
    for sample in (1, 7):
        body = _get(server, f"/api/sample?layer={layer}&field={field}&direction={direction}&sample={sample}")
        got = np.frombuffer(base64.b64decode(body["values"]), "<f4").reshape(body["time"], body["units"])
        want = np.asarray(pick(rnnlens.open_states(path)[layer])[sample])
        np.testing.assert_array_equal(got, want)  # NaN gates at masked steps included


def test_match_on_a_gate_equals_a_direct_computation(real) -> None:  # type: ignore[no-untyped-def]
    path, server = real
    gate = np.asarray(rnnlens.open_states(path)["bilstm"].forward.gates["i"][...])
    mask = np.asarray(rnnlens.open_states(path).mask[...])
    theta = float(np.nanmedian(gate[:, :, 0]))
    body = _get(
        server,
        f"/api/match?layer=bilstm&field=i&direction=forward&sample=0&t0=0&t1=2&units=0&threshold={theta}&k=500",
    )
    on = (np.nan_to_num(gate[:, :, 0], nan=-np.inf) > theta) & mask
    assert sum(m["length"] for m in body["matches"]) == int(on.sum())
    for m in body["matches"]:
        row = on[m["sample"]]
        assert row[m["start"] : m["end"]].all()
        assert (m["start"] == 0 or not row[m["start"] - 1]) and (m["end"] == len(row) or not row[m["end"]])
