"""Shared by the viewer tests: the planted store's size and a server started in a thread."""

from __future__ import annotations

import threading
from pathlib import Path

from rnnlens.viewer import ViewerServer, make_server

N_SAMPLES, MAX_TIME, UNITS = 80, 40, 12


def start(store: Path, **kwargs: object) -> ViewerServer:
    server = make_server(store, **kwargs)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server
