"""rnnlens: hidden states, cell states and gates of trained recurrent networks, at every step.

Importing rnnlens imports no deep-learning framework; the adapter for a model's framework
loads when that model is first traced.
"""

from .ablation import AblationScan, ablation_scan
from .api import Description, describe, trace
from .buffers import release_memory
from .edits import Edit
from .errors import (
    DirectionNotAvailableError,
    FieldNotAvailableError,
    InputError,
    LayerNotFoundError,
    ModelFileError,
    OptionError,
    OptionTypeError,
    ParityError,
    RnnLensError,
    RnnLensWarning,
    UnsupportedLayerError,
    UnsupportedModelError,
)
from .extract import Run, extract_to
from .intervene import Intervention, intervene
from .io.zarr import open_states
from .loading import load_model
from .probes import confirm, probe, rank_units
from .record import Recording, record
from .spec import LayerSpec
from .states import DirectionStates, Gates, LayerStates, States

__version__ = "0.1.0"

__all__ = [
    "AblationScan",
    "Description",
    "DirectionNotAvailableError",
    "DirectionStates",
    "Edit",
    "FieldNotAvailableError",
    "Gates",
    "InputError",
    "Intervention",
    "LayerNotFoundError",
    "LayerSpec",
    "LayerStates",
    "ModelFileError",
    "OptionError",
    "OptionTypeError",
    "ParityError",
    "Recording",
    "RnnLensError",
    "RnnLensWarning",
    "Run",
    "States",
    "UnsupportedLayerError",
    "UnsupportedModelError",
    "__version__",
    "ablation_scan",
    "confirm",
    "describe",
    "extract_to",
    "intervene",
    "load_model",
    "open_states",
    "probe",
    "rank_units",
    "record",
    "release_memory",
    "trace",
]
