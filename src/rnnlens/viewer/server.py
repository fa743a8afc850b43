"""The viewer's HTTP server: static page + JSON API over one opened store (stdlib only).

Security model (a local tool that reads one store):

* binds ``127.0.0.1`` by default, on a free port;
* answers only requests whose ``Host`` header names the bound address (``host:port``, and
  ``localhost:port`` when bound to a loopback address): a page on another site that
  re-points its DNS name at 127.0.0.1 (DNS rebinding) gets 403;
* serves a fixed set of static files, read into memory from the package when the server
  starts, by exact path; no request string ever becomes a filesystem path, so ``/../``,
  ``%2e%2e`` and absolute paths are just unknown routes (404);
* every API name (layer, field, direction) is looked up in the opened store's own layout,
  numbers are parsed strictly and range-checked; bad input is a 400 with a JSON error,
  unknown routes 404, other methods 405; a bug in a handler is a 500 JSON reply and the
  server keeps serving;
* responses carry ``X-Content-Type-Options: nosniff``, a restrictive
  ``Content-Security-Policy`` (own scripts, styles and API only: no inline script, no
  other origin), ``X-Frame-Options: DENY`` and ``Referrer-Policy: no-referrer``.

API (GET, JSON; ``layer``, ``field`` (``h``, ``c`` or a gate name), ``direction``):

* ``/api/meta``: store size, layers with their fields and directions;
* ``/api/sample?layer&field&direction&sample``: one sample's (time, unit) values as
  base64 little-endian float32 (NaN kept), its mask and tokens;
* ``/api/select?...&sample&t0&t1&threshold``: the selected units (see :mod:`.store`);
* ``/api/match?...&sample&t0&t1&threshold[&k][&min_units][&units=3,7]``: the units
  selected on ``[t0, t1)`` of ``sample`` (or the given ``units``) and the top ``k`` (default
  20, at most 500) spans of every sequence where at least ``min_units`` of them (default,
  or 0: all) are on; ``t1 - t0`` is the query length the score compares spans with;
* ``/api/unit?...&unit[&threshold]``: one unit over the whole data set;
* ``/api/correlation?layer&field&direction``: every unit's Pearson r with the feature the
  viewer was started with (``--feature``; 404 without one), and the top units by |r|;
* ``/api/contribution?...&sample&t&unit``: the writes summing to a state (:mod:`.contribution`).
"""

from __future__ import annotations

import base64
import contextlib
import ipaddress
import json
import math
import os
import re
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, TextIO
from urllib.parse import parse_qsl, urlsplit

import numpy as np

from ..errors import InputError, RnnLensError, RnnLensWarning
from .contribution import contribution
from .feature import Feature
from .store import MAX_K, MAX_MATCH_UNITS, StoreView, Tokens

__all__ = ["ViewerServer", "make_server", "serve"]

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": CSP,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
}
_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".svg": "image/svg+xml"}  # fmt: skip
_INT = re.compile(r"-?[0-9]{1,12}")
_MAX_QUERY = 2048
_MAX_NAME = 256


class BadRequest(Exception):
    """A request the API refuses: status and a message for the JSON body."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, by URL path, read once from the package (works installed or editable)."""
    root = resources.files("rnnlens.viewer").joinpath("static")
    files: dict[str, tuple[bytes, str]] = {}
    for entry in root.iterdir():
        suffix = os.path.splitext(entry.name)[1]
        if entry.is_file() and suffix in _TYPES:
            files[f"/static/{entry.name}"] = (entry.read_bytes(), _TYPES[suffix])
    files["/"] = files["/static/index.html"]
    return files


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server bound to one :class:`StoreView`."""

    daemon_threads = True
    allow_reuse_address = False
    # many tabs and parallel fetches: the default backlog of 5 makes clients wait for TCP retries
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line for a connection that failed (a client that went away mid-reply is normal:
        a closed tab, a cancelled fetch), never a traceback in the terminal."""
        import sys

        e = sys.exc_info()[1]
        if isinstance(e, (ConnectionError, TimeoutError)):
            if self.verbose:
                print(f"rnnlens view: {client_address[0]}: {type(e).__name__}", file=sys.stderr)
            return
        print(f"rnnlens view: error serving {client_address[0]}: {type(e).__name__}: {e}", file=sys.stderr)

    def __init__(self, address: tuple[str, int], view: StoreView, *, verbose: bool = False):
        super().__init__(address, ViewerHandler)
        self.view = view
        self.verbose = verbose
        self.static = _static_files()
        host, port = self.server_address[0], self.server_address[1]
        self.url = f"http://{_url_host(str(host))}:{port}/"
        self.allowed_hosts = {f"{_url_host(str(host))}:{port}"}
        if _is_loopback(str(host)):
            self.allowed_hosts |= {f"localhost:{port}", f"127.0.0.1:{port}"}


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    server_version = "rnnlens-viewer"
    sys_version = ""
    # an idle or stalled connection is closed after this many seconds (its thread ends with it)
    timeout = 30

    # ------------------------------------------------------------------ plumbing

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, content_type: str, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=60" if cache else "no-store")
        for k, v in SECURITY_HEADERS.items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: Any) -> None:
        body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        # http.server's own errors (bad request line, header too long, unknown method): JSON,
        # with the security headers; an unknown method is the client's fault (405, not 501)
        if code == 501:
            code = 405
        if getattr(self, "request_version", "HTTP/0.9") == "HTTP/0.9":
            self.request_version = "HTTP/1.0"  # an unparsable request line: still send a status line
        self.close_connection = True
        with contextlib.suppress(OSError, ValueError):  # the client went away
            self._json(code, {"error": message or self.responses.get(code, ("error",))[0]})

    def do_GET(self) -> None:
        try:
            self._route()
        except BadRequest as e:
            self._json(e.status, {"error": str(e)})
        except RnnLensError as e:
            self._json(400, {"error": str(e)})
        except Exception as e:  # a bug: report it, keep serving
            traceback.print_exc(file=sys.stderr)
            self._json(500, {"error": f"internal error ({type(e).__name__}); see the server's log"})

    do_HEAD = do_GET

    def _not_allowed(self) -> None:
        self._json(405, {"error": f"method {self.command} not allowed; the viewer answers GET only"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    # ------------------------------------------------------------------ routing

    def _route(self) -> None:
        host = self.headers.get("Host")
        if host is None or host.lower() not in self.server.allowed_hosts:
            raise BadRequest(
                f"Host {host!r} is not this server's address; expected one of "
                f"{sorted(self.server.allowed_hosts)}.",
                403,
            )
        if not self.path.startswith("/") or self.path.startswith("//"):
            raise BadRequest("request target must be a path starting with '/'", 400)
        parts = urlsplit(self.path)
        if parts.path in self.server.static:
            body, content_type = self.server.static[parts.path]
            self._send(200, body, content_type, cache=True)
            return
        handler = _API.get(parts.path)
        if handler is None:
            raise BadRequest(f"no such resource: {parts.path[:200]!r}", 404)
        if len(parts.query) > _MAX_QUERY:
            raise BadRequest(f"query longer than {_MAX_QUERY} characters")
        try:
            pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query),
                              max_num_fields=16, errors="strict")  # fmt: skip
        except ValueError as e:
            raise BadRequest(f"malformed query string: {e}") from None
        params: dict[str, str] = {}
        for k, v in pairs:
            if k in params:
                raise BadRequest(f"parameter {k!r} given twice")
            params[k] = v
        self._json(200, handler(self.server.view, Params(params)))


class Params:
    """Strictly parsed query parameters; every one must be read, or the request is refused."""

    def __init__(self, raw: dict[str, str]):
        self.raw = raw
        self.used: set[str] = set()

    def _get(self, name: str, default: str | None) -> str:
        self.used.add(name)
        if name not in self.raw:
            if default is None:
                raise BadRequest(f"missing parameter {name!r}")
            return default
        return self.raw[name]

    def name(self, name: str) -> str:
        value = self._get(name, None)
        if not value or len(value) > _MAX_NAME:
            raise BadRequest(f"parameter {name!r} must be a name of 1..{_MAX_NAME} characters")
        return value

    def integer(self, name: str, default: int | None = None, *, lo: int = 0, hi: int | None = None) -> int:
        text = self._get(name, None if default is None else str(default))
        if not _INT.fullmatch(text):
            raise BadRequest(f"parameter {name!r} must be an integer; received {text[:40]!r}")
        value = int(text)
        if value < lo or (hi is not None and value > hi):
            top = "" if hi is None else f"..{hi}"
            raise BadRequest(f"parameter {name!r} = {value} is out of range ({lo}{top})")
        return value

    def number(self, name: str, default: float | None = None) -> float | None:
        if name not in self.raw and default is None:
            self.used.add(name)
            return None
        text = self._get(name, None if default is None else repr(default))
        try:
            value = float(text) if len(text) <= 32 else math.nan
        except ValueError:
            value = math.nan
        if not math.isfinite(value):
            raise BadRequest(f"parameter {name!r} must be a finite number; received {text[:40]!r}")
        return value

    def integers(self, name: str, *, most: int) -> list[int] | None:
        if name not in self.raw:
            self.used.add(name)
            return None
        text = self._get(name, None)
        items = text.split(",") if text else []
        if not 1 <= len(items) <= most or not all(_INT.fullmatch(i) for i in items):
            raise BadRequest(f"parameter {name!r} must be 1..{most} comma-separated integers")
        return [int(i) for i in items]

    def done(self) -> None:
        extra = sorted(set(self.raw) - self.used)
        if extra:
            raise BadRequest(f"unknown parameter(s) {extra}; expected {sorted(self.used)}")


# ---------------------------------------------------------------------- endpoints


def _where(view: StoreView, p: Params) -> tuple[str, str, str]:
    layer = p.name("layer")
    lay = next((x for x in view.layout.layers if x.name == layer), None)
    field = p._get("field", "h")
    direction = p._get("direction", lay.directions[0] if lay else "forward")
    return layer, field, direction


def _meta(view: StoreView, p: Params) -> dict[str, Any]:
    p.done()
    return {**view.meta(), "feature": None if view.feature is None else view.feature.name}


def _sample(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)
    sample = p.integer("sample", hi=view.n_samples - 1)
    p.done()
    values = view.sample(layer, field, direction, sample)
    finite = values[np.isfinite(values)]
    return {
        "layer": layer, "field": field, "direction": direction, "sample": sample,
        "time": int(values.shape[0]), "units": int(values.shape[1]),
        "values": base64.b64encode(values.astype("<f4").tobytes()).decode("ascii"),
        "vmax": float(np.abs(finite).max()) if finite.size else 1.0,
        "scale": _scale(view, layer, field, finite),
        "mask": [bool(m) for m in view.mask[sample]],
        "tokens": view.sample_tokens(sample),
    }  # fmt: skip


def _scale(view: StoreView, layer: str, field: str, finite: np.ndarray) -> str:
    """``"unit"``: a gate with values in [0, 1] (sigmoid), drawn on a sequential 0–1 scale;
    ``"diverging"``: anything else, centred on zero (as :mod:`rnnlens.viz` draws them)."""
    gate = field not in ("h", "c", "state_norm")
    if gate and finite.size and float(finite.min()) >= 0.0 and float(finite.max()) <= 1.0:
        return "unit"
    return "diverging"


def _range(view: StoreView, p: Params) -> tuple[int, int, int, float]:
    sample = p.integer("sample", hi=view.n_samples - 1)
    t0 = p.integer("t0", hi=view.max_time - 1)
    t1 = p.integer("t1", lo=1, hi=view.max_time)
    if t1 <= t0:
        raise BadRequest(f"empty time range: t1 ({t1}) must be greater than t0 ({t0})")
    threshold = p.number("threshold", 0.5)
    return sample, t0, t1, 0.5 if threshold is None else threshold


def _select(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)
    sample, t0, t1, threshold = _range(view, p)
    p.done()
    units = view.select(layer, field, direction, sample=sample, t0=t0, t1=t1, threshold=threshold)
    return {"units": units, "sample": sample, "t0": t0, "t1": t1, "threshold": threshold}


def _snippet(view: StoreView, sample: int, start: int, end: int, pad: int = 6) -> dict[str, Any] | None:
    tokens = view.sample_tokens(sample)
    if tokens is None:
        return None
    a = max(0, start - pad)
    return {"offset": a, "tokens": tokens[a : end + pad]}


def _match(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)
    sample, t0, t1, threshold = _range(view, p)
    k = p.integer("k", 20, lo=1, hi=MAX_K)
    given = p.integers("units", most=MAX_MATCH_UNITS)
    min_units = p.integer("min_units", 0, lo=0, hi=MAX_MATCH_UNITS)
    p.done()
    started = time.perf_counter()
    units = given if given is not None else view.select(
        layer, field, direction, sample=sample, t0=t0, t1=t1, threshold=threshold
    )  # fmt: skip
    matches = view.match(
        layer, field, direction, units, threshold, query_length=t1 - t0, min_units=min_units or None, k=k
    )
    out = []
    for m in matches:
        item = m.to_json()
        item["snippet"] = _snippet(view, m.sample, m.start, m.end)
        out.append(item)
    return {
        "units": sorted(set(units)), "matches": out, "searched": view.n_samples,
        "query": {"sample": sample, "t0": t0, "t1": t1, "threshold": threshold},
        "elapsed_ms": round(1e3 * (time.perf_counter() - started), 1),
    }  # fmt: skip


def _unit(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)
    unit = p.integer("unit", hi=100_000_000)
    threshold = p.number("threshold")
    p.done()
    return view.unit_stats(layer, field, direction, unit, threshold=threshold)


def _correlation(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)
    p.done()
    if view.feature is None:
        raise BadRequest("no feature loaded: start the viewer with --feature FILE.npy", 404)
    return view.feature.correlation(view, layer, field, direction)


def _contribution(view: StoreView, p: Params) -> dict[str, Any]:
    layer, field, direction = _where(view, p)  # the decomposed field is the layer's linear one
    sample, t, unit = (p.integer(k, hi=100_000_000) for k in ("sample", "t", "unit"))  # ranges: below
    p.done()
    return contribution(view, layer, direction, sample=sample, t=t, unit=unit, field=field)


_API: dict[str, Callable[[StoreView, Params], dict[str, Any]]] = {
    "/api/meta": _meta,
    "/api/sample": _sample,
    "/api/select": _select,
    "/api/match": _match,
    "/api/unit": _unit,
    "/api/correlation": _correlation,
    "/api/contribution": _contribution,
}


# ---------------------------------------------------------------------- entry points


def make_server(
    store: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: str | os.PathLike[str] | None = None,
    chars: bool = False,
    verbose: bool = False,
    feature: Any = None,
) -> ViewerServer:
    """A viewer server for ``store`` (a path or :class:`StoredStates`), bound but not yet serving.

    Call ``serve_forever()`` (in a thread, for tests) and ``shutdown()``; ``server.url`` is
    its address. ``feature``: a ``.npy`` path or an array per (sample, time) or per sample,
    for the panel that colours units by their correlation with it.

    Example:
        >>> import numpy as np, tempfile, os, threading, urllib.request, json
        >>> from rnnlens.testing.stores import write_store
        >>> path = write_store(os.path.join(tempfile.mkdtemp(), "s.zarr"), np.zeros((2, 3, 4), "float32"))
        >>> server = make_server(path)
        >>> threading.Thread(target=server.serve_forever, daemon=True).start()
        >>> json.load(urllib.request.urlopen(server.url + "api/meta"))["n_samples"]
        2
        >>> server.shutdown(); server.server_close()
    """
    token_source = None if tokens is None else Tokens(tokens, chars=chars)
    view = StoreView(store, tokens=token_source)
    if feature is not None:
        is_path = isinstance(feature, (str, os.PathLike))
        view.feature = Feature.load(feature, view) if is_path else Feature(feature, view)
    try:
        return ViewerServer((host, port), view, verbose=verbose)
    except OSError as e:
        raise InputError(
            f"Cannot listen on {host}:{port} ({e.strerror or e}). Choose another port (--port), "
            "or 0 for a free one."
        ) from None


def serve(
    store: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    tokens: str | os.PathLike[str] | None = None,
    chars: bool = False,
    open_browser: bool = True,
    out: TextIO | None = None,
    feature: Any = None,
) -> None:
    """Serve the viewer until Ctrl-C: prints the URL on a line of its own, opens a browser."""
    stream = out if out is not None else sys.stdout
    server = make_server(store, host=host, port=port, tokens=tokens, chars=chars, feature=feature)
    print(server.url, file=stream, flush=True)
    if not _is_loopback(str(server.server_address[0])):
        warnings.warn(
            f"The viewer listens on {host}, not only this machine: anyone who can reach "
            f"{server.url} can read this store (there is no login). It answers only requests "
            f"addressed to {sorted(server.allowed_hosts)}.",
            RnnLensWarning,
            stacklevel=2,
        )
    if open_browser:
        import webbrowser

        webbrowser.open(server.url)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.server_close()
