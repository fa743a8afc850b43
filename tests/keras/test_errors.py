"""Bad input gets an error that says what was wrong, what was expected and what to do."""

from __future__ import annotations

import numpy as np
import pytest

import rnnlens
from keras_helpers import seed_model

keras = pytest.importorskip("keras")
L = keras.layers


@pytest.fixture(scope="module")
def model():  # type: ignore[no-untyped-def]
    inp = keras.Input((5, 3), name="features")
    h = L.LSTM(4, return_sequences=True, name="encoder_lstm")(inp)
    h = L.GRU(4, name="decoder_gru")(h)
    return keras.Model(inp, L.Dense(2, name="head")(h))


X = np.zeros((2, 5, 3), "float32")


def test_no_recurrent_layer() -> None:
    m = keras.Sequential([keras.Input((3,)), L.Dense(2)])
    with pytest.raises(rnnlens.UnsupportedLayerError, match="no recurrent layer"):
        rnnlens.trace(m, np.zeros((1, 3)))


def test_unknown_layer_name_lists_and_suggests(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(KeyError, match="Did you mean 'encoder_lstm'") as info:
        rnnlens.trace(model, X, layers="encoder_lstn")
    assert isinstance(info.value, rnnlens.LayerNotFoundError)
    assert "decoder_gru" in str(info.value)


def test_non_recurrent_layer_by_name(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnlens.UnsupportedLayerError, match="'head' is not a recurrent layer"):
        rnnlens.trace(model, X, layers=["head"])


@pytest.mark.parametrize(
    ("x", "match"),
    [
        (np.zeros((5, 3), "float32"), "rank 2.*expects rank 3.*x\\[None\\]"),
        (np.zeros((2, 6, 3), "float32"), "time size 6.*expects 5"),
        (np.zeros((2, 5, 4), "float32"), "feature size 4.*expects 3"),
        (np.zeros((0, 5, 3), "float32"), "0 samples"),
        (np.array([[["a"] * 3] * 5]), "dtype <U1; expected numbers"),
    ],
)
def test_wrong_input(model, x, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match=match) as info:
        rnnlens.trace(model, x)
    assert isinstance(info.value, rnnlens.InputError)


def test_float_token_ids_are_refused() -> None:
    with pytest.raises(rnnlens.InputError, match=r"non-integer values.*token ids"):
        rnnlens.trace(seed_model(), np.array([[1.5, 2.0, 0.0]]))


def test_field_a_layer_does_not_have(model) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(rnnlens.FieldNotAvailableError, match=r"'decoder_gru'.*has no \['c'\]"):
        rnnlens.trace(model, X, fields=("h", "c"))
    states = rnnlens.trace(model, X, layers="encoder_lstm", fields=("h", "c"))
    with pytest.raises(rnnlens.FieldNotAvailableError, match="'gates'"):
        _ = states["encoder_lstm"].gates
    with pytest.raises(rnnlens.FieldNotAvailableError, match="Did you mean 'gates'"):
        rnnlens.trace(model, X, fields=("h", "gate"))


def test_lookups_on_states(model) -> None:  # type: ignore[no-untyped-def]
    states = rnnlens.trace(model, X)
    with pytest.raises(KeyError, match="Did you mean 'decoder_gru'"):
        _ = states["decoder_gr"]
    with pytest.raises(AttributeError, match="forward"):
        _ = states["decoder_gru"].backward
    with pytest.raises(KeyError, match="Expected one of \\['z', 'r', 'n'\\]"):
        _ = states["decoder_gru"].gates["h"]


def test_models_rnnlens_cannot_see_into() -> None:
    class Sub(keras.Model):
        def __init__(self):  # type: ignore[no-untyped-def]
            super().__init__()
            self.rnn = L.LSTM(2)

        def call(self, x):  # type: ignore[no-untyped-def]
            return self.rnn(x)

    sub = Sub()
    sub(X)
    assert list(rnnlens.trace(sub, X)) == ["rnn"]  # a subclassed model is traced (test_subclassed)
    with pytest.raises(rnnlens.UnsupportedModelError, match="bare LSTM layer"):
        rnnlens.trace(L.LSTM(2), X)
    with pytest.raises(rnnlens.UnsupportedModelError, match="has not been built"):
        rnnlens.trace(keras.Sequential([L.LSTM(2)]), X)
    listing = r"cannot trace a builtins\.object\. Installed adapters: tflite: .*keras: .*torch: .*onnx: "
    with pytest.raises(rnnlens.UnsupportedModelError, match=listing):
        rnnlens.trace(object(), X)


def test_stateful_batch_size_mismatch() -> None:
    inp = keras.Input(batch_shape=(2, 5, 3))
    m = keras.Model(inp, L.LSTM(2, stateful=True, name="s")(inp))
    with pytest.raises(rnnlens.InputError, match="stateful with batch size 2; received 3"):
        rnnlens.trace(m, np.zeros((3, 5, 3), "float32"))


def test_multi_input_count_and_names() -> None:
    a, b = keras.Input((4, 2), name="a"), keras.Input((4, 2), name="b")
    m = keras.Model([a, b], L.LSTM(2, name="l")(L.Concatenate()([a, b])))
    with pytest.raises(rnnlens.InputError, match="takes 2 input"):
        rnnlens.trace(m, [np.zeros((1, 4, 2))])
    with pytest.raises(rnnlens.InputError, match="missing input"):
        rnnlens.trace(m, {"a": np.zeros((1, 4, 2))})
    with pytest.raises(rnnlens.InputError, match="same number of samples"):
        rnnlens.trace(m, [np.zeros((1, 4, 2)), np.zeros((2, 4, 2))])


def test_masks_are_checked_before_the_framework_sees_them() -> None:
    model = keras.Sequential([keras.Input((None, 3)), L.LSTM(2, name="lstm")])
    x = np.zeros((2, 5, 3), "float32")
    for mask, match in (
        (np.ones((2, 4), bool), r"mask has shape \(2, 4\); x has \(sample, time\) = \(2, 5\)"),
        (np.ones((3, 5), bool), r"mask has shape \(3, 5\)"),
        (np.full((2, 5), 2), r"booleans \(or only 0 and 1\); received \[2\]"),
        (np.full((2, 5), 0.5), r"received \[0\.5\]"),
        (np.ones(5, bool), r"\(sample, time\) array of booleans; received shape \(5,\)"),
        (np.array([["a"] * 5] * 2), "booleans"),
    ):
        with pytest.raises(rnnlens.InputError, match=match):
            rnnlens.trace(model, x, mask=mask)
    ok = rnnlens.trace(model, x, mask=np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]))  # 0/1 ints are fine
    assert ok["lstm"].mask.tolist() == [[True] * 3 + [False] * 2, [True] * 5]


def test_options_of_the_wrong_type_are_type_errors_too() -> None:
    model = keras.Sequential([keras.Input((None, 3)), L.GRU(2, name="gru")])
    x = np.zeros((2, 5, 3), "float32")
    for options in ({"batch_size": 2.5}, {"batch_size": "8"}, {"layers": 5}, {"fields": 7}):
        with pytest.raises(rnnlens.OptionTypeError) as info:
            rnnlens.trace(model, x, **options)
        assert isinstance(info.value, TypeError) and isinstance(info.value, ValueError)
    with pytest.raises(rnnlens.OptionError, match="batch_size must be a positive integer"):
        rnnlens.trace(model, x, batch_size=0)
