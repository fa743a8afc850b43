"""A diagnostic probe's result (:func:`rnnlens.probe`), and scikit-learn, imported on first use.

Example:
    >>> import numpy as np
    >>> r = ProbeResult("l", "h", "logistic", 0.9, 0.6, np.array([[0.1, -2.0, 0.5]]), 30, 10)
    >>> r.top(2), round(r.selectivity, 3)
    ([1, 2], 0.3)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.optional import require

__all__ = ["ProbeResult", "sklearn"]


def sklearn() -> Any:
    for sub in ("feature_selection", "linear_model", "metrics"):
        require(f"sklearn.{sub}", purpose="Probes")
    return require("sklearn", purpose="Probes")


@dataclass
class ProbeResult:
    """A diagnostic probe: held-out ``score`` (accuracy; R² for ridge), the control task's,
    ``selectivity = score - control_score``, and per-unit ``weights``."""

    layer: str
    field: str
    kind: str
    score: float
    control_score: float | None
    weights: np.ndarray
    n_train: int
    n_test: int

    @property
    def selectivity(self) -> float | None:
        return None if self.control_score is None else self.score - self.control_score

    def top(self, k: int = 5) -> list[int]:
        """Units with the largest |weight| (summed over classes)."""
        w = np.abs(self.weights).reshape(-1, self.weights.shape[-1]).sum(0)
        return [int(u) for u in np.argsort(-w, kind="stable")[:k]]

    def __repr__(self) -> str:
        sel = (
            ""
            if self.selectivity is None
            else f", control {self.control_score:.3f}, selectivity {self.selectivity:+.3f}"
        )
        return (
            f"ProbeResult({self.kind} on {self.layer}.{self.field}: held-out {self.score:.3f}{sel}; "
            f"{self.n_train} train / {self.n_test} test points; top units {self.top(5)})"
        )
