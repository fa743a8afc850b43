"""The ``rnnlens`` command.

Every subcommand has ``--help``. Errors from rnnlens are printed as one clear line on stderr
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from typing import Any

from ..core.optional import is_optional, missing_message
from ..core.version import __version__
from ..distributed import connect
from ..errors import InputError, RnnLensError
from ..extract import extract_to
from ..io.export import export
from ..io.zarr import open_states, verify_store
from ..viewer import serve
from ..viz.render import read_tokens, render, save
from . import causal as _cli_causal
from .demo import run_demo
from .extracting import FIELDS_HELP, choose_fields, guarded, parse_fields
from .spelling import cli_spelling
from .support import STORAGE_HELP, storage_options
from .support import open_model as _open
from .support import split as _split
from .support import units as _units

__all__ = ["main"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    import rnnlens

    model = _open(args)
    description = rnnlens.describe(model)
    print(f"{args.model}: {len(description)} recurrent layer(s)")
    print(description)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    result = run_demo(units=args.units, epochs=args.epochs, seed=args.seed, report=args.out)
    best = abs(result.top_units[0][2])
    if best <= result.random_baseline:
        print("The best unit does not beat a random unit: training failed.", file=sys.stderr)
        return 1
    return 0


def _cmd_extract(args: argparse.Namespace) -> int:
    import contextlib

    data = args.data[0] if len(args.data) == 1 else args.data
    try:
        with contextlib.ExitStack() as stack:
            client = None
            if args.scheduler:
                client = stack.enter_context(connect(args.scheduler))
            guarded(lambda: _extract(args, extract_to, data, client), args.out, storage_options(args))
    except KeyboardInterrupt:
        print(
            f"\nrnnlens extract: interrupted; completed chunks are kept in {args.out}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    return 0


def _extract(args: argparse.Namespace, extract_to: Any, data: Any, client: Any) -> None:
    import rnnlens

    layers, fields = _split(args.layers), parse_fields(args.fields)
    model: Any = args.model
    if args.module or (fields is not None and not args.scheduler):
        model = _open(args)  # opened once, here: its layers decide what each takes of --fields
    if fields is not None:
        specs = rnnlens.describe(model if not isinstance(model, str) else _open(args))
        fields = choose_fields(fields, list(specs), layers)
    extract_to(
        args.out,
        model,
        data,
        layers=layers,
        fields=fields,
        batch_size=args.batch_size,
        resume=not args.no_resume,
        overwrite=args.overwrite,
        lengths=args.lengths,
        mask=args.mask,
        max_time=args.max_time,
        progress=True,
        unsafe=args.unsafe,
        client=client,
        storage_options=storage_options(args),
    )


def _cmd_export(args: argparse.Namespace) -> int:
    path = export(args.store, args.out, to=args.to, storage_options=storage_options(args))
    print(f"wrote {path}", file=sys.stderr)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    checked = verify_store(args.store, storage_options=storage_options(args))
    total = sum(checked.values())
    print(f"{args.store}: ok, {total} chunks in {len(checked)} arrays checked", file=sys.stderr)
    return 0


def _cmd_plot(args: argparse.Namespace) -> int:
    states = open_states(args.store, storage_options=storage_options(args))
    kind = "gates" if args.field == "gates" else args.kind
    field = "h" if args.field == "gates" else args.field
    if field is None and kind != "decompose":
        field = "h"
    tokens = None
    if args.tokens is not None:
        tokens = read_tokens(args.tokens, args.sample, int(states.mask.shape[1]), chars=args.chars)
    fig = render(
        states,
        layer=args.layer,
        sample=args.sample,
        kind=kind,
        field=field,
        direction=args.direction,
        units=_units(args.units),
        tokens=tokens,
    )
    print(f"wrote {save(fig, args.out)}", file=sys.stderr)
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    if not 0 <= args.port <= 65535:
        raise InputError(f"--port must be 0 (any free port) or 1..65535; received {args.port}.")

    serve(
        open_states(args.store, storage_options=storage_options(args)),
        host=args.host,
        port=args.port,
        tokens=args.tokens,
        chars=args.chars,
        open_browser=not args.no_browser,
        feature=args.feature,
    )
    return 0


VERBOSE_HELP = "show the frameworks' own log lines (TensorFlow's C++ logs)"
STORE_HELP = "store written by 'rnnlens extract': a directory or a URL (s3://bucket/run.zarr, ...)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlens",
        description="Hidden states, cell states and gates of trained recurrent networks, every step.",
    )
    parser.add_argument("--version", action="version", version=_version())
    parser.add_argument("--verbose", action="store_true", help=VERBOSE_HELP)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def module_options(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--module",
            metavar="PKG.MODULE:CLASS",
            help="for a PyTorch state dict (.pt): your nn.Module class to load the weights into",
        )
        p.add_argument("--module-kwargs", metavar="JSON", help="keyword arguments for --module's class")

    p = sub.add_parser("inspect", help="list a model file's recurrent layers and what can be extracted")
    p.add_argument("model", help="model file (.keras, .h5, .onnx, .pt; TorchScript needs --unsafe)")
    p.add_argument(
        "--unsafe", action="store_true", help="allow code inside the file to run (trusted files only)"
    )
    module_options(p)
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "demo", help="train a tiny LSTM on built-in bracketed text, trace it, find depth units"
    )
    p.add_argument("--units", type=int, default=32, help="LSTM units (default 32)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument(
        "--seed", type=int, default=0, help="random seed of the data, weights and training (default 0)"
    )
    p.add_argument("-o", "--out", default="rnnlens-demo.html", help="HTML report (default rnnlens-demo.html)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "extract",
        help="trace a model over a data file, batch by batch, into a resumable Zarr store",
        description="Trace MODEL over DATA batch by batch and write the states to a Zarr v3 store. "
        "An interrupted run resumes when the same command is run again.",
    )
    p.add_argument("model", help="model file (.keras, .h5, .onnx, .pt; TorchScript needs --unsafe)")
    p.add_argument(
        "data",
        nargs="+",
        help="input: a .npy array (memory-mapped), several .npy files read as one (same shape "
        "after the sample axis), or an .npz with an array 'x' and optional 'mask' / 'lengths'",
    )
    p.add_argument(
        "-o",
        "--out",
        required=True,
        help="output store: a directory (run.zarr) or a URL (s3://bucket/run.zarr)",
    )
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.add_argument("--layers", help="comma-separated layer names (default: every recurrent layer)")
    p.add_argument("--fields", default="all", help=FIELDS_HELP)
    p.add_argument("--batch-size", type=int, default=256, help="sequences per batch and chunk (default 256)")
    p.add_argument("--lengths", help=".npy of valid steps per sequence (sample,)")
    p.add_argument("--mask", help=".npy of valid steps, (sample, time) bool")
    p.add_argument("--max-time", type=int, help="time axis of the store (default: the data's)")
    p.add_argument(
        "--unsafe", action="store_true", help="allow code inside the model file to run (trusted files only)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an interrupted run at --out")
    p.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="run on a Dask cluster (e.g. tcp://host:8786): workers trace the chunks and write them "
        "into --out, which must be on storage every worker sees at the same path",
    )
    module_options(p)
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser(
        "ablate",
        help="run a model with some units of a layer ablated and save its outputs with and without",
        description="Set UNITS of LAYER to --value (default 0) at --steps, rerun the model exactly "
        "from there, and write the model's outputs with the ablation (ablated_*) and without "
        "(baseline_*) to an .npz file.",
    )
    p.add_argument("model", help="model file (.pt needs --unsafe or a state dict's module; see inspect)")
    p.add_argument("data", help="input: a .npy array, or an .npz with an array 'x'")
    p.add_argument("--layer", required=True, help="layer name (see rnnlens inspect)")
    p.add_argument("--units", help="comma-separated units (default: all)")
    p.add_argument("--steps", default=":", help="a step (5) or a range (5:, 2:7; default: every step)")
    p.add_argument("--field", choices=("h", "c"), default="h", help="h (default) or c (LSTM cell state)")
    p.add_argument("--direction", choices=("forward", "backward"), help="one direction (default: all)")
    p.add_argument("--value", type=float, default=0.0, help="value the units are set to (default 0)")
    p.add_argument(
        "--unsafe", action="store_true", help="allow code inside the model file to run (trusted files only)"
    )
    p.add_argument("-o", "--out", required=True, help="output .npz")
    module_options(p)
    p.set_defaults(func=_cli_causal.cmd_ablate)

    p = sub.add_parser(
        "probe",
        help="rank a stored layer's units by a feature and train a diagnostic probe with a control task",
        description="Rank the units of LAYER in STORE by their correlation with --labels (Pearson, "
        "permutation p-values, read chunk by chunk) and train a probe (held-out score, control task, "
        "selectivity).",
    )
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.add_argument("--labels", required=True, help=".npy of labels per (sample, time) or per sample")
    p.add_argument("--layer", required=True, help="layer name")
    p.add_argument("--field", default="h", choices=("h", "c"), help="h (default) or c")
    p.add_argument(
        "--kind", default="logistic", choices=("logistic", "ridge"), help="probe (default logistic)"
    )
    p.add_argument("--types", help=".npy of token types per (sample, time), for the control task")
    p.add_argument("--permutations", type=int, default=200, help="for the p-values (default 200)")
    p.add_argument("--plot", metavar="PNG", help="also write the ranking's bar chart here")
    p.add_argument(
        "--scheduler", metavar="ADDRESS", help="rank on this Dask scheduler's workers (they read the store)"
    )
    p.set_defaults(func=_cli_causal.cmd_probe)

    p = sub.add_parser(
        "export",
        help="write a store to one .npz or HDF5 file (LSTMVis' flat per-layer layout)",
        description="Export a state store. npz: the store's arrays, shapes unchanged "
        "(<layer>_<direction>_<field>, mask, lengths). hdf5: LSTMVis' layout, one "
        "(total_valid_steps, units) dataset per layer/direction/field, plus sample_index and "
        "time_index.",
    )
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.add_argument("--to", choices=("npz", "hdf5"), help="format (default: from the -o suffix)")
    p.add_argument("-o", "--out", required=True, help="output file (.npz, .h5, .hdf5)")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser(
        "verify",
        help="check every chunk of a store (present, checksum) and exit 0 only if all are intact",
    )
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.set_defaults(func=_cmd_verify)

    tokens_help = (
        "text file, one line per sequence (line N is sample N); tokens separated by whitespace "
        "(--chars: one token per character)"
    )
    p = sub.add_parser(
        "plot",
        help="draw one sample of a stored layer: heatmap, unit traces, PCA trajectory or gates",
        description="Draw one sample of one layer of a store (reads only that sample) to an image file.",
    )
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.add_argument("--layer", required=True, help="layer name")
    p.add_argument("--sample", type=int, default=0, help="sequence number (default 0)")
    p.add_argument("-o", "--out", required=True, help="image file (.png, .svg, .pdf)")
    p.add_argument(
        "--kind",
        choices=("heatmap", "traces", "pca", "gates", "decompose"),
        default="heatmap",
        help="default heatmap; decompose: which earlier steps' writes each step's state holds",
    )
    p.add_argument(
        "--field",
        help="h, c, a gate name (i f g o / z r n) or gates (default h; decompose: LSTM c, GRU h)",
    )
    p.add_argument("--direction", choices=("forward", "backward"), help="one direction (default: both)")
    p.add_argument("--units", help="comma-separated units to draw (default: all; traces: first 8)")
    p.add_argument("--tokens", help=tokens_help)
    p.add_argument("--chars", action="store_true", help="tokens file: one token per character")
    p.set_defaults(func=_cmd_plot)

    p = sub.add_parser(
        "view",
        help="local web viewer of a store (LSTMVis-style select and match)",
        description="Serve a local web viewer of STORE (read lazily). Prints its URL on a line of its "
        "own and opens a browser; Ctrl-C stops it. Binds 127.0.0.1 on a free port by default.",
    )
    p.add_argument("store", help=STORE_HELP)
    p.add_argument("--storage-options", metavar="JSON", help=STORAGE_HELP)
    p.add_argument("--tokens", help=tokens_help)
    p.add_argument("--chars", action="store_true", help="tokens file: one token per character")
    p.add_argument(
        "--feature", metavar="NPY", help="a feature per (sample, time) or per sample: colours units by r"
    )
    p.add_argument("--port", type=int, default=0, help="port (default 0: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser")
    p.set_defaults(func=_cmd_view)
    for p in sub.choices.values():  # global options anywhere on the line, also after the subcommand
        p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _version() -> str:
    return f"rnnlens {__version__}"


def _line(e: BaseException) -> str:
    """An error message on one line (frameworks' messages span several)."""
    return " ".join(str(e).split())


def _note(e: BaseException) -> str:
    """What a failed extract left behind (set by :func:`.extracting.guarded`), as a sentence."""
    note = getattr(e, "rnnlens_note", "")
    return f" {note}" if note else ""


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not args.verbose:  # before any framework is imported: TensorFlow reads it once
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from .support import quiet_native_stderr

    with quiet_native_stderr(not args.verbose):
        return _dispatch(args)


def _dispatch(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args))
    except (RnnLensError, FileNotFoundError) as e:
        print(f"rnnlens {args.command}: error: {cli_spelling(_line(e))}{_note(e)}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as e:  # an optional library imported where no require() stands guard
        if not is_optional(e.name):
            return _unexpected(args, e)
        print(
            f"rnnlens {args.command}: error: {missing_message(str(e.name), 'This command')}", file=sys.stderr
        )
        return 2
    except MemoryError as e:
        print(f"rnnlens {args.command}: error: out of memory ({e}); use smaller batches.", file=sys.stderr)
        return 2
    except OSError as e:  # disk full, permissions, names the filesystem refuses: the user's to fix
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        print(f"rnnlens {args.command}: error: {e.strerror or e}{where}.", file=sys.stderr)
        return 2
    except Exception as e:
        return _unexpected(args, e)


def _unexpected(args: argparse.Namespace, e: Exception) -> int:
    """Never a traceback; RNNLENS_DEBUG=1 shows it for a bug report."""
    if os.environ.get("RNNLENS_DEBUG"):
        raise e
    print(
        f"rnnlens {args.command}: error: {type(e).__name__}: {_line(e)} (an unexpected error; rerun "
        f"with RNNLENS_DEBUG=1 for the traceback and please report it){_note(e)}",
        file=sys.stderr,
    )
    return 1
