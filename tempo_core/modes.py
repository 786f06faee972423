"""Which decoding a run uses: TEMPO (engine.py), plain transformers generate (baseline.py), MCTS (mcts.py) or
Soft Thinking (soft.py). The analyses a run's settings may ask for after it (faithfulness, commitment) are the
analysis wing's (analysis/after_run.py: `tempo_core.generate` and `tempo_core.run`)."""

from __future__ import annotations

import threading
from typing import Iterator

from .baseline import default_events
from .config import TempoSettings
from .engine import tempo_events
from .events import StepEvent
from .forward import ForwardRequest
from .mcts import mcts_events
from .model import LoadedModel
from .soft import soft_events
from .trace import Step


def mode_events(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
                prefix: list[Step] | None = None, cooperative: bool = False, cuda_graphs: bool = True
                ) -> Iterator[StepEvent | ForwardRequest]:
    """Events of a run in the mode `s` selects (TEMPO, default/baseline, MCTS or soft). `cooperative`: a TEMPO
    run also yields its forwards for whoever serves it to batch with other runs' (engine.tempo_events).
    `cuda_graphs`: a TEMPO run may replay CUDA graphs (a server turns it off for a run that starts among others,
    whose steps then batch with theirs)."""
    if s.mode == "default":
        return default_events(lm, s, stop)
    if s.mode == "mcts":
        return mcts_events(lm, s, stop, cooperative)
    if s.mode == "soft":
        return soft_events(lm, s, stop)
    return tempo_events(lm, s, stop, prefix, cooperative=cooperative, cuda_graphs=cuda_graphs)
