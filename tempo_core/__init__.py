"""TEMPO: Threshold-Enabled Multipath Parallel Output, on any RoPE causal LM in transformers."""

from .analysis.after_run import generate, run
from .config import SettingsError, TempoSettings, build_settings
from .settings_sources import load_settings
from .events import StepEvent
from .model import LoadedModel, ModelError, load_model, wrap_model
from .trace import Candidate, Step, Trace

__version__ = "0.1.0"
__all__ = ["SettingsError", "TempoSettings", "build_settings", "load_settings", "StepEvent", "generate", "run",
           "LoadedModel", "ModelError", "load_model", "wrap_model", "Candidate", "Step", "Trace", "__version__"]
