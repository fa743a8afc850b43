"""Work on chunks in order while the next ones are prepared in other threads.

A pass over a stored layer reads, decompresses and checks each chunk, then computes on it. The
store's reads and NumPy release the GIL, so preparing the next chunks in threads while the caller
computes on this one makes a pass cost about the larger of the two, not their sum. Results come
back in chunk order; a chunk whose preparation failed raises when the caller reaches it.

Example:
    >>> from rnnlens.analysis.read_ahead import read_ahead
    >>> list(read_ahead([1, 2, 3], lambda k: k * k))
    [(1, 1), (2, 4), (3, 9)]
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

__all__ = ["read_ahead"]

K = TypeVar("K")
R = TypeVar("R")


def read_ahead(chunks: Sequence[K], job: Callable[[K], R], ahead: int = 2,
               workers: int | None = None) -> Iterator[tuple[K, R]]:  # fmt: skip
    """``(chunk, job(chunk))`` for each chunk in order, the next ``ahead`` jobs running in
    ``workers`` threads (default ``ahead``) meanwhile (at most ``ahead + 1`` results held at
    once). One worker keeps the jobs in order, one at a time: for reads of one store, which
    slow each other down when run at once."""
    if len(chunks) < 2:
        yield from ((k, job(k)) for k in chunks)
        return
    with ThreadPoolExecutor(workers or ahead, thread_name_prefix="rnnlens-read-ahead") as pool:
        pending = deque(pool.submit(job, k) for k in chunks[:ahead])
        for i, k in enumerate(chunks):
            result = pending.popleft().result()
            if i + ahead < len(chunks):
                pending.append(pool.submit(job, chunks[i + ahead]))
            yield k, result
