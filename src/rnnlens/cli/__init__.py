"""The ``rnnlens`` command: the parser and dispatch (:mod:`.command`), the causal subcommands
(:mod:`.causal`), shared helpers (:mod:`.support`) and the built-in demo (:mod:`.demo`)."""

from .command import build_parser, main

__all__ = ["build_parser", "main"]
