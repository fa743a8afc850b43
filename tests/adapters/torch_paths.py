"""Shared by the express-path tests: the general path's states of a bare module, for comparison."""

from __future__ import annotations

from typing import Any

import rnnlens


def general_path(m: Any, *args: Any, **kw: Any) -> Any:
    """The general path's states (a forward hook rules out the express path), hook removed."""
    handle = m.register_forward_hook(lambda *a: None)
    try:
        return rnnlens.trace(m, *args, **kw)
    finally:
        handle.remove()
