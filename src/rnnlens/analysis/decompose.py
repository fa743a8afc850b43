"""``rnnlens.decompose``: a linear state as the exact sum of what each earlier step wrote.

For a field linear in its previous value once the gates are known (an LSTM's ``c``, a GRU's
``h``; see :mod:`rnnlens.analysis.decompose_terms`), ``x_t = d_t ⊙ x_{t-1} + w_t`` unrolls to

    x_t = Σ_{s≤t} (Π_{r=s+1..t} d_r) ⊙ w_s  +  (Π_{r=1..t} d_r) ⊙ (d_0 ⊙ x_{-1})

(steps in processing order). The last term is the initial state's: ``d_0 ⊙ x_{-1}`` is
``x_0 − w_0`` read from the stored states (or ``d_0 ⊙ initial`` when the caller gives the
initial state). Every sum rnnlens returns is checked against the stored field (a
:class:`~rnnlens.errors.ParityError` otherwise): ``|Σ − x_t| ≤ rtol · (Σ|terms|) + atol`` with
``(rtol, atol)`` = ``(1e-5, 1e-7)`` for float32 states, ``(1e-12, 1e-14)`` for float64,
``(1e-2, 1e-3)`` for 16-bit floats.

Delta-rule mixers (gated delta-nets, Kimi delta attention) decay by a matrix per head: the
products above are matrix products there (:mod:`rnnlens.analysis.decompose_delta`).

Arrays are read in chunks of samples (``chunk``), so the maps of a stored layer never hold more
than three chunks × ``time × units`` values at once besides the results (the next chunks are
read in another thread while one is checked and mapped: :mod:`.decompose_stream`).
:meth:`Decomposition.maps` gives the attention map and the lifetimes from one read and one check
of each chunk; with numba installed (``rnnlens[fast]``) an LSTM's or a GRU's chunk takes one
compiled pass (:mod:`.decompose_fused`).

Example:
    >>> import numpy as np, torch, rnnlens
    >>> states = rnnlens.trace(torch.nn.LSTM(2, 3, batch_first=True), torch.randn(2, 5, 2))
    >>> dec = rnnlens.decompose(states, "lstm")
    >>> dec.at(3).shape, dec.initial_at(3).shape, dec.attention().shape
    ((2, 4, 3), (2, 3), (2, 5, 5))
    >>> bool(np.allclose(dec.at(3).sum(axis=1) + dec.initial_at(3), states["lstm"].c[:, 3]))
    True
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from ..core.states import States
from ..errors import DirectionNotAvailableError, InputError, ParityError
from . import decompose_delta, decompose_stream
from .decompose_hidden import hidden
from .decompose_maps import STEPS_DTYPE, DecompositionMaps, Lifetimes, Scratch, carry
from .decompose_ssm import field_array
from .decompose_terms import MATRIX, Terms, linear_field, read_terms, refuse_initial
from .read_ahead import read_ahead

__all__ = ["Decomposition", "DecompositionMaps", "Lifetimes", "decompose"]


_CHUNK_BYTES = 64 << 20
_AHEAD = 2  # chunks read and checked (and mapped) ahead, each in its own thread


def _tolerance(dtype: np.dtype) -> tuple[float, float]:
    if dtype == np.float64:
        return 1e-12, 1e-14
    if dtype == np.float32:
        return 1e-5, 1e-7
    return 1e-2, 1e-3


class Decomposition:
    """The per-step writes of one direction of one layer's linear field (see the module doc).

    ``t`` and ``s`` are steps in input order. Going forward, step t holds the writes of steps
    0..t; going backward (a backward direction reads from the end), steps t..time-1.
    """

    def __init__(self, direction_states: Any, mask: Any, *, layer: str, kind: str, field: str,
                 direction: str, initial: np.ndarray | None = None, chunk: int = 256,
                 constants: Mapping[str, np.ndarray] | None = None):  # fmt: skip
        self.layer, self.kind, self.field, self.direction = layer, kind, field, direction
        self._ds, self._mask = direction_states, mask
        self._constants = dict(constants or {})
        self._matrix = kind in MATRIX  # a decay that mixes units (decompose_delta)
        arr = field_array(direction_states, kind, field)
        self.n_samples, self.n_steps = int(arr.shape[0]), int(arr.shape[1])
        self.state_shape: tuple[int, ...] = tuple(int(s) for s in arr.shape[2:])
        # a chunk's float64 arrays (field, decays, writes, carried) stay within _CHUNK_BYTES each
        per_sample = 8 * self.n_steps * max(1, int(np.prod(self.state_shape, dtype=np.int64)))
        self.chunk = max(1, min(int(chunk), _CHUNK_BYTES // per_sample))
        self.dtype = np.dtype(arr.dtype)
        self.rtol, self.atol = _tolerance(self.dtype)
        # the map of a float32 (or 16-bit) field is float32: summed in float64, rounded once, its
        # 6e-8 relative rounding well within the 1e-5 the field is checked to; half the memory
        self.map_dtype = np.dtype(np.float64 if self.dtype == np.float64 else np.float32)
        if initial is not None:
            refuse_initial(kind)
            initial = np.asarray(initial, np.float64)
            if initial.shape != (self.n_samples, *self.state_shape):
                raise InputError(
                    f"initial must be (sample, *state_shape) = {(self.n_samples, *self.state_shape)}; "
                    f"received {initial.shape}."
                )
        self._initial = initial
        self._local = threading.local()

    def _scratch(self) -> Scratch:
        """This thread's working arrays (each reading thread checks its own chunks)."""
        if not hasattr(self._local, "scratch"):
            self._local.scratch = Scratch()
        return self._local.scratch  # type: ignore[no-any-return]

    @property
    def backward(self) -> bool:
        return self.direction == "backward"

    def __repr__(self) -> str:
        return (f"Decomposition({self.layer!r}, {self.kind} {self.field}, {self.direction}, "
                f"{self.n_samples} samples × {self.n_steps} steps × {self.state_shape})")  # fmt: skip

    # -- reading ------------------------------------------------------------------------------

    def _chunks(self, rows: range | None = None) -> Iterator[slice]:
        rows = range(self.n_samples) if rows is None else rows
        if rows.step != 1:
            raise InputError("samples must be a contiguous slice (step 1).")
        for start in range(rows.start, rows.stop, self.chunk):
            yield slice(start, min(start + self.chunk, rows.stop))

    def _terms(self, sl: slice) -> tuple[Terms, np.ndarray]:
        """A chunk's terms and its initial term ``d_0 ⊙ x_{-1}`` (n, U), processing order."""
        if self._matrix:
            terms: Terms = decompose_delta.read(self._ds, self._mask, self.kind, sl, self.layer)
        else:
            terms = read_terms(self._ds, self._mask, self.kind, self.field, sl, self.backward,
                               self._constants, self.layer)  # fmt: skip
        if self._initial is not None:  # the first step's decay applied to the given state
            init0 = terms.carry(self._initial[sl].reshape(terms.x.shape[0], 1, -1).copy(), 0)[:, 0]
        else:
            init0 = terms.x[:, 0] - terms.w[:, 0]
        return terms, init0

    def _proc(self, t: int) -> int:
        if not -self.n_steps <= t < self.n_steps:
            raise InputError(f"step {t} is outside the layer's {self.n_steps} steps.")
        t %= self.n_steps
        return self.n_steps - 1 - t if self.backward else t

    def _check(self, total: np.ndarray, scale: np.ndarray, x: np.ndarray, p: int) -> None:
        err = np.abs(total - x)
        bad = ~(err <= self.rtol * scale + self.atol)  # NaN fails too
        if bad.any():
            self._fail(float(np.max(err[bad])), p)

    def _fail(self, off: float, p: int) -> None:
        step = self.n_steps - 1 - p if self.backward else p
        raise ParityError(
            f"The writes of layer {self.layer!r} ({self.field}, {self.direction}) do not sum to "
            f"the stored {self.field} at step {step}: off by up to {off:.3g} "
            f"(allowed {self.rtol:g} × Σ|terms| + {self.atol:g}). The stored gates are not "
            "those that produced the state (a customised cell?)."
        )

    # -- one step -----------------------------------------------------------------------------

    def _rows(self, samples: slice | None) -> range:
        return range(self.n_samples)[samples if samples is not None else slice(None)]

    def _at(self, t: int, samples: slice | None) -> tuple[np.ndarray, np.ndarray]:
        p = self._proc(t)
        rows = self._rows(samples)
        contrib = np.empty((len(rows), p + 1, int(np.prod(self.state_shape, dtype=int))))
        initial = np.empty((len(rows), contrib.shape[2]))
        for sl in self._chunks(rows):
            terms, init0 = self._terms(sl)
            at = slice(sl.start - rows.start, sl.stop - rows.start)
            block = contrib[at]
            if isinstance(terms, decompose_delta.DeltaTerms):  # matrix products, right to left
                block[:], initial[at] = terms.unrolled(p, init0)
            else:
                carry = np.ones_like(init0)
                for s in range(p, -1, -1):
                    np.multiply(carry, terms.w[:, s], out=block[:, s])
                    if s:
                        carry *= terms.d[:, s]
                initial[at] = carry * init0
            scale = np.abs(block).sum(axis=1) + np.abs(initial[at])
            self._check(block.sum(axis=1) + initial[at], scale, terms.x[:, p], p)
        if self.backward:
            contrib = contrib[:, ::-1]
        return (contrib.reshape(len(rows), p + 1, *self.state_shape),
                initial.reshape(len(rows), *self.state_shape))  # fmt: skip

    def at(self, t: int, *, samples: slice | None = None) -> np.ndarray:
        """The contribution of each step to the field at step ``t``, float64: forward
        (sample, t + 1, *state_shape) for steps 0..t; backward (sample, time − t, *state_shape)
        for steps t..time − 1. Masked steps contribute 0. Checked: with :meth:`initial_at`, it
        sums to ``field[:, t]``. ``samples``: only those (read only those)."""
        return self._at(t, samples)[0]

    def initial_at(self, t: int, *, samples: slice | None = None) -> np.ndarray:
        """The initial state's term in the field at step ``t``, (sample, *state_shape), float64."""
        return self._at(t, samples)[1]

    def at_with_initial(self, t: int, *, samples: slice | None = None) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`at` and :meth:`initial_at` from one pass (each alone reads and checks the
        chunk again)."""
        return self._at(t, samples)

    # -- every step, streamed -----------------------------------------------------------------

    def _checked(self, sl: slice) -> tuple[Terms, np.ndarray]:
        """A chunk's terms, after checking that its decays and writes rebuild the stored field at
        every step: the running sum and Σ|terms| (equal to Σ_s contribution + initial term and its
        Σ|·| up to rounding) in O(units) a step, in place (no temporaries: this runs on every
        step of every chunk)."""
        terms, init = self._terms(sl)
        if terms.matrix:  # no running bound in O(units): carry every write, checking each step
            self._carried(sl, terms, init, None)
            return terms, init
        d, w, x = terms.d, terms.w, terms.x
        size = d.size > 0
        abs_d = d if size and d.min() >= 0 else np.abs(d)  # sigmoid gates: |d| = d, no copy
        abs_w = np.abs(w, out=self._scratch()("abs_w", w.shape))  # once for the chunk, not a step
        total, scale = init.copy(), np.abs(init)
        err, bound = np.empty_like(total), np.empty_like(total)
        ok = np.empty(total.shape, bool)
        for p in range(x.shape[1]):
            if p:  # the decay of step p (diagonal)
                total *= d[:, p]
                scale *= abs_d[:, p]
            total += w[:, p]
            scale += abs_w[:, p]
            np.abs(np.subtract(total, x[:, p], out=err), out=err)
            np.multiply(scale, self.rtol, out=bound)
            bound += self.atol
            if not np.less_equal(err, bound, out=ok).all():  # NaN fails too
                self._check(total, scale, x[:, p], p)
        return terms, init

    def _checked_chunks(self, rows: range | None = None) -> Iterator[tuple[slice, Terms]]:
        """Each chunk's :meth:`_checked` terms, in order, the next ``_AHEAD`` chunks read and
        checked in other threads (:mod:`.read_ahead`)."""
        for sl, (terms, _) in read_ahead(list(self._chunks(rows)), self._checked, _AHEAD):
            yield sl, terms

    def _scan(
        self, visit: Callable[[slice, int, np.ndarray, Terms], None], rows: range | None = None
    ) -> None:
        """Carry every write forward, chunk by chunk: ``visit(sl, p, V, terms)`` sees at each
        processing step p the contributions ``V[:, :p + 1]`` (n, p + 1, U) to the field there."""

        def at(sl: slice, terms: Terms) -> Callable[[int, np.ndarray], None]:
            return lambda p, live: visit(sl, p, live, terms)

        if self._matrix:  # carried through the matrices, checked at each step
            for sl in self._chunks(rows):
                self._carried(sl, *self._terms(sl), visit)
            return
        for sl, terms in self._checked_chunks(rows):
            carry(terms.d, terms.w, at(sl, terms))

    def _carried(self, sl: slice, terms: Terms, init: np.ndarray,
                 visit: Callable[[slice, int, np.ndarray, Terms], None] | None) -> None:  # fmt: skip
        """:meth:`_scan` for a decay that mixes units (:meth:`DeltaTerms.walk`), checking the
        sum against the field at each step."""
        assert isinstance(terms, decompose_delta.DeltaTerms)
        for p, total, scale, keys in terms.walk(init):
            self._check(total, scale, terms.x[:, p], p)
            if visit is not None:
                visit(sl, p, terms.contributions(keys), terms)

    def _to_input(self, a: np.ndarray) -> np.ndarray:
        """(sample, t, s, ...) from processing to input order."""
        return a[:, ::-1, ::-1] if self.backward else a

    def attention(
        self, ord: float = 2, *, samples: slice | None = None, units: Sequence[int] | None = None
    ) -> np.ndarray:
        """The "effective attention" map, (sample, time, time): ``[n, t, s]`` is the norm
        (``ord``, over the state axes) of step s's contribution to the field at step t; 0 where s
        comes after t in processing order; float32 for a float32 or 16-bit field (each value
        summed in float64 and rounded once), float64 for a float64 one. Memory: the map plus
        one chunk × time × units.
        ``samples``: only those (read only those); ``units``: the norm over those units only
        (indices into the flattened state), e.g. ``[u]`` for |contribution| to unit u."""
        return self._maps(samples, units, ord, None)[0]  # type: ignore[return-value]

    def maps(self, ord: float = 2, fraction: float = 0.5, *, samples: slice | None = None,
             units: Sequence[int] | None = None) -> DecompositionMaps:  # fmt: skip
        """:meth:`attention` (``ord``, ``units``) and :meth:`lifetime` (``fraction``, every unit)
        from one read and one check of each chunk: about half the cost of calling both (each
        reads and checks every chunk). ``samples``: only those (read only those)."""
        att, life = self._maps(samples, units, ord, fraction)
        assert att is not None and life is not None
        return DecompositionMaps(att, life)

    def _maps(self, samples: slice | None, units: Sequence[int] | None, ord: float | None,
              fraction: float | None) -> tuple[np.ndarray | None, Lifetimes | None]:  # fmt: skip
        """The attention map (``ord`` not None) and the lifetimes (``fraction`` not None) of
        ``samples``, chunk by chunk (:mod:`.decompose_stream`): on the products route
        (:func:`.decompose_maps.products`) both come from the same running products of the
        decays."""
        if fraction is not None and not 0 < fraction <= 1:
            raise InputError(f"fraction must be in (0, 1]; received {fraction!r}.")
        rows = self._rows(samples)
        cols = slice(None) if units is None else self._unit_index(units)
        if self._matrix:
            return self._matrix_maps(rows, cols, ord, fraction, units is None)
        att, life = decompose_stream.maps(self, rows, cols, ord, fraction, _AHEAD)
        return (None if att is None else self._to_input(att)), life

    def _lifetimes(
        self, fraction: float | None, steps: np.ndarray | None, alive: np.ndarray | None
    ) -> Lifetimes | None:
        """(sample, time, units) processing-order counts as :class:`Lifetimes` in input order."""
        if steps is None or alive is None or fraction is None:
            return None
        shape = (steps.shape[0], self.n_steps, *self.state_shape)
        if self.backward:
            steps, alive = steps[:, ::-1], alive[:, ::-1]
        return Lifetimes(fraction, steps.reshape(shape), alive.reshape(shape))

    def _matrix_maps(
        self, rows: range, cols: slice | np.ndarray, ord: float | None, fraction: float | None, every: bool
    ) -> tuple[np.ndarray | None, Lifetimes | None]:
        """:meth:`_maps` for a decay that mixes units (:mod:`.decompose_delta`): the writes
        carried through the matrices, checked at every step; the L2 map over every unit from
        the carried keys alone (a carried write stays rank one: ``‖P k‖ ‖v‖`` per head)."""
        n, t, u = len(rows), self.n_steps, int(np.prod(self.state_shape, dtype=int))
        att = decompose_stream.zeros((n, t, t), self.map_dtype) if ord is not None else None
        steps = decompose_stream.zeros((n, t, u), STEPS_DTYPE) if fraction is not None else None
        alive = decompose_stream.zeros((n, t, u), bool) if fraction is not None else None
        for sl in self._chunks(rows):
            at = slice(sl.start - rows.start, sl.stop - rows.start)
            terms, init = self._terms(sl)
            assert isinstance(terms, decompose_delta.DeltaTerms)
            if att is None:
                self._carried(sl, terms, init, None)
            elif ord == 2 and every:
                for p, total, scale, keys in terms.walk(init):
                    self._check(total, scale, terms.x[:, p], p)
                    att[at, p, : p + 1] = np.linalg.norm(terms.norms(keys), axis=-1)
            else:
                block = att[at]

                def visit(_: slice, p: int, live: np.ndarray, __: Terms, block: np.ndarray = block) -> None:
                    block[:, p, : p + 1] = np.linalg.norm(live[..., cols], ord=ord, axis=-1)

                self._carried(sl, terms, init, visit)
            if steps is not None and alive is not None and fraction is not None:
                steps[at], alive[at] = terms.lifetimes(fraction)
        return (None if att is None else self._to_input(att)), self._lifetimes(fraction, steps, alive)

    def _unit_index(self, units: Sequence[int]) -> np.ndarray:
        size = int(np.prod(self.state_shape, dtype=int))
        idx = np.asarray(list(units), dtype=np.int64)
        if idx.size == 0 or idx.min() < 0 or idx.max() >= size:
            raise InputError(
                f"units {list(units)} must be indices in 0..{size - 1} of the (flattened) state."
            )
        return idx

    def top_k(self, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` steps contributing most (largest |contribution|) to each (sample, t, unit):
        ``(steps, values)``, each (sample, time, *state_shape, k), largest first; input-order
        step indices, −1 (value 0) where fewer than k steps precede t."""
        u = int(np.prod(self.state_shape, dtype=int))
        idx = np.full((self.n_samples, self.n_steps, u, k), -1)
        val = np.zeros((self.n_samples, self.n_steps, u, k))

        def visit(sl: slice, p: int, live: np.ndarray, terms: Terms) -> None:
            m = min(k, p + 1)
            mag = np.abs(live)
            part = (
                np.argpartition(-mag, m - 1, axis=1)[:, :m]
                if m < p + 1
                else np.broadcast_to(np.arange(p + 1)[None, :, None], mag.shape)
            )
            pick = np.take_along_axis(mag, part, axis=1)
            order = np.argsort(-pick, axis=1, kind="stable")
            part = np.take_along_axis(part, order, axis=1)
            idx[sl, p, :, :m] = np.moveaxis(part, 1, -1)
            val[sl, p, :, :m] = np.moveaxis(np.take_along_axis(live, part, axis=1), 1, -1)

        self._scan(visit)
        if self.backward:
            idx = np.where(idx >= 0, self.n_steps - 1 - idx, -1)[:, ::-1]
            val = val[:, ::-1]
        shape = (self.n_samples, self.n_steps, *self.state_shape, k)
        return idx.reshape(shape), val.reshape(shape)

    def hidden_attention(self, *, samples: slice | None = None) -> np.ndarray:
        """Mamba's and Mamba2's "hidden attention" (Ali et al., ACL 2025): ``[n, c, t, s] =
        C_t · (Π_{r=s+1..t} exp(dt_r A)) · dt_s B_s``, the weight of step s's input ``x_s`` in
        the scan output ``y_t`` of channel c (Mamba: c a channel; Mamba2: c a head, the same for
        its head_dim channels), (sample, channel or head, time, time), 0 for s > t. From the
        stored ``dt``, ``B``, ``C`` and the layer's ``A``; the writes it weighs are checked to
        sum to the stored states first."""
        if self.kind not in ("mamba", "mamba2"):
            raise InputError(
                f"hidden_attention is Mamba's and Mamba2's (layer {self.layer!r} is {self.kind!r}); "
                "attention() is the map of every kind."
            )
        rows = range(self.n_samples)[samples if samples is not None else slice(None)]
        parts = []
        for sl, _ in self._checked_chunks(rows):
            g = {k: np.asarray(self._ds.gates[k][sl], np.float64) for k in ("dt", "B", "C")}
            parts.append(hidden(self.kind, g, np.asarray(self._constants["A"], np.float64)))
        shape = (0, self.state_shape[0], self.n_steps, self.n_steps)
        return np.concatenate(parts) if parts else np.zeros(shape)

    def lifetime(self, fraction: float = 0.5, *, samples: slice | None = None) -> Lifetimes:
        """For each write, how many later valid steps it keeps at least ``fraction`` of its weight
        (``|Π d_r| ≥ fraction``): a :class:`Lifetimes` over every sample, step and unit. For
        states stored stabilised (mLSTM, RWKV-4) ``d`` is the real, unstabilised decay (the
        stabiliser rescales every term of a step alike: :mod:`.decompose_stabilised`). A
        delta-rule mixer's decay mixes units: there the weight is per head (``‖P(s→t) w_s‖ ≥
        fraction · ‖w_s‖`` over the head's state), the same for each of its units
        (:mod:`rnnlens.analysis.decompose_delta`). ``samples``: only those (read only those)."""
        return self._maps(samples, None, None, fraction)[1]  # type: ignore[return-value]


def decompose(states: States, layer: str, *, field: str | None = None, direction: str | None = None,
              initial: np.ndarray | None = None, chunk: int | None = None) -> Decomposition:  # fmt: skip
    """The exact decomposition of ``layer``'s linear field into per-step writes.

    ``states``: traced States or a store opened with :func:`rnnlens.open_states`. ``field``:
    ``c`` for LSTM and ConvLSTM, ``h`` for GRU, ``state`` for Mamba (and multi-head Mamba),
    Mamba2, RG-LRU, lightning attention, gated delta-nets, Kimi delta attention, mLSTM (or its
    normaliser ``n``) and RWKV-4 (its ``num`` and ``den`` parts) (the default); other fields and
    kinds are refused with why. ``direction``: needed when the layer has both. ``initial``: the
    initial state (sample, *state_shape) if known (otherwise its term is read from the first
    step: ``x_0 − w_0``; refused for mLSTM and RWKV-4, whose stabiliser before the first step is
    not stored).
    ``chunk``: samples read at once (default: a stored layer's chunk of samples, so that each
    chunk is decompressed once, if it holds at most 2²² values per sample block; else 256).
    """
    ls = states[layer]
    name = linear_field(ls.kind, field)
    dirs = list(ls.directions)
    if direction is None:
        if len(dirs) > 1:
            raise DirectionNotAvailableError(
                f"Layer {layer!r} runs in directions {dirs}: pass direction='forward' or 'backward'."
            )
        direction = dirs[0]
    ds = ls._direction(direction)
    mask = ds.mask if ds.mask is not None else ls.mask
    if chunk is None:
        arr = field_array(ds, ls.kind, name)
        stored = int((getattr(arr, "chunks", None) or (0,))[0])
        per_sample = int(np.prod(arr.shape[1:], dtype=np.int64))
        chunk = stored if stored > 0 and stored * per_sample <= 1 << 22 else 256
    return Decomposition(ds, mask, layer=layer, kind=ls.kind, field=name, direction=direction,
                         initial=initial, chunk=chunk, constants=ls.spec.constants)  # fmt: skip
