"""Write a metadata-only wheel ``NAME-VERSION-py3-none-any.whl`` into a folder.

Used by .ci/core-only to stand in for a framework version no CPU wheel of exists here (torch
2.6 beside the 2.13 wheel on disk): pip sees an installed distribution of that version and must
keep it.

    python tests/install/placeholder_wheel.py OUTDIR torch 2.6.0
"""

from __future__ import annotations

import base64
import hashlib
import sys
import zipfile
from pathlib import Path


def write(outdir: Path, name: str, version: str) -> Path:
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": (
            "Wheel-Version: 1.0\nGenerator: rnnlens-ci\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    rows = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        rows.append(f"{path},sha256={digest},{len(text.encode())}")
    rows.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(rows) + "\n"
    outdir.mkdir(parents=True, exist_ok=True)
    wheel = outdir / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return wheel


if __name__ == "__main__":
    print(write(Path(sys.argv[1]), sys.argv[2], sys.argv[3]))
