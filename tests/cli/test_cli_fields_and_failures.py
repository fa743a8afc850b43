"""``rnnlens extract``: --fields per layer (default all), no half-made store after a failure,
--verbose anywhere, messages in the command's spelling, `demo --seed` documented."""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rnnlens.cli import main
from rnnlens.cli.command import build_parser
from rnnlens.cli.spelling import cli_spelling
from rnnlens.io.zarr import open_states

torch = pytest.importorskip("torch")

MODULE = """
import torch

CALLS = {"n": 0, "fail_at": None}

class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.enc = torch.nn.LSTM(3, 4, batch_first=True)
        self.dec = torch.nn.GRU(4, 5, batch_first=True)

    def forward(self, x):
        CALLS["n"] += 1
        if CALLS["fail_at"] is not None and CALLS["n"] >= CALLS["fail_at"]:
            raise RuntimeError("the model broke on this batch")
        return self.dec(self.enc(x)[0])[0]
"""


@pytest.fixture
def net(tmp_path: Path, monkeypatch: Any) -> tuple[Path, Path, Any]:
    (tmp_path / "lstmgru.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    mod = importlib.import_module("lstmgru")
    mod = importlib.reload(mod)
    torch.manual_seed(0)
    torch.save(mod.Net().state_dict(), tmp_path / "net.pt")
    x = np.random.default_rng(0).standard_normal((6, 5, 3)).astype("float32")
    np.save(tmp_path / "x.npy", x)
    return tmp_path / "net.pt", tmp_path / "x.npy", mod


def _extract(net: tuple[Path, Path, Any], out: Path, *extra: str) -> int:
    model, data, _ = net
    return main(["extract", str(model), str(data), "-o", str(out), "--module", "lstmgru:Net", *extra])


def _fields(out: Path) -> dict[str, set[str]]:
    states = open_states(out)
    return {name: set(states[name].fields) for name in ("enc", "dec")}


def test_fields_default_and_all_give_every_field_each_layer_has(net: Any, tmp_path: Path) -> None:
    assert _extract(net, tmp_path / "a.zarr") == 0
    assert _extract(net, tmp_path / "b.zarr", "--fields", "all") == 0
    both = {"enc": {"h", "c", "gates"}, "dec": {"h", "gates"}}
    assert _fields(tmp_path / "a.zarr") == both == _fields(tmp_path / "b.zarr")


def test_fields_each_layer_takes_what_it_has(net: Any, tmp_path: Path, capsys: Any) -> None:
    assert _extract(net, tmp_path / "a.zarr", "--fields", "h,c,gates") == 0
    assert _fields(tmp_path / "a.zarr") == {"enc": {"h", "c", "gates"}, "dec": {"h", "gates"}}
    assert _extract(net, tmp_path / "b.zarr", "--fields", "gates") == 0
    assert _fields(tmp_path / "b.zarr") == {"enc": {"h", "gates"}, "dec": {"h", "gates"}}
    capsys.readouterr()
    # c of the GRU alone: no selected layer has it
    assert _extract(net, tmp_path / "c.zarr", "--fields", "c", "--layers", "dec") == 2
    err = capsys.readouterr().err
    assert "no selected layer has c" in err and "dec (GRU)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "c.zarr").exists()
    assert _extract(net, tmp_path / "d.zarr", "--fields", "hh") == 2
    assert "Did you mean 'h'" in capsys.readouterr().err


def test_failed_run_leaves_no_half_made_store(net: Any, tmp_path: Path, capsys: Any) -> None:
    net[2].CALLS["fail_at"] = 1  # the first batch fails: nothing written, nothing left
    assert _extract(net, tmp_path / "a.zarr", "--batch-size", "2") == 2
    err = capsys.readouterr().err
    assert "the model broke" in err and "was removed" in err and "Traceback" not in err
    assert not (tmp_path / "a.zarr").exists()


def test_failed_run_with_chunks_done_says_a_rerun_resumes(net: Any, tmp_path: Path, capsys: Any) -> None:
    mod = net[2]
    mod.CALLS.update(n=0, fail_at=3)  # the third batch (model call) fails: two chunks are done
    assert _extract(net, tmp_path / "a.zarr", "--batch-size", "2") == 2
    err = capsys.readouterr().err
    assert "samples already written are kept" in err and "run the same command again to resume" in err
    mod.CALLS.update(fail_at=None)
    assert _extract(net, tmp_path / "a.zarr", "--batch-size", "2") == 0
    assert open_states(tmp_path / "a.zarr")["enc"].h.shape[0] == 6


def test_an_existing_folder_is_never_removed(net: Any, tmp_path: Path, capsys: Any) -> None:
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert _extract(net, out) == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    assert (out / "keep.txt").read_text() == "mine"


def test_verbose_anywhere_on_the_line() -> None:
    parser = build_parser()
    for argv in (["--verbose", "verify", "s"], ["verify", "--verbose", "s"], ["verify", "s", "--verbose"]):
        assert parser.parse_args(argv).verbose is True
    assert parser.parse_args(["verify", "s"]).verbose is False


def test_messages_in_cli_spelling() -> None:
    text = (
        "Pass overwrite=True (CLI: --overwrite) to replace it. Ask for fields=('h',) or select layers with "
        "layers=[...]. Load it with rnnlens.load_model(path, module=MyModel(...), unsafe=True)."
    )
    out = cli_spelling(text)
    assert "=" not in out.replace("(CLI", "")
    assert "--overwrite" in out and "--fields h" in out and "--layers" in out and "--module pkg" in out


def test_demo_seed_has_help(capsys: Any) -> None:
    with pytest.raises(SystemExit):
        main(["demo", "--help"])
    out = capsys.readouterr().out
    assert "--seed SEED" in out and "random seed" in out


def test_plot_of_a_damaged_chunk_is_one_clear_line(net: Any, tmp_path: Path, capsys: Any) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "a.zarr"
    assert _extract(net, out, "--batch-size", "3") == 0
    chunk = sorted((out / "layers" / "enc" / "forward" / "h" / "c").rglob("*"))
    chunk = [p for p in chunk if p.is_file()]
    chunk[0].write_bytes(b"\x00" * 20)  # edited bytes: the checksum no longer matches
    capsys.readouterr()
    assert main(["plot", str(out), "--layer", "enc", "-o", str(tmp_path / "p.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "is damaged" in err and "unexpected" not in err
    assert "--overwrite" in err and "rnnlens verify" in err
