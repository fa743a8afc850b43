"""``rnnlens plot`` and ``viz.render`` on real stores written by extract_to from a real Keras model:
the picture's pixels hold exactly the stored sample, only that sample's chunk is read, and bad
names or samples are clear errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import rnnlens
from rnnlens.cli import main
from rnnlens.viz.render import render

keras = pytest.importorskip("keras")
pytest.importorskip("zarr")
mpimg = pytest.importorskip("matplotlib.image")

N, T, F = 12, 7, 3
BATCH = 4  # 3 chunks of samples


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    keras.utils.set_random_seed(3)
    inp = keras.Input((None, F))
    b = keras.layers.Bidirectional(keras.layers.LSTM(5, return_sequences=True), name="bilstm")(inp)
    g = keras.layers.GRU(4, return_sequences=True, name="gru")(b)
    return keras.Model(inp, g)


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(N, T, F)).astype("float32")


@pytest.fixture(scope="module")
def store(model, data, tmp_path_factory) -> Path:  # type: ignore[no-untyped-def]
    path = tmp_path_factory.mktemp("plot") / "run.zarr"
    lengths = np.array([T, 5] * (N // 2))
    rnnlens.extract_to(path, model, data, fields=None, batch_size=BATCH, lengths=lengths)
    return path


def _png_ok(path: Path) -> tuple[int, int]:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = mpimg.imread(path)
    h, w = image.shape[:2]
    assert 150 <= w <= 4000 and 100 <= h <= 4000, (w, h)
    assert image[..., :3].std() > 0.05  # not blank
    return w, h


def test_plot_cli_writes_heatmap_of_the_stored_sample(store, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "heat.png"
    assert main(["plot", str(store), "--layer", "gru", "--sample", "6", "-o", str(out)]) == 0
    assert "wrote" in capsys.readouterr().err
    _png_ok(out)


@pytest.mark.parametrize(
    ("field", "direction", "expected"),
    [
        ("h", None, lambda ls: ls.h),
        ("c", "backward", lambda ls: ls.backward.c),
        ("f", "forward", lambda ls: ls.forward.gates["f"]),
    ],
)
def test_heatmap_pixels_equal_stored_values(store, field, direction, expected) -> None:  # type: ignore[no-untyped-def]
    stored = rnnlens.open_states(store)
    fig = render(store, layer="bilstm", sample=5, field=field, direction=direction)
    image = np.asarray(fig.axes[0].images[0].get_array())
    want = np.asarray(expected(stored["bilstm"])[5], dtype=np.float64).T  # unit × time
    assert image.shape == want.shape
    np.testing.assert_array_equal(image, want)  # exact: the stored float32 values, nothing rescaled
    hatched = [p for p in fig.axes[0].patches if p.get_hatch()]
    assert len(hatched) == T - 5  # sample 5 has 5 valid steps


def test_in_memory_states_draw_the_same(model, data, store) -> None:  # type: ignore[no-untyped-def]
    states = rnnlens.trace(model, data, batch_size=BATCH, fields=None)
    mem = np.asarray(render(states, layer="gru", sample=2, field="z").axes[0].images[0].get_array())
    disk = np.asarray(render(store, layer="gru", sample=2, field="z").axes[0].images[0].get_array())
    np.testing.assert_allclose(mem, disk, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(mem, np.asarray(states["gru"].gates["z"][2], np.float64).T)


def test_reads_only_the_chosen_samples_chunk(store, tmp_path, model, data) -> None:  # type: ignore[no-untyped-def]
    import shutil

    copy = tmp_path / "partial.zarr"
    shutil.copytree(store, copy)
    h_dir = copy / "layers" / "gru" / "forward" / "h" / "c"
    for chunk in ("0", "2"):  # samples 0-3 and 8-11: garbage that would fail any read
        for f in (h_dir / chunk).rglob("*"):
            if f.is_file():
                f.write_bytes(b"not a chunk")
    out = tmp_path / "mid.png"
    assert main(["plot", str(copy), "--layer", "gru", "--sample", "5", "-o", str(out)]) == 0
    _png_ok(out)
    with pytest.raises(Exception):  # noqa: B017 - the oracle: reading a corrupted chunk does fail
        render(copy, layer="gru", sample=1)


@pytest.mark.parametrize(
    "args",
    [
        ["--kind", "traces", "--units", "0,2"],
        ["--kind", "pca"],
        ["--kind", "gates"],
        ["--field", "gates", "--direction", "backward"],
        ["--field", "c", "--direction", "forward"],
    ],
)
def test_other_kinds_write_images(store, tmp_path, args) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "k.png"
    assert main(["plot", str(store), "--layer", "bilstm", "--sample", "1", "-o", str(out), *args]) == 0
    _png_ok(out)


def test_traces_plot_the_stored_units(store) -> None:  # type: ignore[no-untyped-def]
    fig = render(store, layer="gru", sample=3, kind="traces", units=[1, 3])
    ys = [line.get_ydata() for line in fig.axes[0].lines[:2]]
    h = rnnlens.open_states(store)["gru"].h[3]
    np.testing.assert_array_equal(ys[0], h[:, 1].astype(np.float64))
    np.testing.assert_array_equal(ys[1], h[:, 3].astype(np.float64))


def test_tokens_file_labels_the_time_axis(store, tmp_path) -> None:  # type: ignore[no-untyped-def]
    tokens = tmp_path / "tokens.txt"
    tokens.write_text("\n".join(f"s{i} a b c d e f" for i in range(N)) + "\n", encoding="utf-8")
    fig = render(store, layer="gru", sample=4, tokens=["s4", "a", "b", "c", "d", "e", "f"])
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["s4", "a", "b", "c", "d", "e", "f"]
    out = tmp_path / "tok.png"
    args = ["plot", str(store), "--layer", "gru", "--sample", "4", "-o", str(out), "--tokens", str(tokens)]
    assert main(args) == 0
    chars = tmp_path / "chars.txt"
    chars.write_text("\n".join("abc(d)" for _ in range(N)) + "\n", encoding="utf-8")
    assert main([*args[:-2], "--tokens", str(chars), "--chars"]) == 0  # 6 chars, padded to 7 steps


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--layer", "gruu"], "Did you mean 'gru'"),
        (["--layer", "gru", "--sample", "12"], "sample 12 is out of range"),
        (["--layer", "gru", "--sample", "-1"], "sample -1 is out of range"),
        (["--layer", "gru", "--field", "c"], "has no c stored"),
        (["--layer", "gru", "--field", "q"], "not a gate"),
        (["--layer", "gru", "--direction", "backward"], "direction(s) ['forward']"),
        (["--layer", "gru", "--units", "a,b"], "--units"),
    ],
)
def test_bad_requests_are_clear_errors(store, tmp_path, capsys, args, message) -> None:  # type: ignore[no-untyped-def]
    assert main(["plot", str(store), "-o", str(tmp_path / "x.png"), *args]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert not (tmp_path / "x.png").exists()


def test_tokens_file_too_short_or_long(store, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    short = tmp_path / "short.txt"
    short.write_text("a b\n", encoding="utf-8")
    base = ["plot", str(store), "--layer", "gru", "-o", str(tmp_path / "x.png"), "--tokens", str(short)]
    assert main([*base, "--sample", "3"]) == 2
    assert "has 1 line(s)" in capsys.readouterr().err
    long = tmp_path / "long.txt"
    long.write_text("a b c d e f g h\n", encoding="utf-8")
    assert main([*base[:-1], str(long)]) == 2
    assert "more than the 7 steps" in capsys.readouterr().err


def test_plot_cli_decompose_map(store, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    """--kind decompose: the time × time map of rnnlens.decompose for the one sample drawn."""
    out = tmp_path / "dec.png"
    args = ["plot", str(store), "--layer", "bilstm", "--sample", "1", "--kind", "decompose", "-o", str(out)]
    assert main([*args, "--direction", "backward"]) == 0
    _png_ok(out)
    fig = render(store, layer="gru", sample=1, kind="decompose", field=None)
    want = rnnlens.decompose(rnnlens.open_states(store), "gru").attention()[1]
    np.testing.assert_array_equal(fig.axes[0].images[0].get_array(), want)
    assert main([*args, "--field", "h", "--direction", "forward"]) != 0  # an LSTM's h: refused
    assert "field='c'" in capsys.readouterr().err
    assert main(args) != 0  # two directions: pick one
    assert "direction=" in capsys.readouterr().err
