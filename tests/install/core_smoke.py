"""rnnlens installed with numpy and torch alone (the wheel, in a fresh venv): run by .ci/core-only.

Not a pytest module (pytest is not installed there): each check is a function, and the script
prints pytest's closing line, "N passed, N failed", and exits non-zero on a failure.
Oracle for the traces: a loop of ``nn.LSTMCell`` with the module's weights copied.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import traceback

FRAMEWORKS = ("keras", "tensorflow", "jax", "onnx", "onnxruntime", "transformers")
OPTIONAL = ("keras", "tensorflow", "zarr", "xarray", "sklearn", "matplotlib", "dask", "onnx")


def check_not_installed() -> None:
    """The venv holds the core only: this job proves nothing if an extra slipped in."""
    present = [m for m in OPTIONAL if importlib.util.find_spec(m) is not None]
    assert not present, f"installed beside the core: {present}"


def check_import_is_cheap() -> None:
    code = (
        "import sys, rnnlens, rnnlens.adapters as a; a.registered(); "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {(*FRAMEWORKS, 'torch')!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _model():
    import torch

    torch.manual_seed(0)
    return torch.nn.LSTM(3, 5, num_layers=2, batch_first=True)


def _cell_loop(lstm, x, layer: int):
    """h and c of one layer at every step, by ``nn.LSTMCell`` with the layer's weights."""
    import torch

    cell = torch.nn.LSTMCell(lstm.input_size if layer == 0 else lstm.hidden_size, lstm.hidden_size)
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(cell, name).copy_(getattr(lstm, f"{name}_l{layer}"))
        inputs = x
        for below in range(layer):
            inputs = torch.stack(_cell_loop(lstm, x, below)[0], dim=1)
        h = c = torch.zeros(x.shape[0], lstm.hidden_size)
        hs, cs = [], []
        for t in range(x.shape[1]):
            h, c = cell(inputs[:, t], (h, c))
            hs.append(h)
            cs.append(c)
    return hs, cs


def check_trace() -> None:
    import numpy as np
    import torch

    import rnnlens

    lstm = _model()
    x = torch.randn(4, 7, 3)
    before = {k: v.clone() for k, v in lstm.state_dict().items()}
    states = rnnlens.trace(lstm, x)
    assert list(states) == ["lstm.l0", "lstm.l1"], list(states)
    for layer in (0, 1):
        hs, cs = _cell_loop(lstm, x, layer)
        got = states[f"lstm.l{layer}"]
        np.testing.assert_allclose(got.h, torch.stack(hs, 1).numpy(), atol=1e-5)
        np.testing.assert_allclose(got.c, torch.stack(cs, 1).numpy(), atol=1e-5)
        assert set(got.gates) == {"i", "f", "g", "o"}
    assert all(torch.equal(before[k], v) for k, v in lstm.state_dict().items())


def check_intervene() -> None:
    import numpy as np
    import torch

    import rnnlens

    lstm = _model()
    x = torch.randn(2, 6, 3)
    run = rnnlens.intervene(lstm, x, rnnlens.Edit("lstm.l0", 2, units=[0, 1], scale=0))
    assert np.all(run.states["lstm.l0"].h[:, 2, :2] == 0)
    plain = rnnlens.trace(lstm, x)
    # the edit reaches the next layer from step 2 on, and nothing before it (up to rounding: the
    # edited layer runs rnnlens' step loop, a small batch's plain trace PyTorch's kernel; ~3e-8)
    np.testing.assert_allclose(run.states["lstm.l1"].h[:, :2], plain["lstm.l1"].h[:, :2], rtol=0, atol=1e-6)
    assert not np.allclose(run.states["lstm.l1"].h[:, 2:], plain["lstm.l1"].h[:, 2:])


def check_describe() -> None:
    import rnnlens

    d = rnnlens.describe(_model())
    assert [spec.name for spec in d] == ["lstm.l0", "lstm.l1"], d


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    exe = os.path.join(os.path.dirname(sys.executable), "rnnlens")
    return subprocess.run([exe, *args], capture_output=True, text=True)


def check_cli_keras_file_names_the_install() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.keras")
        with open(path, "wb") as f:
            f.write(b"PK\x05\x06" + b"\0" * 18)  # an empty zip: never opened without Keras
        out = _cli("inspect", path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, (out.returncode, out.stderr)
    assert len(lines) == 1 and "pip install 'rnnlens[keras]' tensorflow" in lines[0], out.stderr
    assert "unexpected" not in out.stderr and "Traceback" not in out.stderr


def check_cli_demo_names_the_install() -> None:
    out = _cli("demo")
    assert out.returncode == 2 and "rnnlens[keras]" in out.stderr, (out.returncode, out.stderr)
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


def check_store_names_the_extra() -> None:
    import torch

    import rnnlens
    from rnnlens.errors import MissingDependencyError

    with tempfile.TemporaryDirectory() as tmp:
        try:
            rnnlens.extract_to(os.path.join(tmp, "run.zarr"), _model(), torch.randn(2, 4, 3))
        except MissingDependencyError as e:
            assert "pip install 'rnnlens[zarr]'" in str(e), e
        else:
            raise AssertionError("extract_to ran without zarr")


def check_probe_names_the_extra() -> None:
    import numpy as np

    import rnnlens
    from rnnlens.errors import MissingDependencyError

    states = rnnlens.trace(_model(), np.random.default_rng(0).normal(size=(8, 5, 3)).astype("float32"))
    try:
        rnnlens.probe(states, np.arange(40).reshape(8, 5) % 2, layer="lstm.l1")
    except MissingDependencyError as e:
        assert "pip install 'rnnlens[probe]'" in str(e), e
    else:
        raise AssertionError("probe ran without scikit-learn")


def main() -> int:
    checks = [(n, f) for n, f in globals().items() if n.startswith("check_") and callable(f)]
    failed = 0
    for name, fn in checks:
        try:
            fn()
            print(f"PASSED {name}")
        except Exception:
            failed += 1
            print(f"FAILED {name}\n{traceback.format_exc()}")
    print(f"{len(checks) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
