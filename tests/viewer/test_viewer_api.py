"""The viewer's HTTP API against a real server thread on a store with planted patterns:
select-and-match finds the planted units and spans, values equal the store, statistics equal
NumPy over the whole store, and malformed or hostile requests get a 4xx while the server keeps
serving."""

from __future__ import annotations

import base64
import http.client
import json
import socket
from typing import Any

import numpy as np
import pytest
from viewer_helpers import MAX_TIME, N_SAMPLES, UNITS

import rnnlens
from rnnlens.testing.stores import DECOYS, LONG, PLANTED

H = "layer=lstm&field=h&direction=forward"


def request(server, path: str, *, host: str | None = "default", method: str = "GET") -> tuple[int, dict, Any]:  # type: ignore[no-untyped-def,type-arg]
    port = server.server_address[1]
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
    if host is not None:
        conn.putheader("Host", f"127.0.0.1:{port}" if host == "default" else host)
    conn.endheaders()
    resp = conn.getresponse()
    body = resp.read()
    headers = {k.lower(): v for k, v in resp.getheaders()}
    conn.close()
    ctype = headers.get("content-type", "")
    return resp.status, headers, json.loads(body) if ctype.startswith("application/json") and body else body


def api(server, path: str) -> Any:  # type: ignore[no-untyped-def]
    status, _, body = request(server, path)
    assert status == 200, body
    return body


def raw(server, data: bytes) -> bytes:  # type: ignore[no-untyped-def]
    with socket.create_connection(("127.0.0.1", server.server_address[1]), timeout=10) as s:
        s.sendall(data)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_meta(server) -> None:  # type: ignore[no-untyped-def]
    meta = api(server, "/api/meta")
    assert meta["n_samples"] == N_SAMPLES and meta["max_time"] == MAX_TIME
    assert meta["layers"] == [
        {"name": "lstm", "kind": "lstm", "units": UNITS, "directions": ["forward"], "fields": ["h"],
         "widths": {"h": UNITS}}
    ]  # fmt: skip
    assert meta["has_tokens"] is True


@pytest.mark.parametrize("sample", [0, 5, 17, N_SAMPLES - 1])
def test_sample_values_equal_the_store(server, planted, sample) -> None:  # type: ignore[no-untyped-def]
    body = api(server, f"/api/sample?{H}&sample={sample}")
    values = np.frombuffer(base64.b64decode(body["values"]), "<f4").reshape(body["time"], body["units"])
    stored = rnnlens.open_states(planted)
    np.testing.assert_array_equal(values, stored["lstm"].forward.h[sample])  # NaN padding included
    assert body["mask"] == stored.mask[sample].tolist()
    assert body["tokens"] == [f"s{sample}t{t}" for t in range(int(stored.lengths[sample]))]


def test_select_finds_units_on_inside_and_off_around(server) -> None:  # type: ignore[no-untyped-def]
    s, a, b = PLANTED[0]
    body = api(server, f"/api/select?{H}&sample={s}&t0={a}&t1={b}&threshold=0.5")
    assert body["units"] == [3, 7]  # unit 5 is on inside too, but also around: not selected
    # one step wider: 3 and 7 are off at the edge, so nothing is on throughout
    assert api(server, f"/api/select?{H}&sample={s}&t0={a - 1}&t1={b}&threshold=0.5")["units"] == []
    # unit 5's own span (8..16 of sample 5) selects unit 5 alone
    assert api(server, f"/api/select?{H}&sample=5&t0=8&t1=16&threshold=0.5")["units"] == [5]


def test_match_ranks_the_planted_spans_on_top(server) -> None:  # type: ignore[no-untyped-def]
    s, a, b = PLANTED[1]
    body = api(server, f"/api/match?{H}&sample={s}&t0={a}&t1={b}&threshold=0.5&k=10")
    assert body["units"] == [3, 7]
    spans = [(m["sample"], m["start"], m["end"]) for m in body["matches"]]
    assert set(spans[: len(PLANTED)]) == set(PLANTED)  # exact length, all units: score 1
    assert all(m["score"] == 1.0 for m in body["matches"][: len(PLANTED)])
    assert spans[len(PLANTED)] == LONG  # same units, 10 steps for a 4-step query: 4/10
    assert body["matches"][len(PLANTED)]["score"] == pytest.approx(0.4)
    assert len(spans) == len(PLANTED) + 1  # the decoys (unit 3 alone) do not match
    assert not set(spans) & set(DECOYS)
    first = body["matches"][0]
    assert first["snippet"]["tokens"][first["start"] - first["snippet"]["offset"]] == (
        f"s{first['sample']}t{first['start']}"
    )
    assert body["searched"] == N_SAMPLES


def test_match_options_units_min_units_and_k(server) -> None:  # type: ignore[no-untyped-def]
    base = f"/api/match?{H}&sample=5&t0=10&t1=14&threshold=0.5"
    spans = {(m["sample"], m["start"], m["end"]) for m in api(server, base + "&units=3&k=50")["matches"]}
    assert spans == set(PLANTED) | set(DECOYS) | {LONG}
    loose = api(server, base + "&min_units=1&k=50")["matches"]
    by_span = {(m["sample"], m["start"], m["end"]): m for m in loose}
    for decoy in DECOYS:  # one of two units on: coverage 1/2
        assert by_span[decoy]["coverage"] == pytest.approx(0.5)
        assert by_span[decoy]["score"] == pytest.approx(0.5)
    assert len(api(server, base + "&k=2")["matches"]) == 2


def naive_match(h: np.ndarray, mask: np.ndarray, units: list[int], theta: float, qlen: int) -> list[tuple]:  # type: ignore[type-arg]
    """Select-and-match by its definition, one step at a time."""
    out = []
    for s in range(h.shape[0]):
        t = 0
        while t < h.shape[1]:
            if mask[s, t] and all(h[s, t, u] > theta for u in units):
                start = t
                while t < h.shape[1] and mask[s, t] and all(h[s, t, u] > theta for u in units):
                    t += 1
                length = t - start
                out.append((min(length, qlen) / max(length, qlen), s, start, t))
            else:
                t += 1
    return sorted(out, key=lambda r: (-r[0], -(r[3] - r[2]), r[1], r[2]))


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_match_equals_naive_definition_on_random_stores(tmp_path, seed) -> None:  # type: ignore[no-untyped-def]
    from rnnlens.testing.stores import write_store
    from rnnlens.viewer import StoreView

    rng = np.random.default_rng(seed)
    h = rng.normal(size=(30, 15, 4)).astype("float32")
    mask = rng.random((30, 15)) > 0.1
    view = StoreView(write_store(tmp_path / "r.zarr", h, mask=mask, batch_size=7), block_samples=7)
    stored_h = np.asarray(view.states["lstm"].h[...])
    for units, theta, qlen in [([0], 0.0, 2), ([1, 2], -0.3, 3), ([0, 1, 3], -0.8, 5)]:
        got = [
            (m.score, m.sample, m.start, m.end)
            for m in view.match("lstm", "h", "forward", units, theta, query_length=qlen, k=500)
        ]
        want = naive_match(stored_h, mask, units, theta, qlen)
        assert [g[1:] for g in got] == [w[1:] for w in want]
        np.testing.assert_allclose([g[0] for g in got], [w[0] for w in want])


def test_unit_statistics_equal_numpy_over_the_whole_store(server, planted) -> None:  # type: ignore[no-untyped-def]
    body = api(server, f"/api/unit?{H}&unit=3&threshold=0.5")
    stored = rnnlens.open_states(planted)
    h = np.asarray(stored["lstm"].h[...])[:, :, 3].astype(np.float64)
    mask = np.asarray(stored.mask[...])
    valid = h[mask]
    assert body["n_steps"] == mask.sum() == sum(body["hist_counts"])
    assert body["mean"] == pytest.approx(valid.mean(), rel=1e-6)
    assert body["std"] == pytest.approx(valid.std(), rel=1e-5)
    assert body["max"] == pytest.approx(0.9)
    planted_steps = 4 * len(PLANTED) + sum(b - a for _, a, b in DECOYS) + (LONG[2] - LONG[1])
    assert body["fraction_on"] == pytest.approx(planted_steps / mask.sum())
    per_t = [valid_t.mean() for valid_t in (h[:, t][mask[:, t]] for t in range(MAX_TIME))]
    np.testing.assert_allclose(body["mean_by_time"], per_t, rtol=1e-6)


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/../../etc/passwd", 404),
        ("/static/../server.py", 404),
        ("/static/%2e%2e/server.py", 404),
        ("/static/..%2fserver.py", 404),
        ("/static/%2e%2e%2f%2e%2e%2fzarr.json", 404),
        ("/static//etc/passwd", 404),
        ("//etc/passwd", 404),  # http.server folds leading slashes
        ("/etc/passwd", 404),
        ("/zarr.json", 404),
        ("/layers/lstm/forward/h/zarr.json", 404),
        ("/api/nope", 404),
        ("/api/meta/", 404),
        ("/api/meta?x=1", 400),
        (f"/api/sample?{H}", 400),
        (f"/api/sample?{H}&sample=abc", 400),
        (f"/api/sample?{H}&sample=1.5", 400),
        (f"/api/sample?{H}&sample=-1", 400),
        (f"/api/sample?{H}&sample={N_SAMPLES}", 400),
        (f"/api/sample?{H}&sample=99999999999999999999", 400),
        (f"/api/sample?{H}&sample=1&sample=2", 400),
        ("/api/sample?layer=../../zarr.json&sample=1", 400),
        ("/api/sample?layer=%2e%2e%2fmask&sample=1", 400),
        ("/api/sample?layer=/etc/passwd&sample=1", 400),
        ("/api/sample?layer=lstm&field=mask&sample=1", 400),
        ("/api/sample?layer=lstm&field=../h&sample=1", 400),
        ("/api/sample?layer=lstm&direction=backward&sample=1", 400),
        ("/api/sample?layer=lstm&direction=forward/../../mask&sample=1", 400),
        ("/api/sample?layer=" + "x" * 300 + "&sample=1", 400),
        ("/api/sample?layer=lstm&sample=1&" + "&".join(f"p{i}=1" for i in range(40)), 400),
        ("/api/sample?layer=lstm&sample=%ff", 400),
        ("/api/sample?layer=lstm&sample=1&junk", 400),
        (f"/api/select?{H}&sample=5&t0=4&t1=4", 400),
        (f"/api/select?{H}&sample=5&t0=9&t1=3", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1={MAX_TIME + 1}", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1=1000000000", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1=3&threshold=nan", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1=3&threshold=inf", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1=3&threshold=1e999", 400),
        (f"/api/select?{H}&sample=5&t0=0&t1=3&threshold=abc", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&k=0", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&k=100000", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&units=", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&units=3,x", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&units=3,{UNITS}", 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&units=" + ",".join(["1"] * 100), 400),
        (f"/api/match?{H}&sample=5&t0=10&t1=14&min_units=3", 400),
        (f"/api/unit?{H}&unit={UNITS}", 400),
        (f"/api/unit?{H}&unit=-3", 400),
        (f"/api/unit?{H}", 400),
        ("/api/unit?" + "a" * 5000, 400),
    ],
)
def test_hostile_and_malformed_requests_get_4xx(server, path, status) -> None:  # type: ignore[no-untyped-def]
    got, headers, body = request(server, path)
    assert got == status, body
    assert isinstance(body, dict) and body["error"]
    assert headers["x-content-type-options"] == "nosniff"
    assert api(server, "/api/meta")["n_samples"] == N_SAMPLES  # still serving


def test_host_header_must_name_the_server(server) -> None:  # type: ignore[no-untyped-def]
    port = server.server_address[1]
    for host in ("evil.example:80", f"evil.example:{port}", "127.0.0.1", f"127.0.0.1:{port + 1}", ""):
        status = request(server, "/api/meta", host=host)[0]
        assert status == 403, host
    assert request(server, "/api/meta", host=None)[0] == 403  # no Host at all
    assert request(server, "/", host=f"localhost:{port}")[0] == 200
    assert request(server, "/", host=f"LOCALHOST:{port}")[0] == 200  # host names are case-insensitive
    assert request(server, "/", host=f"localhost.evil:{port}")[0] == 403  # but exact


def test_methods_and_garbage_requests(server) -> None:  # type: ignore[no-untyped-def]
    for method in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "FOO"):
        assert request(server, "/api/meta", method=method)[0] == 405, method
    assert raw(server, b"\x00\x01garbage\r\n\r\n").startswith(b"HTTP/1.0 400")
    assert raw(server, b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n").split(b" ")[1] in (b"414", b"400")
    assert raw(server, b"GET http://evil/api/meta HTTP/1.1\r\nHost: evil\r\n\r\n").split(b" ")[1] == b"403"
    assert api(server, "/api/meta")["n_samples"] == N_SAMPLES


def test_static_files_and_security_headers(server) -> None:  # type: ignore[no-untyped-def]
    status, headers, body = request(server, "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert b"/static/viewer.js" in body and b"http" not in body.replace(b"http-equiv", b"")  # no CDN
    csp = headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
    assert headers["x-content-type-options"] == "nosniff"
    assert headers["x-frame-options"] == "DENY"
    status, headers, body = request(server, "/static/viewer.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript")
    assert b"fetch(" in body and b"https://" not in body
    assert request(server, "/static/viewer.css")[0] == 200


def test_a_handler_bug_is_a_500_and_the_server_survives(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    def broken() -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(server.view, "meta", broken)
    status, headers, body = request(server, "/api/meta")
    assert status == 500 and "RuntimeError" in body["error"] and "boom" not in body["error"]
    assert headers["x-content-type-options"] == "nosniff"
    monkeypatch.undo()
    assert api(server, "/api/meta")["n_samples"] == N_SAMPLES


def test_column_cache_is_bounded(planted) -> None:  # type: ignore[no-untyped-def]
    from rnnlens.viewer import StoreView

    view = StoreView(planted, cache_bytes=3 * N_SAMPLES * MAX_TIME * 4, block_samples=16)
    for u in range(UNITS):
        view.match("lstm", "h", "forward", [u], 0.5, query_length=4)
    assert len(view._columns) == 3
    # cached or not, the answer is the same
    fresh = StoreView(planted).match("lstm", "h", "forward", [3, 7], 0.5, query_length=4)
    assert view.match("lstm", "h", "forward", [3, 7], 0.5, query_length=4) == fresh


def test_many_clients_at_once_and_aborted_connections(server, capfd) -> None:  # type: ignore[no-untyped-def]
    import concurrent.futures
    import time

    assert server.request_queue_size >= 128
    port = server.server_address[1]
    # 40 clients connect at once: none waits for a TCP retry (1 s) behind a short backlog
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(40)]
    for s in socks:  # clients that go away without a request, or mid-request
        s.sendall(b"GET /api/meta HTTP/1.1\r\n")
        s.close()

    def one(_: int) -> float:
        start = time.perf_counter()
        status, _, _ = request(server, "/api/meta")
        assert status == 200
        return time.perf_counter() - start

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        latencies = sorted(pool.map(one, range(40)))
    assert latencies[int(0.95 * len(latencies))] < 0.9
    time.sleep(0.2)
    assert "Traceback" not in capfd.readouterr().err
