"""Steering a finished run by hand: "continue from here" and "what if the threshold were lower here".

`continue_from` keeps a run's steps before a chosen candidate, makes that candidate the only one of its set
(its siblings dropped) and decodes onward. The earlier steps are fed in one forward (`tempo_events(prefix=...)`),
so the shared prefix is not decoded again step by step; the result equals a run from scratch whose selection at
that step is forced (tests/test_steer.py).
"""

from __future__ import annotations

import threading
from typing import Iterator

from .config import SettingsError, build_settings
from .engine import tempo_events
from .events import StepEvent
from .model import LoadedModel
from .trace import Trace, rewind


def continue_from(lm: LoadedModel, original: Trace, step: int, index: int,
                  stop: threading.Event | None = None, max_tokens: int | None = None) -> Iterator[StepEvent]:
    """Events of a run that repeats `original` up to `step`, keeps only candidate `index` there, and goes on
    (to the original's max_tokens, or `max_tokens`). The original trace is not changed."""
    if original.mode != "tempo":
        raise SettingsError("mode", f"continue from here works on TEMPO runs, this one is {original.mode}")
    if not 0 <= step < len(original.steps) or not 0 <= index < len(original.steps[step].candidates):
        raise SettingsError("node", f"no candidate {step}:{index} in this run")
    s = build_settings(original.settings)
    s = s.replace(max_tokens=max(step + 1, max_tokens or s.max_tokens))
    token = original.steps[step].candidates[index].token_id
    # seeded sigmoid pruning draws in step order: a resumed run would draw differently, so it starts over
    prefix = rewind(original, step - 1).steps if step > 0 and not s.use_sigmoid_threshold else None
    return tempo_events(lm, s, stop, prefix=prefix, force={step: [token]})


def lower_threshold_preview(original: Trace, step: int) -> list[dict]:
    """What the set at `step` would hold at lower thresholds: its candidates and the near misses the run
    recorded, most probable first, each with the threshold at or below which it joins the set."""
    st = original.steps[step]
    rows = [{"text": c.shown, "prob": c.prob, "kept": True} for c in st.candidates]
    rows += [{"text": a["text"], "prob": a["prob"], "kept": False} for a in st.alternatives]
    return sorted(rows, key=lambda r: -r["prob"])
