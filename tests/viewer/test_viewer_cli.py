"""``rnnlens view`` as a user runs it: a subprocess that prints its URL on a line of its own,
serves the store, and exits cleanly on Ctrl-C (SIGINT)."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request

from rnnlens.cli import main


def test_view_prints_url_serves_and_stops_on_ctrl_c(planted, tokens_file) -> None:  # type: ignore[no-untyped-def]
    cmd = [sys.executable, "-m", "rnnlens.cli", "view", str(planted), "--no-browser",
           "--tokens", str(tokens_file)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/\n", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        with urllib.request.urlopen(line.strip() + "api/meta", timeout=10) as r:
            assert json.load(r)["has_tokens"] is True
        with urllib.request.urlopen(line.strip(), timeout=10) as r:
            assert b"rnnlens viewer" in r.read()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_view_errors_are_clear(tmp_path, planted, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["view", str(tmp_path / "missing.zarr"), "--no-browser"]) == 2
    assert "No state store" in capsys.readouterr().err
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["view", str(planted), "--no-browser", "--port", str(port)]) == 2
    assert "Cannot listen on 127.0.0.1" in capsys.readouterr().err
