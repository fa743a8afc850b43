"""Open PyTorch model files safely: state dicts as weights only; pickles and TorchScript,
which run code when opened, only with ``unsafe=True``."""

from __future__ import annotations

import os
import pickle
import zipfile
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from ...core.archive import check_archive
from ...errors import InputError, ModelFileError, UnsupportedModelError

__all__ = ["load_model"]


def _is_torchscript(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("constants.pkl") for n in z.namelist())


def _is_exported(path: str) -> bool:
    """A ``torch.export.save`` archive (``.pt2``)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as z:
        return any(n.endswith("archive_format") for n in z.namelist())


def _state_dict(obj: Any) -> Mapping[str, Any] | None:
    def is_sd(o: Any) -> bool:
        return (
            isinstance(o, Mapping)
            and len(o) > 0
            and all(isinstance(k, str) for k in o)
            and any(isinstance(v, torch.Tensor) for v in o.values())
        )

    if is_sd(obj):
        return obj  # type: ignore[no-any-return]
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model_state_dict", "model"):
            if is_sd(obj.get(key)):
                return obj[key]  # type: ignore[no-any-return]
    return None


def _instantiate(module: Any) -> Any:
    if isinstance(module, nn.Module):
        return module
    if isinstance(module, type) and issubclass(module, nn.Module):
        try:
            return module()
        except TypeError as e:
            raise UnsupportedModelError(
                f"{module.__name__}() needs arguments ({e}). Pass an instance instead: "
                f"load_model(path, module={module.__name__}(...))."
            ) from None
    raise UnsupportedModelError(
        f"module must be a torch.nn.Module instance or class; received {type(module).__name__}."
    )


def _load_into(module: Any, state: Mapping[str, Any], path: str) -> Any:
    target = _instantiate(module)
    try:
        target.load_state_dict(state)
    except RuntimeError as e:
        raise InputError(
            f"The weights in {path!r} do not fit {type(target).__name__}: {e} -- pass the module the "
            "file was saved from, built with the same sizes."
        ) from None
    return target


def load_model(path: str | os.PathLike[str], module: Any = None, *, unsafe: bool = False) -> Any:
    """Load a PyTorch model file safely.

    * A state dict (``torch.save(model.state_dict(), "m.pt")``; ``.pt``/``.pth``, also a
      checkpoint dict holding one under ``"state_dict"``, ``"model_state_dict"`` or ``"model"``)
      is read with ``torch.load(weights_only=True)``, which runs no code from the file. Weights
      need the code that uses them: pass ``module``, the model's instance (or a class that
      takes no arguments); the weights are loaded into it and it is returned.
    * A TorchScript file (``torch.jit.save``) runs code when opened: ``torch.jit.load``
      executes the archive's compiled ``__setstate__`` methods, which can read and write files.
      It is refused unless ``unsafe=True`` (only for files you trust). With ``unsafe=True`` and
      without ``module`` the ScriptModule is returned (describe works, trace does not: compiled
      code cannot be observed); with ``module`` its weights are loaded into that Python module.
    * A ``torch.export`` program (``torch.export.save``, ``.pt2``) unpickles its weights when
      opened (``weights_only=False``): refused unless ``unsafe=True``; it is returned as the
      ``ExportedProgram``, which :func:`rnnlens.trace` traces (:mod:`.forms`).
    * A whole pickled module (``torch.save(model)``) can run arbitrary code when loaded: it
      is refused unless ``unsafe=True`` (only for files you trust).

    A file that cannot be read, holds no weights, or would run code raises
    :class:`~rnnlens.errors.ModelFileError`, as for Keras files.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"No model file at {p!r}.")
    check_archive(p)  # PyTorch's format is a zip: bounded before anything is read
    if _is_exported(p):
        if not unsafe:
            raise ModelFileError(
                f"{p!r} is a torch.export program (torch.export.save): opening it unpickles its "
                "weights and constants (torch.load with weights_only=False), which can run code from "
                "the file. If you trust the file, pass unsafe=True (CLI: --unsafe); or trace the "
                "Python module it was exported from."
            )
        if module is not None:
            raise InputError(
                f"{p!r} is a torch.export program: it holds its own graph and weights, so module= "
                "does not apply. Open it without module= (unsafe=True)."
            )
        return torch.export.load(p)
    if _is_torchscript(p):
        if not unsafe:
            raise ModelFileError(
                f"{p!r} is a TorchScript archive: opening it runs the compiled code inside it "
                "(its __setstate__ methods can read and write files). If you trust the file, pass "
                "unsafe=True (CLI: --unsafe). Safer: on a machine where the file is trusted, save "
                "its weights with torch.save(torch.jit.load(path).state_dict(), 'weights.pt') and "
                "load those with rnnlens.load_model('weights.pt', module=MyModel(...))."
            )
        scripted = torch.jit.load(p, map_location="cpu")
        return scripted if module is None else _load_into(module, scripted.state_dict(), p)
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if not unsafe:
            raise ModelFileError(
                f"{p!r} cannot be read as weights only: it holds pickled Python objects (a whole "
                "module saved with torch.save(model)?) or is not a PyTorch file at all, and loading "
                "pickled objects can run arbitrary code from the file. If you trust the file, pass "
                "unsafe=True. Safer: save model.state_dict() and load it with "
                "load_model(path, module=MyModel(...))."
            ) from e
        obj = torch.load(p, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ModelFileError(
            f"{p!r} is not a file torch.load can read ({type(e).__name__}: {e}). Expected a state "
            "dict (.pt/.pth), a TorchScript file, or (with unsafe=True) a pickled module."
        ) from e
    if isinstance(obj, nn.Module):
        return obj if module is None else _load_into(module, obj.state_dict(), p)
    state = _state_dict(obj)
    if state is None:
        raise ModelFileError(
            f"{p!r} holds a {type(obj).__name__}, not model weights; expected a state dict "
            "(torch.save(model.state_dict(), path)) or a TorchScript file."
        )
    if module is None:
        raise UnsupportedModelError(
            f"{p!r} is a state dict: weights without the code that uses them. Pass the model: "
            "load_model(path, module=MyModel(...)) (an instance, or a class that takes no arguments); "
            "on the command line: --module pkg.module:MyModel [--module-kwargs JSON]."
        )
    return _load_into(module, state, p)
