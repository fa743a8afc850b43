"""The incremental path of :func:`rnnlens.probe` (``incremental=True``): the states are read a
chunk of samples at a time, never whole; only the labels (one per point) are held.

A logistic probe standardises the units with ``StandardScaler.partial_fit`` (one pass) and
trains an averaged ``SGDClassifier(loss="log_loss").partial_fit`` over ``epochs`` passes; a ridge probe
solves ridge regression (alpha 1, intercept not penalised, as ``sklearn.linear_model.Ridge``)
exactly from the streamed ``XᵀX`` and ``Xᵀy``. The held-out score takes one more pass. Train and
test are disjoint samples, and the control task is drawn as in memory.

Example:
    >>> import numpy as np, rnnlens
    >>> from rnnlens.core.spec import LayerSpec
    >>> from rnnlens.core.states import DirectionStates, LayerStates, States
    >>> rng = np.random.default_rng(0)
    >>> labels = rng.integers(0, 2, size=(40, 10))
    >>> h = rng.normal(size=(40, 10, 4)); h[..., 2] += 3 * labels
    >>> spec = LayerSpec("enc", "gru", "GRU", 4, ("forward",), ("h",))
    >>> states = States({"enc": LayerStates(spec, {"forward": DirectionStates("forward", h)}, None)})
    >>> result = rnnlens.probe(states, labels, layer="enc", incremental=True, chunk=8)
    >>> result.score > 0.9, result.top(1)
    (True, [2])
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import InputError
from .points import points as _points
from .probe_result import ProbeResult
from .probe_result import sklearn as _sklearn

__all__ = ["probe_streaming"]


def _targets(
    y_all: np.ndarray, valid: np.ndarray, types: Any, control: bool, rng: np.random.Generator, n: int, t: int
) -> dict[str, np.ndarray]:
    """The task's labels and, with ``control``, the control task's, for every flat point."""
    out = {"task": y_all}
    if not control:
        return out
    y = y_all[valid]
    fake = np.zeros_like(y_all)
    if types is not None:
        ty = np.asarray(types).reshape(-1)
        if ty.size != n * t:
            raise InputError(f"types must be per (sample, time) {(n, t)}; received {np.shape(types)}")
        kinds, inverse = np.unique(ty[valid], return_inverse=True)
        fake[valid] = rng.choice(y, size=kinds.size, replace=True)[inverse]
    else:
        fake[valid] = rng.permutation(y)
    out["control"] = fake
    return out


def probe_streaming(
    states: Any,
    y_all: np.ndarray,
    n: int,
    t: int,
    *,
    layer: str,
    field: str,
    kind: str,
    control: bool,
    types: Any,
    direction: str | None,
    test_size: float,
    seed: int,
    chunk: int,
    epochs: int,
) -> Any:
    sk = _sklearn()
    import sklearn.preprocessing

    rng = np.random.default_rng(seed)
    is_test = np.zeros(n, bool)
    is_test[rng.permutation(n)[: max(1, round(test_size * n))]] = True
    if is_test.all() or not is_test.any():
        raise InputError("Too few samples to split into train and test sets; pass more sequences.")
    mask = states[layer].mask
    m = np.ones((n, t), bool) if mask is None else np.asarray(mask[...], bool)
    valid = np.flatnonzero(m.reshape(-1))
    targets = _targets(y_all, valid, types, control, rng, n, t)

    def passes() -> Any:
        for x, idx in _points(states, layer, field, direction, chunk):
            test = is_test[idx // t]
            yield x, idx, test

    n_train = int((~is_test[valid // t]).sum())
    n_test = int(is_test[valid // t].sum())
    scores: dict[str, float] = {}
    weights = np.zeros(0)
    if kind == "logistic":
        scaler = sklearn.preprocessing.StandardScaler()
        for x, _, test in passes():
            if (~test).any():
                scaler.partial_fit(x[~test])
        for name, target in targets.items():
            classes = np.unique(target[valid].astype(int))
            # averaged SGD: closer to the exact logistic fit than plain SGD in few passes
            model = sk.linear_model.SGDClassifier(
                loss="log_loss", alpha=1e-4, average=True, random_state=seed
            )
            for _ in range(epochs):
                for x, idx, test in passes():
                    if (~test).any():
                        model.partial_fit(
                            scaler.transform(x[~test]), target[idx[~test]].astype(int), classes=classes
                        )
            right = total = 0
            for x, idx, test in passes():
                if test.any():
                    right += int(
                        (model.predict(scaler.transform(x[test])) == target[idx[test]].astype(int)).sum()
                    )
                    total += int(test.sum())
            scores[name] = right / max(total, 1)
            if name == "task":
                weights = np.asarray(model.coef_) / np.where(scaler.scale_ > 0, scaler.scale_, 1.0)
    else:
        for name, target in targets.items():
            xtx = xty = None
            for x, idx, test in passes():
                xa = np.concatenate([x[~test], np.ones((int((~test).sum()), 1))], axis=1)
                xtx = xa.T @ xa if xtx is None else xtx + xa.T @ xa
                part = xa.T @ target[idx[~test]]
                xty = part if xty is None else xty + part
            assert xtx is not None and xty is not None
            penalty = np.eye(xtx.shape[0])
            penalty[-1, -1] = 0.0  # the intercept is not penalised
            w = np.linalg.solve(xtx + penalty, xty)
            y_test = target[valid][is_test[valid // t]]
            ss_res = 0.0
            for x, idx, test in passes():
                if test.any():
                    ss_res += float(((x[test] @ w[:-1] + w[-1] - target[idx[test]]) ** 2).sum())
            ss_tot = float(((y_test - y_test.mean()) ** 2).sum())
            scores[name] = 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0
            if name == "task":
                weights = w[:-1][None]
    return ProbeResult(layer, field, kind, scores["task"], scores.get("control"), weights, n_train, n_test)
