"""What the ONNX and Keras recordings share for ``rnnlens.record(model, to=dir)``: a list of
recorded calls drained every so often, keeping the last call to link the next.

Example:
    >>> log = CallLog()
    >>> log.calls = ["a", "b"]
    >>> log.stream_of("rnn", [0, 1], skip_first=False)
    ([0, 1], 0)
"""

from __future__ import annotations

from typing import Any

from ..core.spec import call_entry

__all__ = ["CallLog"]

Spans = list[tuple[str, str, int, int]]


class CallLog:
    """``calls`` recorded since the last drain; ``base`` is the global number of ``calls[0]``;
    ``carried``: ``calls[0]`` was written by the last drain, kept only to link the next; ``stream``:
    per layer, the global number of the call its open stream began with. Subclasses give
    ``_convert(skip_first=...)``, which skips a chain's first call when it is the carried one."""

    def __init__(self) -> None:
        self.calls: list[Any] = []
        self.on_call: Any = None  # called after each recorded call (a recording written as it goes)
        self.base = 0
        self.carried = False
        self.stream: dict[str, int] = {}

    def _convert(self, *, skip_first: bool) -> tuple[Any, Spans]:
        raise NotImplementedError

    def drain(self) -> tuple[Any, Spans]:
        """The calls since the last drain, converted (a call continuing the last drained one
        extends its entry), and their spans counted from this drain; then only the last call is
        kept, to link the next."""
        if not self.calls or (self.carried and len(self.calls) == 1):
            return None, []
        captured, spans = self._convert(skip_first=self.carried)
        self.base += len(self.calls) - 1
        self.calls = self.calls[-1:]
        self.carried = True
        return captured, spans

    def stream_of(self, layer: str, chain: list[int], *, skip_first: bool) -> tuple[list[int], int] | None:
        """The calls of ``chain`` (local numbers) still to convert, and the global number of the
        call their entry is named after; None when nothing is new (only the carried call)."""
        if skip_first and chain[0] == 0:  # continues the stream written last time
            if len(chain) == 1:
                return None
            return chain[1:], self.stream[layer]
        self.stream[layer] = self.base + chain[0]
        return chain, self.stream[layer]

    def call_name(self, layer: str, k: int) -> str:
        """The name of local call ``k`` of ``layer``: ``layer``, ``layer#<global number>``."""
        return call_entry(layer, self.base + k)
