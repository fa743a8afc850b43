"""A local web viewer for state stores, LSTMVis-style: ``rnnlens view run.zarr``.

:func:`serve` runs it until Ctrl-C; :func:`make_server` gives a bound server to run in a
thread (tests, notebooks). The page is plain HTML/JS/CSS shipped in the package (no CDN:
it works offline); the server is the standard library's ``ThreadingHTTPServer``; stores
are read lazily, chunk by chunk (:class:`StoreView`). Select-and-match is defined in
:mod:`rnnlens.viewer.store`; the security model in :mod:`rnnlens.viewer.server`.
"""

from .server import ViewerServer, make_server, serve
from .store import Match, StoreView, Tokens

__all__ = ["Match", "StoreView", "Tokens", "ViewerServer", "make_server", "serve"]
