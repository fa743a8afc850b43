"""Library messages in the command's spelling: ``overwrite=True`` becomes ``--overwrite``.

rnnlens' errors name the Python option to pass; a command-line user needs the flag instead.
"""

from __future__ import annotations

import re

__all__ = ["cli_spelling"]

_LOAD = r"rnnlens\.load_model\([^()]*module=MyModel\(\.\.\.\)(?:, *unsafe=True)?\)"
_RULES: tuple[tuple[str, str], ...] = (
    (r"\b[a-z_]+=[^ ]+ \(CLI: (--[a-z-]+)\)", r"\1"),  # "overwrite=True (CLI: --overwrite)"
    (_LOAD, "--module pkg.module:Class"),
    (r"\boverwrite=True\b", "--overwrite"),
    (r"\bresume=True\b", "the same command (without --no-resume)"),
    (r"\bunsafe=True\b", "--unsafe"),
    (r"\bmax_time=<", "--max-time <"),
    (r"\bbatch_size=(\d+)", r"--batch-size \1"),
    (r"\bfields=\('h',\)", "--fields h"),
    (r"\blayers=\[\.\.\.\]", "--layers"),
    (r"\brnnlens\.describe\(model\)", "rnnlens inspect MODEL"),
    (r"\bstorage_options\b", "--storage-options"),
)


def cli_spelling(message: str) -> str:
    """``message`` with the Python spellings of options replaced by the command's flags.

    >>> cli_spelling("Pass overwrite=True (CLI: --overwrite) to replace it, or resume=True to continue it.")
    'Pass --overwrite to replace it, or the same command (without --no-resume) to continue it.'
    >>> cli_spelling("Rerun the extraction with overwrite=True.")
    'Rerun the extraction with --overwrite.'
    """
    for pattern, repl in _RULES:
        message = re.sub(pattern, repl, message)
    return message
