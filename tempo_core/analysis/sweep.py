"""Threshold sweep: the same prompt and settings across selection thresholds, reusing shared prefixes.

Runs go from the lowest threshold up. A run at a higher threshold makes exactly the steps of an earlier
(lower-threshold) run for as long as every recorded candidate still passes the new threshold: the earlier
run recorded every token above its own, lower threshold (top-k order keeps the cap consistent), so the new
set is the same. Those steps are fed in one forward (`tempo_events(prefix=...)`) instead of one each.
"""

from __future__ import annotations

import threading
from typing import Callable

from ..config import TempoSettings
from ..model import LoadedModel
from ..trace import Step, Trace, rewind
from .after_run import run


def reusable_prefix(earlier: Trace, threshold: float) -> int:
    """How many leading steps of `earlier` a run at `threshold` (>= earlier's) would repeat exactly."""
    if threshold < earlier.settings["selection_threshold"]:
        return 0
    n = 0
    for st in earlier.steps:
        if st.dropped_eos or (len(st.candidates) > 1 and min(c.prob for c in st.candidates) < threshold):
            break
        n += 1
    return n


def sweep(lm: LoadedModel, s: TempoSettings, thresholds: list[float], stop: threading.Event | None = None,
          progress: Callable[[int, int, str], None] | None = None) -> list[Trace]:
    """One TEMPO run per threshold, lowest first; `stop` ends the current run and skips the rest;
    `progress(done, total, what)` is called before each run."""
    runs: list[Trace] = []
    todo = sorted(set(thresholds))
    for thr in todo:
        if stop is not None and stop.is_set():
            break
        if progress is not None:
            progress(len(runs), len(todo), f"threshold {thr}")
        settings = s.replace(selection_threshold=thr)
        best, source = 0, None
        if not s.use_sigmoid_threshold:  # seeded draws happen in step order; a resumed run would draw differently
            for earlier in runs:
                n = min(reusable_prefix(earlier, thr), s.max_tokens)
                if n > best:
                    best, source = n, earlier
        prefix: list[Step] | None = rewind(source, best - 1).steps if source is not None else None
        runs.append(run(lm, settings, stop, prefix=prefix))
    return runs
