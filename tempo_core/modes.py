"""Which decoding a run uses: TEMPO (engine.py), plain transformers generate (baseline.py), MCTS (mcts.py) or
Soft Thinking (soft.py), and the faithfulness phase after a TEMPO or soft run. Above the modes, so that imports only run downward."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from .baseline import default_events
from .batch import ForwardRequest
from .config import TempoSettings
from .engine import tempo_events
from .events import StepEvent
from .commitment import measure_iter as commitment_iter
from .faithfulness import measure_iter as faithfulness_iter
from .limits import stop_reason
from .mcts import mcts_events
from .replay import ReplayStopped
from .model import LoadedModel
from .soft import soft_events
from .trace import Step, Trace


def generate(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
             prefix: list[Step] | None = None, cooperative: bool = False, cuda_graphs: bool = True
             ) -> Iterator[StepEvent | ForwardRequest]:
    """Events of a run in the mode `s` selects (TEMPO, default/baseline, MCTS or soft). `cooperative`: a TEMPO
    run also yields its forwards for a `batch.Batcher` to serve with other runs' (engine.tempo_events).
    `cuda_graphs`: a TEMPO run may replay CUDA graphs (a server turns it off for a run that starts among others,
    whose steps then batch with theirs)."""
    if s.mode == "default":
        return default_events(lm, s, stop)
    if s.mode == "mcts":
        return mcts_events(lm, s, stop, cooperative)
    events = soft_events(lm, s, stop) if s.mode == "soft" else tempo_events(lm, s, stop, prefix, cooperative=cooperative,
                                                                        cuda_graphs=cuda_graphs)
    if s.faithfulness:
        events = _then(events, "faithfulness", "measuring faithfulness",
                       lambda trace: faithfulness_iter(lm, trace, s.faithfulness_paths, stop=stop), stop)
    if s.commitment:
        events = _then(events, "commitment", "reading the layers (logit lens)",
                       lambda trace: commitment_iter(lm, trace, stop=stop), stop)
    return events


def _then(events: Iterator[StepEvent | ForwardRequest], name: str, doing: str,
          analysis: Callable[[Trace], Iterator[float]],
          stop: threading.Event | None) -> Iterator[StepEvent | ForwardRequest]:
    """The run's events, then, before the last one, `analysis` of the finished trace (an iterator of the fraction
    done) as progress events. A stopped run is not analysed: `stats["<name>_skipped"]` says why."""
    for event in events:
        if isinstance(event, ForwardRequest):
            yield event
        elif event.done and stop is not None and stop.is_set():
            event.trace.stats[f"{name}_skipped"] = stop_reason(stop)
        elif event.done:
            t0 = time.perf_counter()
            try:
                for done in analysis(event.trace):
                    if stop is not None and stop.is_set():
                        event.trace.stats[f"{name}_skipped"] = stop_reason(stop)
                        break
                    yield StepEvent(event.index, event.trace, [], progress=f"{doing} {done:.0%}")
            except ReplayStopped:  # stopped between two forwards of the run's replay
                event.trace.stats[f"{name}_skipped"] = stop_reason(stop)
            event.trace.timings[f"{name}_ms"] = (time.perf_counter() - t0) * 1e3
        yield event


def run(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
        prefix: list[Step] | None = None) -> Trace:
    """Run to the end and return the finished trace."""
    event = None
    for event in generate(lm, s, stop, prefix):
        pass
    assert event is not None and event.done
    return event.trace
