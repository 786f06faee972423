"""TEMPO: Threshold-Enabled Multipath Parallel Output, on any RoPE causal LM in transformers."""

from .config import SettingsError, TempoSettings, build_settings, load_settings
from .events import StepEvent
from .modes import generate, run
from .model import LoadedModel, ModelError, load_model, wrap_model
from .trace import Candidate, Step, Trace

__version__ = "0.1.0"
__all__ = ["SettingsError", "TempoSettings", "build_settings", "load_settings", "StepEvent", "generate", "run",
           "LoadedModel", "ModelError", "load_model", "wrap_model", "Candidate", "Step", "Trace", "__version__"]
