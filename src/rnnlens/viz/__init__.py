"""Pictures of traced states. matplotlib is imported only when a plot is drawn.

Every function takes a :class:`~rnnlens.LayerStates` (or one direction of it) from
:func:`rnnlens.trace` or from a stored run, and draws one sample's sequence.
"""

from .plots import gate_grid, heatmap, pca_trajectory, unit_traces
from .report import html_report

__all__ = ["gate_grid", "heatmap", "html_report", "pca_trajectory", "unit_traces"]
