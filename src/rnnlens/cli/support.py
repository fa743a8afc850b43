"""Helpers of the ``rnnlens`` command that are not commands: ``--module`` and quiet native logs."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import rnnlens

from ..errors import InputError

__all__ = [
    "STORAGE_HELP",
    "module_instance",
    "open_model",
    "quiet_native_stderr",
    "split",
    "storage_options",
    "units",
]

STORAGE_HELP = (
    "JSON options of a store URL's filesystem (s3fs: key, secret, client_kwargs.endpoint_url, ...); "
    "default: its environment (AWS_* variables, ~/.aws)"
)


def storage_options(args: argparse.Namespace) -> dict[str, Any] | None:
    """``--storage-options JSON``: a JSON object, or None when not given."""
    import json

    text = getattr(args, "storage_options", None)
    if not text:
        return None
    try:
        options = json.loads(text)
    except json.JSONDecodeError as e:
        raise InputError(f"--storage-options is not valid JSON: {e}.") from None
    if not isinstance(options, dict):
        raise InputError("--storage-options must be a JSON object (the filesystem's keyword arguments).")
    return options


def module_instance(spec: str, kwargs_json: str | None) -> Any:
    """``--module pkg.module:Class`` (with ``--module-kwargs JSON``): the user's own class,
    instantiated, for a PyTorch state dict to be loaded into. Importing it runs the user's own
    code, which they named; nothing in the model file runs."""
    import importlib
    import json

    mod_name, _, attr = spec.partition(":")
    if not mod_name or not attr:
        raise InputError(f"--module takes pkg.module:Class; received {spec!r}.")
    try:
        kwargs = json.loads(kwargs_json) if kwargs_json else {}
    except json.JSONDecodeError as e:
        raise InputError(f"--module-kwargs is not valid JSON: {e}.") from None
    if not isinstance(kwargs, dict):
        raise InputError("--module-kwargs must be a JSON object of keyword arguments.")
    sys.path.insert(0, os.getcwd())  # a module in the current directory, as `python -m` finds it
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise InputError(f"--module: cannot import {mod_name!r}: {e}.") from None
    finally:
        sys.path.pop(0)
    cls = getattr(module, attr, None)
    if cls is None:
        raise InputError(f"--module: {mod_name!r} has no {attr!r}.")
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise InputError(
            f"--module: {spec}(**{kwargs}) failed: {e}. Pass its arguments with --module-kwargs."
        ) from None


@contextlib.contextmanager
def quiet_native_stderr(quiet: bool) -> Iterator[None]:
    """Without ``--verbose``: what native code writes to file descriptor 2 (TensorFlow's C++
    and absl log lines, printed on import whatever ``TF_CPP_MIN_LOG_LEVEL`` says) goes to
    /dev/null, while Python's ``sys.stderr`` (rnnlens' messages, progress bars, warnings) keeps
    writing to the real stderr through a duplicate of it. Only when ``sys.stderr`` is the
    process's own (not under a test's capture)."""
    original = sys.stderr
    if not quiet or original is None or original is not sys.__stderr__:
        yield
        return
    assert original is not None
    try:
        original.flush()
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    original = sys.stderr
    sys.stderr = os.fdopen(
        os.dup(saved), "w", buffering=1, encoding=original.encoding, errors="backslashreplace"
    )
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        sys.stderr.close()
        sys.stderr = original


def open_model(args: argparse.Namespace) -> Any:
    if getattr(args, "module", None):
        instance = module_instance(args.module, args.module_kwargs)
        return rnnlens.load_model(args.model, module=instance, unsafe=args.unsafe)
    return rnnlens.load_model(args.model, unsafe=args.unsafe)


def split(text: str | None) -> list[str] | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    return items or None


def units(text: str | None) -> list[int] | None:
    items = split(text)
    if items is None:
        return None
    try:
        return [int(u) for u in items]
    except ValueError:
        raise InputError(f"--units takes unit numbers separated by commas; received {text!r}.") from None
