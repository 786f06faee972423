"""The runs the Learn tab and the recorded examples show: recorded by the engine on the embedded model and shipped
in assets/learn/ (scripts/record_walkthrough.py makes them again; tests/figures/test_lessons.py checks that they
still equal what the engine produces)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

from tempo_core import Trace

LEARN_DIR = Path(__file__).resolve().parents[2] / "assets" / "learn"
PROMPT = "Write one sentence about the sea."
# the recorded runs (embedded model): name -> settings. scripts/record_walkthrough.py writes assets/learn/<name>.json
RECORDINGS: dict[str, dict[str, Any]] = {
    "greedy": {"prompt": PROMPT, "max_tokens": 20, "selection_threshold": 1.0},
    "tempo": {"prompt": PROMPT, "max_tokens": 20, "selection_threshold": 0.1, "use_retroactive_pruning": True,
              "attention_threshold": 0.02, "faithfulness": True, "faithfulness_paths": 8},
    "curve": {"prompt": PROMPT, "max_tokens": 32, "selection_threshold": 0.1, "use_retroactive_pruning": True,
              "attention_threshold": 0.02, "dynamic_threshold": True, "final_threshold": 0.3},
}


@functools.lru_cache(maxsize=None)
def recorded(name: str) -> Trace:
    """A recorded run (read once per process; callers must not change it)."""
    return Trace.from_json((LEARN_DIR / f"{name}.json").read_text(encoding="utf-8"))


def first_branch(trace: Trace) -> int:
    return next((st.step for st in trace.steps if len(st.candidates) > 1), 0)


def first_pruned(trace: Trace) -> tuple[int, int] | None:
    """(step, index) of the first candidate pruning removed."""
    return next(((st.step, i) for st in trace.steps for i, c in enumerate(st.candidates) if c.pruned_at is not None),
                None)
