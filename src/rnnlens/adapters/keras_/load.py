"""Open ``.keras`` / ``.h5`` files safely: Keras' ``safe_mode`` unless the caller says unsafe."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ...core.archive import check_archive
from ...core.optional import require
from ...errors import ModelFileError, RnnLensError
from . import legacy_h5

__all__ = ["load"]


def load(p: Path, *, unsafe: bool) -> Any:
    """A Keras 3 model from ``p``; a Keras 2 ``.h5`` is converted (:mod:`.legacy_h5`)."""
    check_archive(p)  # before Keras decompresses anything
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    keras = require("keras", purpose=f"Opening the Keras model file {p.name}")

    legacy_h5.register_custom_objects()  # a re-saved Keras 2 model names rnnlens' hard_sigmoid
    try:
        if p.suffix.lower() in (".h5", ".hdf5") and legacy_h5.is_keras2_h5(p):
            return legacy_h5.load_keras2_h5(p, safe_mode=not unsafe)
        return keras.saving.load_model(p, safe_mode=not unsafe, compile=False)
    except RnnLensError:
        raise
    except Exception as e:  # Keras raises many types for a bad file; report them as one
        text = str(e)
        if "safe_mode" in text:  # Keras' refusal to deserialize code
            raise ModelFileError(
                f"{p.name} contains Python code (a Lambda layer) that would run when loaded; "
                "refused in safe mode. If you trust the file, pass unsafe=True "
                "(CLI: --unsafe)."
            ) from None
        raise ModelFileError(
            f"Could not load {p.name} as a Keras model ({type(e).__name__}: {_first_line(text)}). "
            "The file may be truncated or corrupt, or saved by an incompatible Keras version; "
            "re-save it with model.save('model.keras')."
        ) from e


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else "no message"
