"""``python -m rnnlens.cli``: the ``rnnlens`` command (as ``python -m rnnlens``)."""

import sys

from .command import main

if __name__ == "__main__":  # not when a tool imports the module (pytest's doctest collection)
    sys.exit(main())
