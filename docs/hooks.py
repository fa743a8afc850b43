"""MkDocs hook: the command-line reference, generated from rnnlens' own parser at build time."""

from __future__ import annotations

import argparse
from pathlib import Path
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


#: the README (the site's home page) links with absolute URLs so that they work on a package index;
#: on the site the same pages and images are local
_ABSOLUTE = (
    "https://raw.githubusercontent.com/rnnlens/rnnlens/main/docs/",
    "https://github.com/rnnlens/rnnlens/blob/main/docs/",
)


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    if page.file.src_uri == "index.md":  # the README, read here (snippets expand after this hook)
        readme = Path(__file__).resolve().parents[1] / "README.md"
        markdown = markdown.replace('--8<-- "README.md"', readme.read_text())
        for prefix in _ABSOLUTE:
            markdown = markdown.replace(prefix, "")
    return markdown.replace(MARKER, _reference()) if MARKER in markdown else markdown
