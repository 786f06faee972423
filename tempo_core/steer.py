"""Steering a finished run by hand: "continue from here" and "what if the threshold were lower here".

`continue_from` keeps a run's steps before a chosen candidate, makes that candidate the only one of its set
(its siblings dropped) and decodes onward. The earlier steps are fed in one forward (`tempo_events(prefix=...)`),
so the shared prefix is not decoded again step by step; the result equals a run from scratch whose selection at
that step is forced (tests/engine/test_steer.py).
"""

from __future__ import annotations

import math
import threading
from typing import Iterator

from .config import SettingsError, build_settings
from .engine import tempo_events
from .events import StepEvent
from .forward import ForwardRequest
from .model import LoadedModel
from .trace import Step, Trace, rewind


def continue_from(lm: LoadedModel, original: Trace, step: int, index: int,
                  stop: threading.Event | None = None, max_tokens: int | None = None, cooperative: bool = False
                  ) -> Iterator[StepEvent | ForwardRequest]:
    """Events of a run that repeats `original` up to `step`, keeps only candidate `index` there, and goes on
    (to the original's max_tokens, or `max_tokens`). The original trace is not changed. `cooperative`: as in
    engine.tempo_events (its steps are served with other runs')."""
    if not 0 <= step < len(original.steps) or not 0 <= index < len(original.steps[step].candidates):
        raise SettingsError("node", f"no candidate {step}:{index} in this run")
    _check_steerable(lm, original, "continue from here", step)
    s = build_settings(original.settings)
    s = s.replace(max_tokens=max(step + 1, max_tokens or s.max_tokens))
    token = original.steps[step].candidates[index].token_id
    # seeded sigmoid pruning draws in step order: a resumed run would draw differently, so it starts over
    prefix = rewind(original, step - 1).steps if step > 0 and not s.use_sigmoid_threshold else None
    return tempo_events(lm, s, stop, prefix=prefix, force={step: [token]}, cooperative=cooperative)


def rerun_at(lm: LoadedModel, original: Trace, step: int, threshold: float, stop: threading.Event | None = None,
             cooperative: bool = False) -> Iterator[StepEvent | ForwardRequest]:
    """Events of a run that repeats `original`'s steps before `step` as they were (their sets, their pruning, their
    thresholds) and selects from `step` on at `threshold`: what "what if the threshold were lower here" promises,
    which a fresh run at that threshold does not keep (its earlier sets change too). Recorded in `trace.stats` as
    `rerun_step` and `rerun_threshold`."""
    _check_steerable(lm, original, "rerun at a threshold", step)
    s = build_settings({"selection_threshold": threshold}, build_settings(original.settings))
    earlier = original.steps[:step]
    # seeded sigmoid pruning draws in step order: a resumed run would draw differently, so it starts over forced
    prefix = rewind(original, step - 1).steps if step > 0 and not s.use_sigmoid_threshold else None
    force = {st.step: [c.token_id for c in st.candidates] for st in earlier} if step > 0 and prefix is None else None
    return _as_recorded(tempo_events(lm, s, stop, prefix=prefix, force=force, cooperative=cooperative), earlier,
                        {"rerun_step": step, "rerun_threshold": threshold})


def _as_recorded(events: Iterator[StepEvent | ForwardRequest], earlier: list[Step], stats: dict
                 ) -> Iterator[StepEvent | ForwardRequest]:
    """`events`, their trace's first steps carrying the thresholds they were made at (`earlier`'s), and `stats`."""
    for event in events:
        if not isinstance(event, ForwardRequest):
            for st, was in zip(event.trace.steps, earlier):
                st.selection_threshold = was.selection_threshold
            event.trace.stats.update(stats)
        yield event


def _check_steerable(lm: LoadedModel, original: Trace, what: str, step: int) -> None:
    """A TEMPO run with a step `step`, whose tokens up to it are this model's (an upload may name others)."""
    if original.mode != "tempo":
        raise SettingsError("mode", f"{what} works on TEMPO runs, this one is {original.mode}")
    if not 0 <= step < len(original.steps):
        raise SettingsError("step", f"must be an integer in [0, {len(original.steps) - 1}], got {step}")
    vocab = lm.model.get_input_embeddings().num_embeddings
    for st in original.steps[:step + 1]:
        for i, c in enumerate(st.candidates):
            if not 0 <= c.token_id < vocab:
                raise SettingsError(f"steps[{st.step}].candidates[{i}].token_id",
                                    f"{c.token_id} is not a token of {lm.name} (ids 0 to {vocab - 1})")


# A forward that carries other runs' rows (a server's batched tick) moves probabilities by a few millionths (up to
# ~5e-6 measured): a stated threshold keeps this margin below the probability, so that a run at it selects the token
# however its forwards are served.
JOIN_MARGIN = 1e-5


def joins_at(prob: float) -> float:
    """The threshold to state for a token of probability `prob`: `prob` less JOIN_MARGIN, rounded DOWN to 4
    decimals, so that a run at the stated threshold really selects it (p >= threshold), batched or alone:
    0.072846 -> 0.0728, 0.0357002 -> 0.0356 (never 0.0357, which a batched forward's 0.0356999859 misses)."""
    return math.floor((prob - JOIN_MARGIN) * 1e4) / 1e4


def lower_threshold_preview(original: Trace, step: int) -> list[dict]:
    """What the set at `step` would hold at lower thresholds: its candidates and the near misses the run
    recorded, most probable first. Each row: `text`, `prob`, `kept`, `status` and, for a near miss, `joins_at`
    (the highest threshold stated to select it, or None when the threshold is not what kept it out) and
    `needs_cap` (the max_parallel_tokens the set would need to hold it). Status:
    kept      in the set;
    capped    passed the run's threshold but the set was full (max_parallel_tokens): a lower threshold adds
              nothing, a larger cap does;
    by_hand   passed the run's threshold, but this step's set was chosen by hand ("continue from here");
    joins     joins once the threshold is at or below `joins_at` (and the cap allows it).
    eos       end of text passed the threshold but was dropped (not the most probable, or before min_steps); it
              took a place in the set all the same (its probability is not recorded: `prob` None).
    The sizes count that place: a set whose EOS was dropped held one token more than it shows."""
    st = original.steps[step]
    threshold = st.selection_threshold
    cap = int(original.settings.get("max_parallel_tokens", len(st.candidates)))
    forced = original.stats.get("forced_step") == step
    rows = [{"text": c.shown, "prob": c.prob, "kept": True, "status": "kept", "joins_at": None, "needs_cap": None}
            for c in st.candidates]
    taken = len(st.candidates) + (1 if st.dropped_eos else 0)  # places the set used, the dropped EOS's included
    for j, a in enumerate(sorted(st.alternatives, key=lambda a: -a["prob"])):
        size = taken + j + 1  # the set it joins holds every more probable token too
        passed = a["prob"] >= threshold
        status = ("by_hand" if forced else "capped") if passed else "joins"
        rows.append({"text": a["text"], "prob": a["prob"], "kept": False, "status": status,
                     "joins_at": None if passed else joins_at(a["prob"]), "needs_cap": size if size > cap else None})
    rows.sort(key=lambda r: -r["prob"])
    if st.dropped_eos:
        rows.append({"text": "end of text (EOS)", "prob": None, "kept": False, "status": "eos", "joins_at": None,
                     "needs_cap": None})
    return rows
