"""Progress on stderr: a ``tqdm`` bar on a terminal, one summary line at the end either way.

A thin adapter over tqdm (which draws, rates and estimates): rnnlens reports the *number of
samples done so far*, and ends with one line a log file can keep.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

__all__ = ["ProgressBar"]


class ProgressBar:
    """Call :meth:`update` with the number of samples done so far, :meth:`close` at the end.

    On a terminal a tqdm bar is drawn (at most 10 times a second); otherwise nothing is shown
    until :meth:`close`, which prints one summary line.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> bar = ProgressBar(10, stream=out, label="extract")
        >>> bar.update(10)
        >>> bar.close("-> run.zarr")
        >>> out.getvalue().startswith("extract: 10 samples in ")
        True
    """

    def __init__(
        self,
        total: int | None = None,
        *,
        stream: TextIO | None = None,
        label: str = "",
        unit: str = "samples",
        live: bool | None = None,
        interval: float = 0.1,
    ):
        self.stream = stream if stream is not None else sys.stderr
        self.label, self.unit = label, unit
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.done = 0
        self._start = time.monotonic()
        self._closed = False
        self._bar: Any = None
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total, desc=label or None, unit=f" {unit}", file=self.stream,
                mininterval=interval, leave=False, dynamic_ncols=True,
            )  # fmt: skip

    @property
    def total(self) -> int | None:
        return None if self._bar is None else self._bar.total

    @total.setter
    def total(self, value: int | None) -> None:
        if self._bar is not None and value != self._bar.total:
            self._bar.total = value
            self._bar.refresh()

    def __call__(self, done: int, total: int | None = None) -> None:
        """Progress callback form: ``progress(done, total)``."""
        if total is not None:
            self.total = total
        self.update(done)

    def update(self, done: int) -> None:
        if self._bar is not None and done > self.done:
            self._bar.update(done - self.done)
        self.done = done

    def abort(self) -> None:
        """End a live bar without a summary (before an error message is printed)."""
        if self._bar is not None and not self._closed:
            self._bar.close()
        self._closed = True

    def close(self, summary: str = "") -> None:
        """Remove the bar (terminal) and print ``label: N samples in T s (R/s) summary``."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elapsed = max(time.monotonic() - self._start, 1e-9)
        head = f"{self.label}: " if self.label else ""
        line = f"{head}{self.done} {self.unit} in {elapsed:.1f} s ({self.done / elapsed:,.0f} {self.unit}/s)"
        self.stream.write(f"{line} {summary}".rstrip() + "\n")
        self.stream.flush()
