"""From correlation to evidence: rank units by how they track a feature, train a diagnostic probe
with a control task, and confirm the top units by ablating them in the model.

* :func:`rank_units` — Pearson (streamed chunk by chunk from sufficient statistics: a stored
  layer is never read whole), Spearman or mutual information of every unit with a feature
  over the valid steps, with permutation p-values.
* :func:`probe` — a scikit-learn diagnostic classifier (or ridge regressor) on the states,
  trained and tested on disjoint *samples*, with its selectivity against a control task
  (Hewitt & Liang 2019: the same probe on labels reassigned at random per token type).
* :func:`confirm` — the top units ablated together with :func:`rnnlens.intervene`, against
  random units of the same layer: the effect on a metric of the model's outputs, and its spread.

Example:
    >>> import numpy as np, rnnlens
    >>> from rnnlens.analysis.probes import rank_units
    >>> from rnnlens.core.spec import LayerSpec
    >>> from rnnlens.core.states import DirectionStates, LayerStates, States
    >>> rng = np.random.default_rng(0)
    >>> depth = rng.integers(0, 4, size=(20, 30)).astype(float)
    >>> h = rng.normal(size=(20, 30, 6))
    >>> h[..., 2] += depth  # unit 2 encodes the feature
    >>> spec = LayerSpec("l", "lstm", "LSTM", 6, ("forward",), ("h",), None, ())
    >>> states = States({"l": LayerStates(spec, {"forward": DirectionStates("forward", h)}, None)})
    >>> rank_units(states, depth, layer="l", permutations=99).top(1)
    [2]
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..api.intervention import intervene
from ..api.tracer import describe
from ..core.edits import Edit
from ..core.table import format_table
from ..errors import InputError, OptionError
from . import pearson as _pearson
from .points import points as _points
from .probe_result import ProbeResult
from .probe_result import sklearn as _sklearn
from .probe_stream import probe_streaming

__all__ = ["Confirmation", "ProbeResult", "UnitRanking", "confirm", "probe", "rank_units"]

Method = Literal["pearson", "spearman", "mutual_info"]


@dataclass
class UnitRanking:
    """Each unit's association with a feature; ``order`` ranks units by ``|score|``."""

    layer: str
    field: str
    method: str
    scores: np.ndarray
    p_values: np.ndarray | None
    n_points: int

    @property
    def order(self) -> np.ndarray:
        return np.argsort(-np.abs(self.scores), kind="stable")

    def top(self, k: int = 5) -> list[int]:
        return [int(u) for u in self.order[:k]]

    def plot(self, ax: Any = None, k: int = 20) -> Any:
        """A bar chart of the ``k`` strongest units' scores; returns the matplotlib ``Axes``."""
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(max(4.0, 0.35 * k), 3))
        units = self.order[:k]
        ax.bar(range(len(units)), self.scores[units], color="#3a6ea5")
        ax.set_xticks(range(len(units)), [str(u) for u in units])
        ax.set_xlabel("unit")
        ax.set_ylabel(self.method)
        ax.set_title(f"{self.layer}.{self.field}: units by |{self.method}|")
        return ax

    def __repr__(self) -> str:
        rows = []
        for u in self.order[:10]:
            p = "" if self.p_values is None else f"{self.p_values[u]:.3g}"
            rows.append((str(int(u)), f"{self.scores[u]:+.3f}", p))
        head = f"UnitRanking of {self.layer}.{self.field} ({self.method}, {self.n_points} points)\n"
        return head + format_table(("unit", self.method, "p"), rows)


def _feature(feature: Any, n: int, t: int) -> np.ndarray:
    f = np.asarray(feature, dtype=np.float64)
    if f.shape == (n,):
        f = np.repeat(f[:, None], t, axis=1)
    if f.shape != (n, t):
        raise InputError(
            f"feature must be per (sample, time) {(n, t)} or per sample ({n},); received {f.shape}"
        )
    return f.reshape(-1)


def rank_units(
    states: Any,
    feature: Any,
    *,
    layer: str,
    field: str = "h",
    method: Method = "pearson",
    direction: str | None = None,
    permutations: int = 200,
    seed: int = 0,
    chunk: int = 256,
    client: Any = None,
) -> UnitRanking:
    """Score every unit of ``layer``'s ``field`` against ``feature`` over the valid steps.

    ``feature``: per (sample, time), or per sample (repeated over time). ``states``: in memory
    or stored (:func:`rnnlens.open_states`; read ``chunk`` samples at a time). Pearson streams
    from sums; Spearman and mutual information need every valid point in memory. p-values:
    the fraction of ``permutations`` random reassignments of the feature over the valid points
    whose |score| reaches the unit's (a point-level null: steps of one sequence are correlated,
    so treat small p-values as a ranking aid, not a calibrated test). ``permutations=0``: none.

    ``client`` (a ``dask.distributed.Client``; stored states, Pearson): one task per chunk reads
    its samples on a worker and returns the chunk's sums; the client adds them in chunk order,
    so the result is bit for bit the in-process one. The store must be at a path the workers
    reach.
    """
    if method not in ("pearson", "spearman", "mutual_info"):
        raise OptionError(f"method must be 'pearson', 'spearman' or 'mutual_info'; received {method!r}")
    ls = states[layer]
    n, t = ls.h.shape[:2]
    y_all = _feature(feature, n, t)
    rng = np.random.default_rng(seed)
    if method == "pearson":
        # the valid points' feature values in the order the chunks yield them (sample-major),
        # known from the mask alone: the permutations are drawn before the one pass over x
        valid = np.ones((n, t), bool) if ls.mask is None else np.asarray(ls.mask, bool)
        y_valid = y_all[valid.reshape(-1)]
        m = y_valid.size
        if m == 0:
            raise InputError(f"Layer {layer!r} has no valid steps to rank units on.")
        perms = (
            np.stack([rng.permutation(y_valid) for _ in range(permutations)], axis=1)
            if permutations
            else None
        )
        if client is not None:
            r, p = _pearson.on_dask(client, states, layer, field, direction, valid, y_valid, perms, chunk)
        else:
            src = getattr(ls if direction is None else getattr(ls, direction), field)
            r, p = _pearson.stream(src, ls.mask, y_valid, perms, chunk)
        return UnitRanking(layer, field, method, r, p, int(m))
    if client is not None:
        raise OptionError(
            f"rank_units(client=...) streams Pearson sums from the workers; {method!r} needs every "
            "valid point in one place: use method='pearson' or drop client=."
        )
    xs, ys2 = zip(*((x, y_all[idx]) for x, idx in _points(states, layer, field, direction, chunk)))
    x, y = np.concatenate(xs), np.concatenate(ys2)
    score = _spearman if method == "spearman" else _mutual_info
    scores = score(x, y, seed)
    p = None
    if permutations:
        null = np.stack([score(x, rng.permutation(y), seed) for _ in range(permutations)], axis=1)
        p = (1 + (np.abs(null) >= np.abs(scores)[:, None] - 1e-12).sum(1)) / (1 + permutations)
    return UnitRanking(layer, field, method, scores, p, int(y.size))


def _spearman(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    from scipy.stats import rankdata

    rx = rankdata(x, axis=0)
    ry = rankdata(y)
    rx = rx - rx.mean(0)
    ry = ry - ry.mean()
    denom = np.sqrt((rx * rx).sum(0) * (ry * ry).sum())
    return np.asarray(np.where(denom > 0, (rx * ry[:, None]).sum(0) / np.where(denom > 0, denom, 1), 0.0))


def _mutual_info(x: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    sk = _sklearn()
    discrete = bool(np.all(y == np.round(y)) and np.unique(y).size <= 20)
    fn = sk.feature_selection.mutual_info_classif if discrete else sk.feature_selection.mutual_info_regression
    return np.asarray(fn(x, y.astype(int) if discrete else y, random_state=seed))


def probe(
    states: Any,
    labels: Any,
    *,
    layer: str,
    field: str = "h",
    kind: Literal["logistic", "ridge"] = "logistic",
    control: bool = True,
    types: Any = None,
    direction: str | None = None,
    test_size: float = 0.25,
    seed: int = 0,
    incremental: bool = False,
    chunk: int = 256,
    epochs: int = 20,
) -> ProbeResult:
    """Train a probe from ``layer``'s ``field`` to ``labels`` (per (sample, time) or per sample)
    on the valid steps, train and test on disjoint samples (no leakage between steps of one
    sequence), and, with ``control``, the same probe on a control task: with ``types`` (the
    token type of every (sample, time), e.g. token ids), each type gets one label drawn at
    random from the label distribution (Hewitt & Liang 2019); without, the labels are shuffled
    over the points.

    ``incremental=True`` never holds the states in memory (a store larger than memory): they
    are read ``chunk`` samples at a time; a logistic probe is scikit-learn's
    averaged ``SGDClassifier(loss="log_loss").partial_fit`` over ``epochs`` passes, a ridge probe the
    exact ridge solution from streamed sufficient statistics (XᵀX, Xᵀy); the test score takes
    one more pass. Only the labels (one per point) are held."""
    sk = _sklearn()
    if kind not in ("logistic", "ridge"):
        raise OptionError(f"kind must be 'logistic' or 'ridge'; received {kind!r}")
    if not 0 < test_size < 1:
        raise OptionError(f"test_size must be between 0 and 1; received {test_size}")
    ls = states[layer]
    n, t = ls.h.shape[:2]
    y_all = _feature(labels, n, t)
    if incremental:
        return probe_streaming(
            states, y_all, n, t, layer=layer, field=field, kind=kind, control=control, types=types,
            direction=direction, test_size=test_size, seed=seed, chunk=chunk, epochs=epochs,
        )  # fmt: skip
    xs, idxs = zip(*_points(states, layer, field, direction, 256))
    x, idx = np.concatenate(xs), np.concatenate(idxs)
    y = y_all[idx]
    rng = np.random.default_rng(seed)
    samples = idx // t
    test_samples = rng.permutation(n)[: max(1, round(test_size * n))]
    test = np.isin(samples, test_samples)
    if test.all() or not test.any():
        raise InputError("Too few samples to split into train and test sets; pass more sequences.")

    def fit(target: np.ndarray) -> tuple[float, np.ndarray]:
        if kind == "logistic":
            model = sk.linear_model.LogisticRegression(max_iter=2000)
            model.fit(x[~test], target[~test].astype(int))
            return float(model.score(x[test], target[test].astype(int))), np.asarray(model.coef_)
        model = sk.linear_model.Ridge(alpha=1.0)
        model.fit(x[~test], target[~test])
        return float(model.score(x[test], target[test])), np.asarray(model.coef_)

    score, weights = fit(y)
    control_score = None
    if control:
        if types is not None:
            ty = np.asarray(types).reshape(-1)
            if ty.size != n * t:
                raise InputError(f"types must be per (sample, time) {(n, t)}; received {np.shape(types)}")
            ty = ty[idx]
            kinds, inverse = np.unique(ty, return_inverse=True)
            drawn = rng.choice(y, size=kinds.size, replace=True)
            fake = drawn[inverse]
        else:
            fake = rng.permutation(y)
        control_score, _ = fit(fake)
    return ProbeResult(layer, field, kind, score, control_score, weights, int((~test).sum()), int(test.sum()))


@dataclass
class Confirmation:
    """The top units ablated together against random units of the same layer (same count)."""

    units: list[int]
    baseline: float
    ablated: float
    random: list[float]

    @property
    def effect(self) -> float:
        return self.ablated - self.baseline

    @property
    def random_effects(self) -> list[float]:
        return [r - self.baseline for r in self.random]

    def __repr__(self) -> str:
        lo, hi = min(self.random_effects), max(self.random_effects)
        return (
            f"Confirmation(units {self.units}: effect {self.effect:+.4g}; random units of the same "
            f"layer: median {np.median(self.random_effects):+.4g}, range {lo:+.4g} to {hi:+.4g} "
            f"over {len(self.random)} draws)"
        )


def confirm(
    model: Any,
    x: Any,
    found: UnitRanking | ProbeResult | Sequence[int],
    *,
    metric: Callable[[Any], float],
    layer: str | None = None,
    k: int = 3,
    field: str = "h",
    draws: int = 5,
    value: float = 0.0,
    seed: int = 0,
) -> Confirmation:
    """Ablate the top ``k`` units of ``found`` (a ranking, a probe, or unit indices) at every step
    with :func:`rnnlens.intervene`, and ``draws`` times ``k`` random other units of the same
    layer; report ``metric(outputs)`` against the unablated model."""
    if isinstance(found, (UnitRanking, ProbeResult)):
        units, layer, field = found.top(k), layer or found.layer, found.field
    else:
        units = [int(u) for u in found]
    if layer is None:
        raise OptionError("confirm needs layer= when given unit numbers.")
    spec = next((s for s in describe(model) if s.name == layer), None)
    if spec is None:
        raise OptionError(f"confirm: the model has no recurrent layer {layer!r}")
    width = int(spec.cell_units or spec.units) if field == "c" else int(spec.units)

    def run(chosen: list[int], set_to: float | None) -> float:
        noop = 0.0 if set_to is None else None
        edit = Edit(layer, slice(None), field=field, units=chosen, set=set_to, add=noop)
        return float(metric(intervene(model, x, edit).outputs))

    baseline = run(units, None)
    ablated = run(units, value)
    others = [u for u in range(width) if u not in units]
    rng = np.random.default_rng(seed)
    random = []
    for _ in range(draws if others else 0):
        picked = rng.choice(others, size=min(len(units), len(others)), replace=False)
        random.append(run(sorted(int(u) for u in picked), value))
    return Confirmation(units, baseline, ablated, random)
