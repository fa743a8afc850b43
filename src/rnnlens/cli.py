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
