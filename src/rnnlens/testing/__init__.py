"""Test helpers for rnnlens and downstream projects: an independent NumPy reference of the
recurrences and small models to trace."""

from .reference import hard_sigmoid, reference_rnn, sigmoid

__all__ = ["hard_sigmoid", "reference_rnn", "sigmoid"]
