"""A run with the analyses its settings ask for after it: faithfulness (faithfulness.py) and commitment
(commitment.py), each reporting its progress as events. `tempo_core.generate` and `tempo_core.run` are these."""

from __future__ import annotations

import threading
import time
from typing import Callable, Iterator

from ..config import TempoSettings
from ..events import StepEvent
from ..forward import ForwardRequest
from ..model import LoadedModel
from ..modes import mode_events
from ..stop import stop_reason
from ..trace import Step, Trace
from .commitment import measure_iter as commitment_iter
from .faithfulness import measure_iter as faithfulness_iter
from .replay import ReplayStopped


def generate(lm: LoadedModel, s: TempoSettings, stop: threading.Event | None = None,
             prefix: list[Step] | None = None, cooperative: bool = False, cuda_graphs: bool = True
             ) -> Iterator[StepEvent | ForwardRequest]:
    """Events of a run in the mode `s` selects (modes.mode_events), then, before its last event, the analyses `s`
    asks for, as progress events."""
    events = mode_events(lm, s, stop, prefix, cooperative, cuda_graphs)
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
