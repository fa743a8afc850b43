"""The ``rnnlens`` command.

Every subcommand has ``--help``. Errors from rnnlens are printed as one clear line on stderr
with exit status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def _cmd_inspect(args: argparse.Namespace) -> int:
    import rnnlens

    model = rnnlens.load_model(args.model, unsafe=args.unsafe)
    description = rnnlens.describe(model)
    print(f"{args.model}: {len(description)} recurrent layer(s)")
    print(description)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    result = run_demo(units=args.units, epochs=args.epochs, seed=args.seed, report=args.out)
    best = abs(result.top_units[0][2])
    if best <= result.random_baseline:
        print("The best unit does not beat a random unit: training failed.", file=sys.stderr)
        return 1
    return 0


def _split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract_to

    try:
        extract_to(
            args.out,
            args.model,
            args.data,
            layers=_split(args.layers),
            fields=_split(args.fields) or ("h",),
            batch_size=args.batch_size,
            resume=not args.no_resume,
            overwrite=args.overwrite,
            lengths=args.lengths,
            mask=args.mask,
            max_time=args.max_time,
            progress=True,
            unsafe=args.unsafe,
        )
    except KeyboardInterrupt:
        print(
            f"\nrnnlens extract: interrupted; completed chunks are kept in {args.out}. "
            "Run the same command again to resume.",
            file=sys.stderr,
        )
        return 130
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .io.export import export

    path = export(args.store, args.out, to=args.to)
    print(f"wrote {path}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rnnlens",
        description="Hidden states, cell states and gates of trained recurrent networks, every step.",
    )
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="list a model file's recurrent layers and what can be extracted")
    p.add_argument("model", help="model file (.keras, .h5, TorchScript .pt)")
    p.add_argument(
        "--unsafe", action="store_true", help="allow code inside the file to run (trusted files only)"
    )
    p.set_defaults(func=_cmd_inspect)

    p = sub.add_parser(
        "demo", help="train a tiny LSTM on built-in bracketed text, trace it, find depth units"
    )
    p.add_argument("--units", type=int, default=32, help="LSTM units (default 32)")
    p.add_argument("--epochs", type=int, default=6, help="training epochs (default 6)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="rnnlens-demo.html", help="HTML report (default rnnlens-demo.html)")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser(
        "extract",
        help="trace a model over a data file, batch by batch, into a resumable Zarr store",
        description="Trace MODEL over DATA batch by batch and write the states to a Zarr v3 store. "
        "An interrupted run resumes when the same command is run again.",
    )
    p.add_argument("model", help="model file (.keras, .h5, TorchScript .pt)")
    p.add_argument(
        "data",
        help="input: a .npy array (memory-mapped) or an .npz with an array 'x' and optional "
        "'mask' / 'lengths'",
    )
    p.add_argument("-o", "--out", required=True, help="output store directory (e.g. run.zarr)")
    p.add_argument("--layers", help="comma-separated layer names (default: every recurrent layer)")
    p.add_argument("--fields", default="h", help="comma-separated subset of h,c,gates (default: h)")
    p.add_argument("--batch-size", type=int, default=256, help="sequences per batch and chunk (default 256)")
    p.add_argument("--lengths", help=".npy of valid steps per sequence (sample,)")
    p.add_argument("--mask", help=".npy of valid steps, (sample, time) bool")
    p.add_argument("--max-time", type=int, help="time axis of the store (default: the data's)")
    p.add_argument(
        "--unsafe", action="store_true", help="allow code inside the model file to run (trusted files only)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--no-resume", action="store_true", help="refuse to continue an interrupted run at --out")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser(
        "export",
        help="write a store to one .npz or HDF5 file (LSTMVis' flat per-layer layout)",
        description="Export a state store. npz: the store's arrays, shapes unchanged "
        "(<layer>_<direction>_<field>, mask, lengths). hdf5: LSTMVis' layout, one "
        "(total_valid_steps, units) dataset per layer/direction/field, plus sample_index and "
        "time_index.",
    )
    p.add_argument("store", help="store directory written by 'rnnlens extract'")
    p.add_argument("--to", choices=("npz", "hdf5"), help="format (default: from the -o suffix)")
    p.add_argument("-o", "--out", required=True, help="output file (.npz, .h5, .hdf5)")
    p.set_defaults(func=_cmd_export)
    return parser


def _version() -> str:
    from . import __version__

    return f"rnnlens {__version__}"


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = build_parser().parse_args(argv)
    from .errors import RnnLensError

    try:
        return int(args.func(args))
    except (RnnLensError, FileNotFoundError) as e:
        print(f"rnnlens {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
