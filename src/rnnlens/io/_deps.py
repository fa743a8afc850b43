"""Optional packages of the storage layer: :func:`rnnlens.optional.require`, re-exported."""

from __future__ import annotations

from ..optional import require

__all__ = ["require"]
