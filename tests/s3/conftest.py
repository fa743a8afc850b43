"""A real S3-compatible server for the object-storage tests: moto in server mode, in its own
process on a free local port, started once per test session (per xdist worker). Each test gets
a bucket of its own; clients reach the server over HTTP, as they would reach S3."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

pytest.importorskip("zarr")
pytest.importorskip("s3fs")
pytest.importorskip("moto")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def s3_endpoint():  # type: ignore[no-untyped-def]
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=2)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"the moto S3 server did not start on {url}") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):  # type: ignore[no-untyped-def]
    """Credentials and endpoint as environment variables (what a user's shell holds), also
    seen by child processes: fsspec's S3 filesystem reads them without storage options."""
    env = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": s3_endpoint,
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    return env


@pytest.fixture
def storage_options(s3_endpoint):  # type: ignore[no-untyped-def]
    """Explicit s3fs options for the local server (no environment needed)."""
    return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": s3_endpoint}}


@pytest.fixture
def bucket(s3_endpoint, storage_options):  # type: ignore[no-untyped-def]
    """A fresh bucket's name (removed with what it holds after the test)."""
    import boto3
    import s3fs

    name = f"rnnlens-{uuid.uuid4().hex[:12]}"
    boto3.client(
        "s3",
        endpoint_url=s3_endpoint,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    ).create_bucket(Bucket=name)
    yield name
    s3fs.S3FileSystem(**storage_options, skip_instance_cache=True).rm(name, recursive=True)
