"""Test helpers for rnnlens and downstream projects: an independent NumPy reference of the
recurrences, the adapter conformance suite (:class:`AdapterTests`) and small models to trace."""

from .conformance import AdapterTests, Built
from .reference import hard_sigmoid, reference_rnn, sigmoid

__all__ = ["AdapterTests", "Built", "hard_sigmoid", "reference_rnn", "sigmoid"]
