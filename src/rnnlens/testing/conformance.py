"""The adapter conformance suite: what every adapter must do, written once.

Subclass :class:`AdapterTests` in a test module (as zarr's ``StoreTests``) and fill in the
hooks; pytest collects the ``test_*`` methods. The suite checks, against real models of the
adapter's framework:

* parity with the independent NumPy reference (:func:`rnnlens.testing.reference_rnn`) for
  every kind and direction the adapter builds, using weights the *subclass* reads from the
  model its own way (so the adapter's weight conversion is checked, not reused);
* ``last()`` against the model's own final state;
* the model is untouched (its digest, so weights and architecture, before and after);
* ``describe`` agrees with ``trace``; the registry picks the adapter;
* every bad option is an :class:`~rnnlens.errors.RnnLensError`, the same on every framework;
* a store round trip (``extract_to`` + ``open_states``) equals ``trace``, where zarr is installed;
* masks (valid steps carried, gates NaN) where the subclass can make a masked input;
* malformed inputs, fixed and fuzzed by hypothesis (rank, sizes, dtype, NaN, masks, NumPy or
  the framework's tensors: :meth:`AdapterTests.native`): an ``RnnLensError`` or states.

Tolerance: float32 models against the float64 reference, ``rtol = atol = 1e-5``.

Example (a subclass; see ``tests/*/test_conformance.py`` for the three built-in adapters):

    class TestMyAdapter(AdapterTests):
        adapter_name = "mine"
        def build(self, kind, *, bidirectional, features, units, seed): ...
        def inputs(self, model, x): ...
        def own_last(self, model, x): ...
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from rnnlens import adapters

from .reference import reference_rnn

__all__ = ["ATOL", "RTOL", "AdapterTests", "Built"]

RTOL = ATOL = 1e-5


@dataclass
class Built:
    """A model a subclass built: the traced layer's name and, per direction, the keyword
    arguments of :func:`~rnnlens.testing.reference_rnn` (kernel, recurrent_kernel, bias, ...,
    ``reverse`` for a backward direction) read from the model by the subclass."""

    model: Any
    layer: str
    reference: dict[str, dict[str, Any]] = field(default_factory=dict)


class AdapterTests:
    """Subclass and fill in the hooks; see the module docstring."""

    #: the adapter's registry name
    adapter_name: ClassVar[str] = ""
    #: kinds :meth:`build` can make
    kinds: ClassVar[Sequence[str]] = ("lstm", "gru", "simple")
    #: whether :meth:`build` can make bidirectional layers
    bidirectional: ClassVar[bool] = True
    features, units, samples, steps = 3, 4, 5, 6

    # ------------------------------------------------------------------ hooks

    def build(self, kind: str, *, bidirectional: bool, features: int, units: int, seed: int) -> Built:
        raise NotImplementedError

    def inputs(self, model: Any, x: np.ndarray) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """``(args, kwargs)`` of :func:`rnnlens.trace` for the float32 input ``x`` (sample, time, feature)."""
        return (x,), {}

    def own_last(self, model: Any, layer: str, x: np.ndarray) -> np.ndarray | None:
        """The model's own final state of ``layer`` (sample, units × directions), or None."""
        return None

    def masked(
        self, model: Any, x: np.ndarray, lengths: np.ndarray
    ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
        """``(args, kwargs)`` (kwargs may hold ``mask=``) for ``x`` whose sample ``i`` is valid
        for its first ``lengths[i]`` steps, or None where the adapter takes no masks."""
        return None

    def store_model(self, model: Any, tmp: Path) -> Any:
        """What :func:`rnnlens.extract_to` is given for ``model`` (the model, or a file): a model
        that takes the data file's array as its one input."""
        return model

    # ------------------------------------------------------------------ helpers

    def _x(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.normal(size=(self.samples, self.steps, self.features)).astype(np.float32)

    def _cases(self) -> list[tuple[str, bool]]:
        return [(k, b) for k in self.kinds for b in ((False, True) if self.bidirectional else (False,))]

    def _built(self, kind: str, bidirectional: bool, seed: int = 1) -> Built:
        return self.build(
            kind, bidirectional=bidirectional, features=self.features, units=self.units, seed=seed
        )

    @staticmethod
    def _trace(model: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any], **options: Any) -> Any:
        import rnnlens

        x, *rest = args
        return rnnlens.trace(model, x, *rest, **kwargs, **options)

    # ------------------------------------------------------------------ the suite

    def test_registry_picks_the_adapter(self) -> None:
        built = self._built(self.kinds[0], False)
        assert adapters.for_model(built.model).name == self.adapter_name

    def test_parity_with_the_numpy_reference(self) -> None:
        for kind, bidi in self._cases():
            built = self._built(kind, bidi)
            x = self._x()
            args, kwargs = self.inputs(built.model, x)
            ls = self._trace(built.model, args, kwargs, layers=built.layer)[built.layer]
            assert set(ls.directions) == set(built.reference), (kind, bidi)
            for dname, ref_kwargs in built.reference.items():
                want = reference_rnn(kind, x, **ref_kwargs)
                d = ls.directions[dname]
                np.testing.assert_allclose(d.h, want["h"], rtol=RTOL, atol=ATOL, err_msg=f"{kind} {dname} h")
                if "c" in want:
                    np.testing.assert_allclose(d.c, want["c"], rtol=RTOL, atol=ATOL, err_msg=f"{kind} c")
                if "gates" in want:
                    np.testing.assert_allclose(
                        d.gates.array, want["gates"], rtol=RTOL, atol=ATOL, err_msg=f"{kind} gates"
                    )

    def test_last_is_the_models_own_final_state(self) -> None:
        for kind, bidi in self._cases():
            built = self._built(kind, bidi)
            x = self._x(2)
            own = self.own_last(built.model, built.layer, x)
            if own is None:
                continue
            args, kwargs = self.inputs(built.model, x)
            ls = self._trace(built.model, args, kwargs, layers=built.layer, fields="h")[built.layer]
            np.testing.assert_allclose(ls.last(), own, rtol=RTOL, atol=ATOL, err_msg=f"{kind} bidi={bidi}")

    def test_the_model_is_untouched(self) -> None:
        built = self._built(self.kinds[0], self.bidirectional)
        before = adapters.model_digest(built.model)
        args, kwargs = self.inputs(built.model, self._x())
        self._trace(built.model, args, kwargs)
        assert adapters.model_digest(built.model) == before

    def test_describe_agrees_with_trace(self) -> None:
        import rnnlens

        built = self._built(self.kinds[-1], False)
        specs = {s.name: s for s in rnnlens.describe(built.model)}
        args, kwargs = self.inputs(built.model, self._x())
        states = self._trace(built.model, args, kwargs)
        assert built.layer in specs and built.layer in states
        for name, ls in states.items():
            assert ls.spec.kind == specs[name].kind and ls.spec.units == specs[name].units

    def test_every_bad_option_is_an_rnnlens_error(self) -> None:
        import rnnlens

        built = self._built(self.kinds[0], False)
        args, kwargs = self.inputs(built.model, self._x())
        bad: list[dict[str, Any]] = [
            {"layers": []},
            {"layers": 5},
            {"layers": [built.layer, 3]},
            {"fields": 7},
            {"fields": []},
            {"fields": ["h", "cell"]},
            {"batch_size": 2.5},
            {"batch_size": "8"},
            {"batch_size": 0},
            {"batch_size": True},
            {"strategy": "fast"},
            {"strategy": None},
        ]
        for options in bad:
            try:
                self._trace(built.model, args, kwargs, **options)
            except rnnlens.RnnLensError:
                continue
            raise AssertionError(f"{options} was accepted")
        try:
            self._trace(built.model, args, kwargs, layers=built.layer + "x")
        except rnnlens.LayerNotFoundError as e:
            assert built.layer in str(e)
        else:
            raise AssertionError("an unknown layer name was accepted")

    def test_masked_steps_carry_the_state(self) -> None:
        built = self._built(self.kinds[0], False)
        x = self._x(3)
        lengths = np.array([self.steps, 1, 3, self.steps - 1, 2][: self.samples])
        inputs = self.masked(built.model, x, lengths)
        if inputs is None:
            return
        ls = self._trace(built.model, *inputs)[built.layer]
        valid = np.arange(self.steps)[None, :] < lengths[:, None]
        assert ls.mask is not None and (ls.mask == valid).all()
        h = ls.forward.h
        for i, n in enumerate(lengths):
            if 0 < n < self.steps:
                np.testing.assert_array_equal(h[i, n:], np.broadcast_to(h[i, n - 1], h[i, n:].shape))
        ref = reference_rnn(self.kinds[0], x, mask=valid, **built.reference["forward"])
        np.testing.assert_allclose(h, ref["h"], rtol=RTOL, atol=ATOL)

    def test_store_round_trip_equals_trace(self, tmp_path: Path) -> None:
        if importlib.util.find_spec("zarr") is None:
            return
        import rnnlens

        built = self._built(self.kinds[0], self.bidirectional)
        x = self._x(4)
        data = tmp_path / "x.npy"
        np.save(data, x)
        store = os.fspath(tmp_path / "run.zarr")
        model = self.store_model(built.model, tmp_path)
        rnnlens.extract_to(store, model, os.fspath(data), fields=None, batch_size=self.samples)
        stored = rnnlens.open_states(store)
        direct = rnnlens.trace(model, x)
        assert list(stored) == list(direct)
        for name, ls in direct.items():
            for dname, d in ls.directions.items():
                np.testing.assert_array_equal(stored[name].directions[dname].h[:], d.h)

    def test_malformed_inputs_give_an_rnnlens_error_or_states(self) -> None:
        """Wrong rank, sizes, dtypes (strings, objects, bools), empty batches or steps, NaN: each
        is an :class:`~rnnlens.errors.RnnLensError` or a result (NaN in, NaN out), never a
        framework's own exception. NumPy is passed as is (adapters convert or refuse it)."""
        import rnnlens

        built = self._built(self.kinds[0], False)
        f, n, t = self.features, 2, 3
        nan = np.full((n, t, f), np.nan, np.float32)
        cases: list[Any] = [
            np.zeros((n, f), np.float32),  # no time axis
            np.zeros((n, t, f, 2), np.float32),  # one axis too many
            np.zeros((n, t, f + 1), np.float32),  # other features
            np.zeros((0, t, f), np.float32),  # no samples
            np.zeros((n, t, f)).astype(str),  # strings
            np.zeros((n, t, f), dtype=object),
            np.zeros((n, t, f), bool),
            np.zeros((n, t, f), np.float64),
            [[1.0, 2.0], [3.0]],  # ragged
            None,
            nan,
        ]
        for x in cases:
            try:
                states = rnnlens.trace(built.model, x)
            except rnnlens.RnnLensError:
                continue
            except Exception as e:
                shown = getattr(x, "shape", x)
                raise AssertionError(f"input {shown!r} raised {type(e).__name__}: {e}") from e
            assert len(states) >= 1

    #: hook: how a fuzzed NumPy input is also given in the framework's own type (a torch
    #: tensor, a ``tf.Tensor``), or None where there is none; both forms are fuzzed
    def native(self, x: np.ndarray) -> Any:
        return None

    def test_fuzzed_inputs_and_masks_give_an_rnnlens_error_or_states(self) -> None:
        """Hypothesis draws the input's rank, sizes (empty too), dtype and values (NaN, inf),
        as NumPy, a nested list or the framework's own tensor, with a ``mask=`` of any shape
        and dtype or none: each trace is an :class:`~rnnlens.errors.RnnLensError` or states
        of the right shape, never another exception."""
        try:
            from hypothesis import HealthCheck, given, settings
            from hypothesis import strategies as st
            from hypothesis.extra import numpy as hnp
        except ImportError:  # the suite runs without hypothesis too
            return
        import rnnlens

        built = self._built(self.kinds[0], False)
        f = self.features
        dtypes = st.sampled_from(
            ["float32", "float64", "float16", "int64", "int8", "bool", "U3", "O", "complex64"]
        )
        shapes = st.one_of(
            st.just((2, 3, f)),
            hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=f + 1),
        )

        def arrays(dtype: str, shape: tuple[int, ...]) -> Any:
            if dtype == "O":
                return st.just(np.zeros(shape, dtype=object))
            if dtype == "U3":
                return st.just(np.full(shape, "ab"))
            return hnp.arrays(np.dtype(dtype), shape)  # floats include NaN and inf

        inputs = st.tuples(dtypes, shapes).flatmap(lambda ds: arrays(*ds))
        masks = st.one_of(
            st.none(),
            st.tuples(
                st.sampled_from(["bool", "int64", "float32"]),
                st.one_of(st.just((2, 3)), hnp.array_shapes(max_dims=3, max_side=4)),
            ).flatmap(lambda ds: arrays(*ds)),
        )
        forms = st.sampled_from(["numpy", "list", "native"])

        @settings(max_examples=40, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
        @given(inputs, masks, forms)
        def fuzz(x: np.ndarray, mask: Any, form: str) -> None:
            given_x: Any = x
            if form == "list":
                given_x = x.tolist()
            elif form == "native":
                native = self.native(x)
                given_x = x if native is None else native
            options = {} if mask is None else {"mask": mask}
            try:
                states = rnnlens.trace(built.model, given_x, **options)
            except rnnlens.RnnLensError:
                return
            except Exception as e:
                shown = None if mask is None else (mask.dtype, mask.shape)
                raise AssertionError(
                    f"input {x.dtype} {x.shape} as {form}, mask {shown} raised {type(e).__name__}: {e}"
                ) from e
            ls = states[built.layer]
            assert ls.h.shape[:2] == x.shape[:2] or x.ndim != 3, (ls.h.shape, x.shape)

        fuzz()
