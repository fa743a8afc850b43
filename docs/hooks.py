"""MkDocs hook: the command-line reference, generated from rnnlens' own parser at build time."""

from __future__ import annotations

import argparse
from typing import Any

MARKER = "<!-- cli-reference -->"


def _reference() -> str:
    from rnnlens.cli import build_parser

    parser = build_parser()
    parts = ["### rnnlens\n", "```text\n" + parser.format_help() + "```\n"]
    for action in parser._actions:  # the subcommands, in the order `rnnlens --help` lists them
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                parts.append(f"### rnnlens {name}\n")
                parts.append("```text\n" + sub.format_help() + "```\n")
    return "\n".join(parts)


def on_page_markdown(markdown: str, **_: Any) -> str:
    return markdown.replace(MARKER, _reference()) if MARKER in markdown else markdown
