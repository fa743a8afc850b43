"""rnnlens: hidden states, cell states and gates of trained recurrent networks, at every step.

Importing rnnlens imports no deep-learning framework; the adapter for a model's framework
loads when that model is first traced.
"""

from .analysis.ablation import AblationScan, ablation_scan
from .analysis.decompose import Decomposition, DecompositionMaps, Lifetimes, decompose
from .analysis.probes import confirm, probe, rank_units
from .api.intervention import Intervention, intervene
from .api.loader import load_model
from .api.recording import Recording, record
from .api.tracer import Description, describe, trace
from .core.buffers import release_memory
from .core.edits import Edit
from .core.spec import LayerSpec
from .core.states import DirectionStates, Gates, LayerStates, States
from .core.version import __version__
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
from .io.zarr import open_states

__all__ = [
    "AblationScan",
    "Decomposition",
    "DecompositionMaps",
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
    "Lifetimes",
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
    "decompose",
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
