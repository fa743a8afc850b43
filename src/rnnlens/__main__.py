"""``python -m rnnlens``: the ``rnnlens`` command."""

import sys

from .cli import main

if __name__ == "__main__":  # not when a tool imports the module (pytest's doctest collection)
    sys.exit(main())
