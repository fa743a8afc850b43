"""A small progress bar on stderr: count, rate and ETA; a single summary line when not a TTY."""

from __future__ import annotations

import sys
import time
from typing import TextIO

__all__ = ["ProgressBar"]


def _clock(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class ProgressBar:
    """Call :meth:`update` with the number of samples done so far, :meth:`close` at the end.

    On a terminal it redraws one line at most ``1 / interval`` times a second; otherwise it
    stays silent until :meth:`close`, which prints one summary line.

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
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        self.label = label
        self.unit = unit
        isatty = getattr(self.stream, "isatty", None)
        self.live = bool(isatty and isatty()) if live is None else live
        self.interval = interval
        self.done = 0
        self._start = time.monotonic()
        self._last_draw = 0.0
        self._drawn = False
        self._closed = False

    def __call__(self, done: int, total: int | None = None) -> None:
        """Progress callback form: ``progress(done, total)``."""
        if total is not None:
            self.total = total
        self.update(done)

    def update(self, done: int) -> None:
        self.done = done
        if not self.live:
            return
        now = time.monotonic()
        if now - self._last_draw < self.interval and not (self.total and done >= self.total):
            return
        self._last_draw = now
        self.stream.write("\r" + self._line(now) + "\x1b[K")
        self.stream.flush()
        self._drawn = True

    def _line(self, now: float) -> str:
        elapsed = max(now - self._start, 1e-9)
        rate = self.done / elapsed
        head = f"{self.label}  " if self.label else ""
        if self.total:
            frac = min(self.done / self.total, 1.0)
            width = 24
            filled = int(frac * width)
            bar = "#" * filled + "." * (width - filled)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            eta_s = _clock(eta) if eta != float("inf") else "?"
            return (
                f"{head}{self.done}/{self.total} {self.unit} [{bar}] {frac:4.0%}  "
                f"{rate:,.0f} {self.unit}/s  ETA {eta_s}"
            )
        return f"{head}{self.done} {self.unit}  {rate:,.0f} {self.unit}/s  {_clock(elapsed)}"

    def abort(self) -> None:
        """End a live line without a summary (before an error message is printed)."""
        if self._drawn and not self._closed:
            self.stream.write("\n")
            self.stream.flush()
        self._closed = True

    def close(self, summary: str = "") -> None:
        """Finish the line (TTY) and print ``label: N samples in T s (R/s) summary``."""
        if self._closed:
            return
        self._closed = True
        elapsed = max(time.monotonic() - self._start, 1e-9)
        if self._drawn:
            self.stream.write("\r\x1b[K")
        head = f"{self.label}: " if self.label else ""
        line = f"{head}{self.done} {self.unit} in {elapsed:.1f} s ({self.done / elapsed:,.0f} {self.unit}/s)"
        self.stream.write(f"{line} {summary}".rstrip() + "\n")
        self.stream.flush()
